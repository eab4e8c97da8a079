"""FSDP's short-lived buffers on one rank: unsharded parameters (all-gather destinations), prefetch,
the all-gather and reduce-scatter buffers, unsharded gradients, FSDP CPU-offload copies, and AdamW's
step temporaries. Shard arithmetic and citations' conventions are in ``memory/fsdp.py`` (torch 2.11).

Each phase's terms are those of its worst moment: forward and backward are walked unit by unit, in the
order FSDP runs them, and the moment holding the most FSDP-owned bytes is returned. Activations, logits
and the autograd temporaries of the model itself are not here (memory/activations.py, logits.py).

Symbols: ``R`` = the root unit, ``L_i`` = decoder layer ``i`` (forward order), ``S`` = padded shard, ``N``
= shard size, ``U`` = unpadded elements; ``c``, ``r``, ``p`` = bytes of the compute, reduce and stored
parameter dtypes. An unsharded unit costs ``N·S·c``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from memplan.dtypes import bytes_for
from memplan.memory.breakdown import Category, Device, Phase, Term
from memplan.memory.fsdp import (
    FSDP1_DIR,
    FSDP2_DIR,
    FsdpSharding,
    FsdpUnit,
    FsdpVersion,
    fsdp2_shard_numel,
    grad_shard_numel,
    local_numel,
    shard_numel,
    torch_source,
    unsharded_numel,
)
from memplan.sources import Source, code

_AG = torch_source(f"{FSDP2_DIR}/_fsdp_param_group.py", "wait_for_unshard keeps the last all-gather output "
                   "in forward :348-420; FSDP1 _flat_param.py _full_param_padded :1286-1293")
_PREFETCH = torch_source(f"{FSDP2_DIR}/_fsdp_param_group.py", "_backward_prefetch: the previous unit in "
                         "post-forward order :634-660; FSDP1 BACKWARD_PRE default, fully_sharded_data_parallel.py:404")
_GRADS = torch_source(f"{FSDP2_DIR}/_fsdp_param_group.py", "autograd's unsharded grads in the compute dtype, "
                      "handed to foreach_reduce in post_backward :500-525")
_RS2 = torch_source(f"{FSDP2_DIR}/_fsdp_collectives.py", "reduce_scatter_input Σ padded unsharded in reduce "
                    "dtype :517-527; held in comm_ctx.reduce_scatter_state until the next unit's reduce, "
                    "_fsdp_param_group.py:533-541, :593-595")
_RS1 = torch_source(f"{FSDP1_DIR}/_runtime_utils.py", "grad cast to reduce dtype :757-764, F.pad to N·S "
                    "and padded new_sharded_grad :891-902")


def _bytes(numel: int, sharding: FsdpSharding, which: str) -> int:
    dtype = {"c": sharding.compute_dtype, "r": sharding.reduce_dtype, "p": sharding.param_dtype}[which]
    return bytes_for(numel, dtype)


def _unsharded(unit: FsdpUnit, sharding: FsdpSharding) -> int:
    return _bytes(unsharded_numel(unit, sharding), sharding, "c")


def _moment(role: str, phase: Phase, parts: Sequence[tuple[str, int, Category, Source]]) -> list[Term]:
    return [Term(path=f"{role}.fsdp.{name}", bytes=b, category=cat, device=Device.GPU, source=src, phase=phase)
            for name, b, cat, src in parts if b]


def _worst(moments: Sequence[list[Term]]) -> list[Term]:
    return max(moments, key=lambda terms: sum(t.bytes for t in terms), default=[])


def _all_gather_input(unit: FsdpUnit, sharding: FsdpSharding) -> int:
    """FSDP2's all-gather input in the compute dtype, alive while the unit's all-gather output is allocated:
    at N > 1 one flat S·c copy of the unit (``_get_param_all_gather_inputs`` foreach copy,
    _fsdp_collectives.py@v2.11.0 :294-342, freed after copy-in :249-273); at N = 1, or with CPU offload
    (no foreach copy), each parameter is cast on its own (``all_gather_inputs`` :718-790). At N = 1 the unit
    is copied one parameter at a time into its freshly allocated output (_fsdp_param_group.py:365-389): while
    parameter k is copied, the outputs of parameters ≤ k and input k are alive, so beyond the whole unit the
    excess is max_k(in_k − Σ_{j>k} in_j), usually the last parameter's cast."""
    if sharding.shard_size == 1:
        sizes = [fsdp2_shard_numel(shape, 1) for shape in unit.shapes]
        excess = max((sizes[k] - sum(sizes[k + 1:]) for k in range(len(sizes))), default=0)
        return _bytes(max(excess, 0), sharding, "c")
    return _bytes(shard_numel(unit, sharding), sharding, "c")


