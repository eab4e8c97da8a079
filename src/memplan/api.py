"""The public entry points: estimate a launch command, or a model + method + flags.

These parse and resolve user intent once (through the run's framework adapter, ``frameworks.get``: its
options, defaults per version; the GPU and host RAM), build a Job, and hand it to the estimator. The CLI
and the web UI call only these.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from memplan import frameworks
from memplan.errors import ConfigError
from memplan.frameworks.base import ResolvedRun
from memplan.frameworks.openrlhf.bounds import MAX_GPUS, MAX_GPUS_PER_NODE  # noqa: F401 (the web's bounds)
from memplan.frameworks.openrlhf.run import RL_SCRIPT, gpus_note, nodes_of  # noqa: F401 (planner, advice)
from memplan.hardware import parse_host_ram, resolve_gpu
from memplan.hardware.gpu import Gpu
from memplan.jobs.options import Method
from memplan.jobs.result import Estimate
from memplan.memory.logits import LogProbImpl
from memplan.model import load_model_spec

#: The framework a command is read as when none is named.
DEFAULT_FRAMEWORK = "openrlhf"


def resolve_command(command: str | Sequence[str], *, version: str | None = None, whole_run: bool = True,
                    framework: str = DEFAULT_FRAMEWORK) -> ResolvedRun:
    """Parse a launch command and apply its framework's defaults for its entry point and version
    (``frameworks/<name>``; ``whole_run``: the command states the run's world, so start-up checks apply)."""
    return frameworks.get(framework).resolve_command(command, version=version, whole_run=whole_run)


def command_for(model: str, method: Method | str, flags: Sequence[str] = (), *, gpus: int | None = None,
                nodes: int | None = None, gpus_per_node: int | None = None,
                framework: str = DEFAULT_FRAMEWORK) -> list[str]:
    """The launch command a model + method + the framework's options stand for."""
    return frameworks.get(framework).command_for(model, method, flags, gpus=gpus, nodes=nodes,
                                                 gpus_per_node=gpus_per_node)


def estimate_run(run: ResolvedRun, *, gpu: Gpu | None, host_ram_bytes: int | None,
                 logprob_impl: LogProbImpl = LogProbImpl.FLASH_ATTN_TRITON) -> Estimate:
    """Estimate a resolved run (the planner and the suggestions vary ``run.values`` and call this).

    A ConfigError raised deeper is re-raised naming the option as the user typed it.
    """
    return frameworks.get(run.framework).estimate_run(run, gpu=gpu, host_ram_bytes=host_ram_bytes,
                                                      logprob_impl=logprob_impl)


def resolve_capacity(gpu: str | None, host_ram: str | int | None) -> tuple[Gpu | None, int | None]:
    """``--gpu`` and ``--host-ram`` as a catalogue GPU and a byte count."""
    if gpu is not None and not gpu.strip():
        raise ConfigError("--gpu", "empty: give a GPU type (memplan gpus) or a size such as 80GiB")
    gpu_spec = resolve_gpu(gpu, location="--gpu") if gpu is not None else None
    if host_ram is None or isinstance(host_ram, int):
        return gpu_spec, host_ram
    return gpu_spec, parse_host_ram(host_ram, location="--host-ram")


def estimate_command(command: str | Sequence[str], *, gpu: str | None = None, host_ram: str | int | None = None,
                     version: str | None = None,
                     logprob_impl: LogProbImpl = LogProbImpl.FLASH_ATTN_TRITON) -> Estimate:
    """Estimate a launch command as typed (``deepspeed --module openrlhf.cli.train_sft ...``, ``python3 -m
    verl.trainer.main_ppo ...``: the framework is read from the command)."""
    run = resolve_command(command, version=version, framework=frameworks.detect(
        command if isinstance(command, str) else list(command)))
    gpu_spec, host_bytes = resolve_capacity(gpu, host_ram)
    return estimate_run(run, gpu=gpu_spec, host_ram_bytes=host_bytes, logprob_impl=logprob_impl)


def resolve_model_run(model: str, method: Method | str, flags: Sequence[str] = (), *, gpus: int | None = None,
                      nodes: int | None = None, gpus_per_node: int | None = None,
                      version: str | None = None, framework: str = DEFAULT_FRAMEWORK) -> ResolvedRun:
    """``resolve_command`` of :func:`command_for`, noting how ``--gpus`` was laid out on nodes."""
    if framework != DEFAULT_FRAMEWORK:
        load_model_spec(model)
    fw = frameworks.get(framework)
    argv = fw.command_for(model, method, flags, gpus=gpus, nodes=nodes, gpus_per_node=gpus_per_node)
    run = fw.resolve_command(argv, version=version)
    note = fw.gpus_note(gpus, gpus_per_node)
    return replace(run, notes=run.notes + (note,)) if note else run


def estimate(model: str, method: Method | str, flags: Sequence[str] = (), *, gpus: int | None = None,
             nodes: int | None = None, gpus_per_node: int | None = None, gpu: str | None = None,
             host_ram: str | int | None = None, version: str | None = None,
             logprob_impl: LogProbImpl = LogProbImpl.FLASH_ATTN_TRITON) -> Estimate:
    """Estimate ``model`` trained with ``method`` and OpenRLHF ``flags`` (e.g. ``["--zero_stage", "3"]``)."""
    load_model_spec(model)  # fail early with the model's own error
    run = resolve_model_run(model, method, flags, gpus=gpus, nodes=nodes, gpus_per_node=gpus_per_node,
                            version=version)
    gpu_spec, host_bytes = resolve_capacity(gpu, host_ram)
    return estimate_run(run, gpu=gpu_spec, host_ram_bytes=host_bytes, logprob_impl=logprob_impl)
