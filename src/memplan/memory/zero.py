"""DeepSpeed ZeRO as OpenRLHF runs it: the resolved configuration and ZeRO's partition arithmetic.

OpenRLHF (``openrlhf/utils/deepspeed/deepspeed_utils.py``, ``get_train_ds_config`` and
``get_eval_ds_config``) passes ``"auto"`` for every bucket and ZeRO-3 limit. DeepSpeed's
``DeepSpeedConfigModel.__init__`` drops ``"auto"`` values (runtime/config_utils.py:55-56), and
OpenRLHF has no HF Trainer to fill them in, so DeepSpeed's own defaults apply. Every default below is
read from DeepSpeed 0.19.8 (the version installed in this project's trace extra) with its line.

Glossary: *dp degree* = ranks one model is partitioned over (``N``); *partition* = one rank's slice;
*group* = one optimizer param group (OpenRLHF builds two: weight-decay and no-decay).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

from memplan.dtypes import DType, bytes_for
from memplan.errors import ConfigError
from memplan.memory.sharding import ZeroStage
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.model.params import ParamModule
from memplan.sources import Source, code

DEEPSPEED = "deepspeedai/DeepSpeed"
DEEPSPEED_VERSION = "v0.19.8"
OPENRLHF_UTILS = "OpenRLHF/OpenRLHF:openrlhf/utils/deepspeed/deepspeed_utils.py@0a3fbce"


def ds_source(path: str, detail: str) -> Source:
    """A citation of DeepSpeed's source at the pinned version (``path`` under ``deepspeed/``)."""
    return code(f"{DEEPSPEED}:deepspeed/{path}@{DEEPSPEED_VERSION}", detail)


def ds_term(path: str, numel: int, dtype: DType, category: Category, device: Device, source: Source,
            phase: Phase | None = None) -> Term:
    """A term of ``numel`` elements of ``dtype`` (the model-state and DeepSpeed-buffer formulas' constructor)."""
    return Term(path=path, bytes=bytes_for(numel, dtype), category=category, device=device, source=source,
                phase=phase)


# --- DeepSpeed 0.19.8 defaults (deepspeed/runtime/zero/config.py unless noted) -----------------
#: ``reduce_bucket_size`` (config.py:113): elements per gradient reduce bucket.
REDUCE_BUCKET_SIZE_DEFAULT = 500_000_000
#: ``allgather_bucket_size`` (config.py:132): only sizes the fallback all-gather without
#: ``all_gather_into_tensor`` (runtime/utils.py:1019-1054); NCCL has it, so no buffer is allocated.
ALLGATHER_BUCKET_SIZE_DEFAULT = 500_000_000
#: ``stage3_prefetch_bucket_size`` (config.py:222): elements fetched ahead at ZeRO-3.
PREFETCH_BUCKET_SIZE_DEFAULT = 50_000_000
#: ``stage3_param_persistence_threshold`` (config.py:228): tensors with ``numel <=`` this stay whole
#: on every rank (runtime/zero/parameter_offload.py:325).
PARAM_PERSISTENCE_THRESHOLD_DEFAULT = 100_000
#: ``stage3_max_live_parameters`` (config.py:245): caps prefetching (partitioned_param_coordinator.py:453).
MAX_LIVE_PARAMETERS_DEFAULT = 1_000_000_000
#: ``stage3_max_reuse_distance`` (config.py:251): a gathered parameter reused within this many elements
#: of the module trace is not released (partitioned_param_coordinator.py:653-661).
MAX_REUSE_DISTANCE_DEFAULT = 1_000_000_000
#: ``sub_group_size`` (config.py:182): ZeRO-3 optimizer step granularity in elements.
SUB_GROUP_SIZE_DEFAULT = 1_000_000_000
#: ``contiguous_gradients`` (config.py:102): True at every stage.
CONTIGUOUS_GRADIENTS_DEFAULT = True
#: ``reduce_scatter`` (config.py:108).
REDUCE_SCATTER_DEFAULT = True
#: ``zero_hpz_partition_size`` default (config.py:324); OpenRLHF's ``--zpg`` default is also 1
#: (openrlhf/utils/deepspeed/deepspeed.py, ``getattr(args, "zpg", 1)``).
HPZ_PARTITION_SIZE_DEFAULT = 1
#: Elements per all-reduce bucket outside ZeRO (engine.py:151 ``MEMORY_OPT_ALLREDUCE_SIZE``).
NON_ZERO_ALLREDUCE_BUCKET_SIZE = 500_000_000
#: Stage 1/2 flat buffers are padded to a multiple of ``2 × dp`` elements (stage_1_and_2.py:387, 441).
NCCL_START_ALIGNMENT_FACTOR = 2

