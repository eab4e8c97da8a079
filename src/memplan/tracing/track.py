"""PyTorch's MemTracker with per-phase peaks, a category override, and the frozen-parameter guard.

``torch.distributed._tools.mem_tracker.MemTracker`` (torch 2.13) keeps one global peak. The tracer needs
the peak of every phase (forward, backward, optimizer step) of every iteration, so :class:`PhaseTracker`
extends its peak update, which runs after every dispatched op. Categories map to memplan's:

    Parameter -> param, Buffer -> buffer, Gradient -> grad, Optstate -> optimizer,
    Activation -> activation, Temp -> temp, Other -> temp (tensors registered with ``track_external``)

Two fixes over the stock tracker (reference/tracing.md §1): frozen parameters (LoRA base, reference,
teacher) get a no-op gradient-hook handle so the tracker never registers hooks on tensors that do not
require grad; and :meth:`PhaseTracker.category` files new tensors under a chosen category (DeepSpeed's
fp32 master weights and fp32 gradient partitions, which MemTracker would call activations).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker, _MemRefType, _ModState

#: MemTracker reference type -> memplan category (memory/breakdown.py ``Category``).
CATEGORY_OF = {
    _MemRefType.PARAM: "param", _MemRefType.BUFFER: "buffer", _MemRefType.GRAD: "grad",
    _MemRefType.OPT: "optimizer", _MemRefType.ACT: "activation", _MemRefType.TEMP: "temp",
    _MemRefType.OTH: "temp",
}
CATEGORIES = ("param", "buffer", "grad", "optimizer", "activation", "temp")

#: Category names accepted by :meth:`PhaseTracker.category`.
_REFTYPE_OF = {"grad": _MemRefType.GRAD, "optimizer": _MemRefType.OPT, "param": _MemRefType.PARAM}


class _NoopHandle:
    """Stands in for a hook handle on a frozen parameter."""

    def remove(self) -> None:
        """Nothing was registered."""


def _allocates(device: Any) -> bool:
    """Whether tensors on ``device`` take memory. MemTracker also counts meta-device tensors (DeepSpeed's
    ZeRO-1/2 keeps a meta copy of every parameter's shape: ``round_robin_bit16_meta``,
    deepspeed/runtime/zero/stage_1_and_2.py@v0.19.8 :485), which hold no storage."""
    return getattr(device, "type", str(device)) != "meta"


def to_categories(snapshot: dict[Any, dict[Any, int]], category_of: dict[Any, str] | None = None,
                  categories: tuple[str, ...] = CATEGORIES) -> dict[str, int]:
    """Sum a MemTracker snapshot over devices that allocate into named categories (every category present);
    ``category_of`` maps the tracker's reference types to names (default :data:`CATEGORY_OF`)."""
    names = CATEGORY_OF if category_of is None else category_of
    out = dict.fromkeys(categories, 0)
    for device, dev_snap in snapshot.items():
        if not _allocates(device):
            continue
        for key, value in dev_snap.items():
            if key != _TOTAL_KEY:
                out[names[key]] += value
    return out


class PhasePeaks:
    """Per-(iteration, phase) peaks for a MemTracker subclass: the snapshot at each phase's total peak and at
    its transient peak (the sum of :attr:`TRANSIENT_KEYS`). Subclasses say how a tracker snapshot maps to
    category names (:meth:`_categories`) and must call ``_init_phases`` in ``__init__``."""

    #: Category names whose sum is the computation's own (transient) memory.
    TRANSIENT_KEYS: tuple[str, ...] = ("activation", "temp")

    phase: tuple[int, str]
    phase_peaks: dict[tuple[int, str], dict[str, int]]
    transient_peaks: dict[tuple[int, str], dict[str, int]]
    _curr_mem_snap: Any

    def _init_phases(self) -> None:
        self.phase = (0, "setup")
        self.phase_peaks = {}
        self.transient_peaks = {}

    def _categories(self, snapshot: dict[Any, dict[Any, int]]) -> dict[str, int]:
        raise NotImplementedError

    def set_phase(self, iteration: int, phase: str) -> None:
        """Start a phase; what is resident now counts towards its peak."""
        self.phase = (iteration, phase)
        self._note_phase_peak()

    def current_categories(self) -> dict[str, int]:
        """Bytes resident now, by category."""
        return self._categories(self._curr_mem_snap)

    def current_total(self) -> int:
        """Bytes resident now."""
        return sum(dev[_TOTAL_KEY] for device, dev in self._curr_mem_snap.items() if _allocates(device))

    def _update_peak_stats(self, peak_state: Any) -> None:
        super()._update_peak_stats(peak_state)  # type: ignore[misc]
        self._note_phase_peak()

    def _transient(self, snap: dict[str, int]) -> int:
        return sum(snap.get(k, 0) for k in self.TRANSIENT_KEYS)

    def _note_phase_peak(self) -> None:
        total = self.current_total()
        best = self.phase_peaks.get(self.phase)
        snap = None
        if best is None or total > best["total"]:
            snap = self.current_categories()
            snap["total"] = total
            self.phase_peaks[self.phase] = snap
        # The computation's own peak (activation + temp) can come earlier than the phase's total peak: in
        # a backward without ZeRO's gradient hand-off, gradients pile up until the very end.
        snap = snap or self.current_categories()
        seen = self.transient_peaks.get(self.phase)
        if seen is None or self._transient(snap) > self._transient(seen):
            self.transient_peaks[self.phase] = {**snap, "total": total}

    def iteration_peaks(self) -> tuple[dict[int, dict[str, dict[str, int]]], dict[int, dict[str, dict[str, int]]]]:
        """(each iteration's phase snapshots at the total peak, at the activation + temp peak), setup and the
        "end" marker left out."""
        iterations: dict[int, dict[str, dict[str, int]]] = {}
        transient: dict[int, dict[str, dict[str, int]]] = {}
        for (it, phase), snap in self.phase_peaks.items():
            if it >= 1 and phase != "end":
                iterations.setdefault(it, {})[phase] = snap
                transient.setdefault(it, {})[phase] = self.transient_peaks[(it, phase)]
        return iterations, transient