def _h2d(unit: FsdpUnit, sharding: FsdpSharding) -> int:
    """FSDP CPU offload: the stored-dtype shard copied to the GPU before the cast, per parameter in FSDP2
    (``all_gather_inputs`` ``.to(device)`` then cast, _fsdp_param.py@v2.11.0 :783-787: the largest one
    alive) and per flat parameter in FSDP1 (``_local_shard.to(device)`` into ``_mp_shard``,
    _flat_param.py:1343-1358)."""
    if not sharding.cpu_offload:
        return 0
    if sharding.version == FsdpVersion.FSDP2:
        return _bytes(max((fsdp2_shard_numel(s, sharding.shard_size) for s in unit.shapes), default=0), sharding, "p")
    return _bytes(shard_numel(unit, sharding), sharding, "p")


def forward_moments(units: Sequence[FsdpUnit], sharding: FsdpSharding, *, role: str,
                    phase: Phase = Phase.FORWARD) -> list[list[Term]]:
    """The FSDP-owned GPU bytes at each decoder layer's unshard and compute (units = layers…, root last).

    Always:  root unsharded N·S_R·c (the root unshards first and reshards only after the whole forward)
             + Σ_{j<i} N·S_j·c kept layers (reshard_after_forward False)
    FSDP2, N > 1, at layer i's all-gather: + the previous unit's flat all-gather output, still held
             (N·S_{i−1}·c; the root's for i = 0) + its all-gather input S_i·c + its flat output N·S_i·c
    FSDP2, N > 1, while layer i computes: + layer i N·S_i·c + its flat output N·S_i·c
             (+ N·S_{i+1}·c with forward_prefetch)
    FSDP2, N = 1: + layer i N·S_i·c + the excess of its one-parameter-at-a-time copy (:func:`_all_gather_input`)
    FSDP1:   + layer i N·S_i·c + the low-precision shard ``_mp_shard`` S_i·c during its all-gather (N > 1;
             at N = 1 FSDP1 runs NO_SHARD and the low-precision shard is the unsharded parameter)
             (+ N·S_{i+1}·c with forward_prefetch)
    CPU offload: + the H2D copy (:func:`_h2d`)

    Source: FSDP2 _fsdp_param_group.py@v2.11.0 ``unshard`` :304-346, ``wait_for_unshard`` :348-420
    (implicit forward prefetch keeps ``comm_ctx.all_gather_state`` until the next unit's copy-out),
    ``post_forward`` :454-476 (reshard); _fsdp_collectives.py ``foreach_all_gather`` :237-290; _fsdp_state.py
    :193-196 (the root skips resharding only when ``reshard_after_forward`` was not passed; verl passes it,
    so a root given True reshards after forward); FSDP1 _flat_param.py ``_use_low_precision_shard``
    :1343-1358, ``_free_low_precision_sharded_param`` :1534.
    Assumes: activation checkpointing re-gathers in backward, not here; with no decoder layers, nothing.
    Checked by: tests/memory/test_fsdp.py::test_fsdp2_unshard_matches_real_fsdp, ::test_fsdp1_transients_match_real_fsdp,
    ::test_forward_worst_moment_by_hand
    """
    *layers, root = units
    n = sharding.shard_size
    fsdp2 = sharding.version == FsdpVersion.FSDP2
    moments = []
    for i, layer in enumerate(layers):
        kept = 0 if sharding.reshard_after_forward else sum(_unsharded(u, sharding) for u in layers[:i])
        nxt = _unsharded(layers[i + 1], sharding) if sharding.forward_prefetch and i + 1 < len(layers) else 0
        common = [("unsharded.root", _unsharded(root, sharding), Category.PARAM, _AG),
                  ("unsharded.kept", kept, Category.PARAM, _AG),
                  ("cpu_offload_h2d", _h2d(layer, sharding), Category.PARAM, _AG)]
        this = ("unsharded.layer", _unsharded(layer, sharding), Category.PARAM, _AG)
        if fsdp2 and n > 1:
            held = _unsharded(layers[i - 1] if i else root, sharding)
            moments.append(_moment(role, phase, [*common, ("all_gather_held", held, Category.PARAM, _AG),
                                                 ("all_gather_input", _all_gather_input(layer, sharding),
                                                  Category.PARAM, _AG),
                                                 ("all_gather_buffer", _unsharded(layer, sharding), Category.PARAM, _AG)]))
            buffer = ("all_gather_buffer", _unsharded(layer, sharding), Category.PARAM, _AG)
        elif fsdp2:
            buffer = ("all_gather_input", _all_gather_input(layer, sharding), Category.PARAM, _AG)
        else:  # FSDP1's low-precision shard; at N = 1 (NO_SHARD) it is the parameter itself
            mp_shard = _bytes(shard_numel(layer, sharding), sharding, "c") if n > 1 else 0
            buffer = ("all_gather_input", mp_shard, Category.PARAM, _AG)
        moments.append(_moment(role, phase, [*common, this, buffer,
                                             ("unsharded.prefetch", nxt, Category.PARAM, _PREFETCH)]))
    return moments


