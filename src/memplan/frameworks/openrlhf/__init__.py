"""OpenRLHF launch commands in and out: flag tables per version, parsing, defaults, emission.

Everything OpenRLHF-specific about reading and writing launch commands lives in this package:

* ``flags``: every argparse flag of each entry script at v0.8.5, v0.9.5 and v0.11.0.
* ``command.parse_command``: a command or pasted script -> ``ParsedCommand``.
* ``defaults.resolve_values``: given flags -> the complete values OpenRLHF runs with.
* ``emit.format_command``: values -> a launch command that parses back to the same values.
* ``run``: a command (or model + method + flags) -> ``ResolvedRun``, checked and estimated.
* ``schedule``: the ``train_ppo_ray`` iteration (phases, activities, where states live).
* ``knobs``: which key holds each knob (``jobs.knobs``); ``plan``: the planner's base run and pins;
  ``advice``: the flag changes suggested when a run does not fit.
* ``framework.FRAMEWORK``: all of it behind ``frameworks.base.Framework`` (``frameworks.get("openrlhf")``).
"""

from memplan.frameworks.openrlhf.command import ParsedCommand, parse_command
from memplan.frameworks.openrlhf.defaults import foreign_keys, resolve_values
from memplan.frameworks.openrlhf.emit import format_command
from memplan.frameworks.openrlhf.flags import (
    LATEST,
    SCRIPTS,
    VERSIONS,
    FlagSpec,
    FlagTable,
    load_table,
    newest_with_script,
    normalize_version,
    scripts_of,
)
from memplan.frameworks.openrlhf.launchers import HostSlots, Launcher, LauncherWorld

__all__ = [
    "LATEST", "SCRIPTS", "VERSIONS", "FlagSpec", "FlagTable", "HostSlots", "Launcher", "LauncherWorld",
    "ParsedCommand", "foreign_keys", "format_command", "load_table", "newest_with_script", "normalize_version",
    "parse_command", "resolve_values", "scripts_of",
]
