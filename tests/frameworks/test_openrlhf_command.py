"""OpenRLHF launch commands in and out: flag tables, parsing, defaults, emission.

Expected values come from the OpenRLHF sources named in /work/shared/reference/openrlhf.md (§1) and
from OpenRLHF's example scripts (tests/data/openrlhf_examples, see its README); none are computed
by the code under test.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from memplan.errors import ConfigError
from memplan.frameworks.openrlhf import (
    Launcher,
    LauncherWorld,
    format_command,
    load_table,
    normalize_version,
    parse_command,
    resolve_values,
)
from memplan.frameworks.openrlhf.bounds import BOUNDS
from memplan.frameworks.openrlhf.defaults import foreign_keys
from memplan.frameworks.openrlhf.emit import ESSENTIAL_KEYS, MODEL_PATH_KEYS
from memplan.frameworks.openrlhf.flags import FlagKind, FlagSpec, FlagTable, scripts_of, table_source
from memplan.frameworks.openrlhf.launchers import HostSlots
from memplan.model.presets import find_preset, preset_names

EXAMPLES_DIR = Path(__file__).parent.parent / "data" / "openrlhf_examples"
#: Commit of each tag whose examples/scripts the expectations were written from.
EXAMPLE_COMMITS = {"v0.8.5": "5974dfe8bded77e90dcdb92f08f3bdba31972ff2",
                   "v0.9.5": "c0e2ee2473cd115863630599cc3d51917d4b7c3e",
                   "v0.11.0": "3c3be6234e0cb353e76bb8019947db9dfe99fca7"}

# ---- flag tables ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "tag", "commit"), [
    ("0.8", "v0.8.5", "5974dfe8bded77e90dcdb92f08f3bdba31972ff2"),
    ("0.9", "v0.9.5", "c0e2ee2473cd115863630599cc3d51917d4b7c3e"),
    ("0.11", "v0.11.0", "3c3be6234e0cb353e76bb8019947db9dfe99fca7"),
])
def test_tables_record_their_commit(version: str, tag: str, commit: str) -> None:
    assert table_source(version) == (tag, commit)
    assert load_table("train_sft", version).commit == commit


# Number of add_argument calls in openrlhf/cli/<script>.py at each tag (the 0.11 train_ppo_ray loop
# `for prefix in ("actor", "critic")` adds 14 flags twice).
@pytest.mark.parametrize(("version", "counts"), [
    ("0.8", {"train_sft": 68, "train_rm": 69, "train_dpo": 71, "train_kto": 63, "train_prm": 59,
             "train_kd": 65, "train_ppo_ray": 127}),
    ("0.9", {"train_sft": 68, "train_rm": 69, "train_dpo": 73, "train_kto": 65, "train_prm": 62,
             "train_kd": 65, "train_ppo_ray": 139}),
    ("0.11", {"train_sft": 77, "train_rm": 79, "train_dpo": 82, "train_ppo_ray": 136 + 2 * 14}),
])
def test_every_flag_of_every_script_is_in_the_table(version: str, counts: dict[str, int]) -> None:
    assert scripts_of(version) == tuple(counts)
    assert {s: len(load_table(s, version).flags) for s in counts} == counts


def test_kto_prm_kd_are_gone_in_0_11() -> None:
    with pytest.raises(ConfigError, match=r"train_kto is not an entry script of OpenRLHF 0\.11"):
        load_table("train_kto", "0.11")


# (legacy flag, 0.11 flag) pairs as listed in openrlhf.md §1.1/§1.2: both must give one canonical key.
PPO_PAIRS = [
    ("--actor_num_nodes", "--actor.num_nodes"), ("--actor_num_gpus_per_node", "--actor.num_gpus_per_node"),
    ("--critic_num_nodes", "--critic.num_nodes"), ("--ref_num_gpus_per_node", "--ref.num_gpus_per_node"),
    ("--reward_num_nodes", "--reward.num_nodes"), ("--colocate_actor_ref", "--train.colocate_actor_ref"),
    ("--colocate_critic_reward", "--train.colocate_critic_reward"), ("--colocate_all_models", "--train.colocate_all"),
    ("--vllm_num_engines", "--vllm.num_engines"), ("--vllm_tensor_parallel_size", "--vllm.tensor_parallel_size"),
    ("--vllm_gpu_memory_utilization", "--vllm.gpu_memory_utilization"), ("--vllm_enable_sleep", "--vllm.enable_sleep"),
    ("--deepspeed_enable_sleep", "--ds.enable_sleep"), ("--enforce_eager", "--vllm.enforce_eager"),
    ("--enable_prefix_caching", "--vllm.enable_prefix_caching"), ("--vllm_sync_backend", "--vllm.sync_backend"),
    ("--async_train", "--train.async_enable"), ("--ring_attn_size", "--ds.ring_attn_size"),
    ("--ring_head_stride", "--ds.ring_attn_head_stride"), ("--ds_tensor_parallel_size", "--ds.tensor_parallel_size"),
    ("--zero_stage", "--ds.zero_stage"), ("--param_dtype", "--ds.param_dtype"), ("--adam_offload", "--ds.adam_offload"),
    ("--zpg", "--ds.zpg"), ("--grad_accum_dtype", "--ds.grad_accum_dtype"), ("--overlap_comm", "--ds.overlap_comm"),
    ("--gradient_checkpointing", "--actor.gradient_checkpointing_enable"),
    ("--gradient_checkpointing_use_reentrant", "--actor.gradient_checkpointing_reentrant"),
    ("--attn_implementation", "--ds.attn_implementation"), ("--packing_samples", "--ds.packing_samples"),
    ("--use_dynamic_batch", "--train.dynamic_batch_enable"),
    ("--train_max_tokens_per_gpu", "--train.max_tokens_per_gpu"),
    ("--rollout_max_tokens_per_gpu", "--rollout.max_tokens_per_gpu"), ("--use_liger_kernel", "--ds.use_liger_kernel"),
    ("--load_in_4bit", "--ds.load_in_4bit"), ("--lora_rank", "--ds.lora.rank"), ("--lora_alpha", "--ds.lora.alpha"),
    ("--target_modules", "--ds.lora.target_modules"), ("--lora_dropout", "--ds.lora.dropout"),
    ("--enable_ema", "--train.enable_ema"), ("--deepcompile", "--ds.deepcompile"),
    ("--value_head_prefix", "--ds.value_head_prefix"), ("--micro_train_batch_size", "--train.micro_batch_size"),
    ("--train_batch_size", "--train.batch_size"), ("--micro_rollout_batch_size", "--rollout.micro_batch_size"),
    ("--rollout_batch_size", "--rollout.batch_size"),
    ("--vllm_generate_batch_size", "--rollout.vllm_generate_batch_size"),
    ("--n_samples_per_prompt", "--rollout.n_samples_per_prompt"), ("--generate_max_len", "--rollout.max_new_tokens"),
    ("--max_len", "--data.max_len"), ("--max_epochs", "--train.max_epochs"),
    ("--advantage_estimator", "--algo.advantage.estimator"), ("--init_kl_coef", "--algo.kl.init_coef"),
    ("--entropy_loss_coef", "--actor.entropy_coef"), ("--remote_rm_url", "--reward.remote_url"),
    ("--pretrain", "--actor.model_name_or_path"), ("--reward_pretrain", "--reward.model_name_or_path"),
    ("--critic_pretrain", "--critic.model_name_or_path"),
]
SFT_PAIRS = [
    ("--gradient_checkpointing", "--model.gradient_checkpointing_enable"), ("--pretrain", "--model.model_name_or_path"),
    ("--micro_train_batch_size", "--train.micro_batch_size"), ("--max_len", "--data.max_len"),
    ("--zero_stage", "--ds.zero_stage"), ("--learning_rate", "--adam.lr"),
]


@pytest.mark.parametrize(("script", "legacy", "dotted"),
                         [("train_ppo_ray", *p) for p in PPO_PAIRS] + [("train_sft", *p) for p in SFT_PAIRS]
                         + [("train_dpo", "--ref_offload", "--ref.offload")])
def test_legacy_and_dotted_flags_share_a_key(script: str, legacy: str, dotted: str) -> None:
    old = load_table(script, "0.9").by_option[legacy]
    new = load_table(script, "0.11").by_option[dotted]
    assert old.key == new.key


def test_ref_reward_offload_sets_both_0_11_keys() -> None:
    spec = load_table("train_ppo_ray", "0.9").by_option["--ref_reward_offload"]
    new = load_table("train_ppo_ray", "0.11")
    assert spec.keys == (new.by_option["--ref.offload"].key, new.by_option["--reward.offload"].key)


def test_only_removed_legacy_ppo_flags_lack_a_0_11_spelling() -> None:
    legacy = load_table("train_ppo_ray", "0.9").keys()
    assert legacy - load_table("train_ppo_ray", "0.11").keys() == {
        "prompt_max_len", "actor_init_on_gpu", "ptx_coef", "perf"}


def test_memory_flags_are_marked() -> None:
    table = load_table("train_sft", "0.11")
    assert table.by_option["--ds.zero_stage"].memory
    assert table.by_option["--train.micro_batch_size"].memory
    assert not table.by_option["--adam.lr"].memory
    assert not table.by_option["--logger.wandb.project"].memory


# ---- launcher forms ------------------------------------------------------------------------------


def test_deepspeed_module() -> None:
    parsed = parse_command("deepspeed --module openrlhf.cli.train_sft --zero_stage 3 --pretrain m")
    assert (parsed.launcher, parsed.script) == (Launcher.DEEPSPEED, "train_sft")
    assert parsed.values == {"zero_stage": 3, "pretrain": "m"}
    assert parsed.world == LauncherWorld()


def test_deepspeed_num_gpus() -> None:
    parsed = parse_command("deepspeed --num_gpus 8 --module openrlhf.cli.train_rm --micro_train_batch_size 2")
    assert parsed.world.num_gpus == 8
    assert parsed.world.gpus_per_node == 8
    assert parsed.values == {"micro_train_batch_size": 2}


def test_deepspeed_include_and_nodes() -> None:
    parsed = parse_command("deepspeed --num_nodes 2 --include localhost:0,1,2,3 --module openrlhf.cli.train_sft")
    assert parsed.world.num_nodes == 2
    assert parsed.world.include == (HostSlots(host="localhost", slots=(0, 1, 2, 3)),)
    assert parsed.world.gpus_per_node == 4


def test_deepspeed_include_several_hosts() -> None:
    parsed = parse_command("deepspeed -i worker-0@worker-1:0,2 --module openrlhf.cli.train_sft")
    assert parsed.world.include == (HostSlots(host="worker-0", slots=None), HostSlots(host="worker-1", slots=(0, 2)))
    assert parsed.world.nodes == 2
    assert parsed.world.gpus_per_node is None


def test_deepspeed_hostfile() -> None:
    parsed = parse_command("deepspeed --hostfile /etc/hosts.txt --master_port 29501 --module openrlhf.cli.train_dpo")
    assert parsed.world.hostfile == "/etc/hosts.txt"
    assert parsed.script == "train_dpo"


def test_deepspeed_script_path() -> None:
    parsed = parse_command("deepspeed --num_gpus=4 openrlhf/cli/train_sft.py --zero_stage=1")
    assert (parsed.launcher, parsed.script, parsed.world.num_gpus) == (Launcher.DEEPSPEED, "train_sft", 4)
    assert parsed.values == {"zero_stage": 1}


def test_torchrun() -> None:
    parsed = parse_command("torchrun --nproc_per_node 8 --nnodes 2 -m openrlhf.cli.train_dpo --ds.zero_stage 3")
    assert parsed.launcher is Launcher.TORCHRUN
    assert (parsed.world.nproc_per_node, parsed.world.num_nodes) == (8, 2)
    assert parsed.values == {"zero_stage": 3}


def test_torchrun_dashed_flags_and_elastic_nodes() -> None:
    parsed = parse_command("torchrun --nproc-per-node=4 --nnodes=1:3 --rdzv-backend c10d -m openrlhf.cli.train_sft")
    assert (parsed.world.nproc_per_node, parsed.world.num_nodes) == (4, 3)


def test_python_m_torch_distributed_run() -> None:
    parsed = parse_command("python -m torch.distributed.run --nproc_per_node 2 -m openrlhf.cli.train_sft")
    assert (parsed.launcher, parsed.world.nproc_per_node) == (Launcher.TORCHRUN, 2)


def test_python_module() -> None:
    parsed = parse_command("python3 -m openrlhf.cli.train_ppo_ray --actor_num_gpus_per_node 4")
    assert (parsed.launcher, parsed.script) == (Launcher.PYTHON, "train_ppo_ray")
    assert parsed.values == {"actor_num_gpus_per_node": 4}


def test_ray_job_submit() -> None:
    parsed = parse_command(
        """ray job submit --address="http://127.0.0.1:8265" --runtime-env-json='{"working_dir": "/openrlhf"}' """
        "-- python3 -m openrlhf.cli.train_ppo_ray --vllm_num_engines 2")
    assert parsed.launcher is Launcher.RAY
    assert parsed.launcher_args == (
        "--address=http://127.0.0.1:8265", '--runtime-env-json={"working_dir": "/openrlhf"}')
    assert parsed.values == {"vllm_num_engines": 2}


PASTED_SCRIPT = r"""#!/bin/bash
set -x
# a comment with an apostrophe: don't stop here
export NCCL_DEBUG=INFO
NCCL_DEBUG=WARN deepspeed --num_gpus 8 \
   --module openrlhf.cli.train_sft \
   --max_len 4096 \
   --pretrain 'meta-llama/Llama-2-7b-hf' \
   --zero_stage=3 \
   # --adam_offload \
   --bf16 2>&1 | tee train.log