def _kept_layers(layers: Sequence[FsdpUnit], sharding: FsdpSharding) -> int:
    return 0 if sharding.reshard_after_forward else sum(_unsharded(u, sharding) for u in layers)


def head_moment(units: Sequence[FsdpUnit], sharding: FsdpSharding, *, role: str,
                phase: Phase = Phase.FORWARD) -> list[Term]:
    """The FSDP-owned GPU bytes while the root's own modules (final norm, LM head) run, after the last layer.

        root unsharded N·S_R·c + kept layers (reshard_after_forward False: all of them)
        + FSDP2, N > 1: the last unit's flat all-gather output N·S_last·c, still held
        + the LM head's unit, unsharded N·S_head·c, when it is one (its own flat output is the one held)

    Source: FSDP2 _fsdp_param_group.py@v2.11.0 ``wait_for_unshard`` :348-420 (in forward the all-gather result
    is kept in ``comm_ctx.all_gather_state`` until the next unit's copy-out; the last layer has no next unit
    before the head), ``post_forward`` :454-476; the root reshards only at its own post-forward, after the head.
    Assumes: the root holds the final norm and the LM head (verl's wrapping, :func:`memory.fsdp.fsdp_units`).
    """
    *layers, root = units
    held = _unsharded(layers[-1], sharding) if layers and sharding.version == FsdpVersion.FSDP2 \
        and sharding.shard_size > 1 else 0
    head = layers[-1] if layers and is_lm_head(layers[-1]) else None
    kept = _kept_layers(layers[:-1] if head else layers, sharding)
    return _moment(role, phase, [("unsharded.root", _unsharded(root, sharding), Category.PARAM, _AG),
                                 ("unsharded.kept", kept, Category.PARAM, _AG),
                                 ("unsharded.lm_head", _unsharded(head, sharding) if head else 0, Category.PARAM, _AG),
                                 ("all_gather_held", held, Category.PARAM, _AG)])


def is_lm_head(unit: FsdpUnit) -> bool:
    """The LM head wrapped as its own unit (:func:`memplan.memory.fsdp.fsdp_units` ``wrap_embeddings``)."""
    return unit.name.rsplit(".", 1)[-1] == "lm_head"


def after_forward_moment(units: Sequence[FsdpUnit], sharding: FsdpSharding, *, role: str,
                         phase: Phase = Phase.FORWARD) -> list[Term]:
    """The FSDP-owned GPU bytes once the model's forward has returned (the loss, log-probs and entropy are
    computed from its logits here): nothing with ``reshard_after_forward``; else every unit, the root
    included, stays unsharded.

    Source: FSDP2 _fsdp_state.py@v2.11.0 :193-196 (the root reshards after forward when
    ``reshard_after_forward`` is passed explicitly, as verl does), _fsdp_param_group.py ``post_forward``
    :454-476.
    """
    *layers, root = units
    kept = 0 if sharding.reshard_after_forward else _unsharded(root, sharding) + _kept_layers(layers, sharding)
    return _moment(role, phase, [("unsharded.kept", kept, Category.PARAM, _AG)])


