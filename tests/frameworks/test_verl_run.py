"""verl commands -> VerlRun: command forms, resolved values, roles, verl's start-up checks, bad input.

Expected values are verl's (its yaml defaults, its role rules in ``verl/trainer/ppo/utils.py``) or the
command's own, applied by hand; each error case names the key as typed, as the CLI prints it (exit 2).
"""

from __future__ import annotations

import re

import pytest

from memplan.errors import ConfigError
from memplan.frameworks.verl import parse_command, read_command, run_for, unmodelled_notes
from memplan.frameworks.verl import unmodelled
from memplan.frameworks.verl.defaults import VERSIONS, load_table
from memplan.frameworks.verl.hydra import HydraConfig
from memplan.frameworks.verl.run import FsdpStrategy, Method, RolloutEngine, build_run

GRPO = """\
python3 -m verl.trainer.main_ppo algorithm.adv_estimator=grpo data.train_batch_size=64 \
  data.max_prompt_length=1024 data.max_response_length=2048 actor_rollout_ref.rollout.n=8 \
  actor_rollout_ref.model.path=Qwen/Qwen2.5-7B-Instruct actor_rollout_ref.actor.ppo_mini_batch_size=32 \
  actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2 actor_rollout_ref.actor.use_kl_loss=True \
  actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4 actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4 \
  actor_rollout_ref.rollout.name=vllm actor_rollout_ref.rollout.gpu_memory_utilization=0.6 \
  actor_rollout_ref.rollout.tensor_model_parallel_size=2 trainer.n_gpus_per_node=8 trainer.nnodes=1"""


def test_grpo_command() -> None:
    run = parse_command(GRPO)
    assert (run.version, run.method, run.adv_estimator) == ("0.9.1", Method.GRPO, "grpo")
    assert (run.train_batch_size, run.rollout_n, run.max_prompt_length, run.max_response_length) == (64, 8, 1024, 2048)
    # roles: use_kl_loss -> ref (utils.py:75-79); grpo and critic.enable null -> no critic (utils.py:96-107)
    assert run.ref is not None and run.critic is None and run.reward_model is None
    assert run.actor.update.micro_batch_size_per_gpu == 2 and not run.actor.update.use_dynamic_bsz
    assert run.actor.log_prob.micro_batch_size_per_gpu == 4
    # the ref's token budget defaults to the actor's ppo_max_token_len_per_gpu (16384) by interpolation
    assert run.ref.log_prob.max_token_len_per_gpu == 16384
    assert run.rollout.name is RolloutEngine.VLLM and run.rollout.gpu_memory_utilization == 0.6
    # 0.9.1 defaults (yaml lines 316, 313, 358): max_num_seqs 256, max_num_batched_tokens 8192, log-probs on
    assert (run.rollout.max_num_seqs, run.rollout.max_num_batched_tokens, run.rollout.max_model_len) == (256, 8192, None)
    fsdp = run.actor.fsdp
    assert (fsdp.strategy, fsdp.model_dtype, fsdp.param_dtype, fsdp.reduce_dtype) == (FsdpStrategy.FSDP, "fp32",
                                                                                      "bf16", "fp32")
    assert fsdp.fsdp_size == 8  # -1 -> the world, 8 GPUs × 1 node
    assert run.actor.model.enable_gradient_checkpointing and run.actor.model.use_remove_padding
    assert run.actor.model.path == "Qwen/Qwen2.5-7B-Instruct"
    assert run.actor.checkpoint_contents == ("model", "optimizer", "extra")
    assert (run.actor.optimizer, run.actor.optimizer_impl) == ("AdamW", "torch.optim")


def test_previous_release_defaults() -> None:
    run = parse_command(GRPO, "0.8")
    assert run.version == "0.8.0"
    assert run.rollout.max_num_seqs == 1024 and not run.rollout.calculate_log_probs
    assert not run.use_v1  # 0.8.0 has no trainer.use_v1


SCRIPT = """\
#!/usr/bin/env bash
set -x
set -e
export MODEL=Qwen/Qwen2.5-0.5B   # the policy
export N=${N:-4}
BS=16

# a comment line
ray job submit --address=http://127.0.0.1:8265 --runtime-env=verl/trainer/runtime_env.yaml -- \\
  python3 -m verl.trainer.main_ppo \\
    --config-path=/opt/verl/verl/trainer/config --config-name ppo_trainer \\
    actor_rollout_ref.model.path=$MODEL \\
    data.train_batch_size=${BS} actor_rollout_ref.rollout.n=$N \\
    'actor_rollout_ref.actor.checkpoint.save_contents=["model","hf_model"]' \\
    +actor_rollout_ref.rollout.engine_kwargs.sglang.chunked_prefill_size=4096 \\
    ++actor_rollout_ref.actor.fsdp_config.mixed_precision.param_dtype=fp32 \\
    actor_rollout_ref.actor.strategy=fsdp2 critic.strategy=fsdp2 \\
    actor_rollout_ref.actor.use_dynamic_bsz=true actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096 \\
    critic.ppo_micro_batch_size_per_gpu=1 actor_rollout_ref.rollout.name=sglang \\
    trainer.n_gpus_per_node=4 actor_rollout_ref.rollout.max_model_len=null \\
    hydra.run.dir=/tmp/x $@
"""


