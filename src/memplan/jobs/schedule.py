"""The schedule of one iteration: its phases in order, and per phase what each role does and where each
of its states lives. Supplied by the framework adapter (it knows when its trainer sleeps, offloads or
syncs); the estimator only reads it.

Generic over frameworks: OpenRLHF's ``train_ppo_ray`` is rollout → make-experience → training → weight
sync (reference/openrlhf.md §4–§6); verl's is generate → old log-prob → ref log-prob → values → critic
update → actor update → weight sync, with FSDP parameter/optimizer offload per phase and the rollout
engine asleep (level 1: weights to host; level 2: weights and KV freed) outside generation
(reference/verl.md §3, §5).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from memplan.jobs.job import RoleName
from memplan.memory.breakdown import Phase


class Activity(StrEnum):
    """What a role does in one phase."""

    IDLE = "idle"
    """Nothing: only its resident states occupy memory."""
    FORWARD = "forward"
    """A forward without gradients (log-probs, values, rewards), micro-batch by micro-batch."""
    TRAIN_STEP = "train_step"
    """Forward, backward and optimizer step of its own update."""
    GENERATE = "generate"
    """A rollout engine generating."""
    SYNC_SEND = "sync_send"
    """Sends its weights to the rollout engines."""
    SYNC_RECEIVE = "sync_receive"
    """A rollout engine receiving the trained weights."""
    SAVE = "save"
    """Writes a checkpoint or the trained model."""


class State(StrEnum):
    """A category of state a role keeps between phases."""

    WEIGHTS = "weights"
    """The weights computation uses (low-precision parameters; an engine's weights)."""
    GRADS = "grads"
    """Gradient buffers and partitions of a trained model."""
    OPTIMIZER = "optimizer"
    """Optimizer state and the fp32 master copy of a trained model."""
    KV_CACHE = "kv_cache"
    """A rollout engine's key/value cache."""


class Residence(StrEnum):
    """Where a state is during a phase."""

    GPU = "gpu"
    """On the role's GPUs throughout the phase."""
    WHILE_ACTIVE = "while_active"
    """Moved onto the GPUs for the role's own activity in the phase and back to host right after it (so it
    counts with that activity, not with what the GPU holds throughout)."""
    HOST = "host"
    """In host RAM (offloaded or asleep)."""
    FREED = "freed"
    """Released (a sleeping engine's KV cache; level-2 sleep also drops the weights)."""


class WeightTransport(StrEnum):
    """How trained weights reach the rollout engines."""

    NONE = "none"
    """No rollout engine, or nothing to send."""
    BROADCAST = "broadcast"
    """A collective broadcast per parameter (NCCL)."""
    CUDA_IPC = "cuda_ipc"
    """Same-GPU engines: each gathered parameter is cloned and shared by CUDA IPC handle."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RoleStep:
    """One role in one phase."""

    role: RoleName
    """The role."""
    activity: Activity
    """What it does."""
    states: tuple[tuple[State, Residence], ...] = ()
    """Where its states are; a state not listed is on the GPU."""
    micro_batch: tuple[int, int] | None = None
    """The activity's micro-batch on one GPU as (sequences, tokens per sequence) when it differs from the
    role's own (a forward pass with its own micro batch or token budget); None: the role's."""

    def residence(self, state: State) -> Residence:
        """Where ``state`` is in this phase."""
        return dict(self.states).get(state, Residence.GPU)


@dataclass(frozen=True, slots=True, kw_only=True)
class SchedulePhase:
    """One phase of the iteration."""

    phase: Phase
    """Which phase."""
    steps: tuple[RoleStep, ...]
    """What each role does; a role not listed is idle with its states on the GPU."""
    concurrent: bool = False
    """Roles sharing a GPU run their activities at the same time (their peaks add); otherwise one after
    another (the GPU's peak is the largest one)."""

    def step(self, role: RoleName) -> RoleStep:
        """What ``role`` does in this phase."""
        return next((s for s in self.steps if s.role == role), RoleStep(role=role, activity=Activity.IDLE))


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """One iteration, phase by phase, and where states wait while the run saves."""

    phases: tuple[SchedulePhase, ...]
    """The phases of one iteration, in order."""
    saving: tuple[RoleStep, ...] = ()
    """Where each role's states are while the run saves (the save phases); unlisted: on the GPU."""
    weight_transport: WeightTransport = WeightTransport.NONE
    """How the trained weights reach the rollout engines."""

    @property
    def order(self) -> tuple[Phase, ...]:
        """The iteration's phases, in order."""
        return tuple(p.phase for p in self.phases)

    def at(self, phase: Phase) -> SchedulePhase | None:
        """The schedule's entry for ``phase`` (None when the iteration has no such phase)."""
        return next((p for p in self.phases if p.phase == phase), None)

    def residence(self, role: RoleName, phase: Phase, state: State) -> Residence:
        """Where ``role``'s ``state`` is in ``phase``: the iteration's table, the saving table for a phase
        outside the iteration, on the GPU while loading."""
        entry = self.at(phase)
        if entry is not None:
            return entry.step(role).residence(state)
        if phase == Phase.LOAD:
            return Residence.GPU
        return next((s for s in self.saving if s.role == role), RoleStep(role=role, activity=Activity.SAVE)
                    ).residence(state)