def backward_start_moment(units: Sequence[FsdpUnit], sharding: FsdpSharding, *, role: str,
                          phase: Phase = Phase.BACKWARD) -> list[Term]:
    """The FSDP-owned GPU bytes while the LM head's backward runs: the root unsharded again by its
    pre-backward, the last layer prefetched (or kept), and the root's gradients produced so far (the LM
    head's, ``U_R − late`` in the compute dtype).

    Source: FSDP2 _fsdp_param_group.py@v2.11.0 ``pre_backward`` :477-495 (unshard, then
    ``_backward_prefetch`` of the next unit in reverse post-forward order :634-660).
    Assumes: the prefetch is issued before the head's backward computes (FSDP2 and FSDP1 BACKWARD_PRE).
    """
    *layers, root = units
    prefetch = _unsharded(layers[-1], sharding) if layers and sharding.reshard_after_forward \
        and _prefetch_allocates(sharding) else 0
    return _moment(role, phase, [
        ("unsharded.root", _unsharded(root, sharding), Category.PARAM, _AG),
        ("unsharded.kept", _kept_layers(layers, sharding), Category.PARAM, _AG),
        ("unsharded.prefetch", prefetch, Category.PARAM, _PREFETCH),
        ("unsharded_grads.root_so_far", _bytes(root.grad_numel - root.late_grad_numel, sharding, "c"), Category.GRAD,
         _GRADS)])


def _reduce_buffers(unit: FsdpUnit, sharding: FsdpSharding) -> list[tuple[str, int, Category, Source]]:
    """Buffers of one unit's gradient reduction beside its unsharded gradients.

        FSDP2: reduce-scatter input N·S·r (+ output S·r on the GPU before the D2H copy with cpu_offload)
        FSDP1: U·r cast copy, + N·S·r padded copy when U < N·S, + S·r padded sharded output
               (N = 1, NO_SHARD: the cast copy only, all-reduced in place)
    """
    s = grad_shard_numel(unit, sharding)
    n = sharding.shard_size
    if s == 0:  # a frozen unit (LoRA base): no gradient to reduce
        return []
    if sharding.version == FsdpVersion.FSDP2:
        out = _bytes(s, sharding, "r") if sharding.cpu_offload else 0
        return [("reduce_scatter_input", _bytes(n * s, sharding, "r"), Category.GRAD, _RS2),
                ("reduce_scatter_output", out, Category.GRAD, _RS2)]
    same = sharding.compute_dtype == sharding.reduce_dtype
    cast = 0 if same else _bytes(unit.grad_numel, sharding, "r")
    if n == 1:  # NO_SHARD: the cast gradient is all-reduced in place (_reduce_grad_no_shard)
        return [("grad_reduce_cast", cast, Category.GRAD, _RS1)]
    pad = _bytes(n * s, sharding, "r") if unit.grad_numel < n * s else 0
    return [("grad_reduce_cast", cast, Category.GRAD, _RS1), ("reduce_scatter_input", pad, Category.GRAD, _RS1),
            ("reduce_scatter_output", _bytes(s, sharding, "r"), Category.GRAD, _RS1)]


