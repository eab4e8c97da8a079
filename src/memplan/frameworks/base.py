"""The framework seam: what every framework adapter provides, and the typed run they share.

A framework (``frameworks/<name>/``) reads a command into a :class:`ResolvedRun` with its defaults
applied, builds the Job (roles, placement, schedule) and estimates it, emits commands, declares the
knobs the planner and the suggestions may turn with their spellings, and names its flags as typed.
``frameworks.get(name)`` returns the registered adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from memplan.jobs.job import GpuGroup

if TYPE_CHECKING:
    from memplan.errors import ConfigError
    from memplan.hardware.gpu import Gpu
    from memplan.jobs.knobs import KnobKey, KnobValue
    from memplan.jobs.result import Estimate
    from memplan.memory.logits import LogProbImpl


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedRun:
    """A launch command with its framework's defaults applied: what every estimate and suggestion starts from."""

    script: str
    """Entry point (OpenRLHF: ``train_sft``...)."""
    values: dict[str, Any]
    """Every option's value by the framework's canonical key, defaults included."""
    group: GpuGroup
    """The GPUs of the run."""
    version: str
    """Framework version whose defaults apply."""
    command: str
    """The command as given, on one line."""
    notes: tuple[str, ...]
    """Unknown flags and parser warnings."""
    options: dict[str, str] = field(default_factory=dict)
    """Canonical key -> the option as the user typed it: errors found later name that spelling."""
    framework: str = "openrlhf"
    """The framework that reads and runs the command (``frameworks.get``)."""




@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One change to a run, as its framework proposes it: option values and/or the single-model GPU group."""

    text: str
    """As typed on the command line (or described, for GPU counts)."""
    updates: tuple[tuple[str, Any], ...] = ()
    """The framework's canonical keys and their new values."""
    group: GpuGroup | None = None
    """New GPU group of a single-model run."""
    added_gpus: int = 0
    """GPUs the change adds."""

    def apply(self, run: ResolvedRun) -> ResolvedRun:
        """``run`` with the change."""
        return replace(run, values={**run.values, **dict(self.updates)}, group=self.group or run.group)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanRun:
    """What a plan starts from, as the framework resolves the request (``Framework.plan_run``)."""

    run: ResolvedRun
    """The run with the framework's defaults, the user's options and pins applied."""
    rl: bool
    """An RL run (roles, rollout engines) rather than a single-model one."""
    roles: tuple[str, ...]
    """Model roles of an RL run (``actor``, ``critic``...), in the framework's placement order."""
    pinned: dict[str, Any]
    """Searched keys the user fixed, with their values."""
    notes: tuple[str, ...]
    """What was assumed."""
    partner: str | None = None
    """The frozen model a single-model run trains against (``ref``, ``teacher``), if any."""
    hybrid_only: bool = False
    """Every role and the rollout engines always share the same GPUs (the hybrid engine is the only placement):
    the planner searches the GPU count, the engines' TP and memory share, and the knobs, not placements."""


class Framework(Protocol):
    """What a framework adapter provides (one folder under ``frameworks/``)."""

    name: str
    """Registry name (``openrlhf``)."""
    versions: tuple[str, ...]
    """Releases whose defaults it knows, oldest first."""

    def resolve_command(self, command: str | Sequence[str], *, version: str | None = None,
                        whole_run: bool = True) -> ResolvedRun:
        """A command as typed -> the typed run, defaults applied (``whole_run``: also check the world)."""

    def command_for(self, model: str, method: str, options: Sequence[str] = (), *, gpus: int | None = None,
                    nodes: int | None = None, gpus_per_node: int | None = None) -> list[str]:
        """The command ``estimate MODEL --method METHOD [options]`` stands for."""

    def gpus_note(self, gpus: int | None, gpus_per_node: int | None) -> str | None:
        """How a GPU count was laid out on nodes, when it spans more than one."""

    def estimate_run(self, run: ResolvedRun, *, gpu: Gpu | None, host_ram_bytes: int | None,
                     logprob_impl: LogProbImpl) -> Estimate:
        """Build the run's Job (roles, placement, schedule) and estimate it; errors name options as typed."""

    def emit(self, run: ResolvedRun) -> str:
        """The launch command of ``run`` (on ``run.group`` for a single-model run)."""

    def knob_keys(self) -> Mapping[KnobKey, str]:
        """The knobs the framework has, each with the canonical key that holds its value."""

    def apply(self, run: ResolvedRun, settings: Mapping[KnobKey, KnobValue]) -> ResolvedRun:
        """``run`` with knob ``settings`` applied (the framework's post-parse rules re-run)."""

    def with_values(self, run: ResolvedRun, values: Mapping[str, Any]) -> ResolvedRun:
        """``run`` with ``values`` (by the framework's keys) and its post-parse rules re-run."""

    def plan_run(self, model: str, method: str, *, options: Sequence[str], keep: Sequence[str],
                 version: str | None, searched: Callable[[bool], Collection[KnobKey]]) -> PlanRun:
        """The run a plan starts from, with the user's options and ``--keep`` pins of the ``searched`` knobs."""

    def changes(self, run: ResolvedRun, base: Estimate | None) -> list[Change]:
        """The single changes worth trying when ``run`` (estimated as ``base``) does not fit, in order."""

    def as_typed(self, exc: ConfigError, run: ResolvedRun) -> ConfigError:
        """``exc`` with its location named as the user typed the option."""

    def flag_names(self) -> tuple[frozenset[str], frozenset[str]]:
        """Every spelling of its options (as typed) and its multi-word keys, for the seam test."""

