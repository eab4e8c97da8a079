"""verl runs estimated end to end (issue 14, item 3): the hybrid engine's phases, FSDP states by hand, the
engine's sleep, offload moving bytes to the host, the CLI.

P is the parameter count transformers reports (``sum(p.numel() for p in model.parameters())``, tied weights
once): Qwen2.5-7B 7,615,616,512 and Qwen2.5-0.5B 494,032,768 (the model cards' 7.61B / 0.49B), which
memplan's presets reproduce (asserted below, so a preset change shows here first).
"""

from __future__ import annotations

import json

import pytest

from memplan import frameworks
from memplan.cli.main import main
from memplan.errors import ConfigError
from memplan.hardware import resolve_gpu
from memplan.model import load_model_spec
from memplan.model.params import param_tree

P_7B = 7_615_616_512
P_05B = 494_032_768
GIB = 1 << 30
H100 = resolve_gpu("h100-80g")
VERL = frameworks.get("verl")
#: A GRPO run on one node of 8 H100s, verl's defaults otherwise (FSDP1, fp32 stored params, vLLM, level-2 sleep).
GRPO_7B = ["trainer.n_gpus_per_node=8", "actor_rollout_ref.actor.use_kl_loss=true",
           "actor_rollout_ref.rollout.gpu_memory_utilization=0.6", "data.max_prompt_length=1024",
           "data.max_response_length=2048", "data.train_batch_size=256", "actor_rollout_ref.actor.ppo_mini_batch_size=64"]


def _estimate(model: str, method: str, options: list[str]):  # type: ignore[no-untyped-def]
    run = VERL.resolve_command(VERL.command_for(model, method, options))
    return run, VERL.estimate_run(run, gpu=H100, host_ram_bytes=None)


def _phase(est, name: str):  # type: ignore[no-untyped-def]
    return next(u for u in est.devices[0].phases if u.phase.value == name)


def _bytes(usage, prefix: str) -> int:  # type: ignore[no-untyped-def]
    return sum(t.bytes for t in usage.terms if t.path.startswith(prefix))


def test_presets_count_what_transformers_counts() -> None:
    assert param_tree(load_model_spec("qwen2.5-7b")).num_params == P_7B
    assert param_tree(load_model_spec("qwen2.5-0.5b")).num_params == P_05B


def test_qwen25_7b_grpo_states_by_hand() -> None:
    """No offload, 8 ranks: fp32 params 4P/8 and AdamW m+v 8P/8 resident on every GPU; gradients 4P/8 only in
    the actor update. FSDP1 pads each of the 29 units (28 layers + root) to a multiple of 8 elements, so a
    shard exceeds P/8 by under 8 elements per unit."""
    _, est = _estimate("Qwen/Qwen2.5-7B-Instruct", "grpo", GRPO_7B)
    pad = 8 * 29 * 4  # bytes: < 8 fp32 elements per unit
    generate = _phase(est, "rollout")
    assert 4 * P_7B // 8 <= _bytes(generate, "actor.params") <= 4 * P_7B // 8 + pad  # 3.81 GB
    assert 8 * P_7B // 8 <= _bytes(generate, "actor.optimizer.exp_") <= 8 * P_7B // 8 + 2 * pad  # 7.62 GB
    assert _bytes(generate, "actor.grads") == 0
    update = _phase(est, "update_actor")
    assert 4 * P_7B // 8 <= _bytes(update, "actor.grads") <= 4 * P_7B // 8 + pad
    # the reference's fp32 shards live on the host (FSDP CPU offload, always): none on the GPU
    assert _bytes(generate, "ref.params") == 0
    assert [u.phase.value for u in est.devices[0].phases] == [
        "rollout", "old_log_prob", "ref_log_prob", "update_actor", "weight_sync"]


