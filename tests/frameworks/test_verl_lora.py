"""verl LoRA (``actor_rollout_ref.model.lora_rank``) estimated end to end: peft adapters on the FSDP actor.

What verl 0.9.1 does (w: the wheel): peft wraps the loaded model before FSDP (w:verl/workers/engine/fsdp/
transformer_impl.py:339-382, :597-599) with ``target_modules`` (default all-linear) and ``bias="none"``; the base
stays in ``model_dtype`` (fp32 by default, :258-262) and the adapters are cast to it (:370-380); the optimizer
gets every parameter but AdamW keeps state only for those with a gradient, the adapters; there is no reference
model (the actor with its adapters disabled serves, w:verl/trainer/ppo/v1/trainer_base.py:233-237); vLLM sleeps at
level 1 and keeps the base (w:verl/workers/rollout/vllm_rollout/vllm_async_server.py:244-247, :1289-1305).

Numbers by hand: P = 7,615,616,512 (Qwen2.5-7B, tests/frameworks/test_verl_estimate.py) and A = 80,740,352
adapter elements at rank 32 on all linear layers (counted in tests/memory/test_lora.py, and by peft itself
there). Every Qwen2.5-7B dimension divides by 8, so FSDP1 adds no padding at 8 ranks.
"""

from __future__ import annotations

import pytest

from memplan import frameworks
from memplan.cli.main import main
from memplan.errors import ConfigError
from memplan.hardware import resolve_gpu

P_7B = 7_615_616_512
A_7B_R32 = 80_740_352
H100 = resolve_gpu("h100-80g")
VERL = frameworks.get("verl")
GRPO_7B = ["trainer.n_gpus_per_node=8", "actor_rollout_ref.actor.use_kl_loss=true",
           "actor_rollout_ref.rollout.gpu_memory_utilization=0.6", "data.max_prompt_length=1024",
           "data.max_response_length=2048", "data.train_batch_size=256",
           "actor_rollout_ref.actor.ppo_mini_batch_size=64"]
LORA = ["actor_rollout_ref.model.lora_rank=32", "actor_rollout_ref.model.lora_alpha=32",
        "actor_rollout_ref.model.target_modules=all-linear"]


def _estimate(options: list[str]):  # type: ignore[no-untyped-def]
    run = VERL.resolve_command(VERL.command_for("Qwen/Qwen2.5-7B-Instruct", "grpo", options))
    return VERL.estimate_run(run, gpu=H100, host_ram_bytes=None)


def _phase(est, name: str):  # type: ignore[no-untyped-def]
    return next(u for u in est.devices[0].phases if u.phase.value == name)


def _bytes(usage, prefix: str) -> int:  # type: ignore[no-untyped-def]
    return sum(t.bytes for t in usage.terms if t.path.startswith(prefix))


def test_lora_states_by_hand() -> None:
    """8 ranks, FSDP1, no offload: the sharded fp32 parameters are base + adapters, 4(P+A)/8 = 3,848,178,432 B;
    AdamW's two fp32 moments 2·4A/8 = 80,740,352 B in all (full fine-tuning: 8P/8 = 7.6 GB); the adapter
    gradients 4A/8 = 40,370,176 B in the update only."""
    est = _estimate(GRPO_7B + LORA)
    generate, update = _phase(est, "rollout"), _phase(est, "update_actor")
    assert _bytes(generate, "actor.params") == 4 * (P_7B + A_7B_R32) // 8 == 3_848_178_432
    assert _bytes(generate, "actor.optimizer.exp_") == 8 * A_7B_R32 // 8 == 80_740_352
    assert _bytes(generate, "actor.grads") == 0
    assert _bytes(update, "actor.grads") == 4 * A_7B_R32 // 8 == 40_370_176


def test_lora_has_no_reference_model_and_the_engine_keeps_its_weights() -> None:
    """use_kl_loss with LoRA: no ref role (nor a ref phase: the actor's adapter-off forward is no larger than its
    old log-prob pass); vLLM sleeps at level 1, so its bf16 weights are backed up to host RAM between rollouts
    (on the GPU only while awake)."""
    est = _estimate(GRPO_7B + LORA)
    assert set(est.devices[0].roles) == {"actor", "rollout"}
    assert [u.phase.value for u in est.devices[0].phases] == ["rollout", "old_log_prob", "update_actor", "weight_sync"]
    old = _phase(est, "old_log_prob")
    assert _bytes(old, "rollout.weights") == 0
    host = next(u for u in est.hosts[0].phases if u.phase.value == "old_log_prob")
    backed_up = sum(t.bytes for t in host.terms if t.path.startswith("rollout.sleeping_weights "))
    assert backed_up > 8 * P_7B  # 8 GPUs x bf16 2P / TP 2, vocabulary padding on top
    full = _estimate(GRPO_7B)
    assert "ref" in full.devices[0].roles


