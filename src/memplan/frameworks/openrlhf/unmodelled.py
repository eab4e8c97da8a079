"""Memory flags memplan reads but does not model: each gets a note, never silence.

Every key of ``flags.MEMORY_KEYS`` changes GPU or host memory in OpenRLHF. Most are read by the job
builders (``job.py``, ``rl_job.py``) and change the estimate; the keys below are not, so a command that
gives one of them a value other than OpenRLHF's default gets a note saying so and in which direction
memplan errs. ``tests/frameworks/test_unmodelled.py`` checks that every memory key is either read by the
code or listed here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from memplan.frameworks.openrlhf.flags import load_table

#: Over-estimates: memplan counts more than OpenRLHF holds.
OVER = "memplan over-estimates"
#: Under-estimates: memplan counts less than OpenRLHF holds.
UNDER = "memplan under-estimates"
#: The error may go either way.
EITHER = "the error may go either way"

UNMODELLED: Mapping[str, str] = {
    "use_liger_kernel": ("Liger's fused RMSNorm, SwiGLU, RoPE and fused linear cross-entropy kernels keep fewer "
                         "activations and no full logits; the Hugging Face kernels are modelled instead, so " + OVER),
    "enable_ema": "the actor's EMA copy (a second set of weights) is not counted, so " + UNDER,
    "ptx_coef": "the pretraining (ptx) loss's extra forward and backward over pretraining data is not counted, so "
                + UNDER,
    "actor_init_on_gpu": ("weights are built on the GPU instead of in host RAM at load; memplan's load phase "
                          "assumes host RAM, so it over-estimates load-time host RAM and under-estimates load-time "
                          "GPU memory"),
    "async_queue_size": "async training queues several rollout batches in host RAM; memplan counts one, so " + UNDER,
    "partial_rollout": "partially generated samples kept across steps are not counted, so " + UNDER,
    "optim": ("memplan counts AdamW's state (fp32 master weights and two fp32 moments); Muon keeps one momentum "
              "for matrix parameters, so " + OVER),
    "critic_optim": ("memplan counts AdamW's state for the critic; Muon keeps one momentum for matrix "
                     "parameters, so " + OVER),
    "deepcompile": "DeepSpeed's compiled ZeRO-3 schedule changes its gather and prefetch buffers; " + EITHER,
    "experts_implementation": "the MoE expert kernels change activation temporaries; " + EITHER,
    "freeze_visual_encoder": "vision encoders are not modelled (memplan sizes the language model only), so " + UNDER,
    "max_images_per_prompt": "image inputs are not modelled (memplan sizes text tokens only), so " + UNDER,
    "gradient_checkpointing_use_reentrant": ("memplan models non-reentrant checkpointing; reentrant "
                                             "checkpointing saves slightly different tensors; " + EITHER),
    "ring_head_stride": "the head split within the ring-attention group is not modelled; " + EITHER,
    "vllm_sync_backend": ("memplan models the weight sync over NCCL; another backend stages the weights "
                          "through host RAM, so " + UNDER + " host RAM"),
    "train_max_tokens_per_gpu": ("dynamic batches are packed up to this many tokens per GPU; memplan sizes "
                                 "activations by micro batch × max_len; " + EITHER),
    "rollout_max_tokens_per_gpu": ("dynamic batches are packed up to this many tokens per GPU in make-experience; "
                                   "memplan sizes them by micro rollout batch × sequence length; " + EITHER),
}
"""Canonical key -> what memplan leaves out and in which direction it errs."""

NO_MEMORY_EFFECT: Mapping[str, str] = {
    "vllm_generate_batch_size": ("prompts per vLLM generate call: the engine's KV pool is preallocated, so "
                                 "GPU memory does not change (memory/vllm_budget.py rollout_demand)"),
}
"""Memory keys read only to resolve defaults, whose value changes no modelled memory by design."""


def unmodelled_notes(script: str, given: Mapping[str, Any], version: str,
                     typed: Mapping[str, str] | None = None) -> list[str]:
    """One note per flag of ``given`` (canonical key -> value, as typed) that memplan does not model and that
    differs from OpenRLHF's default for ``script`` in ``version``, naming the flag as the user typed it
    (``typed``: canonical key -> option), else as that version spells it."""
    table = load_table(script, version)
    notes = []
    for key, why in UNMODELLED.items():
        if key not in given or key not in table.by_key or given[key] == table.default(key):
            continue
        option = (typed or {}).get(key) or table.by_key[key][0].option
        notes.append(f"{option} is not modelled: {why}")
    return notes