def reduce_output_moment(reduce_moment: Sequence[Term], unit: FsdpUnit, sharding: FsdpSharding, *, role: str,
                         phase: Phase = Phase.BACKWARD) -> list[Term]:
    """FSDP2, a unit's reduce once its gradients are copied in: the unsharded gradients freed but the last one,
    the reduce-scatter output (the unit's new sharded gradients, S·r) allocated beside the still-held input; on
    gloo also the collective's own clone of the input.

        reduce moment − the unit's unsharded gradients + its last trained parameter's gradient L·c (N > 1)
        + S·r (+ N·S·r on gloo, N > 1: at N = 1 FSDP2 copies the input into the output without a collective)

    The last gradient survives ``unsharded_grads.clear()`` because, at N > 1, ``foreach_reduce`` first walks
    ``for i, (fsdp_param, unsharded_grad) in enumerate(zip(fsdp_params, unsharded_grads))`` (the Shard(dim≠0)
    re-chunking; every dim-0 parameter just ``continue``s), and the loop variable keeps the list's last tensor
    alive in the function's frame until it returns, after the collective. That is a Python reference, so it
    holds on CUDA as on the CPU; it matters when a unit's last parameter is large: an untied input embedding or
    LM head wrapped as its own unit (a decoder layer ends with its post-attention norm, a tied root with the
    final norm).

    Source: FSDP2 _fsdp_collectives.py@v2.11.0 ``foreach_reduce`` (the re-chunking loop :504-515,
    ``unsharded_grads.clear()`` :531 after ``foreach_reduce_scatter_copy_in``, then ``reduce_output =
    reduce_scatter_comm.allocate(...)`` :537 before the collective; the same at torch 2.13, lines 578-606, and
    2.14.1); pytorch/pytorch
    torch/csrc/distributed/c10d/ProcessGroupGloo.cpp@v2.11.0 ``ProcessGroupGloo::reduce_scatter_tensor_coalesced``
    (``buffers.push_back(inputTensors[i].clone())``, then ``allreduce`` and a copy of this rank's chunk);
    scripts/probe_fsdp_reduce_cpu.py shows all three on the CPU (for each [V, H] unit: the bf16 gradient is freed
    only after the clone and the output).
    Assumes: FSDP2 (FSDP1's reduction is :func:`_reduce_buffers`' cast and padded copies); ``FsdpUnit.shapes`` in
    ``named_parameters`` order, which is FSDP2's ``fsdp_params`` order.
    """
    s = grad_shard_numel(unit, sharding)
    if sharding.version != FsdpVersion.FSDP2 or s == 0:  # FSDP1, or a frozen unit (LoRA base): nothing reduced
        return []
    src = torch_source(f"{FSDP2_DIR}/_fsdp_collectives.py", "foreach_reduce: grads cleared after copy-in, "
                       "reduce_output allocated; gloo reduce_scatter clones its input")
    kept = [t for t in reduce_moment if not t.path.endswith(("unsharded_grads.layer", "unsharded_grads.root"))]
    last = math.prod(unit.grad_shapes[-1]) if sharding.shard_size > 1 else 0
    return kept + _moment(role, phase, [
        ("unsharded_grads.last", _bytes(last, sharding, "c"), Category.GRAD, src),
        ("reduce_scatter_output", _bytes(s, sharding, "r"), Category.GRAD, src),
        ("gloo_reduce_scatter_clone", _bytes(sharding.shard_size * s, sharding, "r")
         if sharding.gloo and sharding.shard_size > 1 else 0,
         Category.GRAD, src)])


def _prefetch_allocates(sharding: FsdpSharding) -> bool:
    """A backward prefetch issues the all-gather into a new N·S buffer, except FSDP2 at shard size 1, whose
    ``unshard`` records a placeholder and copies only at the unit's own ``wait_for_unshard``
    (_fsdp_param_group.py@v2.11.0 :321-331, :365-389)."""
    return sharding.version == FsdpVersion.FSDP1 or sharding.shard_size > 1


