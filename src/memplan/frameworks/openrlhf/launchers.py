"""Launchers in front of an OpenRLHF entry script, and the world size they ask for.

Flags are those of ``deepspeed`` (DeepSpeed ``deepspeed/launcher/runner.py::parse_args``) and
``torchrun`` (``torch/distributed/run.py``); ``python -m`` and ``ray job submit`` set no world
size (``train_ppo_ray`` takes per-role flags instead).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from memplan.errors import ConfigError
from memplan.frameworks.openrlhf.bounds import MAX_GPUS, MAX_GPUS_PER_NODE, check_count

_PYTHON = re.compile(r"^python(?:\d+(?:\.\d+)*)?$")
_DEEPSPEED_SWITCHES = frozenset({
    "--module", "--no_python", "--no_local_rank", "--no_ssh", "--no_ssh_check", "--force_multi",
    "--save_pid", "--elastic_training", "--bind_cores_to_rank",
})
_TORCHRUN_SWITCHES = frozenset({"--standalone", "-m", "--module", "--no_python", "--run_path",
                                "--virtual_local_rank"})
_TORCHRUN_AUTO = frozenset({"gpu", "auto", "cpu", "xpu"})
_LAUNCHER_OF = {"--num_gpus": "deepspeed ", "--num_accelerators": "deepspeed ", "--num_nodes": "deepspeed ",
                "--nproc_per_node": "torchrun ", "--nnodes": "torchrun "}
_NODE_SPEC = re.compile(r"^([^:@\s]+)(?::(\d+(?:,\d+)*))?$")


class Launcher(StrEnum):
    """The program that starts OpenRLHF's processes."""

    DEEPSPEED = "deepspeed"
    """``deepspeed [--num_gpus N] [--num_nodes N] [--include ...] --module openrlhf.cli.X``."""
    TORCHRUN = "torchrun"
    """``torchrun --nproc_per_node N --nnodes N -m openrlhf.cli.X`` (or ``python -m torch.distributed.run``)."""
    PYTHON = "python"
    """``python3 -m openrlhf.cli.X`` (Ray scripts start their own workers)."""
    RAY = "ray"
    """``ray job submit ... -- python3 -m openrlhf.cli.X``."""
    NONE = "none"
    """No launcher recognised in front of the module (a bare heredoc body, or another tool)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HostSlots:
    """One node of a DeepSpeed ``--include``/``--exclude`` spec (``worker-1:0,2``)."""

    host: str
    """Host name as written (``localhost``, ``worker-1``)."""
    slots: tuple[int, ...] | None
    """GPU indices on that host; None means every GPU of the host."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LauncherWorld:
    """World size as the launcher's flags state it; None where a flag was not given."""

    num_gpus: int | None = None
    """deepspeed ``--num_gpus``/``--num_accelerators``: GPUs per node (None: all local GPUs)."""
    num_nodes: int | None = None
    """deepspeed ``--num_nodes`` or torchrun ``--nnodes`` (the maximum of ``MIN:MAX``)."""
    nproc_per_node: int | None = None
    """torchrun ``--nproc_per_node`` (None also for ``gpu``/``auto``)."""
    include: tuple[HostSlots, ...] = ()
    """deepspeed ``--include`` spec, parsed."""
    exclude: tuple[HostSlots, ...] = ()
    """deepspeed ``--exclude`` spec, parsed."""
    hostfile: str | None = None
    """deepspeed ``--hostfile`` path (not read)."""

    @property
    def gpus_per_node(self) -> int | None:
        """GPUs per node when the flags state it (``--include`` with equal explicit slots counts)."""
        if self.nproc_per_node is not None:
            return self.nproc_per_node
        if self.num_gpus is not None:
            return self.num_gpus
        counts = {len(h.slots) for h in self.include if h.slots is not None}
        if self.include and all(h.slots is not None for h in self.include) and len(counts) == 1:
            return counts.pop()
        return None

    @property
    def nodes(self) -> int | None:
        """Nodes when the flags state it (``--num_nodes``/``--nnodes``, or hosts in ``--include``)."""
        if self.num_nodes is not None:
            return self.num_nodes
        return len(self.include) if self.include else None


