"""PyTorch FSDP (FSDP1 ``FullyShardedDataParallel`` and FSDP2 ``fully_shard``): the sharding engine's typed
options, its shard arithmetic and the persistent states one rank holds. Transient buffers (unshard,
prefetch, reduce-scatter, optimizer step) are in ``memory/fsdp_transient.py``.

The options are framework-neutral: a framework adapter (``frameworks/verl``) resolves its own keys into
an :class:`FsdpSharding` once. Every citation is PyTorch at the version verl 0.9.1 pins (``torch==2.11.0``),
read from the released wheel; line numbers are that wheel's. torch 2.13 (this project's CPU venv, which
the tests run) agrees on everything used here except where a docstring says otherwise.

Glossary: *unit* = one ``fully_shard``/FSDP-wrapped module (verl wraps each decoder layer, then the root,
which takes every parameter no layer holds: embedding, final norm, LM head); *N* = ``shard_size``, ranks
a parameter is sharded over; *S* = one rank's padded shard of a unit (elements); *U* = a unit's
unpadded element count; *compute dtype* = mixed-precision ``param_dtype``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from memplan.dtypes import DType, bytes_for
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.model.params import ModuleKind, ParamModule
from memplan.sources import Source, code

TORCH = "pytorch/pytorch"
TORCH_VERSION = "v2.11.0"
#: Path prefixes of the two FSDP implementations in torch 2.11.
FSDP2_DIR = "torch/distributed/fsdp/_fully_shard"
FSDP1_DIR = "torch/distributed/fsdp"

#: FSDP1 aligns each original parameter to 16 bytes of the compute dtype when ``use_orig_params``
#: (torch/distributed/fsdp/_flat_param.py@v2.11.0 ``_get_aligned_numel`` :2774-2779, "comes from
#: TorchInductor").
FSDP1_ALIGNMENT_BYTES = 16

#: Bytes of one AdamW ``step`` tensor: a 0-dim fp32 tensor kept on the host unless ``capturable`` or
#: ``fused`` (torch/optim/adam.py@v2.11.0 :165-176; ``_get_scalar_dtype`` optimizer.py:213-218).
ADAM_STEP_BYTES = 4


def torch_source(path: str, detail: str) -> Source:
    """A citation of PyTorch's source at the version verl pins (``path`` from the repository root)."""
    return code(f"{TORCH}:{path}@{TORCH_VERSION}", detail)


class FsdpVersion(StrEnum):
    """Which FSDP implementation wraps the model."""

    FSDP1 = "fsdp1"
    """``torch.distributed.fsdp.FullyShardedDataParallel`` (flat parameters per wrapped unit)."""
    FSDP2 = "fsdp2"
    """``torch.distributed.fsdp.fully_shard`` (per-parameter DTensor shards)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FsdpSharding:
    """How one model is sharded and where its states live, resolved."""

    version: FsdpVersion
    """FSDP1 or FSDP2."""
    shard_size: int
    """Ranks each parameter is sharded over (the whole group, or a smaller HSDP shard group)."""
    param_dtype: DType
    """Dtype the sharded parameters are stored in (the master copy when the model is trained)."""
    compute_dtype: DType
    """Mixed-precision ``param_dtype``: the dtype of the unsharded copy forward/backward use."""
    reduce_dtype: DType
    """Mixed-precision ``reduce_dtype``: the dtype gradients are reduce-scattered in (they are then kept
    in ``param_dtype``: FSDP2 casts the reduce output back, FSDP1 ``_cast_grad_to_param_dtype``)."""
    reshard_after_forward: bool
    """Free each unit's unsharded parameters after its forward (FSDP1 FULL_SHARD; False = SHARD_GRAD_OP)."""
    param_offload: bool
    """The framework moves the sharded parameters (and gradients) to host RAM between phases."""
    optimizer_offload: bool
    """The framework moves the optimizer state to host RAM between phases."""
    cpu_offload: bool
    """FSDP's own CPU offload (FSDP1 ``CPUOffload(offload_params=True)``, FSDP2 ``CPUOffloadPolicy``): shards
    live in host RAM and stream to the GPU per unit during compute."""
    cpu_offload_pinned: bool
    """The host shards of ``cpu_offload`` are page-locked."""
    no_sync_accumulation: bool = False
    """Gradient accumulation under ``no_sync``: unsharded gradients are kept until the last micro-batch."""
    forward_prefetch: bool = False
    """All-gather the next unit during the current unit's forward (FSDP1 ``forward_prefetch``; FSDP2
    ``set_modules_to_forward_prefetch`` with depth 1). Both default off (fully_sharded_data_parallel.py
    :410; FSDP2 prefetches in forward only when told)."""
    gloo: bool = False
    """Collectives run on gloo (a CPU run, as the references in validation/fsdp_cpu are made), whose
    reduce-scatter clones its input; NCCL does not."""
    embeddings_wrapped: bool = False
    """Untied ``embed_tokens`` and ``lm_head`` are FSDP units of their own (verl's FSDP2 wrapping), not part of
    the root."""
    use_orig_params: bool = False
    """FSDP1 only: keep the original parameters as views, which pads each one to 16 bytes inside the flat
    parameter and gives the optimizer one state per original parameter."""