def test_script_with_exports_ray_submit_and_quoting() -> None:
    run = parse_command(SCRIPT)
    assert run.actor.model.path == "Qwen/Qwen2.5-0.5B"
    assert (run.train_batch_size, run.rollout_n, run.method) == (16, 4, Method.PPO)
    assert run.actor.checkpoint_contents == ("model", "hf_model")
    assert run.rollout.engine_kwargs == (("chunked_prefill_size", 4096),)  # the chosen engine's only
    assert run.actor.fsdp.param_dtype == "fp32" and run.actor.fsdp.strategy is FsdpStrategy.FSDP2
    # dynamic bsz: the log-prob pass follows the actor's use_dynamic_bsz and token budget by interpolation
    assert run.actor.log_prob.use_dynamic_bsz and run.actor.log_prob.max_token_len_per_gpu == 4096
    assert run.rollout.name is RolloutEngine.SGLANG and run.rollout.max_model_len is None
    # gae -> critic (utils.py:100-101); its dynamic-bsz default follows the actor's (yaml interpolation); the V1
    # trainer gives its engine ppo_infer_max_token_len_per_gpu = 32768 (critic.py:89, trainer_base.py:266-268)
    assert run.critic is not None and run.critic.update.use_dynamic_bsz
    assert run.critic.update.max_token_len_per_gpu == 32768 and run.critic.fsdp.strategy is FsdpStrategy.FSDP2


def test_lora_puts_the_ref_inside_the_actor() -> None:
    run = parse_command(GRPO + " actor_rollout_ref.model.lora_rank=64 actor_rollout_ref.model.target_modules=all-linear")
    assert run.actor.model.lora_rank == 64 and run.ref is None  # trainer_base.py:233-236
    assert run.actor.model.lora_target_modules == ("all-linear",)


def test_kl_in_reward_and_critic_enable_and_reward_model() -> None:
    run = parse_command(GRPO.replace("use_kl_loss=True", "use_kl_loss=False") + " algorithm.use_kl_in_reward=true"
                        " critic.enable=true critic.ppo_micro_batch_size_per_gpu=2 reward.reward_model.enable=true"
                        " reward.reward_model.rollout.name=vllm reward.reward_model.enable_resource_pool=true")
    assert run.ref is not None and run.critic is not None
    assert run.reward_model is not None and run.reward_model.enable_resource_pool
    # reward model rollout defaults (0.9.1 yaml): TP 2, gmu 0.5, eager, 1024 seqs
    rm = run.reward_model
    assert (rm.tensor_parallel_size, rm.gpu_memory_utilization, rm.enforce_eager, rm.max_num_seqs) == (2, 0.5, True, 1024)


def test_ulysses_from_either_key() -> None:
    # the engine reads fsdp_config.ulysses_sequence_parallel_size; the actor's own key replaces it when > 1
    # (verl/workers/config/actor.py:327-329)
    base = GRPO + " actor_rollout_ref.actor.use_dynamic_bsz=true actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096"
    assert parse_command(base + " actor_rollout_ref.actor.fsdp_config.ulysses_sequence_parallel_size=2") \
        .actor.ulysses_sequence_parallel_size == 2
    run = parse_command(base + " actor_rollout_ref.actor.ulysses_sequence_parallel_size=4")
    assert run.actor.ulysses_sequence_parallel_size == 4
    assert run.ref is not None and run.ref.ulysses_sequence_parallel_size == 4  # ref's key interpolates the actor's


def test_entropy_from_the_engine_config() -> None:
    run = parse_command(GRPO + " actor_rollout_ref.actor.entropy_from_logits_with_chunking=true"
                               " actor_rollout_ref.actor.entropy_checkpointing=true actor_rollout_ref.actor.entropy_coeff=0.01")
    assert run.actor.entropy.from_logits_with_chunking and run.actor.entropy.checkpointing
    assert run.actor.entropy.chunk_size == 2048 and run.actor.entropy_in_update
    # 0.8.0: the actor's keys do not reach the engine (its fsdp_config keys are separate, default false)
    old = parse_command(GRPO + " actor_rollout_ref.actor.entropy_from_logits_with_chunking=true", "0.8.0")
    assert not old.actor.entropy.from_logits_with_chunking