"""


def test_pasted_script_with_continuations_comments_env_and_redirects() -> None:
    parsed = parse_command(PASTED_SCRIPT)
    assert parsed.world.num_gpus == 8
    assert parsed.values == {"max_len": 4096, "pretrain": "meta-llama/Llama-2-7b-hf", "zero_stage": 3}
    assert parsed.unknown_flags == ()


HEREDOC_SCRIPT = """set -x

read -r -d '' training_commands <<EOF
openrlhf.cli.train_dpo \\
   --micro_train_batch_size 1 \\
   --pretrain $MODEL \\
   --beta 0.1
EOF
    # --ref_offload

if [[ ${1} != "slurm" ]]; then
    deepspeed --module $training_commands
fi
"""


def test_heredoc_script() -> None:
    parsed = parse_command("MODEL=OpenRLHF/Llama-3-8b-sft-mixture\n" + HEREDOC_SCRIPT)
    assert (parsed.launcher, parsed.script) == (Launcher.DEEPSPEED, "train_dpo")
    assert parsed.values == {"micro_train_batch_size": 1, "pretrain": "OpenRLHF/Llama-3-8b-sft-mixture", "beta": 0.1}


def test_bash_arrays_and_default_expansions() -> None:
    parsed = parse_command("""ARGS=(
   --actor_num_gpus_per_node ${GPUS:-4}   # per node
   --pretrain "$MODEL_PATH"
)
python3 -m openrlhf.cli.train_ppo_ray "${ARGS[@]}" --zero_stage 3""")
    assert parsed.values == {"actor_num_gpus_per_node": 4, "pretrain": "$MODEL_PATH", "zero_stage": 3}


def test_single_quoted_dollar_is_literal() -> None:
    parsed = parse_command("X=1\npython3 -m openrlhf.cli.train_sft --pretrain '$X' --save_path \"$X\"")
    assert parsed.values == {"pretrain": "$X", "save_path": "1"}


def test_ansi_c_quoting() -> None:
    parsed = parse_command("deepspeed --module openrlhf.cli.train_sft --input_template $'User: {}\\nA: \\'$x\\''")
    assert parsed.values == {"input_template": "User: {}\nA: '$x'"}


def test_argv_list() -> None:
    parsed = parse_command(["deepspeed", "--module", "openrlhf.cli.train_sft", "--input_template", "User: {}; A:"])
    assert parsed.values == {"input_template": "User: {}; A:"}
    assert parse_command([PASTED_SCRIPT]).values["zero_stage"] == 3


def test_launched_command_is_preferred_over_echo() -> None:
    parsed = parse_command(HEREDOC_SCRIPT.replace("deepspeed", "echo $training_commands\n    deepspeed"))
    assert parsed.launcher is Launcher.DEEPSPEED


def test_bare_heredoc_body_has_no_launcher() -> None:
    parsed = parse_command("openrlhf.cli.train_rm --zero_stage 3")
    assert (parsed.launcher, parsed.values) == (Launcher.NONE, {"zero_stage": 3})


# ---- both spellings ------------------------------------------------------------------------------

LEGACY_PPO = """python3 -m openrlhf.cli.train_ppo_ray --actor_num_nodes 2 --actor_num_gpus_per_node 8
 --critic_num_gpus_per_node 4 --ref_num_gpus_per_node 4 --reward_num_gpus_per_node 2 --colocate_all_models
 --vllm_num_engines 4 --vllm_tensor_parallel_size 2 --vllm_gpu_memory_utilization 0.5 --vllm_enable_sleep
 --deepspeed_enable_sleep --zero_stage 3 --param_dtype bf16 --adam_offload --gradient_checkpointing
 --packing_samples --micro_train_batch_size 2 --micro_rollout_batch_size 4 --rollout_batch_size 512
 --n_samples_per_prompt 8 --generate_max_len 4096 --max_len 8192 --advantage_estimator group_norm
 --init_kl_coef 0.001 --pretrain Qwen/Qwen2.5-7B --remote_rm_url http://rm --lora_rank 16
 --target_modules q_proj v_proj --ring_attn_size 2 --enforce_eager"""
DOTTED_PPO = """python3 -m openrlhf.cli.train_ppo_ray --actor.num_nodes 2 --actor.num_gpus_per_node 8
 --critic.num_gpus_per_node 4 --ref.num_gpus_per_node 4 --reward.num_gpus_per_node 2 --train.colocate_all
 --vllm.num_engines 4 --vllm.tensor_parallel_size 2 --vllm.gpu_memory_utilization 0.5 --vllm.enable_sleep
 --ds.enable_sleep --ds.zero_stage 3 --ds.param_dtype bf16 --ds.adam_offload --actor.gradient_checkpointing_enable
 --ds.packing_samples --train.micro_batch_size 2 --rollout.micro_batch_size 4 --rollout.batch_size 512
 --rollout.n_samples_per_prompt 8 --rollout.max_new_tokens 4096 --data.max_len 8192
 --algo.advantage.estimator group_norm --algo.kl.init_coef 0.001 --actor.model_name_or_path Qwen/Qwen2.5-7B
 --reward.remote_url http://rm --ds.lora.rank 16 --ds.lora.target_modules q_proj v_proj --ds.ring_attn_size 2
 --vllm.enforce_eager"""
LEGACY_SFT = ("deepspeed --module openrlhf.cli.train_sft --zero_stage 3 --micro_train_batch_size 4 --max_len 4096 "
              "--gradient_checkpointing --gradient_checkpointing_use_reentrant --adam_offload --pretrain m "
              "--learning_rate 1e-5 --packing_samples --attn_implementation sdpa --lora_rank 8 --load_in_4bit")
DOTTED_SFT = ("deepspeed --module openrlhf.cli.train_sft --ds.zero_stage 3 --train.micro_batch_size 4 "
              "--data.max_len 4096 "
              "--model.gradient_checkpointing_enable --model.gradient_checkpointing_reentrant --ds.adam_offload "
              "--model.model_name_or_path m --adam.lr 1e-5 --ds.packing_samples --ds.attn_implementation sdpa "
              "--ds.lora.rank 8 --ds.load_in_4bit")


@pytest.mark.parametrize(("legacy", "dotted"), [(LEGACY_PPO, DOTTED_PPO), (LEGACY_SFT, DOTTED_SFT)])
def test_both_spellings_give_identical_values(legacy: str, dotted: str) -> None:
    old, new = parse_command(legacy.replace("\n", " \\\n")), parse_command(dotted.replace("\n", " \\\n"))
    assert old.values == new.values
    assert len(old.values) == len(old.args) - len([a for a in old.args if not a.startswith("--")])
    assert old.version_hint == new.version_hint == "0.11"  # every flat flag here has a 0.11 rename


# ---- unknown, ignored, version hint --------------------------------------------------------------


def test_unknown_flags_are_reported_not_fatal() -> None:
    parsed = parse_command("deepspeed --module openrlhf.cli.train_sft --foo_bar 3 --zero_stage 3 --no_such_switch")
    assert parsed.unknown_flags == ("--foo_bar", "--no_such_switch")
    assert parsed.values == {"zero_stage": 3}


def test_stray_words_are_unknown() -> None:
    parsed = parse_command("deepspeed --module openrlhf.cli.train_sft stray -x --zero_stage 3 -- --bf16")
    assert parsed.unknown_flags == ("stray", "-x", "--", "--bf16")  # argparse: words after -- are positional
    assert parsed.values == {"zero_stage": 3}


def test_ignored_flags_are_known_but_change_no_memory() -> None:
    parsed = parse_command(
        "deepspeed --module openrlhf.cli.train_sft --learning_rate 1e-5 --use_wandb k --zero_stage 3")
    assert parsed.ignored_flags == ("--learning_rate", "--use_wandb")
    assert parsed.values["learning_rate"] == 1e-5


def test_unique_abbreviation_is_read_as_argparse_does() -> None:
    parsed = parse_command("deepspeed --module openrlhf.cli.train_sft --micro_train 4")
    assert parsed.values == {"micro_train_batch_size": 4}
    assert "--micro_train read as --micro_train_batch_size" in parsed.warnings[0]


def test_ambiguous_abbreviation_is_unknown() -> None:
    parsed = parse_command("deepspeed --module openrlhf.cli.train_sft --lr 3")
    assert parsed.unknown_flags == ("--lr",)
    assert "ambiguous" in parsed.warnings[0]


@pytest.mark.parametrize(("flags", "hint"), [
    ("--ds.zero_stage 3", "0.11"), ("--bf16", "0.8"), ("--flash_attn --zero_stage 3", "0.8"),
    ("--param_dtype bf16", "0.11"), ("--zero_stage 3", None), ("", None), ("--max_norm 1.0", None),
    ("--train_split train --zero_stage 3", "0.9"),  # --train_split: train_sft.py@v0.9.5 line 239, gone in 0.11
])
def test_version_hint(flags: str, hint: str | None) -> None:
    assert parse_command(f"deepspeed --module openrlhf.cli.train_sft {flags}").version_hint == hint


def test_mixed_spellings_warn() -> None:
    parsed = parse_command("deepspeed --module openrlhf.cli.train_sft --ds.zero_stage 3 --bf16")
    assert parsed.version_hint == "0.11"
    assert parsed.warnings == (
        "--bf16 is not a flag of OpenRLHF 0.11 (the command mixes spellings of different versions)",)


# ---- errors --------------------------------------------------------------------------------------


def _error(command: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_command(command)
    return info.value


@pytest.mark.parametrize(("command", "message"), [
    ("deepspeed --module openrlhf.cli.train_sft --zero_stage two", "--zero_stage: expected an integer, got 'two'"),
    ("deepspeed --module openrlhf.cli.train_sft --ds.zero_stage=2.5",
     "--ds.zero_stage: expected an integer, got '2.5'"),
    ("python3 -m openrlhf.cli.train_ppo_ray --vllm_gpu_memory_utilization high",
     "--vllm_gpu_memory_utilization: expected a number, got 'high'"),
    ("deepspeed --module openrlhf.cli.train_sft --param_dtype fp32",
     "--param_dtype: expected one of bf16, fp16, got 'fp32'"),
    ("deepspeed --module openrlhf.cli.train_sft --zero_stage", "--zero_stage: missing value"),
    ("deepspeed --module openrlhf.cli.train_sft --zero_stage --bf16", "--zero_stage: missing value"),
    ("deepspeed --module openrlhf.cli.train_sft --adam_betas 0.9", "--adam_betas: expected 2 values, got 1"),
    ("deepspeed --module openrlhf.cli.train_sft --bf16=yes", "--bf16: takes no value, got 'yes'"),
    ("deepspeed --module openrlhf.cli.train_foo --zero_stage 3",
     "openrlhf.cli.train_foo: not an OpenRLHF training entry point memplan reads (expected one of train_sft, "
     "train_rm, train_dpo, train_kto, train_prm, train_kd, train_ppo_ray)"),
    ("deepspeed --num_gpus 8 train.py --zero_stage 3", "command: no OpenRLHF entry point found"),
    ("deepspeed --num_gpus eight --module openrlhf.cli.train_sft", "deepspeed --num_gpus: expected an integer, got 'eight'"),
    ("deepspeed --include localhost:a --module openrlhf.cli.train_sft", "deepspeed --include: expected NODE[:SLOT"),
    ("torchrun --nnodes x -m openrlhf.cli.train_sft", "torchrun --nnodes: expected an integer, got 'x'"),
    ("deepspeed --module openrlhf.cli.train_sft --pretrain 'meta", "command: unbalanced quote: the ' on line 1"),
    ("deepspeed --module openrlhf.cli.train_sft \\\n --pretrain \"m", "command: unbalanced quote: the \" on line 2"),
    ("", "command: empty command"), ("  \n\t", "command: empty command"), ([], "command: empty command"),
    ("deepspeed --module openrlhf.cli.train_sft --micro_train_batch_size $MBS",
     "--micro_train_batch_size: expected an integer, got '$MBS' (a shell variable"),
])
def test_errors_name_the_flag(command: Any, message: str) -> None:
    assert str(_error(command)).startswith(message)


def test_serve_rm_is_not_a_training_entry_point() -> None:
    assert _error("python -m openrlhf.cli.serve_rm --port 5000").location == "openrlhf.cli.serve_rm"


# ---- defaults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("script", "version", "expected"), [
    # openrlhf.md §1.2 table and §1.1 "Batch and sequence"
    ("train_sft", "0.11", {"micro_train_batch_size": 8, "max_len": 2048, "zero_stage": 2, "param_dtype": "bf16"}),
    ("train_rm", "0.11", {"micro_train_batch_size": 1, "max_len": 512}),
    ("train_dpo", "0.11", {"micro_train_batch_size": 8, "max_len": 512, "ref_offload": False}),
    ("train_ppo_ray", "0.9", {"micro_train_batch_size": 4, "micro_rollout_batch_size": 8, "generate_max_len": 1024,
                              "prompt_max_len": 1024, "max_len": 1024 + 1024, "vllm_gpu_memory_utilization": 0.95}),
    ("train_ppo_ray", "0.11", {"micro_train_batch_size": 1, "micro_rollout_batch_size": 1, "generate_max_len": None,
                               "max_len": 2048, "actor_num_gpus_per_node": 8, "vllm_num_engines": None,
                               "init_kl_coef": 0.01, "advantage_estimator": "gae", "train_max_tokens_per_gpu": 16192}),
    ("train_kd", "0.9", {"micro_train_batch_size": 8, "teacher_offload": False}),
    ("train_sft", "0.8", {"bf16": False, "param_dtype": "auto", "flash_attn": False, "attn_implementation": "eager"}),
    ("train_sft", "0.9", {"param_dtype": "bf16", "attn_implementation": "flash_attention_2"}),
])
def test_defaults(script: str, version: str, expected: dict[str, Any]) -> None:
    resolved = resolve_values((script, {}), version)
    assert {k: resolved[k] for k in expected} == expected


def test_resolve_is_complete() -> None:
    resolved = resolve_values(("train_sft", {"zero_stage": 3}), "0.9")
    assert set(resolved) == load_table("train_sft", "0.9").keys()
    assert set(resolve_values(("train_sft", {}), "0.8")) == load_table("train_sft", "0.8").keys() | {
        "param_dtype", "attn_implementation"}


@pytest.mark.parametrize(("command", "version", "expected"), [
    ("--bf16 --flash_attn", "0.8", {"param_dtype": "bf16", "attn_implementation": "flash_attention_2"}),
    ("--packing_samples", "0.8", {"flash_attn": True, "attn_implementation": "flash_attention_2"}),
    ("--attn_implementation eager --packing_samples", "0.9", {"attn_implementation": "flash_attention_2"}),
    ("--attn_implementation eager", "0.9", {"attn_implementation": "eager"}),
    ("--bf16", "0.11", {"param_dtype": "bf16"}),
    ("--pretrain m", None, {"ref_pretrain": None}),
])
def test_sft_post_parse_rules(command: str, version: str | None, expected: dict[str, Any]) -> None:
    parsed = parse_command(f"deepspeed --module openrlhf.cli.train_sft {command}")
    resolved = resolve_values(parsed, version)
    assert {k: resolved.get(k) for k in expected} == expected


@pytest.mark.parametrize(("flags", "expected"), [
    ("--reward_pretrain rm1,rm2 --pretrain a", {"critic_pretrain": "rm1"}),
    ("--remote_rm_url http://x --pretrain a", {"critic_pretrain": "a"}),
    ("--agent_func_path f.py --pretrain a", {"remote_rm_url": "agent", "critic_pretrain": "a"}),
    ("--advantage_estimator rloo --reward_pretrain r --critic_pretrain c", {"critic_pretrain": None}),
    ("--vllm_enable_sleep", {"vllm_enable_sleep": False}),
    ("--vllm_enable_sleep --colocate_all_models", {"vllm_enable_sleep": True}),
    ("--ring_attn_size 2 --vllm_num_engines 1", {"packing_samples": True}),
    ("--use_dynamic_batch --train_max_tokens_per_gpu 9000",
     {"packing_samples": True, "rollout_max_tokens_per_gpu": 9000}),
    ("--prompt_max_len 512 --generate_max_len 1536", {"max_len": 2048}),
    ("--rollout_batch_size 64", {"vllm_generate_batch_size": 64}),
    ("--eps_clip 0.3", {"eps_clip_low_high": (0.3, 0.3)}),
    ("--ref_reward_offload", {"ref_offload": True, "reward_offload": True}),
])
def test_ppo_post_parse_rules(flags: str, expected: dict[str, Any]) -> None:
    resolved = resolve_values(parse_command(f"python3 -m openrlhf.cli.train_ppo_ray {flags}"), "0.9")
    assert {k: resolved[k] for k in expected} == expected


def test_dpo_reference_defaults_to_policy() -> None:
    assert resolve_values(("train_dpo", {"pretrain": "p"}), "0.11")["ref_pretrain"] == "p"


def test_ring_attention_without_packing_is_refused_for_sft() -> None:
    with pytest.raises(ConfigError, match="ring_attn_size: ring attention needs packing_samples"):
        resolve_values(("train_sft", {"ring_attn_size": 2}), "0.11")


def test_version_defaults_to_the_hint() -> None:
    flat = parse_command("python3 -m openrlhf.cli.train_ppo_ray --zero_stage 3")
    assert flat.version_hint is None  # every version has --zero_stage (0.11 as --ds.zero_stage): the latest
    assert resolve_values(flat)["micro_train_batch_size"] == 1  # --train.micro_batch_size default, v0.11.0
    older = parse_command("python3 -m openrlhf.cli.train_ppo_ray --zero_stage 3 --prompt_max_len 1024")
    assert (older.version_hint, older.version_reason) == ("0.9", "--prompt_max_len is not a flag of OpenRLHF 0.11")
    assert resolve_values(older)["micro_train_batch_size"] == 4  # --micro_train_batch_size default, v0.9.5
    assert resolve_values(older, "0.11")["micro_train_batch_size"] == 1


def test_foreign_keys() -> None:
    parsed = parse_command("python3 -m openrlhf.cli.train_ppo_ray --prompt_max_len 512 --zero_stage 3")
    assert foreign_keys(parsed, "0.11") == ("prompt_max_len",)
    assert "prompt_max_len" not in resolve_values(parsed, "0.11")


def test_resolve_checks_value_types() -> None:
    with pytest.raises(ConfigError, match="zero_stage: expected an integer, got '3'"):
        resolve_values(("train_sft", {"zero_stage": "3"}), "0.11")


@pytest.mark.parametrize(("text", "version"), [
    (None, "0.11"), ("latest", "0.11"), ("main", "0.11"), ("0.11.0", "0.11"), ("v0.10.2", "0.11"),
    ("v0.9.5", "0.9"), ("0.9.2", "0.9"), ("0.9", "0.9"), ("v0.8.5", "0.8"), ("0.8.9.post1", "0.8"),
])
def test_normalize_version(text: str | None, version: str) -> None:
    assert normalize_version(text) == version


@pytest.mark.parametrize("text", ["0.9.1", "0.8.10", "0.10.0", "0.7.0", "banana", "", "  "])
def test_versions_without_a_table_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--openrlhf-version"):
        normalize_version(text)


# ---- emit ----------------------------------------------------------------------------------------


def test_emit_legacy_and_dotted() -> None:
    values = {"zero_stage": 3, "pretrain": "m", "learning_rate": 1e-05}
    assert format_command("train_sft", values, version="0.9") == (
        "deepspeed --module openrlhf.cli.train_sft --zero_stage 3 --pretrain m --learning_rate 1e-05")
    assert format_command("train_sft", values, version="0.11") == (
        "deepspeed --module openrlhf.cli.train_sft --ds.zero_stage 3 --model.model_name_or_path m --adam.lr 1e-05")


def test_emit_ray_and_world() -> None:
    assert format_command("train_ppo_ray", {"vllm_num_engines": 2}, version="0.11") == (
        'ray job submit --address="http://127.0.0.1:8265" -- python3 -m openrlhf.cli.train_ppo_ray '
        "--vllm.num_engines 2")
    world = LauncherWorld(num_nodes=2, num_gpus=8, include=(HostSlots(host="localhost", slots=(0, 1)),))
    command = format_command("train_sft", {}, world=world, version="0.9")
    assert command == "deepspeed --num_nodes 2 --num_gpus 8 --include localhost:0,1 --module openrlhf.cli.train_sft"
    assert parse_command(command).world == world
    torchrun = LauncherWorld(num_nodes=2, nproc_per_node=8)
    assert parse_command(format_command("train_dpo", {}, launcher="torchrun", world=torchrun)).world == torchrun


def test_emit_translates_precision_for_0_8() -> None:
    command = format_command("train_sft", {"param_dtype": "bf16", "attn_implementation": "flash_attention_2"},
                             version="0.8")
    assert command == "deepspeed --module openrlhf.cli.train_sft --bf16 --flash_attn"


@pytest.mark.parametrize(("script", "values", "version", "message"), [
    ("train_sft", {"param_dtype": "fp16"}, "0.8", "param_dtype: OpenRLHF 0.8 cannot express 'fp16'"),
    ("train_sft", {"prompt_max_len": 5}, "0.11",
     "prompt_max_len: not a flag of openrlhf.cli.train_sft in OpenRLHF 0.11"),
    ("train_ppo_ray", {"ref_offload": True}, "0.9",
     "ref_offload: OpenRLHF 0.9 sets ref_offload, reward_offload together"),
    ("train_ppo_ray", {"vllm_num_engines": None, "zero_stage": None}, "0.11", "zero_stage: OpenRLHF 0.11 has no flag"),
    ("train_sft", {"zero_stage": 2.5}, "0.11", "zero_stage: expected an integer, got 2.5"),
    ("train_sft", {"target_modules": ("-x",)}, "0.11", "target_modules: '-x' cannot be passed"),
])
def test_emit_errors(script: str, values: dict[str, Any], version: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        format_command(script, values, version=version)
    assert str(info.value).startswith(message)


def test_emit_multiline_reads_back() -> None:
    values = {"zero_stage": 3, "pretrain": "a b", "adam_betas": (0.9, -1e-05), "input_template": "-{}\n"}
    command = format_command("train_sft", values, version="0.9", multiline=True)
    assert command.count("\\\n") == 4
    assert parse_command(command).values == values


# ---- round trip (hypothesis) ---------------------------------------------------------------------

_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF) | st.sampled_from("\n\t"),
                max_size=12)

_PRESET_NAME = st.sampled_from(preset_names()).flatmap(lambda n: st.sampled_from((n, n.upper(), f" {n} ")))
"""A bundled preset's name as a user may type it (any case, padded): emitted commands carry its hub id instead
(issue 11), so every run must try one rather than wait for hypothesis to stumble on one."""


def _models_resolved(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each model named as the preset it resolves to (``find_preset``), else as typed.

    A round trip keeps the model, not its spelling: ``LLAMA3.2-1B`` comes back as ``meta-llama/Llama-3.2-1B``,
    the same preset. Each comma-separated part is one model (``reward_pretrain`` may list several).
    """
    def model(part: str) -> str:
        preset = find_preset(part)
        return f"preset {preset.name}" if preset is not None else part

    return {k: ",".join(model(p) for p in v.split(",")) if k in MODEL_PATH_KEYS and isinstance(v, str) and v else v
            for k, v in values.items()}


