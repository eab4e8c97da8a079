"""verl's config -> a typed run: every key that changes memory, resolved for one release.

Citations ``w:`` are to the verl 0.9.1 wheel (``verl-0.9.1-py3-none-any.whl``), ``w8:`` to the 0.8.0 wheel;
key paths are the same in both unless said. The run is for the FSDP workers (``model_engine=dp``); other
engines are read by ``command.read_config`` (their overrides are checked) but not modelled here.

Bounds reuse the framework-neutral limits of ``frameworks/openrlhf/bounds.py`` (MAX_GPUS, MAX_TOKENS...;
each is sourced there from released hardware and models, not from OpenRLHF).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from memplan.errors import ConfigError
from memplan.frameworks.openrlhf.bounds import (
    MAX_GPUS,
    MAX_GPUS_PER_NODE,
    MAX_LORA_RANK,
    MAX_SEQUENCES,
    MAX_STEPS,
    MAX_TOKENS,
)
from memplan.frameworks.verl import values
from memplan.frameworks.verl.defaults import Engine
from memplan.frameworks.verl.hydra import HydraConfig

#: Largest weight-sync bucket: 2**20 MB = 1 TiB, above any GPU's memory (H200 141 GB, B200 192 GB).
MAX_BUCKET_MEGABYTES = 2**20
ACTOR = "actor_rollout_ref.actor"
REF = "actor_rollout_ref.ref"
ROLLOUT = "actor_rollout_ref.rollout"
MODEL = "actor_rollout_ref.model"


class Method(StrEnum):
    """The RL method, from ``algorithm.adv_estimator`` (w:verl/trainer/ppo/core_algos.py:97-110, same in w8)."""

    PPO = "ppo"
    """``gae``: a critic learns the values."""
    GRPO = "grpo"
    """``grpo``, ``grpo_passk``, ``grpo_vectorized``, ``gdpo``: group-normalised rewards, no critic."""
    REINFORCE = "reinforce"
    """``reinforce_plus_plus`` and ``_baseline``."""
    RLOO = "rloo"
    """``rloo``, ``rloo_vectorized``."""
    REMAX = "remax"
    """``remax``: a greedy baseline generation per prompt."""
    OTHER = "other"
    """``opo``, ``gpg``, ``optimal_token_baseline``, ``tir_optimal_token_baseline``: critic-free baselines."""


ADV_ESTIMATORS: dict[str, Method] = {
    "gae": Method.PPO, "grpo": Method.GRPO, "grpo_passk": Method.GRPO, "grpo_vectorized": Method.GRPO,
    "gdpo": Method.GRPO, "reinforce_plus_plus": Method.REINFORCE, "reinforce_plus_plus_baseline": Method.REINFORCE,
    "rloo": Method.RLOO, "rloo_vectorized": Method.RLOO, "remax": Method.REMAX, "opo": Method.OTHER,
    "gpg": Method.OTHER, "optimal_token_baseline": Method.OTHER, "tir_optimal_token_baseline": Method.OTHER,
}
"""``algorithm.adv_estimator`` value -> method (AdvantageEstimator members, 0.8.0 and 0.9.1 alike)."""

METHOD_ESTIMATORS: dict[Method, str] = {Method.PPO: "gae", Method.GRPO: "grpo", Method.REINFORCE:
                                        "reinforce_plus_plus", Method.RLOO: "rloo", Method.REMAX: "remax"}
"""The estimator ``estimate --method`` sets for each method."""


class FsdpStrategy(StrEnum):
    """``*.strategy`` of an FSDP worker (w:verl/workers/engine/fsdp/transformer_impl.py, ``fsdp_version``)."""

    FSDP = "fsdp"
    """FSDP1 (``FullyShardedDataParallel``)."""
    FSDP2 = "fsdp2"
    """FSDP2 (``fully_shard``)."""


class RolloutEngine(StrEnum):
    """``actor_rollout_ref.rollout.name`` (w:verl/workers/rollout/replica.py registry)."""

    VLLM = "vllm"
    SGLANG = "sglang"
    TRTLLM = "trtllm"


@dataclass(frozen=True, slots=True, kw_only=True)
class FsdpConfig:
    """One FSDP worker's ``fsdp_config`` (actor, ref) or ``critic.fsdp`` (w:verl/workers/config/engine.py)."""

    strategy: FsdpStrategy
    """FSDP1 or FSDP2 (the role's ``strategy`` key, synced into the engine: w:workers/config/actor.py:321-326)."""
    param_offload: bool
    """verl moves the sharded params to host between phases."""
    optimizer_offload: bool
    """verl moves the optimizer state to host between phases."""
    offload_policy: bool
    """FSDP2 ``CPUOffloadPolicy(pin_memory=True)``: params live on host, FSDP streams them."""
    reshard_after_forward: bool
    """False keeps unsharded params from forward to backward (FSDP1 SHARD_GRAD_OP)."""
    fsdp_size: int
    """Ranks per shard group; the world when verl's -1 (HSDP when smaller)."""
    model_dtype: str
    """Stored param dtype (``fp32`` default: the sharded fp32 params are the master copy)."""
    param_dtype: str
    """Mixed-precision compute copy (``mixed_precision.param_dtype``, bf16 default, transformer_impl.py:391-395)."""
    reduce_dtype: str
    """Gradient reduce dtype (fp32 default)."""
    buffer_dtype: str
    """Buffer dtype (fp32 default)."""
    forward_prefetch: bool
    """FSDP1 forward prefetch of the next unit's params."""
    use_no_sync: bool
    """``use_no_sync_for_gradient_accumulation``: unsharded grads kept until the last micro-batch."""
    use_torch_compile: bool
    """Compiles the entropy function."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Batching:
    """How a pass splits its samples on one GPU: a fixed micro batch, or a token budget."""

    use_dynamic_bsz: bool
    """True: micro-batches packed up to ``max_token_len_per_gpu`` × Ulysses degree tokens
    (w:verl/workers/engine/utils.py:108-121)."""
    micro_batch_size_per_gpu: int | None
    """Sequences per micro-batch (None with a token budget)."""
    max_token_len_per_gpu: int
    """Token budget per GPU (read even when unused: verl keeps it)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Entropy:
    """Entropy computation of a forward pass (verl.md §4)."""

    from_logits_with_chunking: bool
    chunk_size: int
    """Tokens per chunk when chunking."""
    checkpointing: bool
    """Recompute the entropy in backward."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelOptions:
    """``actor_rollout_ref.model.*`` or ``critic.model.*`` (w:verl/trainer/config/model/hf_model.yaml)."""

    path: str
    """The model as typed (resolution is the caller's)."""
    enable_gradient_checkpointing: bool
    enable_activation_offload: bool
    use_remove_padding: bool
    """Packed varlen path (flash-attn); memory follows real lengths."""
    use_fused_kernels: bool
    fused_kernel_impl: str
    """``fused_kernel_options.impl_backend``: torch or triton."""
    use_liger: bool
    tiled_mlp: bool
    tiled_mlp_shards: int
    lora_rank: int
    """LoRA rank: ``lora.rank`` if > 0, else ``lora_rank`` (w:trainer/ppo/v1/trainer_base.py:233-235)."""
    fsdp_lora_rank: int
    """``lora_rank`` alone: the FSDP engine wraps the model with peft iff it is > 0
    (w:verl/workers/engine/fsdp/transformer_impl.py:162, :597-599)."""
    lora_alpha: int
    lora_target_modules: tuple[str, ...]
    """FSDP LoRA targets (``target_modules``; ``all-linear`` is one word)."""
    lora_merge: bool
    """``lora.merge``: adapters merged before sync (vLLM then sees a dense model)."""
    use_shm: bool
    """Model copy in /dev/shm (host RAM)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorRun:
    """The actor's training worker."""

    fsdp: FsdpConfig
    model: ModelOptions
    ppo_mini_batch_size: int
    """Prompts per optimizer step (the worker uses × rollout.n samples)."""
    ppo_epochs: int
    optimizer: str
    """``optim.optimizer`` (``AdamW``; w:verl/trainer/config/optim/fsdp.yaml)."""
    optimizer_impl: str
    """``optim.optimizer_impl``: the module the optimizer class is taken from (``torch.optim``)."""
    update: Batching
    """The actor update's micro-batching."""
    log_prob: Batching
    """The old-log-prob forward (``rollout.log_prob_*``; w:workers/engine_workers.py:619-628)."""
    ulysses_sequence_parallel_size: int
    entropy: Entropy
    entropy_in_update: bool
    """The update computes entropy (``entropy_coeff`` ≠ 0 or ``calculate_entropy``)."""
    checkpoint_contents: tuple[str, ...]
    """``checkpoint.save_contents`` (``hf_model`` adds a full gather)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RefRun:
    """The reference policy's forward-only worker (host-offloaded params always, verl.md §3)."""

    fsdp: FsdpConfig
    """As typed; verl ignores its ``param_offload``: a forward-only engine always offloads its params to host
    (FSDP1 ``CPUOffload(offload_params=True)`` / FSDP2 ``CPUOffloadPolicy``, w:verl/workers/engine/fsdp/
    transformer_impl.py:428-463)."""
    log_prob: Batching
    ulysses_sequence_parallel_size: int
    entropy: Entropy


@dataclass(frozen=True, slots=True, kw_only=True)
class CriticRun:
    """The critic's training worker (key paths ``critic.fsdp.*`` in 0.8 and 0.9)."""

    fsdp: FsdpConfig
    model: ModelOptions
    ppo_mini_batch_size: int
    ppo_epochs: int
    optimizer: str
    optimizer_impl: str
    update: Batching
    """Critic update micro-batching. With the V1 trainer (``trainer.use_v1``, 0.9) the engine's token budget
    is ``ppo_infer_max_token_len_per_gpu`` (w:trainer/ppo/v1/trainer_base.py:266-268; a dataclass field, default
    32768 at w:workers/config/critic.py:89, added with ``+critic.ppo_infer_max_token_len_per_gpu``); the
    legacy trainer uses ``ppo_max_token_len_per_gpu`` (w:trainer/ppo/ray_trainer.py:810-811)."""
    values: Batching
    """The values forward (``forward_micro_batch_size_per_gpu``, ``ppo_infer_max_token_len_per_gpu``)."""
    ulysses_sequence_parallel_size: int
    checkpoint_contents: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutRun:
    """The inference engine serving generation (verl.md §5)."""

    name: RolloutEngine
    tensor_parallel_size: int
    data_parallel_size: int
    expert_parallel_size: int
    pipeline_parallel_size: int
    gpu_memory_utilization: float
    """vLLM: share of total memory requested; SGLang: ``mem_fraction_static``."""
    max_num_batched_tokens: int
    max_num_seqs: int
    max_model_len: int | None
    """None: the model's ``max_position_embeddings``."""
    enforce_eager: bool
    free_cache_engine: bool
    """False: the engine never sleeps (weights and KV stay)."""
    enable_chunked_prefill: bool
    enable_prefix_caching: bool
    update_weights_bucket_megabytes: int
    """GPU buffer for the weight sync (``checkpoint_engine.update_weights_bucket_megabytes``)."""
    load_format: str
    layered_summon: bool
    calculate_log_probs: bool
    nnodes: int
    """``rollout.nnodes`` (0: colocated with the trainers)."""
    engine_kwargs: tuple[tuple[str, Any], ...]
    """``engine_kwargs.<name>.*`` as given (e.g. vLLM ``kv_cache_memory_bytes``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RewardModelRun:
    """A generative/discriminative reward model served by its own engine (``reward.reward_model.*``)."""

    model_path: str | None
    enable_resource_pool: bool
    """True: its own GPUs (``n_gpus_per_node`` × ``nnodes``); else colocated, sleeping at level 1."""
    n_gpus_per_node: int
    nnodes: int
    rollout_name: str
    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int | None
    enforce_eager: bool
    free_cache_engine: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class VerlRun:
    """One verl PPO-family run with every memory-relevant key resolved."""

    version: str
    """verl release whose defaults apply."""
    engine: Engine
    method: Method
    adv_estimator: str
    train_batch_size: int
    """Prompts per step (× ``rollout_n`` sequences)."""
    rollout_n: int
    max_prompt_length: int
    max_response_length: int
    actor: ActorRun
    ref: RefRun | None
    """Present iff ``actor.use_kl_loss`` or ``algorithm.use_kl_in_reward``, and not LoRA (then the actor with
    its adapter off serves as ref): w:trainer/ppo/utils.py:75-79, w:trainer/ppo/v1/trainer_base.py:233-236."""
    critic: CriticRun | None
    """Present iff ``critic.enable``, or it is null and ``adv_estimator == gae`` (w:trainer/ppo/utils.py:96-107)."""
    rollout: RolloutRun
    reward_model: RewardModelRun | None
    """Present iff ``reward.reward_model.enable`` (w:trainer/ppo/utils.py:90-93)."""
    n_gpus_per_node: int
    nnodes: int
    hybrid_engine: bool
    use_v1: bool
    """0.9's V1 trainer (TransferQueue; 0.8 has the legacy trainer only)."""
    save_freq: int
    """Checkpoint every this many steps (-1: never)."""
    critic_warmup: int
    given: tuple[str, ...]
    """Dotted keys the command set, in order (for notes)."""


# --- sections -----------------------------------------------------------------------------------------

def _fsdp(config: HydraConfig, section: str, strategy_key: str, world: int) -> FsdpConfig:
    """``section`` = ``actor_rollout_ref.actor.fsdp_config`` / ``.ref.fsdp_config`` / ``critic.fsdp``."""
    strategy = values.choice(config, strategy_key, FsdpStrategy, "fsdp, fsdp2 (fsdp_turbo is not modelled)")
    size = values.integer(config, f"{section}.fsdp_size", -1, MAX_GPUS, "-1 means every GPU of the world")
    if size == 0:
        raise ConfigError(config.location(f"{section}.fsdp_size"), "must be -1 (the world) or at least 1")
    return FsdpConfig(
        strategy=strategy,
        param_offload=values.boolean(config, f"{section}.param_offload"),
        optimizer_offload=values.boolean(config, f"{section}.optimizer_offload"),
        offload_policy=values.boolean(config, f"{section}.offload_policy"),
        reshard_after_forward=values.boolean(config, f"{section}.reshard_after_forward"),
        fsdp_size=world if size == -1 else size,
        model_dtype=values.dtype(config, f"{section}.model_dtype", "fp32"),
        param_dtype=values.dtype(config, f"{section}.mixed_precision.param_dtype", "bf16"),
        reduce_dtype=values.dtype(config, f"{section}.mixed_precision.reduce_dtype", "fp32"),
        buffer_dtype=values.dtype(config, f"{section}.mixed_precision.buffer_dtype", "fp32"),
        forward_prefetch=values.boolean(config, f"{section}.forward_prefetch"),
        use_no_sync=values.boolean(config, f"{section}.use_no_sync_for_gradient_accumulation", absent=False),
        use_torch_compile=values.boolean(config, f"{section}.use_torch_compile"),
    )


def _model(config: HydraConfig, section: str) -> ModelOptions:
    lora = values.integer(config, f"{section}.lora.rank", 0, MAX_LORA_RANK, "0 means no LoRA")
    rank = lora if lora > 0 else values.integer(config, f"{section}.lora_rank", 0, MAX_LORA_RANK, "0 means no LoRA")
    targets = values.read_value(config, f"{section}.target_modules")
    return ModelOptions(
        path=str(config.get(f"{section}.path")),
        enable_gradient_checkpointing=values.boolean(config, f"{section}.enable_gradient_checkpointing"),
        enable_activation_offload=values.boolean(config, f"{section}.enable_activation_offload"),
        use_remove_padding=values.boolean(config, f"{section}.use_remove_padding"),
        use_fused_kernels=values.boolean(config, f"{section}.use_fused_kernels"),
        fused_kernel_impl=values.text(config, f"{section}.fused_kernel_options.impl_backend"),
        use_liger=values.boolean(config, f"{section}.use_liger"),
        tiled_mlp=values.boolean(config, f"{section}.tiled_mlp.enabled"),
        tiled_mlp_shards=values.integer(config, f"{section}.tiled_mlp.num_shards", 1, MAX_TOKENS),
        lora_rank=rank,
        fsdp_lora_rank=values.integer(config, f"{section}.lora_rank", 0, MAX_LORA_RANK, "0 means no LoRA"),
        lora_alpha=values.integer(config, f"{section}.lora_alpha", 0, MAX_LORA_RANK * 64),
        lora_target_modules=tuple(targets) if isinstance(targets, list) else (str(targets),),
        lora_merge=values.boolean(config, f"{section}.lora.merge"),
        use_shm=values.boolean(config, f"{section}.use_shm"),
    )


def _batching(config: HydraConfig, dynamic: str, micro: str, tokens: str, *, tokens_value: int | None = None) \
        -> Batching:
    use_dynamic = values.boolean(config, dynamic)
    return Batching(
        use_dynamic_bsz=use_dynamic,
        micro_batch_size_per_gpu=values.optional_integer(config, micro, 1, MAX_SEQUENCES),
        max_token_len_per_gpu=tokens_value if tokens_value is not None else values.integer(config, tokens, 1, MAX_TOKENS),
    )


#: Entropy chunk when the release has no ``entropy_from_logits_chunk_size`` key (0.8.0): the function's default
#: (w8:verl/utils/torch_functional.py:241 ``chunk_size: int = 2048``).
ENTROPY_CHUNK_DEFAULT = 2048


def _entropy(config: HydraConfig, section: str) -> Entropy:
    """From the engine's config, which the FSDP engine reads (w:verl/workers/engine/fsdp/transformer_impl.py:178,
    1398-1402; w8 :157,1126). In 0.9 these keys default to the role's ``entropy_*`` by interpolation; in 0.8 the
    role's keys do not reach the engine."""
    return Entropy(
        from_logits_with_chunking=values.boolean(config, f"{section}.entropy_from_logits_with_chunking"),
        chunk_size=(values.integer(config, f"{section}.entropy_from_logits_chunk_size", 1, MAX_TOKENS)
                    if config.has(f"{section}.entropy_from_logits_chunk_size") else ENTROPY_CHUNK_DEFAULT),
        checkpointing=values.boolean(config, f"{section}.entropy_checkpointing"),
    )


def _ulysses(config: HydraConfig, section: str, engine_section: str, world: int) -> int:
    """The Ulysses degree the engine runs with: the engine's ``<engine_section>.ulysses_sequence_parallel_size``,
    replaced by the role's deprecated ``<section>.ulysses_sequence_parallel_size`` when that is > 1
    (w:verl/workers/config/actor.py:327-329, w8 :320-321). The critic has no such copy in 0.8/0.9
    (w:verl/workers/config/critic.py:212-219): its engine reads ``critic.fsdp.*`` only."""
    meaning = "Ulysses degree; at most the GPUs of the run"
    engine = values.integer(config, f"{engine_section}.ulysses_sequence_parallel_size", 1, world, meaning)
    if section == "critic":
        return engine
    role = values.integer(config, f"{section}.ulysses_sequence_parallel_size", 1, world, meaning)
    return role if role > 1 else engine


def build_run(config: HydraConfig) -> VerlRun:
    """The typed run of ``config`` (ConfigError, naming the key as typed, for a value verl would refuse)."""
    if config.table.engine is not Engine.DP:
        raise ConfigError("model_engine", f"memplan models verl's FSDP workers (model_engine=dp); "
                                          f"{config.table.engine.value} is read but not modelled")
    nodes = values.integer(config, "trainer.nnodes", 1, MAX_GPUS)
    per_node = values.integer(config, "trainer.n_gpus_per_node", 1, MAX_GPUS_PER_NODE)
    world = nodes * per_node
    if world > MAX_GPUS:
        raise ConfigError(config.location("trainer.nnodes"), f"{nodes} nodes × {per_node} GPUs is more than "
                                                             f"{MAX_GPUS} GPUs")
    estimator = values.text(config, "algorithm.adv_estimator")
    if estimator not in ADV_ESTIMATORS:
        raise ConfigError(config.location("algorithm.adv_estimator"),
                          f"must be one of {', '.join(ADV_ESTIMATORS)} (verl/trainer/ppo/core_algos.py), "
                          f"got {estimator!r}")
    model = _model(config, MODEL)
    actor = ActorRun(
        fsdp=_fsdp(config, f"{ACTOR}.fsdp_config", f"{ACTOR}.strategy", world),
        model=model,
        ppo_mini_batch_size=values.integer(config, f"{ACTOR}.ppo_mini_batch_size", 1, MAX_SEQUENCES),
        ppo_epochs=values.integer(config, f"{ACTOR}.ppo_epochs", 1, MAX_STEPS),
        optimizer=values.text(config, f"{ACTOR}.optim.optimizer"),
        optimizer_impl=values.text(config, f"{ACTOR}.optim.optimizer_impl"),
        update=_batching(config, f"{ACTOR}.use_dynamic_bsz", f"{ACTOR}.ppo_micro_batch_size_per_gpu",
                         f"{ACTOR}.ppo_max_token_len_per_gpu"),
        log_prob=_batching(config, f"{ROLLOUT}.log_prob_use_dynamic_bsz",
                           f"{ROLLOUT}.log_prob_micro_batch_size_per_gpu", f"{ROLLOUT}.log_prob_max_token_len_per_gpu"),
        ulysses_sequence_parallel_size=_ulysses(config, ACTOR, f"{ACTOR}.fsdp_config", world),
        entropy=_entropy(config, f"{ACTOR}.fsdp_config"),
        entropy_in_update=values.read_value(config, f"{ACTOR}.entropy_coeff") != 0 or values.boolean(config, f"{ACTOR}.calculate_entropy"),
        checkpoint_contents=values.contents(config, f"{ACTOR}.checkpoint.save_contents"),
    )
    use_kl = values.boolean(config, f"{ACTOR}.use_kl_loss") or values.boolean(config, "algorithm.use_kl_in_reward")
    ref_in_actor = model.lora_rank > 0 or values.read_value(config, f"{MODEL}.lora_adapter_path") is not None
    ref = None
    if use_kl and not ref_in_actor:
        ref = RefRun(
            fsdp=_fsdp(config, f"{REF}.fsdp_config", f"{REF}.strategy", world),
            log_prob=_batching(config, f"{REF}.log_prob_use_dynamic_bsz", f"{REF}.log_prob_micro_batch_size_per_gpu",
                               f"{REF}.log_prob_max_token_len_per_gpu"),
            ulysses_sequence_parallel_size=_ulysses(config, REF, f"{REF}.fsdp_config", world),
            entropy=_entropy(config, f"{REF}.fsdp_config"),
        )
    enable = values.read_value(config, "critic.enable")
    use_critic = bool(values.boolean(config, "critic.enable")) if enable is not None else estimator == "gae"
    use_v1 = config.has("trainer.use_v1") and values.boolean(config, "trainer.use_v1")
    critic = _critic(config, world, use_v1) if use_critic else None
    run = VerlRun(
        version=config.table.version, engine=config.table.engine, method=ADV_ESTIMATORS[estimator],
        adv_estimator=estimator,
        train_batch_size=values.integer(config, "data.train_batch_size", 1, MAX_SEQUENCES),
        rollout_n=values.integer(config, f"{ROLLOUT}.n", 1, MAX_SEQUENCES),
        max_prompt_length=values.integer(config, "data.max_prompt_length", 1, MAX_TOKENS),
        max_response_length=values.integer(config, "data.max_response_length", 1, MAX_TOKENS),
        actor=actor, ref=ref, critic=critic, rollout=_rollout(config, world),
        reward_model=_reward_model(config) if values.boolean(config, "reward.reward_model.enable") else None,
        n_gpus_per_node=per_node, nnodes=nodes,
        hybrid_engine=values.boolean(config, "actor_rollout_ref.hybrid_engine"),
        use_v1=use_v1,
        save_freq=values.integer(config, "trainer.save_freq", -1, MAX_STEPS, "-1 means no save"),
        critic_warmup=values.integer(config, "trainer.critic_warmup", 0, MAX_STEPS),
        given=tuple(config.typed),
    )
    from memplan.frameworks.verl.checks import check_run  # verl's own start-up asserts

    check_run(run, config)
    return run


def _critic(config: HydraConfig, world: int, use_v1: bool) -> CriticRun:
    infer_tokens = (values.integer(config, "critic.ppo_infer_max_token_len_per_gpu", 1, MAX_TOKENS)
                    if config.has("critic.ppo_infer_max_token_len_per_gpu") else CRITIC_INFER_TOKENS_DEFAULT)
    return CriticRun(
        fsdp=_fsdp(config, "critic.fsdp", "critic.strategy", world),
        model=_model(config, "critic.model"),
        ppo_mini_batch_size=values.integer(config, "critic.ppo_mini_batch_size", 1, MAX_SEQUENCES),
        ppo_epochs=values.integer(config, "critic.ppo_epochs", 1, MAX_STEPS),
        optimizer=values.text(config, "critic.optim.optimizer"),
        optimizer_impl=values.text(config, "critic.optim.optimizer_impl"),
        update=_batching(config, "critic.use_dynamic_bsz", "critic.ppo_micro_batch_size_per_gpu",
                         "critic.ppo_max_token_len_per_gpu", tokens_value=infer_tokens if use_v1 else None),
        values=_batching(config, "critic.use_dynamic_bsz", "critic.forward_micro_batch_size_per_gpu",
                         "critic.forward_max_token_len_per_gpu", tokens_value=infer_tokens),
        ulysses_sequence_parallel_size=_ulysses(config, "critic", "critic.fsdp", world),
        checkpoint_contents=values.contents(config, "critic.checkpoint.save_contents"),
    )


#: ``CriticConfig.ppo_infer_max_token_len_per_gpu`` default (w:verl/workers/config/critic.py:89, w8 the same
#: field); not in the yaml, so the dataclass default applies unless ``+critic.ppo_infer_max_token_len_per_gpu``.
CRITIC_INFER_TOKENS_DEFAULT = 32768


def _rollout(config: HydraConfig, world: int) -> RolloutRun:
    name = values.read_value(config, f"{ROLLOUT}.name")
    engine = values.choice(config, f"{ROLLOUT}.name", RolloutEngine, "vllm, sglang, trtllm")
    kwargs = config.section(f"{ROLLOUT}.engine_kwargs.{name}")
    return RolloutRun(
        name=engine,
        tensor_parallel_size=values.integer(config, f"{ROLLOUT}.tensor_model_parallel_size", 1, world),
        data_parallel_size=values.integer(config, f"{ROLLOUT}.data_parallel_size", 1, world),
        expert_parallel_size=values.integer(config, f"{ROLLOUT}.expert_parallel_size", 1, world),
        pipeline_parallel_size=values.integer(config, f"{ROLLOUT}.pipeline_model_parallel_size", 1, world),
        gpu_memory_utilization=values.fraction(config, f"{ROLLOUT}.gpu_memory_utilization"),
        max_num_batched_tokens=values.integer(config, f"{ROLLOUT}.max_num_batched_tokens", 1, MAX_TOKENS),
        max_num_seqs=values.integer(config, f"{ROLLOUT}.max_num_seqs", 1, MAX_SEQUENCES),
        max_model_len=values.optional_integer(config, f"{ROLLOUT}.max_model_len", 1, MAX_TOKENS),
        enforce_eager=values.boolean(config, f"{ROLLOUT}.enforce_eager"),
        free_cache_engine=values.boolean(config, f"{ROLLOUT}.free_cache_engine"),
        enable_chunked_prefill=values.boolean(config, f"{ROLLOUT}.enable_chunked_prefill"),
        enable_prefix_caching=values.boolean(config, f"{ROLLOUT}.enable_prefix_caching"),
        update_weights_bucket_megabytes=values.integer(
            config, f"{ROLLOUT}.checkpoint_engine.update_weights_bucket_megabytes", 1, MAX_BUCKET_MEGABYTES),
        load_format=values.text(config, f"{ROLLOUT}.load_format"),
        layered_summon=values.boolean(config, f"{ROLLOUT}.layered_summon"),
        calculate_log_probs=values.boolean(config, f"{ROLLOUT}.calculate_log_probs"),
        nnodes=values.integer(config, f"{ROLLOUT}.nnodes", 0, MAX_GPUS, "0 means on the trainers' GPUs"),
        engine_kwargs=tuple(sorted(kwargs.items())),
    )


def _reward_model(config: HydraConfig) -> RewardModelRun:
    section = "reward.reward_model"
    path = values.read_value(config, f"{section}.model_path")
    return RewardModelRun(
        model_path=None if path is None else str(path),
        enable_resource_pool=values.boolean(config, f"{section}.enable_resource_pool"),
        n_gpus_per_node=values.integer(config, f"{section}.n_gpus_per_node", 1, MAX_GPUS_PER_NODE),
        nnodes=values.integer(config, f"{section}.nnodes", 0, MAX_GPUS),
        rollout_name=values.text(config, f"{section}.rollout.name"),
        tensor_parallel_size=values.integer(config, f"{section}.rollout.tensor_model_parallel_size", 1, MAX_GPUS),
        gpu_memory_utilization=values.fraction(config, f"{section}.rollout.gpu_memory_utilization"),
        max_num_seqs=values.integer(config, f"{section}.rollout.max_num_seqs", 1, MAX_SEQUENCES),
        max_num_batched_tokens=values.integer(config, f"{section}.rollout.max_num_batched_tokens", 1, MAX_TOKENS),
        max_model_len=values.optional_integer(config, f"{section}.rollout.max_model_len", 1, MAX_TOKENS),
        enforce_eager=values.boolean(config, f"{section}.rollout.enforce_eager"),
        free_cache_engine=values.boolean(config, f"{section}.rollout.free_cache_engine"),
    )
