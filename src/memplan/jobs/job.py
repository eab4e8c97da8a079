"""A Job: the resolved description of one training run — roles, GPU groups, placement.

Built once by a framework adapter (``frameworks/openrlhf``) from user intent, with every default
resolved; the estimator only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from memplan.dtypes import DType
from memplan.jobs.options import Method
from memplan.memory.activations import AttnImpl
from memplan.memory.sharding import Sharding
from memplan.memory.breakdown import Phase
from memplan.memory.logits import Head, LogProbImpl
from memplan.model.spec import ModelSpec

if TYPE_CHECKING:
    from memplan.jobs.schedule import Schedule


class RoleName(StrEnum):
    """Who a model is in the run."""

    POLICY = "policy"
    """The trained model of SFT/RM/DPO/KTO/PRM/KD."""
    REF = "ref"
    """Frozen reference model (DPO/KTO, RL KL term)."""
    TEACHER = "teacher"
    """Frozen teacher (KD)."""
    ACTOR = "actor"
    """RL policy (trained)."""
    CRITIC = "critic"
    """RL value model (trained, value head)."""
    REWARD = "reward"
    """RL reward model (frozen, value head)."""
    ROLLOUT = "rollout"
    """vLLM generation engine."""
    EMA = "ema"
    """Exponential moving average of the actor (frozen, offloaded)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoraOptions:
    """peft LoRA on the trained roles."""

    rank: int
    """Adapter rank r."""
    alpha: int
    """Scaling numerator (no memory effect)."""
    target_modules: tuple[str, ...]
    """Module names to adapt; ``("all-linear",)`` means every linear layer but the output head."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Role:
    """One model of the run with all its memory-relevant options resolved."""

    name: RoleName
    """Who the model is."""
    spec: ModelSpec
    """Its architecture."""
    head: Head
    """LM head or value head."""
    trained: bool
    """True for models with gradients and an optimizer."""
    group: str
    """Name of the GPU group the role runs on."""
    param_dtype: DType
    """Dtype of the weights the sharding engine holds (bf16/fp16; fp32 without mixed precision)."""
    sharding: Sharding
    """How the model's states are sharded over its group and where they live (DeepSpeed ZeRO or FSDP)."""
    lora: LoraOptions | None
    """LoRA adapter options; None for full fine-tuning."""
    load_in_4bit: bool
    """QLoRA: NF4 base weights."""
    gradient_checkpointing: bool
    """HF gradient checkpointing (non-reentrant)."""
    attn_impl: AttnImpl
    """Attention implementation."""
    micro_batch_size: int
    """Samples per micro-step on one GPU."""
    sequences_per_sample: int
    """Sequences one sample becomes in the forward (2 for chosen+rejected in RM/DPO/KTO)."""
    seq_len: int
    """Tokens per sequence (the padded maximum, the worst case)."""
    packing: bool
    """Padding removed: the micro-batch is one packed row."""
    ring_size: int
    """Ring attention degree (sequence split over this many GPUs)."""
    ds_tp_size: int
    """DeepSpeed AutoTP degree."""
    holds_output: bool = False
    """The trainer keeps the last micro-step's fp32 logits alive into the next (SFT, KD)."""
    kd_student: bool = False
    """KD student: teacher logits and the fp32 KD loss tensors."""
    keeps_output_to_step: bool = False
    """The trainer holds the micro-step's ``output`` through the optimizer step (PPO actor)."""
    entropy: bool = False
    """An entropy coefficient is given: the actor's forward computes the entropy (a softmax over its fp32 logits)."""
    entropy_in_loss: bool = False
    """The entropy coefficient is non-zero, so the entropy is backwarded."""
    entropy_chunk: int | None = None
    """The entropy is computed over chunks of this many tokens (None: over the whole micro-batch at once)."""
    fused_head: bool = False
    """Log-probs and entropy come from the hidden states chunk by chunk: no [tokens, vocab] logits."""
    autocast_head: bool = False
    """The LM head runs under autocast and its logits stay in the compute dtype (no fp32 copy): the packed
    head of memory/logits.py ``packed_head_terms``."""
    saves_hf_model: bool = False
    """The role's ``save_model`` runs (Phase.SAVE): the trained model at the end of training."""
    saves_ds_checkpoint: bool = False
    """The role writes DeepSpeed checkpoints during training (Phase.CHECKPOINT)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step of a trained role: ``train_batch_size × ring × ds_tp /
    (micro_train_batch_size × world)`` (OpenRLHF's DeepSpeed config, reference/openrlhf.md §1.1). With more
    than one, gradients outlive each backward into the next micro-batch's forward."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuGroup:
    """A set of GPUs a role (or colocated roles) runs on."""

    name: str
    """Group name (``train``, ``actor``, ``critic``...)."""
    num_nodes: int
    """Nodes the group spans."""
    gpus_per_node: int
    """GPUs per node in the group."""

    @property
    def num_gpus(self) -> int:
        """GPUs in the group."""
        return self.num_nodes * self.gpus_per_node


@dataclass(frozen=True, slots=True, kw_only=True)
class SaveSchedule:
    """When a run saves: the HF model at the end, and every ``save_steps`` a DeepSpeed checkpoint and/or the
    HF model. The roles that save are marked on each Role (``saves_hf_model``, ``saves_ds_checkpoint``)."""

    save_steps: int | None
    """Global steps between saves during training; None when it never saves during training."""
    hf_every_steps: bool
    """The HF model is also saved every ``save_steps``."""
    ds_every_steps: bool
    """A DeepSpeed checkpoint is written every ``save_steps``."""
    interval_option: str
    """The framework's option that sets the interval, as the user would type it (for notes)."""
    hf_every_option: str
    """The framework's option that saves the HF model at every interval."""
    no_checkpoint_option: str
    """The framework's option that turns the periodic DeepSpeed checkpoint off."""

    @property
    def phases(self) -> tuple[Phase, ...]:
        """The save phases of the host timeline, in the order they first happen."""
        return ((Phase.CHECKPOINT,) if self.ds_every_steps else ()) + (Phase.SAVE,)


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """A fully resolved run."""

    method: Method
    """The training method."""
    roles: tuple[Role, ...]
    """Every model of the run."""
    groups: tuple[GpuGroup, ...]
    """The GPU groups the roles are placed on."""
    logprob_impl: LogProbImpl
    """How log-probs are computed (GPU installs use the Triton kernel)."""
    framework_version: str
    """OpenRLHF version whose defaults were applied."""
    command: str
    """The launch command this job corresponds to."""
    saves: SaveSchedule | None = None
    """When the run saves (None: saving not modelled)."""

    def role(self, name: RoleName) -> Role | None:
        """The role called ``name``, if the job has it."""
        return next((r for r in self.roles if r.name == name), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutSettings:
    """The vLLM engines and the rollout of an RL iteration."""

    num_engines: int
    """vLLM engines (0: no vLLM)."""
    tensor_parallel_size: int
    """GPUs per engine."""
    gpu_memory_utilization: float
    """Fraction of each GPU's total memory vLLM takes."""
    enforce_eager: bool
    """No CUDA graphs."""
    enable_prefix_caching: bool
    """vLLM prefix cache."""
    enable_sleep: bool
    """vLLM sleep level 1 between rollouts (weights to host RAM, KV dropped)."""
    max_model_len: int
    """vLLM's ``max_model_len``: the longest request (prompt + generation) an engine accepts."""
    seq_len: int
    """Longest sequence (prompt + response) one sample reaches after OpenRLHF truncates it: the token length
    make-experience and training micro-batches are sized for, and each replay-buffer item holds."""
    rollout_batch_size: int
    """Prompts per rollout."""
    n_samples_per_prompt: int
    """Samples per prompt."""
    micro_rollout_batch_size: int
    """Sequences per forward in make-experience."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SlotRun:
    """Consecutive GPUs of the cluster, in node-major order, with the same roles on each.

    GPU ``index`` is ``node × node_gpus + gpu`` (:attr:`RlJob.node_gpus`). Runs keep the placement
    compact: a role group of any size is one run, never one entry per GPU.
    """

    first: int
    """Index of the first GPU."""
    count: int
    """GPUs in the run."""
    roles: tuple[RoleName, ...]
    """Roles with a rank on each of these GPUs (``rollout`` for a vLLM engine or TP shard)."""


#: Ranks per role on one node, and one whole placement as ``((ranks on a node, how many such nodes), ...)``.
NodeRoleRanks = tuple[tuple[RoleName, int], ...]
NodePlacement = tuple[tuple[NodeRoleRanks, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RlJob:
    """A resolved RL run: roles, their GPU placement, the rollout and the iteration's schedule."""

    job: Job
    """Roles and groups (each role's ``group`` names its own group)."""
    rollout: RolloutSettings
    """vLLM and rollout settings."""
    runs: tuple[SlotRun, ...]
    """The GPUs with the roles placed on them, in node-major order."""
    node_gpus: int
    """GPUs per node the placement packs into."""
    schedule: Schedule
    """The iteration's phases, what each role does in them and where its states are."""
    entropy: bool
    """The actor computes the entropy of its policy: a softmax over its fp32 logits."""
    ray_placements: tuple[NodePlacement, ...] = ()
    """Every placement Ray's PACK policy may choose for the same groups (frameworks/openrlhf/ray_placement.py),
    each as ``((ranks per role on a node, how many such nodes), ...)``; ``runs`` is the one estimated per GPU."""
