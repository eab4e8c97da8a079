"""PyTorch's ``FSDPMemTracker`` (torch.distributed._tools.fsdp2_mem_tracker) with per-phase peaks.

FSDPMemTracker files every tensor under an FSDP2 category: the rank's sharded parameters and gradients,
the unsharded (all-gathered) parameters and gradients of a layer while it runs, the all-gather and
reduce-scatter buffers, activations, temporaries, optimizer state and inputs. :class:`FsdpPhaseTracker`
adds the peak of every (iteration, phase) as :class:`memplan.tracing.track.PhaseTracker` does for the
OpenRLHF traces, with these category names:

    Sharded Param -> sharded_param, Unsharded Param -> unsharded_param, Buffer -> buffer,
    Sharded Grad -> sharded_grad, Unsharded Grad -> unsharded_grad, Activation -> activation,
    Temp -> temp, All Gather -> all_gather, Reduce Scatter -> reduce_scatter, OptState -> optimizer,
    Inputs -> inputs
"""

from __future__ import annotations

from typing import Any

from torch.distributed._tools.fsdp2_mem_tracker import _FSDPRefType, FSDPMemTracker

from memplan.tracing.track import PhasePeaks, to_categories

#: FSDPMemTracker reference type -> category name in the records.
FSDP_CATEGORY_OF = {
    _FSDPRefType.SHARDED_PARAM: "sharded_param", _FSDPRefType.UNSHARDED_PARAM: "unsharded_param",
    _FSDPRefType.BUFFER: "buffer", _FSDPRefType.SHARDED_GRAD: "sharded_grad",
    _FSDPRefType.UNSHARDED_GRAD: "unsharded_grad", _FSDPRefType.ACT: "activation", _FSDPRefType.TEMP: "temp",
    _FSDPRefType.ALL_GATHER: "all_gather", _FSDPRefType.REDUCE_SCATTER: "reduce_scatter",
    _FSDPRefType.OPT: "optimizer", _FSDPRefType.INP: "inputs",
}
FSDP_CATEGORIES = tuple(dict.fromkeys(FSDP_CATEGORY_OF.values()))

#: Persistent states of a rank (present between phases); the rest is the phase's own.
FSDP_STATE_CATEGORIES = ("sharded_param", "buffer", "sharded_grad", "optimizer")


class FsdpPhaseTracker(PhasePeaks, FSDPMemTracker):
    """FSDPMemTracker that also records the peak snapshot of each (iteration, phase)."""

    #: Everything that is not a persistent state: unsharded copies, communication buffers, activations.
    TRANSIENT_KEYS = tuple(c for c in FSDP_CATEGORIES if c not in FSDP_STATE_CATEGORIES)

    def __init__(self, module: Any, optimizer: Any = None) -> None:
        super().__init__(module, optimizer)
        self._init_phases()

    def _categories(self, snapshot: dict[Any, dict[Any, int]]) -> dict[str, int]:
        return to_categories(snapshot, FSDP_CATEGORY_OF, FSDP_CATEGORIES)