def test_run_for() -> None:
    run = run_for("Qwen/Qwen2.5-7B", "grpo", ["trainer.n_gpus_per_node=4", "data.train_batch_size=32",
                                              "actor_rollout_ref.actor.ppo_mini_batch_size=16"])
    assert (run.method, run.critic, run.n_gpus_per_node, run.train_batch_size) == (Method.GRPO, None, 4, 32)
    assert run.actor.update.micro_batch_size_per_gpu == 4  # quickstart fill
    assert run_for("m", "ppo").critic is not None
    assert run_for("m", "reinforce").adv_estimator == "reinforce_plus_plus"
    assert run_for("m", "rloo", ["actor_rollout_ref.rollout.name=sglang"]).rollout.name is RolloutEngine.SGLANG


def test_arithmetic_and_nested_defaults_in_a_script() -> None:
    script = ("P=${P:-$((1024 * 2))}\nR=${R:-$((1024 * 6))}\nSP=${SP:-${SP_SIZE:-2}}\n"
              "python -m verl.trainer.main_ppo actor_rollout_ref.rollout.name=vllm data.max_prompt_length=$P "
              "data.max_response_length=$R actor_rollout_ref.actor.use_dynamic_bsz=True "
              "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=$(((P + R) / SP)) "
              "actor_rollout_ref.actor.ulysses_sequence_parallel_size=$SP")
    run = parse_command(script)
    # (2048 + 6144) / 2 = 4096
    assert (run.max_prompt_length, run.max_response_length) == (2048, 6144)
    assert run.actor.update.max_token_len_per_gpu == 4096 and run.actor.ulysses_sequence_parallel_size == 2