# --- the units and their shards --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class FsdpUnit:
    """One wrapped module's own parameters (those no nested unit holds), in registration order."""

    name: str
    """Module path (``model.layers.3``; ``""`` for the root)."""
    shapes: tuple[tuple[int, ...], ...]
    """Shape of each parameter tensor (tied parameters once)."""
    late_grad_numel: int = 0
    """Elements whose gradients autograd produces only at the end of backward (an untied input embedding
    in the root): until then the root's unsharded gradients exclude them."""
    frozen: tuple[bool, ...] = ()
    """Per entry of ``shapes``, True for a parameter without gradients (a LoRA base weight); empty: every
    parameter is trained."""

    @property
    def numel(self) -> int:
        """Unpadded elements ``U``."""
        return sum(math.prod(s) for s in self.shapes)

    @property
    def grad_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shapes of the parameters that get gradients (and optimizer state)."""
        if not self.frozen:
            return self.shapes
        return tuple(s for s, f in zip(self.shapes, self.frozen, strict=True) if not f)

    @property
    def grad_numel(self) -> int:
        """Unpadded elements that get gradients."""
        return sum(math.prod(s) for s in self.grad_shapes)


def flat_groups(unit: FsdpUnit) -> tuple[FsdpUnit, ...]:
    """The FSDP1 flat parameters of ``unit``: one, or, when it mixes frozen and trained parameters (LoRA),
    one of the frozen ones plus one per trained parameter.

    verl wraps LoRA models with a lambda policy that makes every leaf module whose weight requires grad its
    own FSDP unit (verl 0.9.1 ``verl/utils/fsdp_utils.py`` ``get_fsdp_wrap_policy`` :113-125, or-ed with the
    decoder-layer policy), so the adapters' ``lora_A``/``lora_B`` ``Linear`` modules are flat parameters nested
    in their layer's unit, which keeps only the frozen base weights.
    Assumes: each adapter module has one parameter (peft ``bias="none"``, verl ``_build_lora_module``
    ``transformer_impl.py`` :359-367).
    """
    if not any(unit.frozen) or all(unit.frozen):
        return (unit,)
    base = FsdpUnit(name=unit.name, shapes=tuple(s for s, f in zip(unit.shapes, unit.frozen, strict=True) if f),
                    frozen=(True,) * sum(unit.frozen))
    return (base, *(FsdpUnit(name=unit.name, shapes=(s,)) for s in unit.grad_shapes))


#: fsdp_units by (tree identity, arguments); the entry keeps its tree alive, so an id is never reused while cached.
_UNITS_CACHE: dict[tuple[object, ...], tuple[ParamModule, tuple[FsdpUnit, ...]]] = {}
_UNITS_CACHE_SIZE = 64


def fsdp_units(tree: ParamModule, *, layer_container: str = "model.layers", wrap_embeddings: bool = False,
               adapters: Mapping[str, Sequence[tuple[int, ...]]] | None = None) -> tuple[FsdpUnit, ...]:
    """:func:`_fsdp_units`, remembered per tree (the planner asks for the same model's units for every
    candidate; trees come from cached builders, so identity is the cheap key)."""
    key = (id(tree), layer_container, wrap_embeddings,
           tuple(sorted((k, tuple(v)) for k, v in adapters.items())) if adapters else None)
    hit = _UNITS_CACHE.get(key)
    if hit is not None and hit[0] is tree:
        return hit[1]
    units = _fsdp_units(tree, layer_container=layer_container, wrap_embeddings=wrap_embeddings, adapters=adapters)
    if len(_UNITS_CACHE) >= _UNITS_CACHE_SIZE:
        _UNITS_CACHE.clear()
    _UNITS_CACHE[key] = (tree, units)
    return units


def _fsdp_units(tree: ParamModule, *, layer_container: str = "model.layers", wrap_embeddings: bool = False,
               adapters: Mapping[str, Sequence[tuple[int, ...]]] | None = None) -> tuple[FsdpUnit, ...]:
    """The units as verl wraps a causal LM, in forward order: each child of ``layer_container`` (with
    ``wrap_embeddings`` and untied embeddings, the input embedding first and the LM head after the layers:
    FSDP2's ``_select_fsdp2_wrap_targets`` :549-570 wraps ``embed_tokens``/``lm_head`` by name unless
    ``tie_word_embeddings``), then the root with the rest.

    ``adapters`` (LoRA): per adapted module path, the shapes of the adapter weights peft adds to it; they
    join that module's unit after its own tensors, every other parameter is frozen (peft freezes the base
    model, ``bias="none"``), and nothing is a late gradient (the embedding gets none).

    Source: verl 0.9.1 ``verl/utils/fsdp_utils.py`` ``apply_fsdp2`` :573-600 (``fully_shard`` on each
    ``_no_split_modules`` layer, then on the model) and ``get_fsdp_wrap_policy`` (FSDP1 transformer
    auto-wrap of the same layer class; the root FSDP takes the remaining parameters); LoRA: peft wraps the
    model before FSDP (``verl/workers/engine/fsdp/transformer_impl.py`` :597-599, ``_build_lora_module``
    :339-382), so the adapters are parameters of their layer (FSDP1 splits them off: :func:`flat_groups`).
    Assumes: the tree's layer modules are the ``_no_split_modules`` class; buffers are not sharded; the
    untied input embedding's gradient is the last of the unit that holds it (it is the first op of forward).
    Checked by: tests/memory/test_fsdp.py::test_units_follow_verl_wrapping, ::test_lora_states_match_real_fsdp,
    ::test_fsdp2_wraps_untied_embeddings_as_their_own_units
    """
    adapters = adapters or {}
    layers: tuple[ParamModule, ...] = ()
    for module in tree.walk():
        if module.path == layer_container:
            layers = module.children
    inside = {m.path for layer in layers for m in layer.walk()}
    rest = [m for m in tree.walk() if m.path not in inside]
    tied = any(t.tied for m in rest for t in m.tensors)
    embeds = [m for m in rest if m.kind == ModuleKind.EMBEDDING] if wrap_embeddings and not tied else []
    heads = [m for m in rest if m.path.rsplit(".", 1)[-1] == "lm_head" and m.tensors] if embeds else []
    units = [_unit(m.path, (m,), adapters) for m in embeds]
    units += [_unit(layer.path, tuple(layer.walk()), adapters) for layer in layers]
    units += [_unit(m.path, (m,), adapters) for m in heads]
    own = {m.path for m in (*embeds, *heads)}
    root = tuple(m for m in rest if m.path not in own)
    late = 0 if tied or adapters or embeds else sum(m.num_params for m in root if m.kind == ModuleKind.EMBEDDING)
    units.append(replace(_unit("", root, adapters), late_grad_numel=late))
    return tuple(units)


def _unit(name: str, modules: Sequence[ParamModule], adapters: Mapping[str, Sequence[tuple[int, ...]]]) -> FsdpUnit:
    shapes: list[tuple[int, ...]] = []
    frozen: list[bool] = []
    for m in modules:
        own = [t.shape for t in m.tensors if not t.buffer and not t.tied]
        extra = list(adapters.get(m.path, ()))
        shapes += own + extra
        frozen += [True] * len(own) + [False] * len(extra)
    return FsdpUnit(name=name, shapes=tuple(shapes), frozen=tuple(frozen) if adapters else ())


def fsdp2_shard_numel(shape: tuple[int, ...], shard_size: int) -> int:
    """Elements one rank stores for one parameter under FSDP2: dim 0 chunked, every rank padded to chunk 0.

        numel = ceil(d0 / N) · prod(d1..)

    Source: torch/distributed/fsdp/_fully_shard/_fsdp_param.py@v2.11.0 ``_init_sharded_param`` :381-399
    (``_chunk_with_empty`` = ``torch.chunk``, _fsdp_common.py:114-120; ``padded_sharded_size = chunks[0]``;
    ``new_zeros(padded_sharded_size)`` is the rank's storage, the DTensor's local tensor a narrow view).
    Assumes: ``Shard(0)`` (verl sets no ``shard_placement_fn``); a 0-dim parameter counts as one element.
    Checked by: tests/memory/test_fsdp.py::test_fsdp2_dim0_chunking_by_hand, ::test_states_match_real_fsdp
    """
    if not shape:
        return 1
    return math.ceil(shape[0] / shard_size) * math.prod(shape[1:])


def fsdp2_local_numel(shape: tuple[int, ...], shard_size: int, rank: int) -> int:
    """Unpadded elements of one parameter on ``rank`` (the DTensor's local tensor; Adam's state follows it).

        rows = clamp(d0 − rank · ceil(d0/N), 0, ceil(d0/N));  numel = rows · prod(d1..)

    Source: _fsdp_param.py@v2.11.0 :381-404 (``sharded_param = padded_sharded_param.narrow(0, 0, length)``).
    Rank 0 always holds a full chunk, so its value equals :func:`fsdp2_shard_numel`.
    Checked by: tests/memory/test_fsdp.py::test_fsdp2_dim0_chunking_by_hand, ::test_states_match_real_fsdp
    """
    if not shape:
        return 1 if rank == 0 else 0
    chunk = math.ceil(shape[0] / shard_size)
    rows = min(chunk, max(0, shape[0] - rank * chunk))
    return rows * math.prod(shape[1:])


def fsdp1_flat_numel(unit: FsdpUnit, sharding: FsdpSharding) -> int:
    """Elements of a unit's FSDP1 ``FlatParameter`` before sharding (alignment padding included).

    With ``use_orig_params`` each parameter starts at a multiple of 16 bytes of the compute dtype and the
    total is then padded to a multiple of N; without it the parameters are packed as they are.

    Source: torch/distributed/fsdp/_flat_param.py@v2.11.0 ``_init_flat_param_and_metadata`` :711-720
    (alignment padding before each parameter), :760-777 (world-size padding, only when aligning),
    ``_get_aligned_numel`` :2774-2779; ``align_addresses = use_orig_params`` :566.
    Checked by: tests/memory/test_fsdp.py::test_fsdp1_flat_padding_by_hand, ::test_states_match_real_fsdp
    """
    if not sharding.use_orig_params:
        return unit.numel
    aligned = FSDP1_ALIGNMENT_BYTES * 8 // sharding.compute_dtype.bits
    total = 0
    for shape in unit.shapes:
        total += -total % aligned
        total += math.prod(shape)
    return total + (-total % sharding.shard_size)


@lru_cache(maxsize=4096)  # the planner asks for the same units many times
def shard_numel(unit: FsdpUnit, sharding: FsdpSharding) -> int:
    """``S``: the padded elements of ``unit`` each rank stores (the same on every rank).

        FSDP1:  ceil(flat / N)          (``_get_shard`` pads the last chunk, _flat_param.py:1089-1140)
        FSDP2:  Σ_params ceil(d0/N)·prod(d1..)

    Checked by: tests/memory/test_fsdp.py::test_states_match_real_fsdp
    """
    n = sharding.shard_size
    if sharding.version == FsdpVersion.FSDP1:
        return sum(math.ceil(fsdp1_flat_numel(g, sharding) / n) for g in flat_groups(unit))
    return sum(fsdp2_shard_numel(s, n) for s in unit.shapes)


@lru_cache(maxsize=4096)  # the planner asks for the same units many times
def grad_shard_numel(unit: FsdpUnit, sharding: FsdpSharding) -> int:
    """The padded elements of ``unit``'s sharded gradients on each rank: ``S`` of its trained parameters
    (all of them without LoRA). FSDP2 reduce-scatters only the parameters that have a gradient; FSDP1 a
    frozen flat parameter gets no post-backward reduction.

    Source (read in torch 2.13, this project's venv; the 2.11 wheel was not at hand): FSDP2
    _fsdp_param_group.py ``post_backward`` :613-636 (``fsdp_params_with_grad``: parameters whose unsharded
    gradient is not None); FSDP1 _runtime_utils.py ``_register_post_backward_hook`` :1454-1456 (no hook,
    hence no reduction, when the flat parameter does not require grad).
    Checked by: tests/memory/test_fsdp.py::test_lora_states_match_real_fsdp
    """
    if not unit.frozen:
        return shard_numel(unit, sharding)
    n = sharding.shard_size
    if sharding.version == FsdpVersion.FSDP1:
        return sum(math.ceil(fsdp1_flat_numel(g, sharding) / n) for g in flat_groups(unit) if not any(g.frozen))
    return sum(fsdp2_shard_numel(s, n) for s in unit.grad_shapes)


def local_numel(unit: FsdpUnit, sharding: FsdpSharding, rank: int) -> int:
    """Elements of ``unit`` the optimizer sees on ``rank`` (its state is ``zeros_like`` of them): only the
    parameters with gradients (AdamW creates state only for a parameter whose ``grad`` is not None,
    torch/optim/adam.py ``_init_group``, torch 2.13 :151; LoRA base weights never get one).

        FSDP1 flat (no ``use_orig_params``): S, padding included (the flat shard is the parameter)
        FSDP1 ``use_orig_params``: S as an upper bound (alignment/world padding not subtracted)
        FSDP2: Σ_params local rows · prod(d1..)  (rank 0: = S)

    Source: torch/optim/adam.py@v2.11.0 :177-184 (``zeros_like(p)``); FSDP2 local tensor as in
    :func:`fsdp2_local_numel`.
    Checked by: tests/memory/test_fsdp.py::test_states_match_real_fsdp
    """
    if sharding.version == FsdpVersion.FSDP1:
        return grad_shard_numel(unit, sharding)
    return sum(fsdp2_local_numel(s, sharding.shard_size, rank) for s in unit.grad_shapes)


@lru_cache(maxsize=4096)  # the planner asks for the same units many times
def unsharded_numel(unit: FsdpUnit, sharding: FsdpSharding) -> int:
    """Elements of a unit's padded all-gather destination: N · S (both versions).

    Source: FSDP1 _flat_param.py@v2.11.0 :1286-1293 (``_full_param_padded`` = ``flat_param.numel() ·
    world_size``); FSDP2 _fsdp_param.py ``init_all_gather_outputs`` :466-480 (each parameter's output
    is N times its padded shard) and _fsdp_collectives.py ``foreach_all_gather`` :263-268.
    Checked by: tests/memory/test_fsdp.py::test_fsdp2_unshard_matches_real_fsdp
    """
    return sharding.shard_size * shard_numel(unit, sharding)


def num_optimizer_params(units: Sequence[FsdpUnit], sharding: FsdpSharding) -> int:
    """Tensors the optimizer holds a state for: trained flat parameters (FSDP1) or original parameters."""
    if sharding.version == FsdpVersion.FSDP1 and not sharding.use_orig_params:
        return sum(1 for u in units for g in flat_groups(u) if g.grad_shapes)
    return sum(len(u.grad_shapes) for u in units)


# --- persistent states -----------------------------------------------------------------------------


def _term(path: str, numel: int, dtype: DType, category: Category, device: Device, source: Source,
          phase: Phase | None = None) -> Term:
    return Term(path=path, bytes=bytes_for(numel, dtype), category=category, device=device, source=source,
                phase=phase)


def sharded_params(units: Sequence[FsdpUnit], sharding: FsdpSharding, *, role: str) -> Term:
    """The sharded parameters in their stored dtype, where they rest between phases.

        bytes = Σ_units S · |param_dtype|     on the GPU; on the host with param_offload or cpu_offload

    Source: shard sizes as in :func:`shard_numel`; FSDP2 ``CPUOffloadPolicy`` keeps the padded shard on
    the host, pinned if asked (_fsdp_param.py@v2.11.0 :395-399), FSDP1 ``CPUOffload`` pins it
    (_flat_param.py:1258-1262). A framework's ``param_offload`` moves the modules with ``.to("cpu",
    non_blocking=True)`` (verl 0.9.1 fsdp_utils.py ``offload_fsdp2_model_to_cpu`` :195-210: pinned
    destination; FSDP2 ``reset_sharded_param`` re-pads a short local tensor into a new, pageable
    ``new_zeros``, _fsdp_param.py:895-903, so the host copy is still S per parameter).
    Assumes: the padded size on the host for every rank (ranks > 0 may hold unpadded pinned tensors too,
    briefly, during the move).
    Checked by: tests/memory/test_fsdp.py::test_states_match_real_fsdp
    """
    numel = sum(shard_numel(u, sharding) for u in units)
    on_host = sharding.param_offload or sharding.cpu_offload
    where = "host" if on_host else "GPU"
    if sharding.version == FsdpVersion.FSDP2:
        src = torch_source(f"{FSDP2_DIR}/_fsdp_param.py", f"padded dim-0 shard per parameter ({where}) :381-399")
    else:
        src = torch_source(f"{FSDP1_DIR}/_flat_param.py", f"padded flat shard per unit ({where}) _get_shard :1089-1140")
    return _term(f"{role}.params", numel, sharding.param_dtype, Category.PARAM, Device.CPU if on_host else Device.GPU,
                 src)


def sharded_grads(units: Sequence[FsdpUnit], sharding: FsdpSharding, *, role: str,
                  phase: Phase | None = None) -> Term:
    """The sharded gradients, from the first reduce-scatter until they are freed (after the step).

        bytes = Σ_units S_trained · |param_dtype|     (host with cpu_offload; S_trained: :func:`grad_shard_numel`)

    FSDP2 reduce-scatters into one padded S-element output per unit in ``reduce_dtype``, casts it to the
    parameter's dtype and makes the gradients views into it; FSDP1 reduce-scatters into a padded shard
    and casts to the parameter dtype.

    Source: FSDP2 _fsdp_collectives.py@v2.11.0 ``foreach_reduce`` :517-540 (output numel = Σ padded / N),
    :603 (``_to_dtype_if_needed(reduce_output, orig_dtype)``), :611-616 (``as_strided`` views); FSDP1
    _runtime_utils.py@v2.11.0 ``_get_reduce_scatter_tensors`` :891-902 (``new_sharded_grad`` padded),
    ``_cast_grad_to_param_dtype`` :1030; CPU offload copies to host (FSDP1 ``_cpu_grad``, pinned,
    _flat_param.py:1264-1266; FSDP2 ``new_sharded_grad.to("cpu")`` in foreach_reduce).
    Assumes: ``phase`` None = resident (the caller places gradients in the update phases).
    Checked by: tests/memory/test_fsdp.py::test_states_match_real_fsdp
    """
    numel = sum(grad_shard_numel(u, sharding) for u in units)
    device = Device.CPU if sharding.cpu_offload else Device.GPU
    return _term(f"{role}.grads", numel, sharding.param_dtype, Category.GRAD, device,
                 torch_source(f"{FSDP2_DIR}/_fsdp_collectives.py", "reduce output S per unit, cast to the "
                              "param dtype :517-616; FSDP1 _runtime_utils.py :891-902, :1030"), phase)


def adam_states(units: Sequence[FsdpUnit], sharding: FsdpSharding, *, role: str, rank: int = 0) -> list[Term]:
    """``torch.optim.AdamW`` state on one rank: two moments in the shard's dtype, and a host ``step`` scalar
    per parameter. Created lazily at the first ``step()``.

        exp_avg = exp_avg_sq = Σ_units local_numel · |param_dtype|     (rank 0 holds the most)
        step    = 4 B per optimizer parameter, on the host

    Source: torch/optim/adam.py@v2.11.0 ``_init_group`` :160-185 (``zeros_like(p)``; ``step`` on CPU
    unless capturable/fused); local sizes as in :func:`local_numel`. Device: the GPU, or the host with
    the framework's optimizer offload (verl 0.9.1 fsdp_utils.py ``offload_fsdp_optimizer`` :241-251,
    ``.to("cpu", non_blocking=True)``: pinned) or FSDP CPU offload (the parameters, hence the state, are
    on the host).
    Assumes: no ``amsgrad`` (verl does not set it), not ``fused``/``capturable``.
    Checked by: tests/memory/test_fsdp.py::test_states_match_real_fsdp
    """
    numel = sum(local_numel(u, sharding, rank) for u in units)
    on_host = sharding.optimizer_offload or sharding.cpu_offload
    device = Device.CPU if on_host else Device.GPU
    src = torch_source("torch/optim/adam.py", "zeros_like(p) per moment :177-184")
    steps = num_optimizer_params(units, sharding)
    return [_term(f"{role}.optimizer.exp_avg", numel, sharding.param_dtype, Category.OPTIMIZER, device, src),
            _term(f"{role}.optimizer.exp_avg_sq", numel, sharding.param_dtype, Category.OPTIMIZER, device, src),
            Term(path=f"{role}.optimizer.step", bytes=steps * ADAM_STEP_BYTES, category=Category.OPTIMIZER,
                 device=Device.CPU, source=torch_source("torch/optim/adam.py", "0-dim fp32 step on the host :165-176"))]


def fsdp_state_terms(units: Sequence[FsdpUnit], sharding: FsdpSharding, *, role: str, trained: bool,
                     rank: int = 0) -> list[Term]:
    """Entry point: what one rank holds between phases (parameters; AdamW state when ``trained``, from the
    first step on), each on the device it rests on. Gradients are not here: they live from the first
    backward to the end of the update (:func:`sharded_grads`, placed by the caller)."""
    terms = [sharded_params(units, sharding, role=role)]
    if trained:
        terms += adam_states(units, sharding, role=role, rank=rank)
    return terms


def fsdp_onload_terms(units: Sequence[FsdpUnit], sharding: FsdpSharding, *, role: str, trained: bool,
                      phase: Phase, rank: int = 0) -> list[Term]:
    """Entry point: the GPU copies a framework's offload brings back for a phase that computes.

    Parameters come back whenever the model computes (``param_offload``); optimizer state when it trains
    (``optimizer_offload``). The host copy stays counted by :func:`fsdp_state_terms` (a ``.to(device)``
    makes a new GPU tensor; the host one is freed only when its last reference goes, which the framework's
    module/optimizer swap does, so the caller decides whether host bytes drop in the phase).

    Source: verl 0.9.1 ``verl/utils/fsdp_utils.py`` ``load_fsdp2_model_to_gpu`` / ``load_fsdp_model_to_gpu``
    :213-238 and ``load_fsdp_optimizer`` :254-262 (moves whole state dicts); sizes as in
    :func:`sharded_params` / :func:`adam_states`.
    Assumes: FSDP CPU offload (``cpu_offload``) is not a framework onload: its per-unit copies are
    transients (fsdp_transient.py).
    """
    terms: list[Term] = []
    if sharding.param_offload and not sharding.cpu_offload:
        params = sharded_params(units, sharding, role=role)
        terms.append(Term(path=f"{role}.params.onload", bytes=params.bytes, category=Category.PARAM,
                          device=Device.GPU, source=params.source, phase=phase))
    if trained and sharding.optimizer_offload and not sharding.cpu_offload:
        for t in adam_states(units, sharding, role=role, rank=rank)[:2]:
            terms.append(Term(path=f"{t.path}.onload", bytes=t.bytes, category=t.category, device=Device.GPU,
                              source=t.source, phase=phase))
    return terms


def host_allocations(units: Sequence[FsdpUnit], sharding: FsdpSharding, *, which: str, rank: int = 0) -> tuple[int, ...]:
    """Bytes of each separate host tensor one rank's sharded parameters (``which="params"``) or one AdamW moment
    (``which="moment"``) occupy on the host: FSDP2 one per parameter (parameters: the padded dim-0 shard;
    moments: the local shard), FSDP1 one flat shard per unit. What a pinned allocator rounds, one by one.

    Source: as :func:`sharded_params` and :func:`adam_states` (FSDP2 per-parameter DTensors,
    _fsdp_param.py@v2.11.0 :381-399; FSDP1 one ``FlatParameter`` per unit, _flat_param.py :1089-1140;
    AdamW ``zeros_like(p)`` per parameter, torch/optim/adam.py :177-184).
    """
    dtype = sharding.param_dtype
    if sharding.version == FsdpVersion.FSDP1:
        groups = [g for u in units for g in flat_groups(u) if which == "params" or g.grad_shapes]
        return tuple(bytes_for(shard_numel(g, sharding), dtype) for g in groups)
    if which == "params":
        return tuple(bytes_for(fsdp2_shard_numel(s, sharding.shard_size), dtype) for u in units for s in u.shapes)
    return tuple(bytes_for(local_numel(FsdpUnit(name=u.name, shapes=(s,)), sharding, rank), dtype)
                 for u in units for s in u.grad_shapes)
