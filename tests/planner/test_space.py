"""The search space: --keep parsing, layouts, group sizes, and candidates → OpenRLHF values."""

from __future__ import annotations

import pytest

from memplan.api import resolve_command
from memplan.errors import ConfigError
from memplan.frameworks.openrlhf.plan import parse_keep
from memplan.planner.knobs import saving_flags, size_ladder
from memplan.planner.space import (
    Layout,
    Placement,
    build_space,
    command_text,
    flag_set,
    unit_of,
    values_for,
)

TINY = "tests/data/tiny/llama-tiny.json"


def test_parse_keep_spellings() -> None:
    assert parse_keep(["zero_stage=2"], "train_ppo_ray", "0.9") == {"zero_stage": 2}
    assert parse_keep(["--adam_offload=false"], "train_ppo_ray", "0.9") == {"adam_offload": False}
    # the 0.11 dotted spelling names the same canonical key
    assert parse_keep(["ds.zero_stage=3"], "train_ppo_ray", "0.11") == {"zero_stage": 3}
    assert parse_keep(["vllm_gpu_memory_utilization=0.5"], "train_ppo_ray", "0.9") == \
        {"vllm_gpu_memory_utilization": 0.5}


@pytest.mark.parametrize("item", ["zero_stage", "zero_stage=two", "no_such_flag=1", "adam_offload=maybe"])
def test_parse_keep_rejects(item: str) -> None:
    with pytest.raises(ConfigError):
        parse_keep([item], "train_ppo_ray", "0.9")


def test_layout_gpu_counts_by_hand() -> None:
    sizes = (("actor", 8), ("critic", 8), ("ref", 4), ("reward", 4))
    separate = Layout(placement=Placement.SEPARATE, sizes=sizes, engines=4, tp=2, gmu=0.9)
    assert separate.num_gpus == 8 + 8 + 4 + 4 + 4 * 2
    pairs = Layout(placement=Placement.PAIRS, sizes=(("actor", 8), ("critic", 8), ("ref", 8), ("reward", 8)),
                   engines=8, tp=2, gmu=0.9)
    assert pairs.num_gpus == 8 + 8 + 8 * 2  # row 2 of the public cases: 32
    assert set(pairs.units()) == {"actor+ref", "critic+reward", "rollout"}
    hybrid = Layout(placement=Placement.HYBRID, sizes=(("actor", 8), ("critic", 8)), engines=4, tp=2, gmu=0.5)
    assert hybrid.num_gpus == 8 and hybrid.units() == {"hybrid": (8, 2, 0.5)}


def test_unit_names_of_device_roles() -> None:
    assert unit_of(("actor",)) == "actor"
    assert unit_of(("actor", "ref")) == "actor+ref"
    assert unit_of(("critic", "reward")) == "critic+reward"
    assert unit_of(("actor", "ref", "critic", "reward", "rollout")) == "hybrid"
    assert unit_of(("policy", "ref")) == "train"


def test_size_ladder_respects_the_batch_arithmetic() -> None:
    space = build_space(TINY, "ppo", flags=["--train_batch_size", "128"], max_gpus=64)
    flags = saving_flags(space)
    # trained groups: 128 / (micro 1 × world) must be whole → powers of two
    assert size_ladder(space, "actor", flags) == (1, 2, 4, 8, 16, 32, 64)
    # frozen groups: any size within a node, then whole nodes
    assert size_ladder(space, "ref", flags) == (1, 2, 3, 4, 5, 6, 7, 8, 16, 24, 32, 48, 64)
    four = flag_set({**dict(flags), "micro_train_batch_size": 4})
    assert size_ladder(space, "actor", four) == (1, 2, 4, 8, 16, 32)


def test_candidate_command_reads_back_to_the_same_values() -> None:
    space = build_space("llama-2-70b", "ppo", flags=["--reward_pretrain", "llama-2-70b"])
    layout = Layout(placement=Placement.ACTOR_REF, sizes=(("actor", 16), ("critic", 8), ("ref", 16), ("reward", 4)),
                    engines=4, tp=2, gmu=0.85)
    flags = saving_flags(space)
    values = values_for(space, layout, flags)
    back = resolve_command(command_text(space, layout, flags))
    # the command names models by hub id, which OpenRLHF can load (index.toml: llama-2-70b's hub_id)
    hub = "meta-llama/Llama-2-70b-hf"
    assert back.values == {**values, "pretrain": hub, "reward_pretrain": hub, "critic_pretrain": hub}
    assert (values["actor_num_nodes"], values["actor_num_gpus_per_node"]) == (2, 8)
    assert values["colocate_actor_ref"] and not values["colocate_all_models"]


def test_pins_from_flags_and_keep() -> None:
    space = build_space(TINY, "sft", flags=["--zero_stage", "2"], keep=["adam_offload=false"])
    assert space.pinned == {"zero_stage": 2, "adam_offload": False}
    assert "zero_stage" not in dict(saving_flags(space))
