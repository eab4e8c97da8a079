"""Read an OpenRLHF launch command, exactly as users type or paste it.

``parse_command`` finds the ``openrlhf.cli.<script>`` invocation in a command line or a pasted
script (``deepspeed --module ...``, ``torchrun ... -m ...``, ``python3 -m ...``,
``ray job submit ... -- python3 -m ...``, heredoc scripts from OpenRLHF's ``examples/scripts``),
reads the launcher's world size, and reads every OpenRLHF flag into canonical keys with typed
values. Both spellings are read: legacy flat (``--zero_stage 3``) and 0.11 dotted
(``--ds.zero_stage 3``). Unknown flags are reported, not fatal; bad values are a ConfigError that
names the flag.

Which OpenRLHF version a command implies (``ParsedCommand.version_hint``): the latest release unless
the script or a flag given exists only in older ones, then the newest release that has them all. A
flat flag counts as the flag that renamed it (its canonical key): OpenRLHF v0.11.0's argparse itself
takes only dotted spellings (``parser.add_argument("--ds.zero_stage", ...)`` at
openrlhf/cli/train_ppo_ray.py@3c3be62 line 308, no flat alias; ``hierarchize`` in
openrlhf/utils/config.py only nests the dotted dests), but ``--zero_stage 3`` asks for the same
setting, so it does not mark a command as 0.9. ``--prompt_max_len`` (no 0.11 key) or
``openrlhf.cli.train_kto`` (no 0.11 script) do.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from memplan.errors import ConfigError
from memplan.frameworks.openrlhf.flags import (
    SCRIPTS,
    VERSIONS,
    FlagKind,
    FlagSpec,
    FlagTable,
    check_value,
    tables_with,
)
from memplan.frameworks.openrlhf.launchers import Launcher, LauncherWorld, find_launcher, parse_world
from memplan.frameworks.shell import read_script, restore, split_commands, words_of

_ENTRY = re.compile(r"^(?:.*/)?openrlhf[./]cli[./]([A-Za-z_][A-Za-z0-9_]*?)(?:\.py)?$")
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")
"""argparse's ``_negative_number_matcher``: such a word is a value, not an option."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedCommand:
    """What one OpenRLHF launch command says, before OpenRLHF's defaults are applied."""

    launcher: Launcher
    """How the entry script is started (deepspeed, torchrun, python, ray, or none)."""
    script: str
    """Entry script (``train_sft``, ..., ``train_ppo_ray``)."""
    world: LauncherWorld
    """World size the launcher asks for (deepspeed/torchrun flags); empty for python and ray."""
    values: dict[str, Any] = field(default_factory=dict)
    """Canonical key -> typed value, for the flags given (last one wins, as in argparse)."""
    options: dict[str, str] = field(default_factory=dict)
    """Canonical key -> the option as the user typed it (``--ds.zero_stage``), for error messages."""
    version_hint: str | None = None
    """The newest version that has the script and every flag given (module doc); None when every version has them."""
    version_reason: str | None = None
    """Why the hint is not the latest release (``--prompt_max_len is not a flag of OpenRLHF 0.11``), else None."""
    unknown_flags: tuple[str, ...] = ()
    """Flags (and stray words) no OpenRLHF table of this script knows, as typed."""
    ignored_flags: tuple[str, ...] = ()
    """Known flags that change no memory (learning rates, logging, paths, ...), as typed."""
    warnings: tuple[str, ...] = ()
    """Remarks for the user: abbreviated flags, spellings of another version."""
    launcher_args: tuple[str, ...] = ()
    """The launcher's own words between its name and the entry module."""
    args: tuple[str, ...] = ()
    """The words after the entry module (OpenRLHF's argv)."""


def parse_command(command: str | Sequence[str]) -> ParsedCommand:
    """Parse a launch command (one string, a pasted script, or an argv list)."""
    text = _as_text(command)
    (words, index, script), others, notes = _find_entry(text)
    launcher, launcher_args = find_launcher(words[:index])
    world = parse_world(launcher, launcher_args)
    args = tuple(words[index + 1:])
    reader = _FlagReader(script)
    reader.read(args)
    return ParsedCommand(
        launcher=launcher, script=script, world=world, values=reader.values, options=reader.typed,
        version_hint=reader.version_hint(), version_reason=reader.version_reason(),
        unknown_flags=tuple(reader.unknown),
        ignored_flags=tuple(dict.fromkeys(reader.ignored)),
        warnings=tuple(reader.warnings + reader.version_warnings() + _others_warning(others, launcher, script)
                       + list(notes)),
        launcher_args=tuple(launcher_args), args=args,
    )