SUMMED_LENGTHS = ("prompt_max_len", "generate_max_len")
"""Keys whose sum is one sequence (train_ppo_ray.py at v0.9.5): each may take half the longest."""


def _element(spec: FlagSpec) -> st.SearchStrategy[Any]:
    """Any value argparse would read, within memplan's bounds for the key (bounds.BOUNDS)."""
    bound = BOUNDS.get(spec.key)
    if bound is not None and bound.choices:
        return st.sampled_from(bound.choices)
    if spec.kind is FlagKind.INT:
        low, high = (-10**9, 10**9) if bound is None else (int(bound.low), int(bound.high))
        if spec.key in SUMMED_LENGTHS:  # 0.8/0.9 PPO: max_len = prompt_max_len + generate_max_len
            high //= 2
        return st.integers(min_value=low, max_value=high)
    if spec.kind is FlagKind.FLOAT:
        if bound is None or math.isinf(bound.low):
            return st.floats(allow_nan=False, allow_infinity=False)
        return st.floats(min_value=bound.low, max_value=bound.high, exclude_min=bound.low_open)
    if spec.kind is FlagKind.CHOICE:
        return st.sampled_from(spec.choices)
    return _TEXT | _PRESET_NAME if spec.key in MODEL_PATH_KEYS else _TEXT


