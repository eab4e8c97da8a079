"""Suggestions for a run that does not fit: RL changes and the smallest change set that fits."""

from __future__ import annotations

from memplan.advice import candidates, changes, suggest
from memplan.api import estimate_command, estimate_run, resolve_capacity, resolve_command
from memplan.cli.render import suggestion_effects_text
from memplan.jobs.result import Verdict

HYBRID_8B = ("python3 -m openrlhf.cli.train_ppo_ray --pretrain llama-3-8b --reward_pretrain llama-3-8b "
             "--colocate_all_models --vllm_num_engines 4 --vllm_tensor_parallel_size 2 "
             "--vllm_gpu_memory_utilization 0.9 --micro_train_batch_size 8 --micro_rollout_batch_size 16")


def _apply_by_hand(command: str, texts: list[str]) -> str:
    """``command`` with each change text applied as a user would: ``--flag value`` sets (or adds) the flag,
    ``--flag`` adds a switch, ``drop --flag (...)`` removes it."""
    words = command.split()
    for text in texts:
        parts = text.split()
        if parts[0] == "drop":
            words.remove(parts[1])
        elif parts[0].startswith("--") and parts[0] in words and len(parts) == 2:
            words[words.index(parts[0]) + 1] = parts[1]
        elif parts[0].startswith("--") and len(parts) <= 2:
            words += parts
        else:
            raise AssertionError(f"no by-hand rule for the change {text!r}")
    return " ".join(words)


def _base(command: str, gpu: str = "a100-80g"):  # type: ignore[no-untyped-def]
    run = resolve_command(command)
    spec, _ = resolve_capacity(gpu, None)
    return run, spec, estimate_run(run, gpu=spec, host_ram_bytes=None)


def test_rl_changes_cover_placement_vllm_and_sleep() -> None:
    run, _, base = _base(HYBRID_8B)
    texts = [c.text for c in changes(run, base)]
    assert "--deepspeed_enable_sleep" in texts and "--vllm_enable_sleep" in texts
    assert "--vllm_gpu_memory_utilization 0.8" in texts and "--vllm_gpu_memory_utilization 0.5" in texts
    assert any(t.startswith("drop --colocate_all_models (+") for t in texts)
    assert "--micro_train_batch_size 1" in texts and "--gradient_checkpointing" in texts
    assert any(t.startswith("all models and vLLM on 16 GPUs") for t in texts)  # more GPUs for the OOM role set


def test_smallest_change_set_that_fits_with_each_effect() -> None:
    run, gpu, base = _base(HYBRID_8B)
    assert base.verdict == Verdict.OOM
    assert not any(s.fits for s in suggest(run, base, gpu=gpu, host_ram_bytes=None, limit=50) if len(s.effects) == 1)
    best = suggest(run, base, gpu=gpu, host_ram_bytes=None)[0]
    assert best.fits and len(best.effects) >= 2
    assert best.change == " + ".join(text for text, _ in best.effects)
    # the set's command, written out from the change texts and estimated on its own through the public API
    changed = _apply_by_hand(HYBRID_8B, [text for text, _ in best.effects])
    independent = estimate_command(changed, gpu="a100-80g")
    assert independent.verdict in (Verdict.FITS, Verdict.TIGHT)
    if "--colocate_all_models" not in changed:
        # each role on its own GPUs: actor, critic, ref, reward 1 node × 8 each (OpenRLHF defaults,
        # train_ppo_ray.py *_num_gpus_per_node 8) + 4 engines × TP 2
        assert independent.num_gpus == 8 + 8 + 8 + 8 + 4 * 2
    assert independent.num_gpus == base.num_gpus + best.added_gpus
    assert sorted(d.reserved_bytes for d in best.estimate.devices) == \
        sorted(d.reserved_bytes for d in independent.devices)
    assert "GiB)" in suggestion_effects_text(best)


def test_single_model_suggestions_unchanged_in_shape() -> None:
    run, gpu, base = _base("deepspeed --num_gpus 1 --module openrlhf.cli.train_sft --pretrain llama-3-8b")
    found = suggest(run, base, gpu=gpu, host_ram_bytes=None)
    assert found and found[0].fits and "--adam_offload" in found[0].change
    assert all(isinstance(text, str) and r.values for text, r in candidates(run))


def test_fitting_run_gets_savings_only() -> None:
    run, gpu, base = _base("deepspeed --num_gpus 8 --module openrlhf.cli.train_sft --pretrain llama-3.2-1b "
                           "--micro_train_batch_size 2")
    assert base.verdict != Verdict.OOM
    assert all(s.saving_bytes > 0 for s in suggest(run, base, gpu=gpu, host_ram_bytes=None))