def find_launcher(words: Sequence[str]) -> tuple[Launcher, list[str]]:
    """The launcher in front of the entry module and its own words (``words`` end before the module)."""
    for index in range(len(words) - 1, -1, -1):
        name = os.path.basename(words[index])
        if name == "deepspeed":
            return Launcher.DEEPSPEED, list(words[index + 1:])
        if name == "torchrun":
            return Launcher.TORCHRUN, list(words[index + 1:])
        if _PYTHON.match(name):
            return _python_launcher(words, index)
    return Launcher.NONE, []


def _python_launcher(words: Sequence[str], index: int) -> tuple[Launcher, list[str]]:
    after = list(words[index + 1:])
    for module, launcher in (("torch.distributed.run", Launcher.TORCHRUN),
                             ("torch.distributed.launch", Launcher.TORCHRUN),
                             ("deepspeed.launcher.runner", Launcher.DEEPSPEED)):
        if module in after:
            return launcher, after[after.index(module) + 1:]
    before = list(words[:index])
    for start in range(len(before) - 2):
        if before[start: start + 3] == ["ray", "job", "submit"] or (
                os.path.basename(before[start]) == "ray" and before[start + 1: start + 3] == ["job", "submit"]):
            ray_args = before[start + 3:]
            return Launcher.RAY, ray_args[:-1] if ray_args[-1:] == ["--"] else ray_args
    return Launcher.PYTHON, after


def parse_world(launcher: Launcher, args: Sequence[str]) -> LauncherWorld:
    """The world size stated by a launcher's own flags."""
    if launcher is Launcher.DEEPSPEED:
        return _deepspeed_world(_options(args, _DEEPSPEED_SWITCHES, dashes=False, launcher="deepspeed"))
    if launcher is Launcher.TORCHRUN:
        return _torchrun_world(_options(args, _TORCHRUN_SWITCHES, dashes=True, launcher="torchrun"))
    return LauncherWorld()


def _options(args: Sequence[str], switches: frozenset[str], *, dashes: bool, launcher: str) -> dict[str, str]:
    """Launcher flags as {--name: value} (switches map to ''); stops at the first non-flag word."""
    found: dict[str, str] = {}
    index = 0
    while index < len(args) and args[index].startswith("-") and args[index] != "--":
        name, has_inline, inline = args[index].partition("=")
        if dashes and name.startswith("--"):
            name = "--" + name[2:].replace("-", "_")
        if has_inline or name in switches:
            found[name] = inline
            index += 1
            continue
        if index + 1 >= len(args):
            raise ConfigError(f"{launcher} {name}", "missing value")
        found[name] = args[index + 1]
        index += 2
    return found


def _deepspeed_world(options: dict[str, str]) -> LauncherWorld:
    """DeepSpeed's world flags; -1 is their argparse default ("every GPU", "every host": runner.py@0.19.8
    L84-95, used only when > 0 at L392 and L400), any other value below 1 is refused."""
    num_gpus = _optional_int(options, "--num_gpus", "--num_accelerators")
    num_nodes = _optional_int(options, "--num_nodes")
    gpus_flag = "--num_gpus" if "--num_gpus" in options else "--num_accelerators"
    for name, value, high in ((gpus_flag, num_gpus, MAX_GPUS_PER_NODE), ("--num_nodes", num_nodes, MAX_GPUS)):
        if value != -1:
            check_count(f"deepspeed {name}", value, 1, high, "or -1, the default: all")
    include = options.get("--include", options.get("-i", ""))
    exclude = options.get("--exclude", options.get("-e", ""))
    return LauncherWorld(
        num_gpus=None if num_gpus is None or num_gpus < 0 else num_gpus,
        num_nodes=None if num_nodes is None or num_nodes < 0 else num_nodes,
        include=parse_host_spec("deepspeed --include", include), exclude=parse_host_spec("deepspeed --exclude", exclude),
        hostfile=options.get("--hostfile", options.get("-H")),
    )


