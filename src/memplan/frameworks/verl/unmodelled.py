"""verl keys that change memory but are not modelled (a note each), and memory-looking keys that change none.

``MEMORY_KEY`` says which of verl's keys are memory keys: names about sizes, lengths, batches, offload,
parallelism, precision, engines, checkpoints (the families of verl.md §2). Every memory key of every table
is either read by ``run.build_run`` or matched by a pattern below; ``tests/frameworks/test_verl_run.py``
fails otherwise, so a new release's new key is looked at before it is silently ignored.

Patterns are ``fnmatch`` globs over full dotted keys (``*`` crosses dots).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fnmatch import fnmatchcase
from memplan.frameworks.verl.hydra import HydraConfig

#: Over-estimates: memplan counts more than verl holds.
OVER = "memplan over-estimates"
#: Under-estimates: memplan counts less than verl holds.
UNDER = "memplan under-estimates"
#: The error may go either way.
EITHER = "the error may go either way"

MEMORY_KEY = re.compile(
    r"offload|micro_batch|mini_batch|batch_size|max_token_len|_length\b|max_model_len|gpu_memory|parallel_size"
    r"|max_num_|eager|free_cache|bucket|dtype|remove_padding|checkpointing|fused|liger|tiled|lora|entropy|ulysses"
    r"|fsdp_size|reshard|prefetch|no_sync|strategy|n_gpus|nnodes|save_contents|\.n$|dynamic_bsz|chunk|cudagraph"
    r"|kv_cache|shm|rollout_n|use_v1|hybrid_engine|torch_compile|adv_estimator|use_kl|save_freq|warmup|\.name$"
    r"|load_format|summon|calculate_|enable$|qat|quantiz|mtp|pad_to|async_save|num_workers|gen_batch|optim\.optimizer")
"""A key whose value can change GPU memory or host RAM."""

_NOT_MEMORY = re.compile(r"profiler|\.optim\.(?!optimizer)|\._target_$|val_kwargs|logger|\.seed$|temperature|top_[pk]|multi_turn|interaction"
                         r"|custom_reward|reward_kwargs|reward_manager|sandbox|tokenizer|trace\.|prometheus|agent\.")
"""Sections the memory pattern would catch by name but that hold no memory setting (profilers, sampling,
multi-turn tools, reward functions run on CPU workers, tracing)."""

UNMODELLED: Mapping[str, str] = {
    "*.qat.*": "quantisation-aware training (fake-quantised weights and observers) is not modelled; " + EITHER,
    "*.fsdp_config.qat": "quantisation-aware training is not modelled; " + EITHER,
    "*.turbo_config.*": "the fsdp_turbo strategy's own sharding plan is not modelled (memplan refuses fsdp_turbo)",
    "*.mtp.*": "multi-token-prediction heads and speculative decoding are not modelled, so " + UNDER,
    "actor_rollout_ref.rollout.mtp": "multi-token prediction in the rollout is not modelled, so " + UNDER,
    "distillation.*": "on-policy distillation's teacher model servers are not modelled, so " + UNDER,
    "actor_rollout_ref.rollout.quantization*": ("a quantised rollout (fp8) holds smaller weights than memplan's bf16, "
                                                "so " + OVER),
    "reward.reward_model.rollout.quantization*": "a quantised reward model is not modelled, so " + OVER,
    "*.disaggregation.*": "prefill/decode disaggregation splits the rollout engines; " + EITHER,
    "transfer_queue.*": "TransferQueue's host-side batch storage is not modelled, so " + UNDER + " host RAM",
    "trainer.v1.trainer_mode": "the async V1 trainer modes keep rollout and training apart; " + EITHER,
    "trainer.v1.*async.*": "the async V1 trainer modes keep rollout and training apart; " + EITHER,
    "algorithm.filter_groups.*": ("filtered group sampling (DAPO) generates several batches per step and keeps them "
                                  "in host RAM; " + UNDER + " host RAM"),
    "data.gen_batch_size": "a generation batch larger than the train batch (DAPO) is not modelled, so " + UNDER,
    "*.pad_to_length*": "padding packed micro-batches to a static length is not modelled, so " + UNDER,
    "*.wrap_policy.*": "memplan wraps FSDP units per decoder layer (verl's default); " + EITHER,
    "actor_rollout_ref.model.exclude_modules": ("LoRA exclusions are not applied: every target_modules match is "
                                                "counted with an adapter, so " + OVER),
    "actor_rollout_ref.model.target_parameters": ("LoRA on nn.Parameter targets (MoE experts) is not counted, so "
                                                  + UNDER),
    "actor_rollout_ref.model.lora_adapter_path": ("a loaded adapter's own rank and targets are not read (memplan sizes "
                                                  "it from lora_rank and target_modules); " + EITHER),
    "actor_rollout_ref.rollout.cudagraph_capture_sizes": ("memplan sizes vLLM's CUDA-graph pool for its default "
                                                          "capture sizes; " + EITHER),
    "reward.reward_model.rollout.cudagraph_capture_sizes": "the reward model's CUDA-graph sizes are not modelled; "
                                                           + EITHER,
    "*.engine_kwargs*": "extra engine arguments are passed as typed; only kv_cache_memory_bytes is read; " + EITHER,
    "actor_rollout_ref.rollout.dtype": "memplan holds rollout weights in bf16; " + EITHER,
    "reward.reward_model.rollout.dtype": "memplan holds reward-model weights in bf16; " + EITHER,
    "reward.reward_model.rollout.*_parallel_size": "the reward model's DP/EP/PP are not modelled; " + EITHER,
    "reward.reward_model.rollout.enable_*": "reward-model engine options are not modelled; " + EITHER,
    "reward.reward_model.rollout.load_format": "reward-model load format is not modelled; " + EITHER,
    "reward.reward_model.rollout.layered_summon": "reward-model layered summon is not modelled; " + EITHER,
    "reward.reward_model.rollout.n": "the reward model scores each sample once; " + EITHER,
    "reward.reward_model.rollout.*_length": "memplan sizes the reward model's requests by the policy's lengths; "
                                            + EITHER,
    "actor_rollout_ref.rollout.enable_rollout_routing_replay": "MoE routing replay buffers are not modelled, so "
                                                               + UNDER,
    "actor_rollout_ref.actor.router_replay.*": "MoE routing replay buffers are not modelled, so " + UNDER,
    "actor_rollout_ref.actor.checkpoint.async_save": "an async checkpoint copies states to host while training "
                                                     "continues; " + UNDER + " host RAM",
    "critic.checkpoint.async_save": "an async critic checkpoint is not modelled, so " + UNDER + " host RAM",
    "data.use_shm": "the dataset copy in /dev/shm is not counted, so " + UNDER + " host RAM",
    "data.dataloader_num_workers": "dataloader worker processes' host RAM is not counted, so " + UNDER,
    "reward.num_workers": "reward-function CPU workers' host RAM is not counted, so " + UNDER,
    "data.custom_cls.*": "a custom dataset class may hold more data in host RAM; " + UNDER,
    "actor_rollout_ref.actor.calculate_sum_pi_squared": "the extra sum of squared probabilities over the vocabulary "
                                                        "is not counted, so " + UNDER,
    "actor_rollout_ref.rollout.qat": "quantisation-aware rollout weights are not modelled; " + EITHER,
    "actor_rollout_ref.rollout.skip.*": "verl's debug skip (cached rollouts) is not modelled; " + EITHER,
    "*.optim.override_optimizer_config.*": "optimizer overrides (Megatron's CPU optimizer, precision-aware "
                                           "optimizer) are not modelled; " + EITHER,
    "skip.*": "verl's debug skips (cached rollouts) are not modelled; " + EITHER,
}
"""Glob -> what memplan leaves out and in which direction it errs."""

NO_MEMORY_EFFECT: Mapping[str, str] = {
    "*.rollout_n": "a copy of actor_rollout_ref.rollout.n by interpolation, which memplan reads",
    "*.ppo_micro_batch_size": "deprecated global micro batch: the engines read the _per_gpu keys "
                              "(w:verl/workers/engine_workers.py:627-628)",
    "*.log_prob_micro_batch_size": "deprecated global micro batch: the engines read the _per_gpu keys",
    "critic.forward_micro_batch_size": "deprecated; the critic engine reads the _per_gpu key",
    "critic.forward_max_token_len_per_gpu": ("deprecated (w:verl/workers/config/critic.py:86); the critic forward "
                                             "uses ppo_infer_max_token_len_per_gpu (trainer_base.py:266-268)"),
    "critic.ulysses_sequence_parallel_size": ("deprecated: the critic engine reads critic.fsdp."
                                              "ulysses_sequence_parallel_size (w:verl/workers/config/critic.py:212-219)"),
    "actor_rollout_ref.actor.use_remove_padding": ("a copy of actor_rollout_ref.model.use_remove_padding, which the "
                                                   "engine reads (w:verl/workers/engine_workers.py:630)"),
    "actor_rollout_ref.actor.use_fused_kernels": "a copy of actor_rollout_ref.model.use_fused_kernels",
    "actor_rollout_ref.*.entropy_*": ("the engine reads fsdp_config.entropy_* (in 0.9 these default to the role's "
                                      "keys by interpolation; in 0.8 the role's keys do not reach the engine)"),
    "actor_rollout_ref.ref.use_torch_compile": "a copy of the actor's; the engine reads fsdp_config.use_torch_compile",
    "actor_rollout_ref.actor.use_torch_compile": "the engine reads fsdp_config.use_torch_compile",
    "*.fsdp_config.strategy": "overwritten by the role's strategy (w:verl/workers/config/actor.py:321-326)",
    "critic.fsdp.strategy": "overwritten by critic.strategy (w:verl/workers/config/critic.py:216-219)",
    "*.fsdp_config.dtype": "the engine's autocast dtype label; compute precision follows mixed_precision",
    "critic.fsdp.dtype": "the engine's autocast dtype label; compute precision follows mixed_precision",
    "critic.fsdp.entropy_*": "the critic computes no entropy",
    "actor_rollout_ref.rollout.prompt_length": "a copy of data.max_prompt_length by interpolation",
    "actor_rollout_ref.rollout.response_length": "a copy of data.max_response_length by interpolation",
    "actor_rollout_ref.rollout.n_gpus_per_node": "a copy of trainer.n_gpus_per_node (standalone rollout pools only)",
    "actor_rollout_ref.rollout.mode": "0.7+ has only async (server) rollout",
    "actor_rollout_ref.rollout.logprobs_mode": "which log-probs vLLM returns, not how many",
    "actor_rollout_ref.rollout.router_config_path": "request routing between replicas",
    "actor_rollout_ref.rollout.engine_kwargs.*": "read for the chosen engine",
    "*.lora.*": ("Megatron LoRA options (type, alpha, targets, init); the FSDP path reads lora.rank, lora.merge and "
                 "lora_rank/target_modules"),
    "*.model.hf_config_path": "where the config is read from",
    "critic.model.lora_adapter_path": "where a critic adapter is loaded from (the critic's LoRA rank is read)",
    "data.continuous_token.*": "0.9.0: keeps multi-turn token streams instead of re-tokenising; same lengths",
    "data.train_max_samples": "dataset size, not batch size",
    "data.val_max_samples": "dataset size, not batch size",
    "data.val_batch_size": "deprecated: validation goes to the rollout engine as one batch (w:verl/utils/config.py)",
    "data.function_tool_path": "tool definitions for multi-turn rollouts",
    "trainer.total_epochs": "how long, not how much memory",
    "trainer.resume_*": "where to resume from",
    "trainer.v1.colocate_async.*": "warm-up batches of an async mode",
    "trainer.v1.sampler.*": "off-policy sampling policy",
    "reward_model.*": "legacy reward_model section (0.9 reads reward.reward_model.*)",
    "reward.reward_model.rollout.mtp": "multi-token prediction in the reward model",
    "actor_rollout_ref.actor.policy_loss.*": "loss variant; same tensors",
    "*.loss_agg_mode": "loss reduction; same tensors",
    "algorithm.rollout_correction.*": "importance-sampling correction on log-probs already held",
    "actor_rollout_ref.actor.qat.*": "mirror of fsdp_config.qat",
    "transfer_queue.backend.*": "TransferQueue backend addresses",
    "transfer_queue.metrics.*": "metrics switch",
}
"""Glob -> why a memory-looking key changes no memory memplan models (copies, deprecated keys, labels)."""


def is_memory_key(key: str) -> bool:
    """Whether ``key`` names a memory setting (``MEMORY_KEY``, less the non-memory sections)."""
    return bool(MEMORY_KEY.search(key)) and not _NOT_MEMORY.search(key)


def reason_unmodelled(key: str) -> str | None:
    """Why ``key`` is not modelled, if a pattern of UNMODELLED matches it."""
    for pattern, why in UNMODELLED.items():
        if fnmatchcase(key, pattern):
            return why
    return None


def without_memory_effect(key: str) -> bool:
    """Whether a pattern of NO_MEMORY_EFFECT matches ``key``."""
    return any(fnmatchcase(key, pattern) for pattern in NO_MEMORY_EFFECT)


def unmodelled_notes(config: HydraConfig) -> list[str]:
    """One note per key the command set to other than verl's default that memplan does not model, naming it as
    the user typed it."""
    notes = []
    for key, typed in config.typed.items():
        why = reason_unmodelled(key)
        if why is None or without_memory_effect(key) or key not in config.values:
            continue
        default = config.table.keys.get(key)
        if default is not None and default.value == config.raw(key):
            continue
        notes.append(f"{typed} is not modelled: {why}")
    return notes
