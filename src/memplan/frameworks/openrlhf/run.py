"""OpenRLHF runs: a launch command (or model + method + flags) -> a ResolvedRun with OpenRLHF's defaults,
checked as OpenRLHF, DeepSpeed and vLLM check it at start-up, and the run's Job estimated.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import replace

from memplan.errors import ConfigError
from memplan.frameworks.base import ResolvedRun
from memplan.frameworks.openrlhf.command import ParsedCommand, parse_command
from memplan.frameworks.openrlhf.defaults import foreign_keys, resolve_values
from memplan.frameworks.openrlhf.flags import LATEST, newest_with_script, normalize_version, scripts_of
from memplan.frameworks.openrlhf.launchers import Launcher
from memplan.frameworks.openrlhf.checks import Names, check_model, check_run, check_world_options
from memplan.frameworks.openrlhf.job import (
    DEFAULT_GPUS_PER_NODE,
    METHOD_SCRIPT,
    SCRIPT_METHOD,
    build_single_model_job,
    flag_naming_loader,
    world_of,
)
from memplan.frameworks.openrlhf.rl_job import METHOD_ESTIMATOR, build_rl_job
from memplan.frameworks.openrlhf.unmodelled import unmodelled_notes
from memplan.hardware import resolve_gpu
from memplan.hardware.gpu import Gpu
from memplan.jobs.estimate import estimate_job
from memplan.jobs.options import Method
from memplan.jobs.result import Estimate
from memplan.jobs.rl_estimate import estimate_rl
from memplan.memory.logits import LogProbImpl
from memplan.model import load_model_spec


#: The RL entry script.
RL_SCRIPT = "train_ppo_ray"
#: GPU assumed for RL estimates without ``--gpu`` (vLLM's KV budget is a fraction of the GPU's memory).
DEFAULT_RL_GPU = "a100-80g"


def _notes_from_parse(parsed: object) -> list[str]:
    notes = [f"unknown flag, not modelled: {flag}" for flag in getattr(parsed, "unknown_flags", ())]
    notes += list(getattr(parsed, "warnings", ()))
    return notes


#: How each launcher states GPUs per node (the flag a user adds to say it).
_GPU_COUNT_FLAG = {"deepspeed": "deepspeed --num_gpus, or memplan estimate --gpus",
                   "torchrun": "torchrun --nproc_per_node"}


def _assumed_gpus_note(launcher: str) -> str:
    """The note for a command that states no GPUs per node (deepspeed then uses every local GPU)."""
    flag = _GPU_COUNT_FLAG.get(launcher, "a launcher's GPU count")
    return (f"no GPUs per node given ({flag}): assumed {DEFAULT_GPUS_PER_NODE} GPUs per node, a full "
            f"{DEFAULT_GPUS_PER_NODE}-GPU node; give the count to estimate your own")


def resolve_command(command: str | Sequence[str], *, version: str | None = None,
                    whole_run: bool = True) -> ResolvedRun:
    """Parse a launch command and apply OpenRLHF's defaults for its script and version.

    The version is ``version`` when given, else the latest release unless the script or a flag exists only
    in an older one (``ParsedCommand.version_hint``); a note then says which version was assumed and why.
    ``whole_run``: the command states the run's world, so the start-up assertions between flags, world
    and model apply (``frameworks.openrlhf.checks``); the planner, which chooses the world, passes False.
    """
    parsed = parse_command(command)
    chosen, version_notes = _choose_version(parsed, version)
    try:
        values = resolve_values(parsed, chosen)
    except ConfigError as exc:
        raise as_typed(exc, parsed.options) from None
    if parsed.script not in SCRIPT_METHOD and parsed.script != RL_SCRIPT:
        raise ConfigError("command", f"{parsed.script} is not supported; memplan estimates "
                                     f"{', '.join(sorted([*SCRIPT_METHOD, RL_SCRIPT]))}")
    text = command if isinstance(command, str) else shlex.join(command)
    notes = (_notes_from_parse(parsed) + version_notes
             + unmodelled_notes(parsed.script, parsed.values, chosen, parsed.options))
    if parsed.script != RL_SCRIPT and parsed.world.gpus_per_node is None:
        notes.append(_assumed_gpus_note(str(parsed.launcher)))
    run = ResolvedRun(script=parsed.script, values=dict(values), group=world_of(parsed.world.nodes,
                                                                                parsed.world.gpus_per_node),
                      version=chosen, command=" ".join(text.split()), notes=tuple(notes),
                      options=dict(parsed.options))
    if whole_run:
        try:
            _check_whole_run(run, parsed)
        except ConfigError as exc:
            raise as_typed(exc, parsed.options) from None
    return run


def _check_whole_run(run: ResolvedRun, parsed: ParsedCommand) -> None:
    """The start-up assertions of OpenRLHF, DeepSpeed and vLLM, named as the user typed the flags."""
    names = Names(run.script, normalize_version(run.version), parsed.options)
    launcher = "torchrun --nnodes" if parsed.launcher is Launcher.TORCHRUN else "deepspeed --num_nodes"
    check_run(run.script, run.values, world=(run.group.num_nodes, run.group.gpus_per_node), names=names,
              world_name=launcher)
    if run.script == RL_SCRIPT and run.values.get("pretrain"):
        spec = flag_naming_loader(load_model_spec, run.values)(str(run.values["pretrain"]))
        check_model(run.values, spec, names)


def _choose_version(parsed: ParsedCommand, version: str | None) -> tuple[str, list[str]]:
    """The OpenRLHF version to apply, and notes on the choice (module doc of command.py for the rule)."""
    if version is None:
        chosen = parsed.version_hint or LATEST
        if chosen == LATEST or parsed.version_reason is None:
            return chosen, []
        return chosen, [f"OpenRLHF {chosen} assumed, not the latest release ({LATEST}): {parsed.version_reason}; "
                        "pass --openrlhf-version to choose"]
    chosen = normalize_version(version)
    if parsed.script not in scripts_of(chosen):
        method = SCRIPT_METHOD.get(parsed.script)
        named = f"openrlhf.cli.{parsed.script}" + (f" (--method {method.value})" if method else "")
        newest = newest_with_script(parsed.script)
        raise ConfigError("--openrlhf-version", f"OpenRLHF {chosen} has no {named}; OpenRLHF {newest} has it: "
                          f"pass --openrlhf-version {newest}")
    warned = " ".join(parsed.warnings)
    return chosen, [f"--{key} is not a flag of OpenRLHF {chosen}: not read" for key in foreign_keys(parsed, chosen)
                    if f"--{key} is not a flag" not in warned]


#: Locations the framework-neutral code (memory/) raises at, and the OpenRLHF key that sets each.
NEUTRAL_LOCATIONS = {"zero.offload_optimizer": "adam_offload", "zero.grad_accum_dtype": "grad_accum_dtype",
                     "zero.zpg": "zpg", "zero.stage": "zero_stage", "lora.target_modules": "target_modules",
                     "lora.rank": "lora_rank"}


def as_typed(exc: ConfigError, options: dict[str, str]) -> ConfigError:
    """``exc`` with its location ``--KEY``, ``KEY`` (a canonical key) or a neutral location of memory/
    (``zero.zpg``) replaced by the flag as typed (the legacy ``--KEY`` when the user did not type it)."""
    key = NEUTRAL_LOCATIONS.get(exc.location)
    typed = options.get(key or exc.location.removeprefix("--"))
    if typed is None and key is not None:
        typed = f"--{key}"
    return exc if typed is None or typed == exc.location else type(exc)(typed, exc.message)


def estimate_resolved(run: ResolvedRun, *, gpu: Gpu | None, host_ram_bytes: int | None,
                  logprob_impl: LogProbImpl) -> Estimate:
    if run.script == RL_SCRIPT:
        rl, notes = build_rl_job(run.values, version=run.version, load=flag_naming_loader(load_model_spec, run.values),
                                 command=run.command,
                                 logprob_impl=logprob_impl)
        extra: tuple[str, ...] = ()
        if gpu is None:
            gpu = resolve_gpu(DEFAULT_RL_GPU, location="--gpu")
            extra = (f"vLLM sizes its KV cache from the GPU's memory: no --gpu given, assumed {DEFAULT_RL_GPU}",)
        est = estimate_rl(rl, gpu=gpu, host_ram_bytes=host_ram_bytes)
        if extra:
            est = replace(est, devices=tuple(replace(d, capacity_bytes=None) for d in est.devices))
        return replace(est, notes=run.notes + notes + est.notes + extra)
    job, notes = build_single_model_job(run.script, run.values, group=run.group, version=run.version,
                                        load=flag_naming_loader(load_model_spec, run.values), command=run.command,
                                        logprob_impl=logprob_impl)
    est = estimate_job(job, gpu=gpu, host_ram_bytes=host_ram_bytes)
    return replace(est, notes=run.notes + notes + est.notes)


def command_for(model: str, method: Method | str, flags: Sequence[str] = (), *, gpus: int | None = None,
                nodes: int | None = None, gpus_per_node: int | None = None) -> list[str]:
    """The ``deepspeed`` launch command a model + method + OpenRLHF flags stand for."""
    try:
        method = Method(method)
    except ValueError:
        raise ConfigError("--method", f"unknown method {method!r}; choose from "
                                      f"{', '.join(m.value for m in Method)}") from None
    if method in METHOD_ESTIMATOR:
        if gpus is not None or nodes is not None or gpus_per_node is not None:
            raise ConfigError("--gpus", "RL runs place each model with OpenRLHF's flags "
                                        "(--actor_num_gpus_per_node, --vllm_num_engines, ...), not --gpus")
        return ["python3", "-m", f"openrlhf.cli.{RL_SCRIPT}", "--pretrain", model,
                "--advantage_estimator", METHOD_ESTIMATOR[method], *flags]
    script = METHOD_SCRIPT[method]
    if gpus is not None and nodes is not None:
        raise ConfigError("--gpus", "give either --gpus (in total) or --nodes, not both")
    check_world_options(gpus=gpus, nodes=nodes, gpus_per_node=gpus_per_node)
    if gpus is not None:
        spanned, gpus_per_node = nodes_of(gpus, gpus_per_node)
        nodes = spanned if spanned > 1 else None
    launcher = ["deepspeed"]
    if nodes is not None:
        launcher += ["--num_nodes", str(nodes)]
    if gpus_per_node is not None:
        launcher += ["--num_gpus", str(gpus_per_node)]
    return [*launcher, "--module", f"openrlhf.cli.{script}", "--pretrain", model, *flags]


def nodes_of(gpus: int, gpus_per_node: int | None) -> tuple[int, int]:
    """``--gpus`` (GPUs in total) as (nodes, GPUs per node): up to a node's GPUs (``--gpus-per-node``,
    default 8, as OpenRLHF's ``--*_num_gpus_per_node``) on one node, more on whole nodes of that size."""
    per_node = gpus_per_node or DEFAULT_GPUS_PER_NODE
    if gpus <= per_node:
        return 1, gpus
    if gpus % per_node:
        raise ConfigError("--gpus", f"{gpus} GPUs do not fill whole nodes of {per_node} (--gpus-per-node, "
                                    f"default {DEFAULT_GPUS_PER_NODE}): give a multiple of {per_node}, or "
                                    "--nodes and --gpus-per-node")
    return gpus // per_node, per_node


def gpus_note(gpus: int | None, gpus_per_node: int | None) -> str | None:
    """The note saying how ``--gpus`` was laid out on nodes, when it spans more than one."""
    if gpus is None:
        return None
    nodes, per_node = nodes_of(gpus, gpus_per_node)
    if nodes == 1:
        return None
    given = "--gpus-per-node" if gpus_per_node else f"--gpus-per-node default {DEFAULT_GPUS_PER_NODE}"
    return f"--gpus {gpus}: {nodes} nodes of {per_node} GPUs ({given}); host RAM is per node"


