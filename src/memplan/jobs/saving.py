"""The note for a run whose host RAM holds while it trains and fails when it saves (issue 13, item 5).

Names the save (when it comes, what it holds, per node) and what would avoid it. What each save holds is
memory/save.py; when it comes and which flag turns it off, frameworks/openrlhf/saves.py (``Job.saves``).
"""

from __future__ import annotations

from collections.abc import Iterable

from memplan.jobs.job import Job, SaveSchedule
from memplan.jobs.result import HostEstimate, PhaseUsage, verdict_for
from memplan.memory.breakdown import SAVE_PHASES, Phase
from memplan.units import GiB


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / GiB:.2f} GiB"


def _when(phase: Phase, saves: SaveSchedule) -> str:
    steps = f"{saves.interval_option} {saves.save_steps}"
    if phase == Phase.CHECKPOINT:
        return f"its first DeepSpeed checkpoint (save_checkpoint, every {steps} steps)"
    if saves.hf_every_steps:
        return f"its first HF save ({saves.hf_every_option}: save_model every {steps} steps)"
    return "the HF save at the end of training (save_model)"


def _avoid(phase: Phase, saves: SaveSchedule) -> str:
    if phase == Phase.CHECKPOINT:
        return f"{saves.no_checkpoint_option} avoids it (no resumable checkpoint is written)"
    if saves.hf_every_steps:
        return (f"without {saves.hf_every_option} the HF model is saved only at the end of training, "
                "with the same peak")
    return "no flag skips the final save_model; give that node more host RAM or less of the other roles' state"


def _save_terms(usage: PhaseUsage) -> str:
    held = sorted((t for t in usage.terms if t.phase in SAVE_PHASES), key=lambda t: -t.bytes)
    return " + ".join(f"{t.path} {_gib(t.bytes)}" for t in held)


def save_notes(job: Job, hosts: Iterable[HostEstimate]) -> tuple[str, ...]:
    """One note per node entry whose host RAM holds while training but not at a save."""
    if job.saves is None:
        return ()
    notes = []
    for host in hosts:
        usage = host.failing_save
        if usage is None or host.judged_bytes is None:
            continue
        training = max((p.bytes for p in host.phases if p.phase not in SAVE_PHASES), default=0)
        verdict = verdict_for(usage.bytes, host.judged_bytes)
        notes.append(f"host {host.id} holds while training ({_gib(training)}, {host.training_verdict}) but is "
                     f"{verdict} at {_when(usage.phase, job.saves)}: "
                     f"{_gib(usage.bytes)} against {_gib(host.judged_bytes)}, adding {_save_terms(usage)}; "
                     f"{_avoid(usage.phase, job.saves)}")
    return tuple(notes)
