"""OpenRLHF on the framework seam (``frameworks.base.Framework``): the adapter ``frameworks.get`` returns."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from memplan.errors import ConfigError
from memplan.frameworks.base import Change, PlanRun, ResolvedRun
from memplan.frameworks.openrlhf import run as runs
from memplan.frameworks.openrlhf.emit import format_command
from memplan.frameworks.openrlhf.launchers import LauncherWorld
from memplan.frameworks.openrlhf.flags import VERSIONS, flag_names
from memplan.hardware.gpu import Gpu
from memplan.jobs.knobs import KnobKey, KnobValue
from memplan.jobs.result import Estimate
from memplan.memory.logits import LogProbImpl


class OpenRlhf:
    """OpenRLHF 0.8, 0.9 and 0.11: DeepSpeed trainers, vLLM engines, Ray placement."""

    name = "openrlhf"
    versions = VERSIONS

    def resolve_command(self, command: str | Sequence[str], *, version: str | None = None,
                        whole_run: bool = True) -> ResolvedRun:
        """frameworks/openrlhf/run.py ``resolve_command``."""
        return runs.resolve_command(command, version=version, whole_run=whole_run)

    def command_for(self, model: str, method: str, options: Sequence[str] = (), *, gpus: int | None = None,
                    nodes: int | None = None, gpus_per_node: int | None = None) -> list[str]:
        """frameworks/openrlhf/run.py ``command_for``."""
        return runs.command_for(model, method, options, gpus=gpus, nodes=nodes, gpus_per_node=gpus_per_node)

    def gpus_note(self, gpus: int | None, gpus_per_node: int | None) -> str | None:
        """frameworks/openrlhf/run.py ``gpus_note``."""
        return runs.gpus_note(gpus, gpus_per_node)

    def estimate_run(self, run: ResolvedRun, *, gpu: Gpu | None, host_ram_bytes: int | None,
                     logprob_impl: LogProbImpl = LogProbImpl.FLASH_ATTN_TRITON) -> Estimate:
        """The Job (or RlJob, schedule included) of ``run``, estimated; errors name flags as typed."""
        try:
            return runs.estimate_resolved(run, gpu=gpu, host_ram_bytes=host_ram_bytes, logprob_impl=logprob_impl)
        except ConfigError as exc:
            raise self.as_typed(exc, run) from None

    def emit(self, run: ResolvedRun) -> str:
        """The launch command of ``run``: ``ray job submit`` for RL, else the launcher on ``run.group``."""
        if run.script == runs.RL_SCRIPT:
            return format_command(run.script, run.values, version=run.version)
        world = LauncherWorld(num_gpus=run.group.gpus_per_node,
                              num_nodes=run.group.num_nodes if run.group.num_nodes > 1 else None)
        return format_command(run.script, run.values, version=run.version, world=world)

    def knob_keys(self) -> Mapping[KnobKey, str]:
        """frameworks/openrlhf/knobs.py ``KNOB_KEYS``."""
        from memplan.frameworks.openrlhf.knobs import knob_keys
        return knob_keys()

    def apply(self, run: ResolvedRun, settings: Mapping[KnobKey, KnobValue]) -> ResolvedRun:
        """frameworks/openrlhf/knobs.py ``apply``."""
        from memplan.frameworks.openrlhf.knobs import apply
        return apply(run, settings)

    def with_values(self, run: ResolvedRun, values: Mapping[str, Any]) -> ResolvedRun:
        """frameworks/openrlhf/knobs.py ``with_values``."""
        from memplan.frameworks.openrlhf.knobs import with_values
        return with_values(run, values)

    def plan_run(self, model: str, method: str, *, options: Sequence[str], keep: Sequence[str],
                 version: str | None, searched: Callable[[bool], Collection[KnobKey]]) -> PlanRun:
        """frameworks/openrlhf/plan.py ``plan_run``."""
        from memplan.frameworks.openrlhf.plan import plan_run
        return plan_run(model, method, options=options, keep=keep, version=version, searched=searched)

    def changes(self, run: ResolvedRun, base: Estimate | None) -> list[Change]:
        """frameworks/openrlhf/advice.py ``changes``."""
        from memplan.frameworks.openrlhf.advice import changes
        return changes(run, base)

    def as_typed(self, exc: ConfigError, run: ResolvedRun) -> ConfigError:
        """frameworks/openrlhf/run.py ``as_typed`` over the flags the user typed."""
        return runs.as_typed(exc, run.options)

    def flag_names(self) -> tuple[frozenset[str], frozenset[str]]:
        """frameworks/openrlhf/flags.py ``flag_names``."""
        return flag_names()


FRAMEWORK = OpenRlhf()
