"""Option enums of a job shared by the jobs and the framework adapters.

Strings from users are converted to these at the boundary (CLI, OpenRLHF parser, web).
"""

from __future__ import annotations

from enum import StrEnum


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
    """GRPO (group-normalised advantages): no critic."""
    REINFORCE = "reinforce"
    """REINFORCE++: no critic."""
    RLOO = "rloo"
    """RLOO (leave-one-out baseline): no critic."""