def test_engine_sleeps_at_level_2_outside_generation() -> None:
    """verl 0.9.1 sleeps vLLM at level 2 (weights and KV discarded) after generating and wakes the weights alone
    for the sync (verl.md §3, §5); with free_cache_engine=false it never sleeps."""
    _, est = _estimate("Qwen/Qwen2.5-7B-Instruct", "grpo", GRPO_7B)
    generate, old, sync = _phase(est, "rollout"), _phase(est, "old_log_prob"), _phase(est, "weight_sync")
    kv = _bytes(generate, "rollout.kv_cache")
    assert kv > 20 * GIB  # 0.6 × 79.2 GiB minus weights (7.1 GiB at TP 2) and the profile peak
    assert _bytes(old, "rollout.kv_cache") == _bytes(old, "rollout.weights") == 0
    assert _bytes(sync, "rollout.kv_cache") == 0
    # weights-only awake in the sync: bf16 2P/TP (TP 2, verl's default), within the vocab-padding of the shards
    assert abs(_bytes(sync, "rollout.weights") - 2 * P_7B // 2) < 0.02 * P_7B
    # update_weights_bucket_megabytes: 2048 (verl 0.9.1 trainer/config/rollout/rollout.yaml:296)
    assert _bytes(sync, "actor.weight_sync.bucket") == 2048 << 20
    _, awake = _estimate("Qwen/Qwen2.5-7B-Instruct", "grpo", GRPO_7B + ["actor_rollout_ref.rollout.free_cache_engine=false"])
    assert _bytes(_phase(awake, "old_log_prob"), "rollout.kv_cache") == _bytes(_phase(awake, "rollout"), "rollout.kv_cache")


def test_offload_moves_actor_states_to_the_host() -> None:
    """param_offload + optimizer_offload: between phases 12P/8 per GPU leave the GPU (4P/8 params, 8P/8 Adam)
    and 8 ranks × 12P/8 = 12P arrive in the node's host RAM, pinned (fsdp_utils.py :195-262): torch's caching
    host allocator rounds each tensor to a power of two, so the node pins between 12P and 24P."""
    _, base = _estimate("Qwen/Qwen2.5-7B-Instruct", "grpo", GRPO_7B)
    _, off = _estimate("Qwen/Qwen2.5-7B-Instruct", "grpo", GRPO_7B + [
        "actor_rollout_ref.actor.fsdp_config.param_offload=true",
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload=true"])
    moved = _phase(base, "rollout").bytes - _phase(off, "rollout").bytes
    assert moved == pytest.approx(12 * P_7B / 8, rel=1e-4)
    host = next(u for u in off.hosts[0].phases if u.phase.value == "rollout").bytes \
        - next(u for u in base.hosts[0].phases if u.phase.value == "rollout").bytes
    rounding = sum(t.bytes for t in next(u for u in off.hosts[0].phases if u.phase.value == "rollout").terms
                   if "pinned_rounding" in t.path and t.path.startswith("actor."))
    assert host - rounding == pytest.approx(12 * P_7B, rel=1e-4)
    assert 0 < rounding < 12 * P_7B
    # the update loads both back for itself: its GPU use does not drop by the states
    assert _phase(off, "update_actor").bytes == pytest.approx(_phase(base, "update_actor").bytes, rel=1e-6)


def test_ref_shards_on_the_host_and_tied_model_loads_on_every_rank() -> None:
    """Qwen2.5-0.5B (tied embeddings) PPO on 2 GPUs: the ref's fp32 shards 4P/2 per rank on the host (2 ranks:
    4P per node); at load every rank holds the full fp32 model (no meta init with tied embeddings): 2 × 4P for
    the actor, the critic's a value head (hidden 896 → 1) more; the models load one after another."""
    options = ["trainer.n_gpus_per_node=2", "actor_rollout_ref.actor.use_kl_loss=true",
               "data.train_batch_size=64", "actor_rollout_ref.actor.ppo_mini_batch_size=16"]
    _, est = _estimate("Qwen/Qwen2.5-0.5B-Instruct", "ppo", options)
    host = next(u for u in est.hosts[0].phases if u.phase.value == "rollout")
    shards = sum(t.bytes for t in host.terms if t.path.startswith("ref.params") and "rounding" not in t.path)
    assert 4 * P_05B <= shards <= 4 * P_05B + 4 * 2 * 25 * 2  # FSDP1 pads each of 25 units to 2 elements
    load = next(u for u in est.hosts[0].phases if u.phase.value == "load")
    assert sum(t.bytes for t in load.terms if "model_loading" in t.path) == 2 * 4 * (P_05B + 896)
    assert set(est.devices[0].roles) == {"actor", "ref", "critic", "rollout"}


def test_worst_case_note_names_the_token_budget() -> None:
    _, packed = _estimate("Qwen/Qwen2.5-7B-Instruct", "grpo", GRPO_7B + ["actor_rollout_ref.model.use_remove_padding=true"])
    note = next(n for n in packed.notes if "worst case" in n)
    assert "actor_rollout_ref.actor.use_dynamic_bsz=true" in note and "ppo_max_token_len_per_gpu" in note
    _, budget = _estimate("Qwen/Qwen2.5-7B-Instruct", "grpo", GRPO_7B + [
        "actor_rollout_ref.actor.use_dynamic_bsz=true", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=16384"])
    assert not any("worst case" in n for n in budget.notes)
    assert any("optimizer state resident" in n for n in packed.notes)


def test_token_budget_bounds_the_update() -> None:
    """A smaller token budget shrinks the actor update's activations (one packed row of the budget's tokens)."""
    big = GRPO_7B + ["actor_rollout_ref.actor.use_dynamic_bsz=true", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=32768"]
    small = GRPO_7B + ["actor_rollout_ref.actor.use_dynamic_bsz=true", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096"]
    assert _phase(_estimate("qwen2.5-7b", "grpo", small)[1], "update_actor").bytes < \
        _phase(_estimate("qwen2.5-7b", "grpo", big)[1], "update_actor").bytes


def test_emit_reads_back_to_the_same_run_and_estimate() -> None:
    run, est = _estimate("Qwen/Qwen2.5-7B-Instruct", "grpo", GRPO_7B + ["trainer.project_name='my run'"])
    again = VERL.resolve_command(VERL.emit(run))
    assert again.values == run.values
    assert VERL.estimate_run(again, gpu=H100, host_ram_bytes=None).devices[0].peak_bytes == est.devices[0].peak_bytes


def test_changes_are_runs_verl_accepts() -> None:
    run, est = _estimate("Qwen/Qwen2.5-7B-Instruct", "grpo", GRPO_7B)
    changes = VERL.changes(run, est)
    texts = [c.text for c in changes]
    assert "actor_rollout_ref.actor.fsdp_config.param_offload=true" in texts
    for change in changes:
        VERL.estimate_run(VERL.with_values(run, dict(change.updates)), gpu=H100, host_ram_bytes=None)


def test_bad_value_names_the_key_as_typed(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["check", "--gpu", "h100-80g", "--", "python3", "-m", "verl.trainer.main_ppo",
               "actor_rollout_ref.model.path=Qwen/Qwen2.5-0.5B-Instruct", "algorithm.adv_estimator=grpo",
               "actor_rollout_ref.rollout.name=vllm", "+actor_rollout_ref.rollout.gpu_memory_utilization=1.5"])
    err = capsys.readouterr().err
    assert rc == 2 and "gpu_memory_utilization" in err and "Traceback" not in err


def test_cli_check_detects_verl_in_a_script(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "run_grpo.sh"
    script.write_text("set -x\nexport MODEL=Qwen/Qwen2.5-0.5B-Instruct\n"
                      "python3 -m verl.trainer.main_ppo algorithm.adv_estimator=grpo \\\n"
                      "    actor_rollout_ref.model.path=$MODEL actor_rollout_ref.rollout.name=vllm \\\n"
                      "    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4 \\\n"
                      "    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8 \\\n"
                      "    data.train_batch_size=64 actor_rollout_ref.actor.ppo_mini_batch_size=16 \\\n"
                      "    trainer.n_gpus_per_node=1 actor_rollout_ref.rollout.tensor_model_parallel_size=1 $@\n")
    assert main(["check", "--gpu", "h100-80g", "--json", "--", str(script)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["devices"][0]["roles"] == ["actor", "rollout"]
    assert data["command"].startswith("python3 -m verl.trainer.main_ppo")


def test_cli_estimate_framework_verl(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "qwen2.5-0.5b", "--framework", "verl", "--method", "ppo", "--gpu", "h100-80g",
                 "trainer.n_gpus_per_node=1", "data.train_batch_size=64", "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
                 "actor_rollout_ref.actor.ppo_mini_batch_size=16"]) == 0
    out = capsys.readouterr().out
    assert "GPU {actor, critic, rollout}" in out


def test_openrlhf_version_refused_for_verl() -> None:
    with pytest.raises(ConfigError):
        from argparse import Namespace

        from memplan.cli.estimate import framework_version

        framework_version(Namespace(framework_version=None, openrlhf_version="0.9"), "verl")


def test_verl_keys_are_in_the_no_flag_names_scan() -> None:
    """tests/seam/test_no_flag_names.py scans for every registered framework's keys: verl's are among them."""
    options, keys = VERL.flag_names()
    assert "actor_rollout_ref.actor.fsdp_config.param_offload" in keys
    assert "verl" in frameworks.names()


def test_old_log_prob_head_holds_the_entropys_softmax_and_one_temporary() -> None:
    """verl's ``entropy_from_logits`` on the bf16 logits: ``softmax`` (2 B per logit) beside either
    ``logsumexp``'s internal ``self - maxes`` (2 B; its exp is in place: torch.profiler shows ``aten::sub``
    allocating N·V·2 inside ``aten::logsumexp``) or the product ``pd * logits`` (2 B). Old log-prob with
    use_remove_padding (verl's default), 8 sequences of 1024 + 2048 tokens packed: 24,576 tokens × 152,064
    (Qwen2.5's vocabulary) × 4 B = 14.95 GB of entropy temporaries, next to the bf16 logits × 2 B = 7.47 GB
    (verl's perf guide, docs/perf/perf_tuning.rst L237-249, writes 4 + 2 + 1 B: a rule for fp32 logits).
    Chunking bounds the entropy to 2,048 rows × V × 12 B (fp32 copy, softmax, product); fused kernels never
    hold the [tokens, V] logits."""
    tokens, vocab = 8 * (1024 + 2048), 152_064
    _, est = _estimate("qwen2.5-7b", "grpo", GRPO_7B)
    old = _phase(est, "old_log_prob")
    assert _bytes(old, "actor.logits.entropy") == tokens * vocab * 4 == 14_948_499_456
    assert _bytes(old, "actor.logits.bf16") == tokens * vocab * 2
    _, chunked = _estimate("qwen2.5-7b", "grpo", GRPO_7B + [
        "actor_rollout_ref.actor.fsdp_config.entropy_from_logits_with_chunking=true"])
    assert _bytes(_phase(chunked, "old_log_prob"), "actor.logits.entropy") == 2048 * vocab * 12
    _, fused = _estimate("qwen2.5-7b", "grpo", GRPO_7B + ["actor_rollout_ref.model.use_fused_kernels=true"])
    assert _bytes(_phase(fused, "old_log_prob"), "actor.logits.bf16") == 0
    assert _phase(fused, "old_log_prob").bytes < old.bytes


def test_start_up_passes_but_the_step_2_wake_up_does_not() -> None:
    """verl.md §3: vLLM starts before any optimizer state exists, so its start-up check (free memory ≥ total ×
    gpu_memory_utilization) passes where the step-2 wake-up, with AdamW's 8P/8 = 7.1 GiB resident, cannot hold
    the same KV pool. Qwen2.5-7B, 8 × H100 (79.2 GiB): at 0.85 the engine requests 67.3 GiB of the ~72 GiB free
    next to the trainer at start-up; generating next to params + Adam (10.6 GiB) + contexts does not fit. At 0.95
    (75.2 GiB) it cannot even start: vLLM's own error."""
    from memplan.jobs.result import Verdict

    _, wake = _estimate("qwen2.5-7b", "grpo", GRPO_7B[:1] + ["actor_rollout_ref.rollout.gpu_memory_utilization=0.85"])
    device = wake.devices[0]
    assert device.startup_error is None and device.verdict == Verdict.OOM and device.peak.phase.value == "rollout"
    assert any("from step 2 it wakes with 7.1 GiB of optimizer state" in n for n in wake.notes)
    _, start = _estimate("qwen2.5-7b", "grpo", GRPO_7B[:1] + ["actor_rollout_ref.rollout.gpu_memory_utilization=0.95"])
    assert "less than desired GPU memory utilization" in (start.devices[0].startup_error or "")
    assert start.verdict == Verdict.OOM and any("cannot start" in n for n in start.notes)


def test_checkpoint_copies_every_rank_s_shards_and_rank_0_the_hf_model() -> None:
    """verl.md §6 (fsdp_checkpoint_manager.py :202-211, :311-361, :422-446): each rank copies its fp32 param
    shard (4P/8) and AdamW state (8P/8) to the host to save them: 8 ranks → 12P on the node; with ``hf_model``
    rank 0 also gathers the full fp32 state dict, 4P: 12P + 4P = 16P = 121.85 GB for Qwen2.5-7B."""
    options = GRPO_7B[:1] + ["trainer.save_freq=10",
                             "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]"]
    _, est = _estimate("qwen2.5-7b", "grpo", options)
    save = next(u for u in est.hosts[0].phases if u.phase.value == "checkpoint")
    copied = sum(t.bytes for t in save.terms if "checkpoint_copy" in t.path or "hf_model" in t.path)
    assert copied == pytest.approx(16 * P_7B, rel=1e-5)


def test_checkpoint_of_offloaded_states_is_counted_once() -> None:
    """With param and optimizer offload the save still copies 12P/8 per rank (not the host copy again)."""
    options = GRPO_7B[:1] + ["trainer.save_freq=10", "actor_rollout_ref.actor.fsdp_config.param_offload=true",
                             "actor_rollout_ref.actor.fsdp_config.optimizer_offload=true"]
    _, est = _estimate("qwen2.5-7b", "grpo", options)
    save = next(u for u in est.hosts[0].phases if u.phase.value == "checkpoint")
    assert sum(t.bytes for t in save.terms if "checkpoint_copy" in t.path) == pytest.approx(12 * P_7B, rel=1e-5)


def test_accumulation_steps_by_hand() -> None:
    """verl's GSM8K GRPO example (examples/grpo_trainer/run_qwen2-7b.sh): ppo_mini_batch_size 256 prompts x
    rollout.n 5 = 1280 samples over 8 GPUs = 160 per GPU; micro batch 40 -> 4 micro-batches per step; with a
    24,000-token budget and 1024 + 1024-token sequences, 160 x 2048 / 24000 -> 14 (rounded up)."""
    from memplan.frameworks.verl.job import accumulation_steps
    from memplan.frameworks.verl.run import Batching

    fixed = Batching(use_dynamic_bsz=False, micro_batch_size_per_gpu=40, max_token_len_per_gpu=16384)
    assert accumulation_steps(fixed, 256, 5, 8, 1, 2048) == 4
    budget = Batching(use_dynamic_bsz=True, micro_batch_size_per_gpu=None, max_token_len_per_gpu=24000)
    assert accumulation_steps(budget, 256, 5, 8, 1, 2048) == 14
    one = Batching(use_dynamic_bsz=False, micro_batch_size_per_gpu=8, max_token_len_per_gpu=16384)
    assert accumulation_steps(one, 8, 1, 8, 1, 2048) == 1