def backward_moments(units: Sequence[FsdpUnit], sharding: FsdpSharding, *, role: str,
                     phase: Phase = Phase.BACKWARD) -> list[list[Term]]:
    """The FSDP-owned GPU bytes at each moment of backward, layer ``i`` from last to first, then the root.

    While layer i's backward computes (just before its post-backward):
        root unsharded N·S_R·c + root grads computed so far (U_R − late)·c
        + layer i N·S_i·c + layer i−1 prefetched N·S_{i−1}·c (not FSDP2 at N = 1)
        (+ Σ_{j<i−1} kept, reshard_after_forward False)
        + layer i's unsharded grads U_i·c
        + FSDP2: layer i+1's reduce-scatter input N·S_{i+1}·r, still held
    At layer i's reduce (after it resharded; FSDP2 first drops the held input):
        the same without layer i's parameters and the held input, plus :func:`_reduce_buffers` of layer i
    When the root's backward ends: root unsharded + all its grads U_R·c + FSDP2: layer 0's held input;
    then, resharded, at its reduce: U_R·c grads + its reduce buffers (with a large vocabulary, these two
    root moments can be the phase's worst). Gradients, held inputs and reduce buffers count only the trained
    parameters (``FsdpUnit.grad_numel``, memory/fsdp.py ``grad_shard_numel``): with LoRA, the adapters;
    a frozen unit is still unsharded for its backward.

    Source: FSDP2 _fsdp_param_group.py@v2.11.0 ``pre_backward`` :477-495, ``_backward_prefetch`` :634-660,
    ``post_backward`` :497-600 (reshard before reduce; the previous ``reduce_scatter_state`` dropped at
    :533-541); _fsdp_collectives.py ``foreach_reduce`` :448-616; FSDP1 _runtime_utils.py
    ``_post_backward_hook`` :701-770 (reshard, then cast and reduce), ``_reduce_grad`` :831-890.
    Assumes: the root's unsharded gradients other than ``late_grad_numel`` (the input embedding when untied)
    appear at the start of backward and live to its end (``root_so_far``: in FSDP1, and for a tied
    embedding, autograd holds them in its input buffer until the parameter's last use); sharded gradients are the caller's
    ``sharded_grads`` term, counted whole for the phase; torch 2.13's ``reduce_scatter_max_input_buffers``
    (default 1) keeps the same single held input.
    Checked by: tests/memory/test_fsdp.py::test_fsdp2_backward_matches_real_fsdp, ::test_fsdp1_transients_match_real_fsdp
    """
    *layers, root = units
    root_early = _bytes(root.grad_numel - root.late_grad_numel, sharding, "c")
    moments = []
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        held_or_prefetched = not sharding.reshard_after_forward or _prefetch_allocates(sharding)
        prev = _unsharded(layers[i - 1], sharding) if i > 0 and held_or_prefetched else 0
        kept = 0 if sharding.reshard_after_forward else sum(_unsharded(u, sharding) for u in layers[:max(i - 1, 0)])
        held = 0
        if sharding.version == FsdpVersion.FSDP2 and i + 1 < len(layers):
            held = _bytes(sharding.shard_size * grad_shard_numel(layers[i + 1], sharding), sharding, "r")
        common = [("unsharded.root", _unsharded(root, sharding), Category.PARAM, _AG),
                  ("unsharded_grads.root_so_far", root_early, Category.GRAD, _GRADS),
                  ("unsharded.prefetch", prev, Category.PARAM, _PREFETCH),
                  ("unsharded.kept", kept, Category.PARAM, _AG),
                  ("unsharded_grads.layer", _bytes(layer.grad_numel, sharding, "c"), Category.GRAD, _GRADS),
                  ("cpu_offload_h2d", _h2d(layer, sharding), Category.PARAM, _AG)]
        moments.append(_moment(role, phase, [*common, ("unsharded.layer", _unsharded(layer, sharding),
                                                        Category.PARAM, _AG),
                                             ("reduce_scatter_held", held, Category.GRAD, _RS2)]))
        moments.append(_moment(role, phase, [*common, *_reduce_buffers(layer, sharding)]))
    root_grads = ("unsharded_grads.root", _bytes(root.grad_numel, sharding, "c"), Category.GRAD, _GRADS)
    held = _bytes(sharding.shard_size * grad_shard_numel(layers[0], sharding), sharding, "r") \
        if layers and sharding.version == FsdpVersion.FSDP2 else 0
    moments.append(_moment(role, phase, [("unsharded.root", _unsharded(root, sharding), Category.PARAM, _AG), root_grads,
                                         ("reduce_scatter_held", held, Category.GRAD, _RS2)]))
    moments.append(_moment(role, phase, [root_grads, *_reduce_buffers(root, sharding)]))
    return moments