def _value(spec: FlagSpec) -> st.SearchStrategy[Any]:
    if spec.kind is FlagKind.STORE_TRUE:
        return st.just(True)
    if spec.kind is FlagKind.STORE_FALSE:
        return st.just(False)
    if spec.nargs is None:
        return _element(spec)
    element = _element(spec).filter(lambda v: not (isinstance(v, str) and v.startswith("-")))
    size = spec.nargs if isinstance(spec.nargs, int) else None
    return st.lists(element, min_size=size or 0, max_size=size or 3).map(tuple)


@st.composite
def _values(draw: st.DrawFn, table: FlagTable) -> dict[str, Any]:
    specs = draw(st.lists(st.sampled_from(table.flags), max_size=12, unique_by=lambda s: s.option))
    values: dict[str, Any] = {}
    for spec in specs:
        value = draw(_value(spec))
        values.update(dict.fromkeys(spec.keys, value))
    return values


TABLES = [(s, v) for v in ("0.8", "0.9", "0.11") for s in scripts_of(v)]


@pytest.mark.parametrize(("script", "version"), TABLES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_emit_then_parse(script: str, version: str, data: st.DataObject) -> None:
    table = load_table(script, version)
    values = data.draw(_values(table))
    command = data.draw(st.sampled_from([
        format_command(script, values, version=version),
        format_command(script, values, version=version, launcher="python", multiline=True),
    ]))
    parsed = parse_command(command)
    expected = {k: v for k, v in values.items() if v != table.default(k) or k in ESSENTIAL_KEYS}
    assert (parsed.script, parsed.unknown_flags) == (script, ())
    assert _models_resolved(parsed.values) == _models_resolved(expected)


@pytest.mark.parametrize(("script", "version"), TABLES)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_of_resolved_values(script: str, version: str, data: st.DataObject) -> None:
    table = load_table(script, version)
    values = data.draw(_values(table))
    try:
        resolved = resolve_values((script, values), version)
    except ConfigError:
        assume(False)
        return
    again = resolve_values(parse_command(format_command(script, resolved, version=version)), version)
    assert _models_resolved(again) == _models_resolved(resolved)
    assert resolve_values((script, resolved), version) == resolved


# ---- OpenRLHF's example scripts ------------------------------------------------------------------

EXPECTED = tomllib.loads((EXAMPLES_DIR / "expected.toml").read_text(encoding="utf-8"))


def _example_text(name: str) -> str:
    """An example script read from the local OpenRLHF checkout named by MEMPLAN_OPENRLHF_REPO (else skip)."""
    import os
    import subprocess

    repo = os.environ.get("MEMPLAN_OPENRLHF_REPO")
    if not repo:
        pytest.skip("set MEMPLAN_OPENRLHF_REPO to a local OpenRLHF checkout to parse its example scripts")
    tag, script = name.split("/", 1)
    done = subprocess.run(["git", "-C", repo, "show", f"{EXAMPLE_COMMITS[tag]}:examples/scripts/{script}"],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"{name} not found in {repo}")
    return done.stdout


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_script(name: str) -> None:
    expected = EXPECTED[name]
    parsed = parse_command(_example_text(name))
    assert (parsed.script, parsed.launcher.value, str(parsed.version_hint)) == (
        expected["script"], expected["launcher"], expected["version_hint"])
    assert parsed.unknown_flags == tuple(expected["unknown_flags"])
    assert {k: parsed.values.get(k) for k in expected["values"]} == {
        k: tuple(v) if isinstance(v, list) else v for k, v in expected["values"].items()}
    unsettled = [re.match(r"the script branches on '(.*?)', which memplan cannot evaluate", w) for w in parsed.warnings]
    assert [m.group(1) if m else w for m, w in zip(unsettled, parsed.warnings)] == expected.get("unsettled", [])
    resolve_values(parsed)