def read_flag_value(script: str, option: str, text: str | None) -> Any:
    """One OpenRLHF flag as a command gives it (``--zero_stage``, ``7``) -> its typed, checked value.

    The same conversion and checks (``flags.check_value``: type, bounds, finiteness, choices) as a full
    command; every bad value ends in a ConfigError whose location is ``option``. ``text`` None means the
    flag alone (a switch); a flag of several values takes them space-separated. Made for fuzzers and
    tests that exercise the validator one flag at a time.
    """
    reader = _FlagReader(script)
    spec = reader.options.get(option)
    if spec is None:
        raise ConfigError(option, f"not a flag of openrlhf.cli.{script}")
    words = [] if text is None else (text.split() if spec.nargs is not None else [text])
    if spec.takes_value and not words:
        raise ConfigError(option, "missing value")
    if not spec.takes_value and words:
        raise ConfigError(option, f"takes no value, got {text!r}")
    return check_value(spec, _convert(spec, option, words), option)


def _others_warning(others: int, launcher: Launcher, script: str) -> list[str]:
    if not others:
        return []
    return [f"the text holds {others + 1} OpenRLHF training commands; memplan estimated only the first "
            f"{'launched ' if launcher is not Launcher.NONE else ''}one ({launcher} openrlhf.cli.{script}): "
            "check the others one at a time"]


def _as_text(command: str | Sequence[str]) -> str:
    if isinstance(command, str):
        text = command
    elif len(command) == 1:
        text = command[0]
    else:
        text = shlex.join(command)
    if not text.strip():
        raise ConfigError("command", "empty command")
    return text


def _find_entry(text: str) -> tuple[tuple[list[str], int, str], int, tuple[str, ...]]:
    """The chosen command (its words, the index of the entry module word, the script name), how many other
    training commands the text holds (the first launched one is taken, else the first), and the shell reader's
    notes (branches it could not choose)."""
    read = read_script(text)
    commands, variables = read.commands, read.variables
    candidates = list(_entries(commands))
    if not candidates:
        candidates = [(w, i, s) for value in variables.values() for w, i, s in _entries([_final_words(value)])]
    if not candidates:
        raise ConfigError("command", "no OpenRLHF entry point found (expected openrlhf.cli.train_* as in "
                          "'deepspeed --module openrlhf.cli.train_sft ...')")
    training = [c for c in candidates if c[2] in SCRIPTS]
    launched = [c for c in training if find_launcher(c[0][:c[1]])[0] is not Launcher.NONE]
    if launched or training:
        distinct = {tuple(w[i:]) for w, i, _ in training}  # a command kept in a variable, then launched, is one
        return (launched or training)[0], len(distinct) - 1, read.notes
    _, _, script = candidates[0]
    raise ConfigError(f"openrlhf.cli.{script}", "not an OpenRLHF training entry point memplan reads "
                      f"(expected one of {', '.join(SCRIPTS)})")


def _final_words(text: str) -> list[str]:
    return [restore(w) for w in words_of(text)]


def _entries(commands: list[list[str]]) -> Iterator[tuple[list[str], int, str]]:
    """Yield (words, index, script) for every entry-module word, looking inside ``bash -c '...'``."""
    for words in commands:
        for index, word in enumerate(words):
            match = _ENTRY.match(word)
            if match:
                yield words, index, match.group(1)
                break
            if "openrlhf" in word and any(c.isspace() for c in word):
                inner, _ = split_commands(word)
                yield from _entries(inner)


def _is_option(word: str) -> bool:
    return word.startswith("-") and word != "-" and not _NEGATIVE_NUMBER.match(word)


