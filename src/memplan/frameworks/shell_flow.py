"""The control flow of a pasted launch script: ``if``/``elif``/``else``/``fi`` and ``case``/``esac``.

Launch scripts branch on their own variables: verl's examples pick a device (``case "${DEVICE}" in gpu) ...;;
npu) ...;; esac``), a rollout backend (``if [ "${INFER_BACKEND}" = sglang ]; then ... fi``) or a machine. Read
line by line, every branch's assignments would run and the last would win (an NPU branch's GPU count on an
NVIDIA run), so :class:`Flow` runs the branch bash would run (bash(1), SHELL GRAMMAR, Compound Commands; the
conditions are :mod:`memplan.frameworks.shell_conditions`), with ``;&`` and ``;;&`` in ``case``.

memplan reads the path on which the script reaches its launch:

- a script is read as run with no arguments (``$1`` empty, ``$#`` 0: see ``shell._no_arguments``);
- a branch whose condition the text does not settle (a command's status, a file test, a variable the script
  never assigns) is skipped when every branch only reports and stops (``echo``, ``exit``...: a guard, which
  changes no value); otherwise every branch is read in order, as before this module, and :attr:`Flow.notes`
  says so and names the condition, so the user can assign what it tests;
- ``exit`` at the top level ends the script; inside a branch it is a guard's, not the launch path's.

Loops are not evaluated: a ``for``/``while`` body is read once.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from memplan.errors import ConfigError
from memplan.frameworks.shell_conditions import Unknowable, arithmetic, test_expression

#: Deepest nesting of ``if``/``case`` read; launch scripts nest two or three.
MAX_NESTING = 64
#: Commands that only report or stop: a branch made of them changes nothing memplan reads.
GUARD_COMMANDS = frozenset({"echo", "printf", "exit", "return", ":", "true", "false", "sleep"})
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LIST_ENDS = frozenset({";", "&", "\n", ";;", ";&", ";;&", "(", ")"})
_AND_OR = frozenset({"&&", "||", "|", "|&"})
_CASE_ENDS = frozenset({";;", ";&", ";;&", "esac"})
_SEPARATORS = _LIST_ENDS | _AND_OR
_COMMAND_ENDS = _SEPARATORS | {"((", "))"}


@dataclass(slots=True)
class Token:
    """A word or operator of the script, and the logical line it stands on (for its heredocs)."""

    text: str
    line: int
    operator: bool = False


@dataclass(frozen=True, slots=True)
class _Shape:
    """An ``if`` or ``case`` read without running it: per branch its test (``if``: the condition's and-or
    parts, None for ``else``; ``case``: the patterns), how it ends (``case``), the commands it holds, and the
    position after the compound."""

    tests: tuple[Any, ...]
    ends: tuple[str, ...]
    heads: tuple[tuple[str, ...], ...]
    end_pos: int


@dataclass(slots=True)
class Flow:
    """Walks a script's tokens and runs the simple commands of the branches bash would take.

    ``run_command(tokens)`` runs one simple command (expansion, assignments and redirections are the
    caller's); ``expand(word)`` is a word's value now, as one word (tests quote their operands,
    ``[ -n "$X" ]``); ``variable(name)`` a variable's value, or None.
    """

    tokens: list[Token]
    run_command: Callable[[list[Token]], None]
    expand: Callable[[str], str]
    variable: Callable[[str], str | None]
    notes: list[str] = field(default_factory=list)
    pos: int = 0
    depth: int = 0
    stopped: bool = False
    seen: list[str] = field(default_factory=list)
    """The first word of every simple command walked, run or not (a branch's slice tells if it is a guard)."""
    shapes: dict[int, _Shape] = field(default_factory=dict)
    """Each compound's shape by its position, read once: nested compounds are never re-read."""

    def run(self) -> None:
        self._list(frozenset(), execute=True)

    # -- lists and simple commands -----------------------------------------------------------------------
    def _peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _list(self, ends: frozenset[str], *, execute: bool) -> str | None:
        """Commands up to one of ``ends`` at a command's start (returned, not consumed) or the script's end."""
        while (token := self._peek()) is not None:
            if token.text in ends:
                return token.text
            if token.operator and token.text in _SEPARATORS:
                self.pos += 1
            elif not token.operator and token.text in ("if", "case"):
                self._compound(token.text, execute and not self.stopped)
            else:
                self._simple(execute and not self.stopped)
        return None

    def _command_words(self) -> list[Token]:
        """One simple command's tokens: to a list or and-or operator; ``[[ ... ]]`` and ``(( ... ))`` whole."""
        words: list[Token] = []
        closing = {"[[": "]]", "((": "))"}.get(self.tokens[self.pos].text)
        while (token := self._peek()) is not None:
            if closing is None and token.operator and token.text in _COMMAND_ENDS:
                break
            words.append(token)
            self.pos += 1
            if closing is not None and token.text == closing and len(words) > 1:
                break
        return words

    def _simple(self, execute: bool) -> None:
        words = self._command_words()
        if not words:
            self.pos += 1
            return
        self.seen.append(words[0].text)
        if not execute:
            return
        if words[0].text != "exit":
            self.run_command(words)
        elif self.depth == 0:
            self.stopped = True

    # -- compound commands ------------------------------------------------------------------------------
    def _compound(self, keyword: str, execute: bool) -> None:
        if self.depth >= MAX_NESTING:
            raise ConfigError("command", f"if/case nest more than {MAX_NESTING} deep; not a launch script")
        start = self.pos
        self.depth += 1
        shape = self.shapes.get(start)
        if shape is None:
            shape = self._walk(keyword, frozenset())
            self.shapes[start] = shape
        else:
            self.seen.extend(h for heads in shape.heads for h in heads)
        if execute:
            run = self._choose_if(shape) if keyword == "if" else self._choose_case(shape)
            if run:
                self.pos = start
                self._walk(keyword, run)
        self.pos = shape.end_pos
        self.depth -= 1

    def _walk(self, keyword: str, run: frozenset[int]) -> _Shape:
        """Read an ``if``/``case`` from its keyword, running the branches numbered in ``run``."""
        return self._walk_if(run) if keyword == "if" else self._walk_case(run)

    def _branch(self, ends: frozenset[str], execute: bool) -> tuple[str | None, tuple[str, ...]]:
        """One branch's commands up to the word that ends it (returned, not consumed), and their first words."""
        first = len(self.seen)
        end = self._list(ends, execute=execute)
        return end, tuple(self.seen[first:])

    def _walk_if(self, run: frozenset[int]) -> _Shape:
        self.pos += 1  # if
        tests: list[Any] = []
        heads: list[tuple[str, ...]] = []
        end: str | None = "elif"
        while end == "elif":
            tests.append(self._condition())
            end, branch = self._branch(frozenset({"elif", "else", "fi"}), len(heads) in run)
            heads.append(branch)
            self.pos += end is not None
        if end == "else":
            tests.append(None)
            end, branch = self._branch(frozenset({"fi"}), len(heads) in run)
            heads.append(branch)
            self.pos += end is not None
        if end != "fi":
            raise ConfigError("command", "an 'if' is never closed by 'fi'")
        return _Shape(tuple(tests), (), tuple(heads), self.pos)

    def _walk_case(self, run: frozenset[int]) -> _Shape:
        self.pos += 1  # case
        subject = self.tokens[self.pos: self.pos + 2]
        if len(subject) < 2 or subject[0].operator or subject[1].operator or subject[1].text != "in":
            raise ConfigError("command", "'case' must be followed by a word and 'in'")
        self.pos += 2
        tests: list[Any] = [(subject[0].text,)]
        ends: list[str] = []
        heads: list[tuple[str, ...]] = []
        while True:
            while (token := self._peek()) is not None and token.operator and token.text in ("\n", ";", "("):
                self.pos += 1
            if token is None:
                raise ConfigError("command", f"'case {' '.join(tests[0])}' is never closed by 'esac'")
            if not token.operator and token.text == "esac":
                self.pos += 1
                return _Shape(tuple(tests), tuple(ends), tuple(heads), self.pos)
            tests.append(self._patterns())
            end, branch = self._branch(_CASE_ENDS, len(heads) in run)
            if end is None:
                raise ConfigError("command", f"'case {' '.join(tests[0])}' is never closed by 'esac'")
            ends.append(end)
            heads.append(branch)
            self.pos += end != "esac"

    def _patterns(self) -> tuple[str, ...]:
        patterns: list[str] = []
        while (token := self._peek()) is not None:
            self.pos += 1
            if token.operator and token.text == ")":
                return tuple(patterns)
            if not token.operator:
                patterns.append(token.text)
        raise ConfigError("command", "a 'case' pattern is never closed by ')'")

    # -- choosing branches ------------------------------------------------------------------------------
    def _choose_if(self, shape: _Shape) -> frozenset[int]:
        for index, test in enumerate(shape.tests):
            if test is None:
                return frozenset({index})
            try:
                if self._holds(test):
                    return frozenset({index})
            except Unknowable as why:
                rest = range(index, len(shape.tests))
                return self._unknown(f"if {_shown(test)}", str(why), shape, rest)
        return frozenset()

    def _choose_case(self, shape: _Shape) -> frozenset[int]:
        words = shape.tests[0]
        subject = " ".join(self.expand(w) for w in words)
        if "$" in subject or "`" in subject:
            why = f"{subject} is a variable the script never assigns or a command's output"
            return self._unknown(f"case {' '.join(words)}", why, shape, range(len(shape.heads)))
        run: set[int] = set()
        fall_through = False
        for index, patterns in enumerate(shape.tests[1:]):
            if fall_through or any(fnmatch.fnmatchcase(subject, self.expand(p)) for p in patterns):
                run.add(index)
                fall_through = shape.ends[index] == ";&"
                if shape.ends[index] not in (";&", ";;&"):
                    break
        return frozenset(run)

    def _unknown(self, shown: str, why: str, shape: _Shape, branches: range) -> frozenset[int]:
        """A compound whose branch the text does not settle: skipped if all ``branches`` are guards, else all
        read in order, with a note."""
        if all(head in GUARD_COMMANDS for i in branches for head in shape.heads[i]):
            return frozenset()
        self.notes.append(f"the script branches on '{shown}', which memplan cannot evaluate ({why}); every branch "
                          "was read in order, the last assignment winning. To read one branch, assign what it tests "
                          "at the top of the script, e.g. (echo 'NAME=value'; cat script.sh) | memplan check -- -, "
                          "or delete the branches that do not run")
        return frozenset(branches)

    def _condition(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The and-or parts of a condition up to ``then`` (consumed): (joiner before it, its words)."""
        parts: list[tuple[str, tuple[str, ...]]] = []
        joiner = ";"
        while (token := self._peek()) is not None and not (token.text == "then" and not token.operator):
            if token.operator and token.text in _SEPARATORS:
                joiner = token.text if token.text in ("&&", "||") else ";"
                self.pos += 1
                continue
            words = self._command_words()
            if not words:
                self.pos += 1
                continue
            parts.append((joiner, tuple(w.text for w in words)))
        if token is None:
            raise ConfigError("command", "an 'if' condition is never followed by 'then'")
        self.pos += 1
        return tuple(parts)

    def _holds(self, parts: tuple[tuple[str, tuple[str, ...]], ...]) -> bool:
        """An and-or list's status: left to right, ``&&`` and ``||`` of equal precedence, the last list's."""
        status = True
        for joiner, words in parts:
            if (joiner == "&&" and not status) or (joiner == "||" and status):
                continue
            status = self._status(list(words))
        return status

    def _status(self, words: list[str]) -> bool:
        negate = False
        while words and words[0] == "!":
            negate, words = not negate, words[1:]
        head = words[0] if words else "true"
        if head in ("true", ":", "false"):
            return (head != "false") != negate
        try:
            if head == "((":
                if len(words) < 2 or words[-1] != "))":
                    raise Unknowable("an arithmetic test '((' is never closed by '))'")
                expression = re.sub(r"([<>=!])\s+=", r"\1=", " ".join(words[1:-1]))  # '>' '=' were two tokens
                return (arithmetic(expression, self.variable) != 0) != negate
            if head in ("[", "[[", "test"):
                inner = [self.expand(word) for word in words[1:]]
                if head != "test" and inner and inner[-1] == {"[": "]", "[[": "]]"}[head]:
                    inner = inner[:-1]
                return test_expression(inner, double=head == "[[") != negate
        except (ValueError, RecursionError):
            raise Unknowable("an expression memplan does not read") from None
        raise Unknowable(f"it is the exit status of '{' '.join(words)[:80]}'")


_OPERATORS = (";;&", "&&", "||", ";;", ";&", "|&", "((", "))", "<<", ">>", ">&", "<&", "&>", ">|", "<>",
              ";", "&", "|", "(", ")", "<", ">")
"""bash's control and redirection operators, longest first (bash(1), DEFINITIONS and REDIRECTION)."""
_OPERATOR_SET = frozenset(_OPERATORS)
_OPERATOR_SPLIT = re.compile("|".join(re.escape(op) for op in _OPERATORS))


def operators(run: str) -> list[str]:
    """A run of operator characters the scanner marked (``));``, ``2>&1``'s ``>&``) split into operators."""
    if run in _OPERATOR_SET:
        return [run]
    return _OPERATOR_SPLIT.findall(run)


def without_redirections(tokens: list[Token]) -> list[str]:
    """A simple command's words, its redirections (an operator with < or >, its target and an fd number before
    it) and any other operator dropped."""
    words: list[str] = []
    skip = False
    for token in tokens:
        if skip:
            skip = False
        elif not token.operator:
            words.append(token.text)
        elif "<" in token.text or ">" in token.text:
            if words and words[-1].isdigit():
                words.pop()
            skip = True
    return words


def _shown(parts: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    text = ""
    for joiner, words in parts:
        text += ("" if not text else f" {joiner} ") + " ".join(words)
    return text


def known_variables(variables: Mapping[str, str]) -> Callable[[str], str | None]:
    """``variable(name)`` over a script's assignments; a name that is not a variable name is unknown."""
    return lambda name: variables.get(name) if _NAME.match(name) else None