def prefetch_moments(units: Sequence[FsdpUnit], sharding: FsdpSharding, *, role: str,
                     phase: Phase = Phase.BACKWARD) -> list[list[Term]]:
    """FSDP2 at N > 1, per unit in backward order (as :func:`backward_moments` walks them): the moment its
    pre-backward issues the all-gather of the next unit to backward, before its own gradients exist.

        root unsharded + the root's gradients so far + unit i unsharded (+ kept units)
        + unit i−1's flat all-gather output N·S_{i−1}·c and its all-gather input S_{i−1}·c
        + unit i+1's reduce-scatter input, still held

    With full gradients the moment after it (unit i's gradients instead of the all-gather input) is larger;
    with LoRA's small gradients this one is. Empty for FSDP1, FSDP2 at N = 1 (no early allocation), without
    resharding (nothing to gather) and for the first unit (nothing to prefetch).

    Source: FSDP2 _fsdp_param_group.py@v2.11.0 ``pre_backward`` :477-495 and ``_backward_prefetch`` :634-660
    (``unshard`` of the target: ``foreach_all_gather`` allocates the flat input and output,
    _fsdp_collectives.py :237-290); the held reduce-scatter input as in :func:`backward_moments`.
    Checked by: tests/memory/test_fsdp.py::test_lora_fsdp2_backward_matches_real_fsdp
    """
    *layers, root = units
    if sharding.version != FsdpVersion.FSDP2 or sharding.shard_size == 1 or not sharding.reshard_after_forward:
        return [[] for _ in layers]
    root_early = _bytes(root.grad_numel - root.late_grad_numel, sharding, "c")
    moments = []
    for i in range(len(layers) - 1, -1, -1):
        if i == 0:
            moments.append([])
            continue
        held = _bytes(sharding.shard_size * grad_shard_numel(layers[i + 1], sharding), sharding, "r") \
            if i + 1 < len(layers) else 0
        moments.append(_moment(role, phase, [
            ("unsharded.root", _unsharded(root, sharding), Category.PARAM, _AG),
            ("unsharded_grads.root_so_far", root_early, Category.GRAD, _GRADS),
            ("unsharded.layer", _unsharded(layers[i], sharding), Category.PARAM, _AG),
            ("unsharded.prefetch", _unsharded(layers[i - 1], sharding), Category.PARAM, _PREFETCH),
            ("all_gather_input", _all_gather_input(layers[i - 1], sharding), Category.PARAM, _PREFETCH),
            ("reduce_scatter_held", held, Category.GRAD, _RS2)]))
    return moments


def no_sync_grads(units: Sequence[FsdpUnit], sharding: FsdpSharding, *, role: str,
                  phase: Phase = Phase.BACKWARD) -> list[Term]:
    """Unsharded gradients kept across micro-batches when accumulating under ``no_sync``.

        FSDP2: Σ U · r   (``to_accumulated_grad_if_needed`` converts them to the reduce dtype)
        FSDP1: Σ U · c   (``_post_backward_hook`` returns before the cast when not syncing)

    Source: FSDP2 _fsdp_param.py@v2.11.0 :670-682, _fsdp_param_group.py :503-511; FSDP1
    _runtime_utils.py :742-747.
    Assumes: every unit took part in the micro-batch. FSDP1's value is read, not traced.
    Checked by: tests/memory/test_fsdp.py::test_no_sync_grads_by_hand
    """
    if not sharding.no_sync_accumulation:
        return []
    which = "r" if sharding.version == FsdpVersion.FSDP2 else "c"
    numel = sum(u.grad_numel for u in units)
    src = torch_source(f"{FSDP2_DIR}/_fsdp_param.py", "unsharded_accumulated_grad in reduce dtype :670-682; "
                       "FSDP1 _runtime_utils.py :742-747")
    return [Term(path=f"{role}.fsdp.no_sync_grads", bytes=_bytes(numel, sharding, which), category=Category.GRAD,
                 device=Device.GPU, source=src, phase=phase)]