class PhaseTracker(PhasePeaks, MemTracker):
    """MemTracker that also records the peak snapshot of each (iteration, phase)."""

    def __init__(self) -> None:
        super().__init__()
        self._init_phases()
        self._frozen: list[torch.Tensor] = []
        self._forced: Any = None

    def _categories(self, snapshot: dict[Any, dict[Any, int]]) -> dict[str, int]:
        return to_categories(snapshot)

    def guard_frozen(self, params: Iterable[torch.Tensor]) -> None:
        """Register parameters that must get no gradient hooks (they do not require grad)."""
        frozen = [p for p in params if not p.requires_grad]
        self._frozen.extend(frozen)
        if self._depth > 0:
            for param in frozen:
                self._param_to_grad_hook_handles[param] = (_NoopHandle(), _NoopHandle())

    def tag(self, tensor: torch.Tensor, name: str) -> None:
        """File ``tensor``'s storage under category ``name`` (grad, optimizer or param) from now on."""
        self._update_and_maybe_create_winfos(tensor, _REFTYPE_OF[name])

    def __enter__(self) -> "PhaseTracker":
        first = self._depth == 0
        super().__enter__()
        if first:
            for param in self._frozen:
                self._param_to_grad_hook_handles[param] = (_NoopHandle(), _NoopHandle())
        return self

    @contextlib.contextmanager
    def category(self, name: str) -> Iterator[None]:
        """File every tensor created inside the block under ``name`` (grad, optimizer or param)."""
        previous, self._forced = self._forced, _REFTYPE_OF[name]
        try:
            yield
        finally:
            self._forced = previous

    def _pre_fw_hook(self, module: torch.nn.Module, inputs: Any) -> None:
        try:
            super()._pre_fw_hook(module, inputs)
        except NotImplementedError:
            # A root module called twice in one iteration (KTO's matched and unmatched forwards): the stock
            # tracker takes that for a new iteration. Restart that module's stats; the phase peaks are ours.
            self.memory_tracking.pop(module, None)
            super()._pre_fw_hook(module, inputs)

    def _track(self, reftype: Any, t: torch.Tensor) -> None:
        super()._track(self._forced or reftype, t)

    def module_rows(self, depth: int, roles: dict[int, str]) -> list[dict[str, Any]]:
        """Per-module figures of the last tracked iteration, modules up to ``depth`` levels deep.

        ``roles`` maps ``id(module)`` to the role of the model it belongs to (policy, ref, teacher), which
        prefixes the name: two models of one class would otherwise share their names.
        """
        rows = []
        for module, stats in self.memory_tracking.items():
            if stats.mod_fqn.count(".") + 1 > depth:
                continue
            role = roles.get(id(module))
            rows.append({
                "module": f"{role}:{stats.mod_fqn}" if role else stats.mod_fqn,
                "param_bytes": int(getattr(stats, "parameter_mem", 0)),
                "buffer_bytes": int(getattr(stats, "buffer_mem", 0)),
                "input_bytes": int(getattr(stats, "input_mem", 0)),
                "output_bytes": int(getattr(stats, "output_mem", 0)),
                "peak_forward_bytes": _max_total(stats.snapshots.get(_ModState.PEAK_FW, [])),
                "peak_backward_bytes": _max_total(stats.snapshots.get(_ModState.PEAK_BW, [])),
            })
        return rows


def _max_total(snapshots: list[dict[Any, dict[Any, int]]]) -> int:
    best = 0
    for snap in snapshots:
        best = max(best, sum(dev.get(_TOTAL_KEY, 0) for device, dev in snap.items() if _allocates(device)))
    return best
