"""verl's own start-up checks that a run must pass, as one-line errors naming the key as typed.

Each check cites the assert or raise it mirrors in the verl 0.9.1 wheel (``w:``); the same checks are in
0.8.0 at the same functions. A check fails here exactly when verl would stop, so ``check`` never calls a
run that verl refuses fine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memplan.errors import ConfigError
from memplan.frameworks.verl.hydra import HydraConfig

if TYPE_CHECKING:
    from memplan.frameworks.verl.run import Batching, VerlRun

_ACTOR = "actor_rollout_ref.actor"
_ROLLOUT = "actor_rollout_ref.rollout"
_REF = "actor_rollout_ref.ref"


def check_run(run: VerlRun, config: HydraConfig) -> None:
    """Every check below, in verl's order (``validate_config`` first, then the workers')."""
    world = run.n_gpus_per_node * run.nnodes
    actor = run.actor
    if not actor.update.use_dynamic_bsz:
        _check_batch_divisible(run, config, world)
        _require_micro(config, f"{_ACTOR}.ppo_micro_batch_size_per_gpu", actor.update,
                       "w:verl/workers/engine_workers.py:636-637 asserts it when use_dynamic_bsz is false")
        _require_micro(config, f"{_ROLLOUT}.log_prob_micro_batch_size_per_gpu", actor.log_prob,
                       "w:verl/utils/config.py:178-182 (check_mutually_exclusive) and engine_workers.py:636")
        if run.train_batch_size < actor.ppo_mini_batch_size:
            raise ConfigError(config.location(f"{_ACTOR}.ppo_mini_batch_size"),
                              f"{actor.ppo_mini_batch_size} is more than data.train_batch_size {run.train_batch_size}; "
                              "verl refuses it (w:verl/workers/config/actor.py:224-228)")
        if run.ref is not None:
            _require_micro(config, f"{_REF}.log_prob_micro_batch_size_per_gpu", run.ref.log_prob,
                           "w:verl/utils/config.py:168-174 (check_mutually_exclusive)")
    if actor.update.use_dynamic_bsz != actor.log_prob.use_dynamic_bsz:
        raise ConfigError(config.location(f"{_ROLLOUT}.log_prob_use_dynamic_bsz"),
                          f"must equal {_ACTOR}.use_dynamic_bsz (w:verl/workers/engine_workers.py:616 asserts it)")
    if actor.ulysses_sequence_parallel_size > 1 and not actor.model.use_remove_padding:
        raise ConfigError(config.location(f"{_ACTOR}.ulysses_sequence_parallel_size"),
                          "needs actor_rollout_ref.model.use_remove_padding=true "
                          "(w:verl/workers/config/actor.py:330-340)")
    longest = run.max_prompt_length + run.max_response_length
    _check_budget(config, f"{_ACTOR}.ppo_max_token_len_per_gpu", actor.update, actor.ulysses_sequence_parallel_size,
                  longest)
    _check_budget(config, f"{_ROLLOUT}.log_prob_max_token_len_per_gpu", actor.log_prob,
                  actor.ulysses_sequence_parallel_size, longest)
    if run.ref is not None:
        _check_budget(config, f"{_REF}.log_prob_max_token_len_per_gpu", run.ref.log_prob,
                      run.ref.ulysses_sequence_parallel_size, longest)
    if run.critic is not None:
        _check_critic(run, config, longest)
    rollout = run.rollout
    replica = rollout.tensor_parallel_size * rollout.data_parallel_size * rollout.pipeline_parallel_size
    if world % replica:
        raise ConfigError(config.location(f"{_ROLLOUT}.tensor_model_parallel_size"),
                          f"a rollout replica of {replica} GPUs (TP × DP × PP) does not divide the {world} GPUs "
                          "(w:verl/workers/engine_workers.py:659 asserts it)")


def _check_batch_divisible(run: VerlRun, config: HydraConfig, world: int) -> None:
    """``train_batch_size × rollout.n`` must divide by the GPU count (w:verl/utils/config.py:103-127)."""
    samples = run.train_batch_size * run.rollout_n
    if samples % world:
        raise ConfigError(config.location("data.train_batch_size"),
                          f"{run.train_batch_size} prompts × rollout.n {run.rollout_n} = {samples} samples do not "
                          f"divide by {world} GPUs; verl refuses it (w:verl/utils/config.py:121-127)")


def _require_micro(config: HydraConfig, key: str, batching: Batching, source: str) -> None:
    if batching.micro_batch_size_per_gpu is None:
        raise ConfigError(config.location(key), "required unless use_dynamic_bsz=true: set a micro batch per GPU "
                                                f"or a token budget ({source})")


def _check_budget(config: HydraConfig, key: str, batching: Batching, ulysses: int, longest: int) -> None:
    """A packed micro-batch must hold the longest sequence: ``max_token_len × sp ≥ max_seq_len``
    (w:verl/utils/seqlen_balancing.py:384-386, with ``max_token_len = budget × sp`` at
    w:verl/workers/engine/utils.py:108-111). The longest is taken as prompt + response (the padded width)."""
    if batching.use_dynamic_bsz and batching.max_token_len_per_gpu * ulysses < longest:
        raise ConfigError(config.location(key),
                          f"{batching.max_token_len_per_gpu} tokens (× Ulysses {ulysses}) cannot hold one sequence of "
                          f"max_prompt_length + max_response_length = {longest} tokens "
                          "(w:verl/utils/seqlen_balancing.py:384 asserts it)")


def _check_critic(run: VerlRun, config: HydraConfig, longest: int) -> None:
    critic = run.critic
    assert critic is not None
    if not critic.update.use_dynamic_bsz:
        _require_micro(config, "critic.ppo_micro_batch_size_per_gpu", critic.update,
                       "w:verl/workers/config/critic.py:107-108 (_check_mutually_exclusive)")
        if run.train_batch_size < critic.ppo_mini_batch_size:
            raise ConfigError(config.location("critic.ppo_mini_batch_size"),
                              f"{critic.ppo_mini_batch_size} is more than data.train_batch_size "
                              f"{run.train_batch_size}; verl refuses it (w:verl/workers/config/critic.py:124-129)")
    if critic.ulysses_sequence_parallel_size > 1 and not critic.model.use_remove_padding:
        raise ConfigError(config.location("critic.fsdp.ulysses_sequence_parallel_size"),
                          "needs critic.model.use_remove_padding=true (w:verl/workers/config/critic.py)")
    _check_budget(config, "critic.ppo_max_token_len_per_gpu", critic.update, critic.ulysses_sequence_parallel_size,
                  longest)


def check_heads(run: VerlRun, num_attention_heads: int, num_key_value_heads: int) -> None:
    """Ulysses splits heads: ``num_attention_heads % sp == 0`` and kv heads divisible by sp or sp by them
    (w:verl/models/transformers/monkey_patch.py:343-349). Needs the model, so the caller runs it."""
    for section, degree in (("actor_rollout_ref.actor", run.actor.ulysses_sequence_parallel_size),
                            ("critic.fsdp", run.critic.ulysses_sequence_parallel_size if run.critic else 1)):
        key = f"{section}.ulysses_sequence_parallel_size"
        if num_attention_heads % degree:
            raise ConfigError(key, f"{degree} does not divide the model's {num_attention_heads} attention heads "
                                   "(w:verl/models/transformers/monkey_patch.py:343)")
        if num_key_value_heads % degree and degree % num_key_value_heads:
            raise ConfigError(key, f"{degree} and the model's {num_key_value_heads} key/value heads do not divide "
                                   "one another (w:verl/models/transformers/monkey_patch.py:346)")