def adam_step_temporaries(units: Sequence[FsdpUnit], sharding: FsdpSharding, *, role: str, rank: int = 0,
                          phase: Phase = Phase.OPTIMIZER_STEP) -> list[Term]:
    """AdamW's step temporaries. On the GPU, torch defaults to the foreach implementation (DTensor is a
    foreach type), which builds ``exp_avg_sq_sqrt`` for every state tensor at once; on the host (FSDP CPU
    offload) it runs per tensor and one ``denom`` of the largest local tensor is alive.

        GPU:  Σ local_numel · p          host: max local tensor · p

    Source: torch/optim/adam.py@v2.11.0 ``_multi_tensor_adam`` (``torch._foreach_sqrt(device_exp_avg_sqs)``
    in the non-capturable branch; weight decay, lerp and addcmul are in place), ``_single_tensor_adam``
    :534-545; optimizer.py ``_default_to_fused_or_foreach`` :164-190; DTensor added to
    ``_foreach_supported_types`` in torch/distributed/tensor/__init__.py:72-73.
    Assumes: AdamW without amsgrad/maximize, float betas; grad clipping's per-tensor norms (scalars) ignored.
    Checked by: tests/memory/test_fsdp.py::test_adam_foreach_temporary_matches_real
    """
    src = torch_source("torch/optim/adam.py", "foreach: exp_avg_sq_sqrt of every state tensor; single: denom")
    if sharding.cpu_offload:
        largest = max((local_numel(FsdpUnit(name=u.name, shapes=(s,)), sharding, rank)
                       for u in units for s in u.grad_shapes), default=0)
        if sharding.version == FsdpVersion.FSDP1 and not sharding.use_orig_params:
            largest = max(grad_shard_numel(u, sharding) for u in units)
        return [Term(path=f"{role}.optimizer.step_temporary", bytes=_bytes(largest, sharding, "p"),
                     category=Category.OPTIMIZER, device=Device.CPU, source=src, phase=phase)]
    numel = sum(local_numel(u, sharding, rank) for u in units)
    return [Term(path=f"{role}.optimizer.step_temporary", bytes=_bytes(numel, sharding, "p"),
                 category=Category.OPTIMIZER, device=Device.GPU, source=src, phase=phase)]


def fsdp_transient_terms(units: Sequence[FsdpUnit], sharding: FsdpSharding, *, role: str, phase: Phase,
                         rank: int = 0) -> list[Term]:
    """Entry point: FSDP's transient GPU terms for one phase of a training or forward-only pass.

    ``Phase.FORWARD`` (or any forward-only phase the caller names, e.g. a log-prob pass): the worst
    :func:`forward_moments`; ``Phase.BACKWARD``: the worst of :func:`backward_moments` and
    :func:`prefetch_moments` plus :func:`no_sync_grads`;
    ``Phase.OPTIMIZER_STEP``: :func:`adam_step_temporaries`. A forward-only pass under ``no_grad`` has the
    same unshard pattern as a training forward.
    """
    if phase == Phase.BACKWARD:
        moments = backward_moments(units, sharding, role=role, phase=phase) + prefetch_moments(
            units, sharding, role=role, phase=phase)
        return _worst(moments) + no_sync_grads(
            units, sharding, role=role, phase=phase)
    if phase == Phase.OPTIMIZER_STEP:
        return adam_step_temporaries(units, sharding, role=role, rank=rank, phase=phase)
    return _worst(forward_moments(units, sharding, role=role, phase=phase))


def activation_offload_terms(saved_bytes_per_layer: int, num_groups: int, *, role: str,
                             phase: Phase = Phase.FORWARD) -> list[Term]:
    """Activation offload as verl implements it for FSDP: each wrapped layer's saved tensors are copied to
    pinned host memory when the next layer commits, except the last group's; one group is reloaded ahead
    in backward (a double buffer).

        GPU:  min(2, G) · a      (the group being produced or consumed + the one in flight)
        host: (G − 1) · a        pinned (``torch.empty(..., pin_memory=True)``)

    Symbols: ``a`` = ``saved_bytes_per_layer`` (from memory/activations.py), ``G`` = ``num_groups``, the
    FSDP-wrapped layers verl finds.
    Source: verl 0.9.1 ``verl/utils/activation_offload.py``: ``offload`` :172-185, ``bulk_offload_group``
    :298-317, ``synchronize_on_group_commit_forward`` :319-345 (the previous group's GPU buffers dropped at
    the window's commit), ``bulk_reload_group`` :355-371, :543
    (``num_offload_group = len(layers) − 1``).
    Assumes: equal groups (decoder layers); host bytes per micro-batch (freed at reload).
    Checked by: tests/memory/test_fsdp.py::test_activation_offload_by_hand
    """
    src = code("verl-project/verl:verl/utils/activation_offload.py@v0.9.1",
               "per-layer saved tensors to pinned host, double-buffered :172-371, len(layers)-1 groups :543")
    return [Term(path=f"{role}.activations.offload_window", bytes=min(2, num_groups) * saved_bytes_per_layer,
                 category=Category.ACTIVATION, device=Device.GPU, source=src, phase=phase),
            Term(path=f"{role}.activations.offloaded", bytes=max(num_groups - 1, 0) * saved_bytes_per_layer,
                 category=Category.ACTIVATION, device=Device.CPU, source=src, phase=phase)]