#: Substrings that put a parameter in OpenRLHF's no-weight-decay group
#: (deepspeed_utils.py ``get_optimizer_grouped_parameters``).
NO_DECAY_NAME_PARTS = ("bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight")

_LOW_PRECISION = (DType.BF16, DType.FP16)


@dataclass(frozen=True, slots=True, kw_only=True)
class ZeroConfig:
    """The ZeRO settings of one DeepSpeed engine, fully resolved (no "auto", no unset values)."""

    stage: ZeroStage
    """ZeRO stage the engine runs (eval engines: 3 or 0)."""
    dp_degree: int
    """Ranks the model is partitioned over (``N``)."""
    ranks_per_node: int
    """Ranks of this engine on one node (host RAM per node = per rank × this)."""
    param_dtype: DType
    """Model weights: bf16, fp16, or fp32 when neither ``bf16`` nor ``fp16`` is enabled."""
    grad_accum_dtype: DType
    """Gradient accumulation dtype; DeepSpeed uses the model dtype when unset (engine.py:1806-1807)."""
    offload_optimizer: bool = False
    """``offload_optimizer.device == cpu``: DeepSpeedCPUAdam, the optimizer state and step in pinned host RAM."""
    offload_param: bool = False
    """``offload_param.device == cpu`` (ZeRO-3 only; OpenRLHF's eval engines of offloaded frozen models)."""
    pin_memory: bool = True
    """OpenRLHF sets ``pin_memory: true`` for both offload blocks."""
    overlap_comm: bool = False
    """Default True at stage 3, else False (config.py:384-386); OpenRLHF can set it True at any stage."""
    contiguous_gradients: bool = CONTIGUOUS_GRADIENTS_DEFAULT
    """Copy gradients into the reduce bucket; forced on with optimizer offload (stage_1_and_2.py:300)."""
    reduce_scatter: bool = REDUCE_SCATTER_DEFAULT
    """Reduce-scatter (True) or all-reduce gradients."""
    zpg: int = HPZ_PARTITION_SIZE_DEFAULT
    """ZeRO++ hpZ secondary partition size (``zero_hpz_partition_size``)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step (host gradient accumulation buffers with offload)."""
    reduce_bucket_size: int = REDUCE_BUCKET_SIZE_DEFAULT
    """Elements per gradient reduce bucket."""
    allgather_bucket_size: int = ALLGATHER_BUCKET_SIZE_DEFAULT
    """Elements per stage 1/2 all-gather shard (no buffer with NCCL)."""
    prefetch_bucket_size: int = PREFETCH_BUCKET_SIZE_DEFAULT
    """ZeRO-3 prefetch elements."""
    max_live_parameters: int = MAX_LIVE_PARAMETERS_DEFAULT
    """ZeRO-3 limit on gathered elements before prefetching stops."""
    param_persistence_threshold: int = PARAM_PERSISTENCE_THRESHOLD_DEFAULT
    """ZeRO-3: tensors with at most this many elements stay unpartitioned."""
    max_reuse_distance: int = MAX_REUSE_DISTANCE_DEFAULT
    """ZeRO-3: keep a gathered parameter reused within this many elements of the trace."""
    sub_group_size: int = SUB_GROUP_SIZE_DEFAULT
    """ZeRO-3 optimizer sub-group size in elements."""

    def __post_init__(self) -> None:
        for name in ("dp_degree", "ranks_per_node", "zpg", "gradient_accumulation_steps", "reduce_bucket_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"zero.{name}", f"must be >= 1, got {getattr(self, name)}")
        if self.param_dtype not in (*_LOW_PRECISION, DType.FP32):
            raise ConfigError("zero.param_dtype", f"must be bf16, fp16 or fp32, got {self.param_dtype.label}")
        if self.offload_param and self.stage != ZeroStage.ZERO_3:
            raise ConfigError("zero.offload_param", "parameter offload needs ZeRO stage 3")
        if self.offload_optimizer and self.stage == ZeroStage.ZERO_0:
            # engine.py:2295-2321 wraps the client DeepSpeedCPUAdam in FP16_Optimizer at stage 0; its init
            # step asserts CPU parameters (ops/adam/cpu_adam.py:148).
            raise ConfigError("zero.offload_optimizer", "DeepSpeed's CPU Adam needs ZeRO stage 1, 2 or 3")
        if (self.stage == ZeroStage.ZERO_0 and self.param_dtype != self.grad_accum_dtype):
            raise ConfigError("zero.grad_accum_dtype", "DeepSpeed 0.19.8 rejects a gradient accumulation dtype other "
                              "than the model dtype at ZeRO stage 0 (engine.py:2323)")
        if self.zpg > 1 and self.dp_degree % min(self.zpg, self.dp_degree):
            raise ConfigError("zero.zpg", f"{self.zpg} must divide the {self.dp_degree} data-parallel ranks")

    @property
    def uses_bf16_optimizer(self) -> bool:
        """Stage 1 + bf16 + fp32 accumulation without offload runs BF16_Optimizer (engine.py:2305-2310)."""
        return (self.stage == ZeroStage.ZERO_1 and self.param_dtype == DType.BF16
                and self.grad_accum_dtype == DType.FP32 and not self.offload_optimizer)

    @property
    def hpz_degree(self) -> int:
        """Ranks of one hpZ secondary partition group (1 = off; only ZeRO-3 uses it)."""
        return min(self.zpg, self.dp_degree) if self.stage == ZeroStage.ZERO_3 else 1


def _dtype_flag(value: DType | None, default: DType) -> DType:
    return default if value is None else value


def train_zero_config(*, zero_stage: int, dp_degree: int, ranks_per_node: int, param_dtype: DType = DType.BF16,
                      adam_offload: bool = False, zpg: int = HPZ_PARTITION_SIZE_DEFAULT,
                      grad_accum_dtype: DType | None = None, overlap_comm: bool = False,
                      gradient_accumulation_steps: int = 1) -> ZeroConfig:
    """What ``get_train_ds_config`` gives DeepSpeed for a trained model (actor, critic, SFT/RM/DPO policy).

    ``offload_param`` is hard-coded off for training models; ``overlap_comm`` and
    ``contiguous_gradients`` are only written when overlap is asked for, otherwise DeepSpeed's defaults
    apply (overlap True at stage 3 only, config.py:384-386; contiguous True); ``reduce_scatter`` True.
    ``grad_accum_dtype=None`` (flag absent) resolves to the model dtype (engine.py:1806-1807).

    Source: OpenRLHF deepspeed_utils.py ``get_train_ds_config``; DeepSpeed runtime/zero/config.py.
    Checked by: tests/memory/test_model_states.py::test_resolver_openrlhf_defaults
    """
    stage = _stage(zero_stage)
    return ZeroConfig(stage=stage, dp_degree=dp_degree, ranks_per_node=ranks_per_node, param_dtype=param_dtype,
                      grad_accum_dtype=_dtype_flag(grad_accum_dtype, param_dtype), offload_optimizer=adam_offload,
                      overlap_comm=overlap_comm or stage == ZeroStage.ZERO_3, zpg=zpg,
                      gradient_accumulation_steps=gradient_accumulation_steps)


def eval_zero_config(*, zero_stage: int, dp_degree: int, ranks_per_node: int, param_dtype: DType = DType.BF16,
                     offload: bool = False) -> ZeroConfig:
    """What ``get_eval_ds_config`` gives DeepSpeed for a frozen model (reference, reward, teacher, EMA).

    The stage is 3 only when training uses stage 3, else 0 (a full bf16 replica per GPU). ``offload``
    (the frozen model's parameter offload) writes ``offload_param: cpu``, which DeepSpeed only honours at
    stage 3; at stage 0 it changes nothing.

    Source: OpenRLHF deepspeed.py ``get_ds_eval_config`` (``stage=self.stage if self.stage == 3 else 0``).
    Checked by: tests/memory/test_model_states.py::test_resolver_openrlhf_defaults
    """
    stage = ZeroStage.ZERO_3 if _stage(zero_stage) == ZeroStage.ZERO_3 else ZeroStage.ZERO_0
    return ZeroConfig(stage=stage, dp_degree=dp_degree, ranks_per_node=ranks_per_node, param_dtype=param_dtype,
                      grad_accum_dtype=param_dtype, offload_param=offload and stage == ZeroStage.ZERO_3,
                      overlap_comm=stage == ZeroStage.ZERO_3)


def _stage(value: int) -> ZeroStage:
    try:
        return ZeroStage(value)
    except ValueError:
        raise ConfigError("zero.stage", f"must be 0, 1, 2 or 3, got {value}") from None


# --- the parameters as DeepSpeed's optimizer sees them --------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ParamLayout:
    """One model's parameter tensors (element counts), in registration order, split as DeepSpeed sees them.

    Immutable, so what is computed from the tensor lists is computed once per layout (``cached_property``,
    hence no ``slots``): an estimate asks for the largest tensor at every backward moment, once per layer,
    and a walk over a 512-layer model's 4,600 tensors each time made estimates grow with layers squared.
    """

    trainable_groups: tuple[tuple[int, ...], ...]
    """Elements of each trainable tensor, per optimizer param group (empty groups dropped, engine.py)."""
    frozen_tensors: tuple[int, ...]
    """Elements of each frozen tensor (LoRA base, or a whole eval model)."""
    largest_layer_params: int
    """Largest module's own parameters (what one ZeRO-3 fetch gathers; DeepSpeed's ``largest_layer``)."""
    per_tensor: bool = True
    """False when built from counts: entries are aggregates, so per-tensor effects (boundary overlap,
    persistence threshold, oversized bucket tensors) are not modelled."""

    @cached_property
    def trainable_params(self) -> int:
        """Trainable elements."""
        return sum(sum(g) for g in self.trainable_groups)

    @cached_property
    def frozen_params(self) -> int:
        """Frozen elements."""
        return sum(self.frozen_tensors)

    @property
    def num_params(self) -> int:
        """All distinct elements."""
        return self.trainable_params + self.frozen_params

    @cached_property
    def largest_tensor(self) -> int:
        """Largest trainable tensor (DeepSpeed's ``largest_param_numel``); 0 when built from counts."""
        if not self.per_tensor:
            return 0
        return max((t for g in self.trainable_groups for t in g), default=0)

    @cached_property
    def _all_tensors(self) -> tuple[int, ...]:
        return tuple(t for g in self.trainable_groups for t in g) + self.frozen_tensors

    def all_tensors(self) -> tuple[int, ...]:
        """Every tensor, trainable then frozen."""
        return self._all_tensors

    @cached_property
    def tensor_histogram(self) -> tuple[tuple[int, int], ...]:
        """``(numel, count)`` over every tensor: a model repeats a few shapes, so sums over it are short."""
        return tuple(Counter(self._all_tensors).items())


def _is_no_decay(module: ParamModule, tensor_name: str) -> bool:
    name = f"{module.path}.{tensor_name}"
    return any(part in name for part in NO_DECAY_NAME_PARTS)


def layout_from_tree(tree: ParamModule, *, adapter_tensors: Sequence[int] = ()) -> ParamLayout:
    """Full fine-tuning (no adapters) or LoRA (``adapter_tensors`` = each adapter tensor's elements).

    Full: OpenRLHF's two param groups, weight decay then no decay (biases and norms). LoRA: the base is
    frozen; the adapters form one group (their names match no no-decay part, and DeepSpeed drops the
    empty group). Tied tensors are counted once, as ``model.parameters()`` yields them once.
    """
    decay: list[int] = []
    no_decay: list[int] = []
    for module in tree.walk():
        for tensor in module.tensors:
            if tensor.buffer or tensor.tied:
                continue
            (no_decay if _is_no_decay(module, tensor.name) else decay).append(tensor.numel)
    largest = max(m.own_params for m in tree.walk())
    if adapter_tensors:
        return ParamLayout(trainable_groups=(tuple(adapter_tensors),), frozen_tensors=tuple(decay + no_decay),
                           largest_layer_params=largest)
    groups = tuple(tuple(g) for g in (decay, no_decay) if g)
    return ParamLayout(trainable_groups=groups, frozen_tensors=(), largest_layer_params=largest)


def layout_from_counts(*, num_params: int, trainable_params: int, largest_layer_params: int = 0) -> ParamLayout:
    """Counts only (as DeepSpeed's ``*_all_cold`` estimators take them): one aggregate per kind."""
    if not 0 <= trainable_params <= num_params:
        raise ConfigError("trainable_params", f"must be between 0 and {num_params}, got {trainable_params}")
    groups = ((trainable_params,),) if trainable_params else ()
    frozen = (num_params - trainable_params,) if num_params > trainable_params else ()
    return ParamLayout(trainable_groups=groups, frozen_tensors=frozen, largest_layer_params=largest_layer_params,
                       per_tensor=False)


# --- stage 1/2 flat buffers --------------------------------------------------------------------


def flat_group_numel(group_numel: int, dp_degree: int) -> int:
    """Stage 1/2 flat buffer of one group: padded to a multiple of ``2·N`` (stage_1_and_2.py:441-446)."""
    alignment = NCCL_START_ALIGNMENT_FACTOR * dp_degree
    return -(-group_numel // alignment) * alignment


def stage12_partition_numels(layout: ParamLayout, dp_degree: int) -> tuple[int, ...]:
    """Each group's partition: ``len(flat) // N`` (stage_1_and_2.py:586)."""
    return tuple(flat_group_numel(sum(g), dp_degree) // dp_degree for g in layout.trainable_groups)


@lru_cache(maxsize=256)
def grads_in_partition_numel(layout: ParamLayout, dp_degree: int) -> int:
    """Elements of stage 2's contiguous gradient partition on the worst rank.

    ``copy_grads_in_partition`` allocates the *whole* of every tensor that overlaps the rank's
    partition (stage_1_and_2.py:2184-2194, membership from ``get_partition_info`` :2579-2611), so a
    rank pays for the tensors cut by its boundaries. Counts-only layouts have no boundaries. The ranks'
    totals change only where a tensor starts or ends, so only those ranks are visited (not every rank).
    Cached: it walks every tensor, and each engine's model states and backward timeline ask for it.
    """
    return sum(grads_in_partition_tensors(layout, dp_degree))


@lru_cache(maxsize=256)
def grads_in_partition_tensors(layout: ParamLayout, dp_degree: int) -> tuple[int, ...]:
    """The tensors (numel each) overlapping the worst rank's stage 1/2 partition (see
    ``grads_in_partition_numel``); a counts-only layout gives its partitions, one per group. The worst
    rank is found from the changes of the ranks' totals (only where a tensor starts or ends), then its
    tensors are collected in a second pass, so no list is built per rank."""
    partitions = stage12_partition_numels(layout, dp_degree)
    if not layout.per_tensor:
        return partitions
    changes: dict[int, int] = defaultdict(int)  # rank -> change of the total from the rank before
    for first, last, numel in _tensor_ranks(layout, partitions, dp_degree):
        changes[first] += numel
        changes[last + 1] -= numel
    worst_rank, worst, total = 0, -1, 0
    for rank in sorted(changes):
        total += changes[rank]
        if rank < dp_degree and total > worst:
            worst_rank, worst = rank, total
    return tuple(numel for first, last, numel in _tensor_ranks(layout, partitions, dp_degree)
                 if first <= worst_rank <= last)


def _tensor_ranks(layout: ParamLayout, partitions: tuple[int, ...], dp_degree: int) -> Iterator[tuple[int, int, int]]:
    """``(first rank, last rank, numel)`` of each trainable tensor in its group's flat buffer."""
    for group, size in zip(layout.trainable_groups, partitions):
        start = 0
        for numel in group:
            yield start // size, min((start + numel - 1) // size, dp_degree - 1), numel
            start += numel


# --- stage 3 partitions ------------------------------------------------------------------------


def stage3_partition_numel(numel: int, dp_degree: int) -> int:
    """One tensor's ZeRO-3 partition: ``ceil(numel / N)`` (partition_parameters.py:1690-1698, 1816-1817)."""
    return -(-numel // dp_degree)


@lru_cache(maxsize=512)
def _histogram(tensors: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """``(numel, count)`` of a tensor list: a model repeats a few shapes, so partition sums are short."""
    return tuple(Counter(tensors).items())


def _partition_sum(tensors: tuple[int, ...], dp_degree: int) -> int:
    return sum(stage3_partition_numel(numel, dp_degree) * count for numel, count in _histogram(tensors))


def stage3_trainable_partition_numel(layout: ParamLayout, dp_degree: int) -> int:
    """Sum of trainable partitions (the flat buffers of stage3.py:972, 791)."""
    return sum(_partition_sum(g, dp_degree) for g in layout.trainable_groups)


def stage3_frozen_partition_numel(layout: ParamLayout, dp_degree: int) -> int:
    """Sum of frozen-tensor partitions (each its own ``ds_tensor``, partition_parameters.py:1836)."""
    return _partition_sum(layout.frozen_tensors, dp_degree)


def persistent_numel(layout: ParamLayout, threshold: int) -> int:
    """Elements of tensors kept whole on every rank: ``numel <= threshold`` (parameter_offload.py:325)."""
    if not layout.per_tensor:
        return 0
    return sum(numel * count for numel, count in layout.tensor_histogram if numel <= threshold)


@lru_cache(maxsize=256)
def largest_sub_group_numel(layout: ParamLayout, dp_degree: int, sub_group_size: int) -> int:
    """Largest ZeRO-3 optimizer sub-group (``sub_group_numels``)."""
    return max(sub_group_numels(layout, dp_degree, sub_group_size), default=0)


@lru_cache(maxsize=256)
def sub_group_numels(layout: ParamLayout, dp_degree: int, sub_group_size: int) -> tuple[int, ...]:
    """Each ZeRO-3 optimizer sub-group's partition numel on one rank: per parameter group, partitions
    accumulated until ``>= sub_group_size`` (stage3.py:1210-1233, ``_create_fp16_sub_groups``).
    Cached: it walks every tensor."""
    sizes: list[int] = []
    for group in layout.trainable_groups:
        partitions = [stage3_partition_numel(t, dp_degree) for t in group]
        if sum(partitions) <= sub_group_size:
            sizes.append(sum(partitions))
            continue
        current = 0
        for numel in partitions:
            current += numel
            if current >= sub_group_size:
                sizes.append(current)
                current = 0
        if current:
            sizes.append(current)
    return tuple(s for s in sizes if s)
