"""When an OpenRLHF run saves, and which of its models: the HF model and DeepSpeed checkpoints.

    end of training   the trained model's ``save_model`` (train_sft/rm/dpo.py after ``trainer.fit``;
                      train_ppo_ray.py: the actor, and the critic with ``--save_value_network``)
    every save_steps  (``--save_steps`` / 0.11 ``--ckpt.save_steps`` > 0) each trained model's
                      ``save_checkpoint`` unless ``--disable_ds_ckpt`` (``--ckpt.disable_ds``), then its
                      ``save_model`` with ``--save_hf_ckpt`` (``--ckpt.save_hf``); actor and critic together

Source: OpenRLHF/OpenRLHF v0.11.0: openrlhf/cli/train_ppo_ray.py :191-194, openrlhf/cli/train_sft.py :147,
openrlhf/trainer/ppo_trainer.py :393-410 and :466-467 (``save_steps == -1`` → never), ray/ppo_actor.py
``save_checkpoint`` :660-680, trainer/dpo_trainer.py :244-252; v0.9.5: train_ppo_ray.py :180 and :266-270,
ppo_trainer.py :214 and :260-261 (same schedule, flat flag names). ``save_steps`` counts global steps,
so the first save comes after ``save_steps`` optimizer steps, before the end of training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from memplan.errors import ConfigError
from memplan.frameworks.openrlhf.flags import load_table
from memplan.jobs.job import SaveSchedule

#: The canonical keys of the save flags (same keys in every version's table; 0.11 spells them ``--ckpt.*``).
SAVE_KEYS = ("save_steps", "save_hf_ckpt", "disable_ds_ckpt", "save_value_network")


def _spellings(script: str, version: str) -> dict[str, str]:
    """Canonical save key -> the version's option (``disable_ds_ckpt`` -> ``--ckpt.disable_ds`` at 0.11)."""
    table = load_table(script, version)
    return {key: spec.option for spec in table.flags for key in spec.keys if key in SAVE_KEYS}


def save_schedule(script: str, values: Mapping[str, Any], version: str) -> SaveSchedule:
    """The run's saves from its flags (OpenRLHF's defaults: ``save_steps -1``, no HF checkpoints, DS
    checkpoints on)."""
    flags = _spellings(script, version)
    raw = values.get("save_steps")
    steps = -1 if raw is None else int(raw)
    if steps == 0:
        raise ConfigError(flags.get("save_steps", "--save_steps"),
                          "0 makes OpenRLHF divide by zero (global_step % save_steps); -1 saves only at the end")
    during = steps > 0
    return SaveSchedule(save_steps=steps if during else None, hf_every_steps=during and bool(values.get("save_hf_ckpt")),
                        ds_every_steps=during and not values.get("disable_ds_ckpt"),
                        interval_option=flags.get("save_steps", "--save_steps"),
                        hf_every_option=flags.get("save_hf_ckpt", "--save_hf_ckpt"),
                        no_checkpoint_option=flags.get("disable_ds_ckpt", "--disable_ds_ckpt"))


def saves_critic(values: Mapping[str, Any]) -> bool:
    """Whether the PPO critic's ``save_model`` runs at the end (``--save_value_network``)."""
    return bool(values.get("save_value_network"))