def test_adapter_sync_sends_adapters_and_fsdp1_gathers_the_model_without_layered_summon() -> None:
    """Weight sync of unmerged adapters (w:verl/utils/fsdp_utils.py collect_lora_params :715-789): with the base
    preloaded (load_format=safetensors) the largest tensor sent is an adapter's, lora_B of gate/up 18944 x 32
    fp32 = 2,424,832 B (full fine-tuning: the fp32 embedding 152064 x 3584 = 2,179,989,504 B). Without
    layered_summon FSDP1 summons the whole model unsharded on every GPU: 4(P+A) B; with it, nothing whole."""
    base = GRPO_7B + LORA + ["actor_rollout_ref.rollout.load_format=safetensors"]
    summoned = _phase(_estimate(base), "weight_sync")
    assert _bytes(summoned, "actor.weight_sync.gathered_tensor") == 4 * 18944 * 32
    assert _bytes(summoned, "actor.weight_sync.summoned_model") == 4 * (P_7B + A_7B_R32)
    layered = _phase(_estimate(base + ["actor_rollout_ref.rollout.layered_summon=true"]), "weight_sync")
    assert _bytes(layered, "actor.weight_sync.summoned_model") == 0
    fsdp2 = _phase(_estimate(base + ["actor_rollout_ref.actor.strategy=fsdp2"]), "weight_sync")
    assert _bytes(fsdp2, "actor.weight_sync.summoned_model") == 0
    assert _bytes(_phase(_estimate(GRPO_7B), "weight_sync"), "actor.weight_sync.gathered_tensor") == 4 * 152064 * 3584


def test_layered_summon_with_a_dummy_load_is_refused() -> None:
    """verl raises: layered_summon needs the base in the engine (fsdp_utils.py:725-730); load_format's default is
    dummy."""
    with pytest.raises(ConfigError, match="layered_summon"):
        _estimate(GRPO_7B + LORA + ["actor_rollout_ref.rollout.layered_summon=true"])


def test_megatron_rank_key_alone_trains_the_full_fsdp_model() -> None:
    """``lora.rank`` drops the ref (trainer_base.py:233-237) and sleeps vLLM at level 1 (vllm_async_server.py
    :244-247), but the FSDP engine reads ``lora_rank`` only (transformer_impl.py:162): full fine-tuning, noted."""
    est = _estimate(GRPO_7B + ["actor_rollout_ref.model.lora.rank=32"])
    assert _bytes(_phase(est, "rollout"), "actor.optimizer.exp_") == 8 * P_7B // 8
    assert set(est.devices[0].roles) == {"actor", "rollout"}
    assert any("estimated as full fine-tuning" in n for n in est.notes)


def test_cli_estimate_and_check_with_lora(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "qwen2.5-7b", "--framework", "verl", "--method", "grpo",
                 "actor_rollout_ref.model.lora_rank=32"]) == 0
    out = capsys.readouterr().out
    assert "full fine-tuning" not in out and "LoRA slots" in out
    assert main(["check", "--gpu", "h100-80g", "--", "python3", "-m", "verl.trainer.main_ppo",
                 "algorithm.adv_estimator=grpo", "actor_rollout_ref.model.path=Qwen/Qwen2.5-7B-Instruct",
                 "actor_rollout_ref.model.lora_rank=32", "actor_rollout_ref.model.target_modules=all-linear",
                 "actor_rollout_ref.rollout.name=vllm", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
                 "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
                 "actor_rollout_ref.actor.use_kl_loss=True", "trainer.n_gpus_per_node=8"]) == 0
    out = capsys.readouterr().out
    assert "verdict: fits" in out and "full fine-tuning" not in out


def test_unknown_target_module_names_the_key() -> None:
    with pytest.raises(ConfigError, match="target_modules"):
        _estimate(GRPO_7B + ["actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.target_modules=[c_attn]"])