def _torchrun_world(options: dict[str, str]) -> LauncherWorld:
    nproc = options.get("--nproc_per_node")
    nproc_per_node = None if nproc is None or nproc in _TORCHRUN_AUTO else _as_int("--nproc_per_node", nproc)
    check_count("torchrun --nproc_per_node", nproc_per_node, 1, MAX_GPUS_PER_NODE)
    nnodes = options.get("--nnodes")
    num_nodes = 1 if nnodes is None and "--standalone" in options else None
    if nnodes is not None:
        parts = [_as_int("--nnodes", part) for part in nnodes.split(":")]
        for part in parts:
            check_count("torchrun --nnodes", part, 1, MAX_GPUS)
        if len(parts) > 2 or parts != sorted(parts):
            raise ConfigError("torchrun --nnodes", f"expected N or MIN:MAX with MIN <= MAX, got {nnodes!r}")
        num_nodes = max(parts)
    return LauncherWorld(nproc_per_node=nproc_per_node, num_nodes=num_nodes)


def _optional_int(options: dict[str, str], *names: str) -> int | None:
    for name in names:
        if name in options:
            return _as_int(name, options[name])
    return None


def _as_int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{_LAUNCHER_OF.get(name, '')}{name}", f"expected an integer, got {text!r}") from None


def parse_host_spec(flag: str, text: str) -> tuple[HostSlots, ...]:
    """DeepSpeed's ``NODE_SPEC[@NODE_SPEC ...]`` with ``NODE_SPEC = NAME[:SLOT[,SLOT ...]]``."""
    if not text:
        return ()
    hosts: dict[str, list[int] | None] = {}
    for part in text.split("@"):
        match = _NODE_SPEC.match(part)
        if match is None:
            raise ConfigError(flag, f"expected NODE[:SLOT[,SLOT...]][@NODE...], got {text!r}")
        host, slots = match.group(1), match.group(2)
        if slots is None:
            hosts[host] = None
        elif host not in hosts or hosts[host] is not None:
            hosts[host] = sorted(set((hosts.get(host) or []) + [int(s) for s in slots.split(",")]))
    check_count(flag, len(hosts), 1, MAX_GPUS, "hosts")
    for host, host_slots in hosts.items():
        if host_slots is not None:
            check_count(f"{flag} {host}", len(host_slots), 1, MAX_GPUS_PER_NODE, "GPUs of one node")
    return tuple(HostSlots(host=h, slots=None if s is None else tuple(s)) for h, s in hosts.items())


def format_host_spec(hosts: Sequence[HostSlots]) -> str:
    """The inverse of parse_host_spec."""
    return "@".join(h.host if h.slots is None else f"{h.host}:{','.join(map(str, h.slots))}" for h in hosts)


def world_args(launcher: Launcher, world: LauncherWorld | None) -> list[str]:
    """Launcher flags that state ``world`` (the inverse of parse_world)."""
    if world is None:
        return []
    if launcher is Launcher.DEEPSPEED:
        return _deepspeed_args(world)
    if launcher is Launcher.TORCHRUN:
        args = [] if world.num_nodes is None else ["--nnodes", str(world.num_nodes)]
        return args + ([] if world.nproc_per_node is None else ["--nproc_per_node", str(world.nproc_per_node)])
    return []


def _deepspeed_args(world: LauncherWorld) -> list[str]:
    args: list[str] = []
    if world.hostfile is not None:
        args += ["--hostfile", world.hostfile]
    if world.num_nodes is not None:
        args += ["--num_nodes", str(world.num_nodes)]
    if world.num_gpus is not None:
        args += ["--num_gpus", str(world.num_gpus)]
    if world.include:
        args += ["--include", format_host_spec(world.include)]
    if world.exclude:
        args += ["--exclude", format_host_spec(world.exclude)]
    return args