@pytest.mark.parametrize(("extra", "location", "words"), [
    (" data.max_len=4", "data.max_len", "+data.max_len"),
    (" +data.train_batch_size=8", "+data.train_batch_size", "already in"),
    (" actor_rollout_ref.rollout.gpu_memory_utilization=1.5", "actor_rollout_ref.rollout.gpu_memory_utilization",
     "(0, 1]"),
    (" actor_rollout_ref.rollout.gpu_memory_utilization=nan", "actor_rollout_ref.rollout.gpu_memory_utilization",
     "(0, 1]"),
    (" actor_rollout_ref.rollout.gpu_memory_utilization=0", "actor_rollout_ref.rollout.gpu_memory_utilization",
     "(0, 1]"),
    (" data.max_response_length=100000000", "data.max_response_length", "between 1 and 16777216"),
    (" trainer.n_gpus_per_node=100", "trainer.n_gpus_per_node", "between 1 and 72"),
    (" data.train_batch_size=abc", "data.train_batch_size", "expected an integer"),
    (" data.train_batch_size=$BS", "data.train_batch_size", "shell variable"),
    (" data.train_batch_size=$((BS * 2))", "data.train_batch_size", "BS is never assigned"),
    (" actor_rollout_ref.actor.strategy=fsdp_turbo", "actor_rollout_ref.actor.strategy", "fsdp, fsdp2"),
    (" actor_rollout_ref.rollout.name=hf", "actor_rollout_ref.rollout.name", "vllm, sglang"),
    (" algorithm.adv_estimator=ppo", "algorithm.adv_estimator", "gae, grpo"),
    (" actor_rollout_ref.actor.fsdp_config.model_dtype=int8", "actor_rollout_ref.actor.fsdp_config.model_dtype",
     "fp16"),
    (" ~actor_rollout_ref.rollout.max_num_seqs", "~actor_rollout_ref.rollout.max_num_seqs", "missing"),
    (" --config-name my_recipe", "--config-name", "not one of verl's"),
    (" model_engine=mindspeed", "model_engine", "flattened config"),
    (" actor_rollout_ref.actor.fsdp_config.fsdp_size=0", "actor_rollout_ref.actor.fsdp_config.fsdp_size", "-1"),
])
def test_bad_input_is_one_line_naming_the_key(extra: str, location: str, words: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_command(GRPO + extra)
    assert error.value.location == location
    assert words in error.value.message and "\n" not in str(error.value)


def test_rollout_name_is_required() -> None:
    with pytest.raises(ConfigError, match="required"):
        parse_command(GRPO.replace("actor_rollout_ref.rollout.name=vllm", ""))


@pytest.mark.parametrize(("change", "location", "source"), [
    # no micro batch and no dynamic bsz: engine_workers.py:636-637 asserts it
    (("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2", ""), "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
     "engine_workers.py:636"),
    (("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4", ""),
     "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", "config.py"),
    # 64 prompts × n 8 = 512 samples; 512 % 24 GPUs (3 nodes × 8) = 8 -> refused (config.py:121-127)
    ("trainer.nnodes=3", "data.train_batch_size", "do not divide by 24 GPUs"),
    # mini batch 128 > train batch 64 (actor.py:224-228)
    ("actor_rollout_ref.actor.ppo_mini_batch_size=128", "actor_rollout_ref.actor.ppo_mini_batch_size", "actor.py:224"),
    # budget 2048 < 1024 + 2048 = 3072 tokens (seqlen_balancing.py:384)
    ("actor_rollout_ref.actor.use_dynamic_bsz=true actor_rollout_ref.actor.ppo_max_token_len_per_gpu=2048",
     "actor_rollout_ref.actor.ppo_max_token_len_per_gpu", "3072"),
    # sp 2 without remove padding (actor.py:330-340)
    ("actor_rollout_ref.actor.ulysses_sequence_parallel_size=2 actor_rollout_ref.model.use_remove_padding=false",
     "actor_rollout_ref.actor.ulysses_sequence_parallel_size", "use_remove_padding"),
    # TP 3 does not divide 8 GPUs (engine_workers.py:659)
    ("actor_rollout_ref.rollout.tensor_model_parallel_size=3", "actor_rollout_ref.rollout.tensor_model_parallel_size",
     "engine_workers.py:659"),
    ("actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true", "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz",
     "engine_workers.py:616"),
])
def test_verl_start_up_checks(change: str | tuple[str, str], location: str, source: str) -> None:
    command = GRPO.replace(*change) if isinstance(change, tuple) else GRPO + " " + change
    with pytest.raises(ConfigError) as error:
        parse_command(command)
    assert error.value.location == location and source in error.value.message


def test_the_typed_location_is_kept() -> None:
    with pytest.raises(ConfigError) as error:
        parse_command(GRPO + " ++actor_rollout_ref.rollout.max_num_seqs=0")
    assert error.value.location == "++actor_rollout_ref.rollout.max_num_seqs"


def test_notes_for_unmodelled_keys() -> None:
    config = read_command(GRPO + " actor_rollout_ref.actor.fsdp_config.qat.enable=true data.dataloader_num_workers=8")
    notes = unmodelled_notes(config)
    # qat differs from its default -> a note; dataloader_num_workers=8 is verl's default -> none
    assert notes == ["actor_rollout_ref.actor.fsdp_config.qat.enable is not modelled: "
                     + unmodelled.reason_unmodelled("actor_rollout_ref.actor.fsdp_config.qat.enable")]


_REFERENCE = re.compile(r"\$\{(?:oc\.select:)?([A-Za-z_.][A-Za-z0-9_.]*)")
_COVERING = [
    GRPO + " reward.reward_model.enable=true reward.reward_model.rollout.name=vllm",
    GRPO.replace("use_kl_loss=True", "use_kl_loss=False") + " algorithm.use_kl_in_reward=true critic.enable=true"
    " critic.ppo_micro_batch_size_per_gpu=2",
    GRPO + " critic.enable=true critic.ppo_micro_batch_size_per_gpu=2 ++trainer.use_v1=false",
]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_memory_key_is_read_or_listed(version: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails when a memory key of verl's config is neither read by build_run nor listed in unmodelled.py."""
    read: set[str] = set()
    for name in ("get", "has", "section"):
        original = getattr(HydraConfig, name)

        def spy(self: HydraConfig, key: str, _original=original) -> object:
            read.add(key)
            return _original(self, key)

        monkeypatch.setattr(HydraConfig, name, spy)
    for command in _COVERING:
        build_run(read_command(command, version))
    keys = load_table(version).keys
    for key in list(read):  # a key that defaults to another by interpolation reads that one too
        default = keys.get(key)
        if default is not None and isinstance(default.value, str):
            for match in _REFERENCE.finditer(default.value):
                path = match.group(1)
                read.add(".".join([*key.split(".")[:-1], path.lstrip(".")]) if path.startswith(".") else path)
    left = [k for k in keys if unmodelled.is_memory_key(k) and k not in read
            and unmodelled.reason_unmodelled(k) is None and not unmodelled.without_memory_effect(k)]
    assert left == []


def test_method_must_be_one_memplan_sets() -> None:
    with pytest.raises(ConfigError) as error:
        run_for("m", "dpo")
    assert error.value.location == "--method"


def test_env_interpolation_from_the_script() -> None:
    run = parse_command("export BS=32\n" + GRPO + " data.train_batch_size=${oc.env:BS}")
    assert run.train_batch_size == 32  # oc.env gives "32"; verl's dataclasses convert it