class _FlagReader:
    """Reads OpenRLHF's argv for one script against the union of its flag tables."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.tables = tables_with(script)
        self.options: dict[str, FlagSpec] = {}
        for table in reversed(self.tables):
            self.options.update(table.by_option)
        self.values: dict[str, Any] = {}
        self.typed: dict[str, str] = {}
        self.used: list[FlagSpec] = []
        self.unknown: list[str] = []
        self.ignored: list[str] = []
        self.warnings: list[str] = []

    def read(self, args: Sequence[str]) -> None:
        index = 0
        while index < len(args):
            index = self._read_one(args, index)

    def _read_one(self, args: Sequence[str], index: int) -> int:
        word = args[index]
        if word == "--":
            self.unknown.extend(args[index:])
            return len(args)
        if not _is_option(word) or not word.startswith("--"):
            self.unknown.append(word)
            return index + 1
        typed, has_inline, inline = word.partition("=")
        spec = self._lookup(typed)
        if spec is None:
            self.unknown.append(typed)
            takes_next = not has_inline and index + 1 < len(args) and not _is_option(args[index + 1])
            return index + (2 if takes_next else 1)
        words, index = self._value_words(spec, typed, args, index + 1, inline if has_inline else None)
        value = check_value(spec, _convert(spec, typed, words), typed)
        for key in spec.keys:
            self.values[key] = value
            self.typed[key] = typed
        self.used.append(spec)
        if not spec.memory:
            self.ignored.append(typed)
        return index

    def _lookup(self, typed: str) -> FlagSpec | None:
        if typed in self.options:
            return self.options[typed]
        matches = sorted(o for o in self.options if o.startswith(typed))
        if len(matches) == 1:
            self.warnings.append(f"{typed} read as {matches[0]} (argparse accepts unique abbreviations)")
            return self.options[matches[0]]
        if matches:
            self.warnings.append(f"{typed} is ambiguous (could be {', '.join(matches[:4])}); not read")
        return None

    def _value_words(self, spec: FlagSpec, typed: str, args: Sequence[str], index: int,
                     inline: str | None) -> tuple[list[str], int]:
        if not spec.takes_value:
            if inline is not None:
                raise ConfigError(typed, f"takes no value, got {inline!r}")
            return [], index
        if inline is not None:
            if isinstance(spec.nargs, int) and spec.nargs != 1:
                raise ConfigError(typed, f"expected {spec.nargs} values, got 1")
            return [inline], index
        end = index
        while end < len(args) and not _is_option(args[end]):
            end += 1
        wanted = _wanted_count(spec, end - index)
        if spec.nargs is None and wanted == 0:
            raise ConfigError(typed, "missing value")
        if isinstance(spec.nargs, int) and end - index < spec.nargs:
            raise ConfigError(typed, f"expected {spec.nargs} values, got {end - index}")
        if spec.nargs == "+" and wanted == 0:
            raise ConfigError(typed, "expected at least one value")
        return list(args[index: index + wanted]), index + wanted

    def version_hint(self) -> str | None:
        candidates = self._candidate_versions()
        if not candidates:
            return "0.11" if any(s.dotted for s in self.used) else None
        if set(candidates) == set(VERSIONS):
            return None
        return max(candidates, key=VERSIONS.index)

    def _candidate_versions(self) -> list[str]:
        return [t.version for t in self.tables if all(_has_flag(t, spec) for spec in self.used)]

    def version_reason(self) -> str | None:
        """What the release after the hint lacks (the script, or the flags given), when the hint is not the latest."""
        hint = self.version_hint()
        if hint is None or hint == VERSIONS[-1]:
            return None
        newer = VERSIONS[VERSIONS.index(hint) + 1]
        table = next((t for t in self.tables if t.version == newer), None)
        if table is None:
            return f"openrlhf.cli.{self.script} is not an entry script of OpenRLHF {newer}"
        missing = list(dict.fromkeys(s.option for s in self.used if not _has_flag(table, s)))
        what = "is not a flag" if len(missing) == 1 else "are not flags"
        return f"{', '.join(missing)} {what} of OpenRLHF {newer}"

    def version_warnings(self) -> list[str]:
        hint = self.version_hint()
        if hint is None or self._candidate_versions():
            return []
        table = self._table(hint)
        foreign = dict.fromkeys(s.option for s in self.used if not _has_flag(table, s))
        return [f"{option} is not a flag of OpenRLHF {hint} (the command mixes spellings of different versions)"
                for option in foreign]

    def _table(self, version: str) -> FlagTable:
        return next(t for t in self.tables if t.version == version)


def _has_flag(table: FlagTable, spec: FlagSpec) -> bool:
    """Whether ``table``'s version has the flag: the same spelling, or, for a flat flag, a flag that sets the
    same canonical keys (the renamed 0.11 flag; see the module doc)."""
    if spec.option in table.by_option:
        return True
    return not spec.dotted and all(key in table.by_key for key in spec.keys)


def _wanted_count(spec: FlagSpec, available: int) -> int:
    if spec.nargs is None:
        return min(1, available)
    if isinstance(spec.nargs, int):
        return spec.nargs
    return available if spec.nargs in ("*", "+") else min(1, available)


def _convert(spec: FlagSpec, typed: str, words: list[str]) -> Any:
    if spec.kind is FlagKind.STORE_TRUE:
        return True
    if spec.kind is FlagKind.STORE_FALSE:
        return False
    items = tuple(_convert_word(spec, typed, w) for w in words)
    return items if spec.nargs is not None else items[0]


def _convert_word(spec: FlagSpec, typed: str, word: str) -> Any:
    if spec.kind is FlagKind.INT:
        return _number(int, typed, word, "an integer")
    if spec.kind is FlagKind.FLOAT:
        return _number(float, typed, word, "a number")
    if spec.kind is FlagKind.CHOICE and word not in spec.choices:
        raise ConfigError(typed, f"expected one of {', '.join(spec.choices)}, got {word!r}{_shell_hint(word)}")
    return word


def _number(kind: type, typed: str, word: str, what: str) -> Any:
    try:
        return kind(word)
    except ValueError:
        raise ConfigError(typed, f"expected {what}, got {word!r}{_shell_hint(word)}") from None


def _shell_hint(word: str) -> str:
    return " (a shell variable set outside the pasted text; paste its value)" if "$" in word else ""
