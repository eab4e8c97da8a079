"""Knobs: the settings of a run the planner and the suggestions may turn, typed and framework-neutral.

A framework declares which knobs it has and how each is spelled (``frameworks/<name>/knobs.py``); the
planner and ``advice`` name knobs, never flags, and hand knob settings back to the framework to apply
and emit.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from memplan.jobs.job import RoleName


class Knob(StrEnum):
    """What a knob changes."""

    SHARDING_STAGE = "sharding-stage"
    """How far model states are sharded (ZeRO stage; FSDP full or hybrid shard)."""
    OPTIMIZER_OFFLOAD = "optimizer-offload"
    """Optimizer state (and master weights) in host RAM."""
    PARAM_OFFLOAD = "param-offload"
    """Parameters of a model in host RAM between uses."""
    CHECKPOINTING = "checkpointing"
    """Activation (gradient) checkpointing."""
    MICRO_BATCH = "micro-batch"
    """Samples per training micro-step on one GPU."""
    FORWARD_MICRO_BATCH = "forward-micro-batch"
    """Sequences per no-grad forward (log-probs, values, rewards) on one GPU."""
    GLOBAL_BATCH = "global-batch"
    """Samples per optimizer step over all ranks."""
    TOKEN_BUDGET = "token-budget"
    """Tokens per micro-batch on one GPU (dynamic batch size)."""
    MAX_LENGTH = "max-length"
    """Longest training sequence (single-model methods)."""
    PROMPT_LENGTH = "prompt-length"
    """Longest prompt (RL)."""
    RESPONSE_LENGTH = "response-length"
    """Longest generation (RL)."""
    ENGINES = "engines"
    """Rollout engines."""
    ENGINE_TP = "engine-tp"
    """GPUs (tensor-parallel shards) per rollout engine."""
    ENGINE_MEMORY_SHARE = "engine-memory-share"
    """Fraction of a GPU's memory a rollout engine takes."""
    ENGINE_SLEEP = "engine-sleep"
    """The rollout engine sleeps outside generation."""
    TRAINER_SLEEP = "trainer-sleep"
    """Trained models' optimizer state and gradients go to host RAM outside their update."""
    COLOCATE_ALL = "colocate-all"
    """Every model and the rollout engines on the same GPUs (the hybrid engine)."""
    COLOCATE_ACTOR_REF = "colocate-actor-ref"
    """Actor and reference share GPUs."""
    COLOCATE_CRITIC_REWARD = "colocate-critic-reward"
    """Critic and reward model share GPUs."""
    GROUP_NODES = "group-nodes"
    """Nodes a role's GPU group spans."""
    GROUP_GPUS_PER_NODE = "group-gpus-per-node"
    """GPUs per node of a role's GPU group."""
    ATTENTION_IMPL = "attention-impl"
    """Attention implementation."""
    LORA_RANK = "lora-rank"
    """LoRA adapter rank (0: full fine-tuning)."""
    SEQUENCE_PARALLEL = "sequence-parallel"
    """Sequence split over GPUs (ring attention, Ulysses)."""
    PACKING = "packing"
    """Padding removed: a micro-batch is one packed row."""
    TENSOR_PARALLEL = "tensor-parallel"
    """Trainer tensor parallelism (DeepSpeed AutoTP)."""
    FOUR_BIT = "four-bit"
    """NF4 base weights (QLoRA)."""
    PARAM_DTYPE = "param-dtype"
    """Dtype of the weights."""
    GRAD_ACCUM_DTYPE = "grad-accum-dtype"
    """Dtype gradients accumulate in."""
    OVERLAP_COMM = "overlap-comm"
    """Double-buffered gradient reduction."""
    PREFIX_CACHING = "prefix-caching"
    """Rollout engine prefix cache."""
    EAGER_ENGINE = "eager-engine"
    """Rollout engine without CUDA graphs."""
    SAMPLES_PER_PROMPT = "samples-per-prompt"
    """Responses generated per prompt."""
    ROLLOUT_BATCH = "rollout-batch"
    """Prompts per rollout."""
    ENGINE_MAX_LENGTH = "engine-max-length"
    """Longest request a rollout engine accepts."""
    DYNAMIC_BATCH = "dynamic-batch"
    """Micro-batches cut by a token budget (``TOKEN_BUDGET``) instead of a sample count."""
    ENTROPY_CHUNKING = "entropy-chunking"
    """The entropy computed from the logits in chunks of rows (not all rows at once)."""


@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class KnobKey:
    """A knob, for one role when it is set per role (None: the run's, or every role's)."""

    knob: Knob
    """Which knob."""
    role: RoleName | None = None
    """The role it applies to."""


KnobValue = bool | int | float | str | None
"""A knob's value: a switch, a count, a share, a choice (None: unset, the framework's default)."""

KnobSetting = tuple[tuple[KnobKey, KnobValue], ...]
"""Knob values, sorted by key (hashable)."""
