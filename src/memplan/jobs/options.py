"""Option enums shared by the memory formulas, the jobs and the framework adapters.

Strings from users are converted to these at the boundary (CLI, OpenRLHF parser, web).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ZeroStage(IntEnum):
    """DeepSpeed ZeRO stage (Rajbhandari et al., arXiv:1910.02054 §5): ordered, so ``>=`` works."""

    ZERO_0 = 0
    """No partitioning (data parallel with a full replica of all model states)."""
    ZERO_1 = 1
    """Optimizer states partitioned (P_os)."""
    ZERO_2 = 2
    """Optimizer states and gradients partitioned (P_os+g)."""
    ZERO_3 = 3
    """Optimizer states, gradients and parameters partitioned (P_os+g+p)."""


class AttnImpl(StrEnum):
    """Attention implementation of the Hugging Face model (``attn_implementation``)."""

    FLASH_ATTENTION_2 = "flash_attention_2"
    """flash-attn varlen kernels: saves output + logsumexp, no T×T matrix."""
    SDPA = "sdpa"
    """torch scaled_dot_product_attention (flash / memory-efficient backends on GPU)."""
    EAGER = "eager"
    """Explicit matmul + softmax: materialises B×H×T×T scores and probabilities."""


class Method(StrEnum):
    """A training method (an OpenRLHF entry point)."""

    SFT = "sft"
    """Supervised fine-tuning (``train_sft``)."""
    RM = "rm"
    """Reward model (``train_rm``): chosen and rejected in one forward, value head."""
    DPO = "dpo"
    """Direct preference optimisation (``train_dpo``): policy + frozen reference."""
    KTO = "kto"
    """KTO (``train_kto``, OpenRLHF ≤ 0.9): policy + frozen reference."""
    PRM = "prm"
    """Process reward model (``train_prm``, OpenRLHF ≤ 0.9)."""
    KD = "kd"
    """Knowledge distillation (``train_kd``, OpenRLHF ≤ 0.9): student + frozen teacher."""
    PPO = "ppo"
    """PPO with GAE (``train_ppo_ray``): actor, critic, reference, reward, vLLM."""
    GRPO = "grpo"
    """GRPO (``train_ppo_ray --advantage_estimator group_norm``): no critic."""
    REINFORCE = "reinforce"
    """REINFORCE++ (``--advantage_estimator reinforce``): no critic."""
    RLOO = "rloo"
    """RLOO (``--advantage_estimator rloo``): no critic."""
