"""Just enough shell to read a pasted launch script: simple commands, with heredocs and variables.

This is not a shell. It handles what OpenRLHF's and verl's example scripts and users' launch scripts do:
``\\`` line continuations, ``#`` comments, quotes spanning lines, ``;``/``&&``/``|`` lists,
redirections, ``NAME=value`` assignments and environment prefixes, and the heredoc pattern

    read -r -d '' training_commands <<EOF
    openrlhf.cli.train_sft \\
       --max_len 2048 ...
    EOF
    deepspeed --module $training_commands

Words are split as POSIX :mod:`shlex` splits them (one linear pass, see ``_words``). A ``$NAME`` word
whose variable was assigned in the text is replaced by the words of its value; unknown variables are
left as typed. ``if``/``case`` take the branch bash would take (``shell_flow``); loops are read once.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from memplan.errors import ConfigError
from memplan.frameworks.shell_flow import Flow, Token, known_variables, operators, without_redirections

_OPERATOR_CHARS = ";&|()<>"
_MARK = "\x00"
"""Prefix of an operator word: the scanner marks unquoted operators, so a quoted ';' stays a word."""
_LITERAL_DOLLAR = "\x01"
"""Stands for a quoted or escaped ``$`` until expansion is over, so ``'$HOME'`` stays as typed."""
_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
_VARIABLE = (r"\$(?:(?P<plain>[A-Za-z_][A-Za-z0-9_]*)"
             r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*|[0-9]+)(?:\[[@*]\])?"
             r"(?:(?P<colon>:?)-(?P<default>(?:[^}$]|\$(?!\{)|\$\{[^{}]*\})*))?\})")
"""``$NAME``, ``${NAME}``, ``${NAME:-default}`` (a default may hold one more ``${...}``), and ``${1:-default}``
(a positional parameter, never set in a pasted script)."""
_WHOLE_VARIABLE = re.compile(f"^{_VARIABLE}$")
_ANY_VARIABLE = re.compile(_VARIABLE)
_ARRAY_START = re.compile(r"(?:^|\s)[A-Za-z_][A-Za-z0-9_]*\+?=$")
_ARRAY_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(\+?)=\($")
_WHITESPACE = " \t\r\n"
"""The characters ``shlex`` splits words at (``shlex.shlex.whitespace``)."""
_DOUBLE_QUOTED_BODY = r'[^"\\]*(?:\\.[^"\\]*)*'
_RAW_WORD = re.compile(rf"""(?:[^ \t\r\n'"\\]+|'[^']*'|"{_DOUBLE_QUOTED_BODY}"|\\.)+""", re.DOTALL)
_PIECE = re.compile(rf"""'([^']*)'|"({_DOUBLE_QUOTED_BODY})"|\\(.)|([^'"\\]+)""", re.DOTALL)
_QUOTING = re.compile(r"['\"\\]")
_DOUBLE_QUOTED_ESCAPE = re.compile(r'\\([\\"])')
_ORDINARY = re.compile(r"(?:[^\\'\"`$#<>;&|()\n]+|\$(?![('])|(?<![ \t])#)+")
"""Characters the scanner copies as they are: none its other branches act on (a ``#`` that starts a
word, ``$'``, ``$(``, quotes, operators, newlines, backslashes)."""
_BLANK = re.compile(r"[ \t\n]*")
"""Blank lines and indentation after a line's end, skipped at once: they add nothing to a line."""
_DOUBLE_QUOTE_END = re.compile(f'{_DOUBLE_QUOTED_BODY}"', re.DOTALL)
#: Most characters variable expansion may add to a script (a word counts one more, its separator):
#: as much as the largest script ``check`` reads (cli/check.py ``MAX_SCRIPT_BYTES``, 1 MiB; a launch
#: script is a few KB).
MAX_EXPANDED_CHARS = 1 << 20
#: Deepest nesting of variables whose values name other variables (``$a`` → ``$b`` → ...); launch
#: scripts nest one or two levels (a heredoc naming ``$MODEL``).
MAX_EXPANSION_DEPTH = 64
_HEREDOC_START = re.compile(r"<<(-?)[ \t]*(?:'([^'\n]*)'|\"([^\"\n]*)\"|\\?([^\s;&|()<>]+))")


@dataclass(slots=True)
class _Line:
    """One logical line: its text (continuations joined, comments dropped) and heredoc bodies."""

    text: str = ""
    heredocs: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Scanner:
    """Character scanner that splits text into logical lines, tracking quotes and heredocs."""

    source: str
    pos: int = 0
    lines: list[_Line] = field(default_factory=list)
    current: list[str] = field(default_factory=list)
    pending: list[tuple[str, bool, bool]] = field(default_factory=list)
    in_array: bool = False

    def run(self) -> list[_Line]:
        while self.pos < len(self.source):
            char = self.source[self.pos]
            if char == "\\":
                self._backslash()
            elif self.source.startswith("$'", self.pos):
                self._ansi_c_quoted()
            elif char in "'\"":
                self._quoted(char)
            elif char == "`" or self.source.startswith("$(", self.pos):
                self._substitution()
            elif char == "#" and self._at_word_start():
                self._skip_comment()
            elif self.source.startswith("<<", self.pos) and not self.source.startswith("<<<", self.pos):
                self._heredoc_operator()
            elif self._array_edge(char):
                self.current.append({"\n": " ", ")": " ) "}.get(char, char + " "))
                self.pos += 1
            elif char in _OPERATOR_CHARS:
                self._operator()
            elif char == "\n":
                self.pos += 1
                self._end_line()
                self.pos = _BLANK.match(self.source, self.pos).end()  # type: ignore[union-attr]
            else:
                self._ordinary()
        self._end_line()
        return self.lines

    def _ordinary(self) -> None:
        """The character at ``pos`` (``run`` found no other meaning for it) and the ordinary run after it.

        Taken in one step so that a long word costs one regex match, not one loop turn per character.
        """
        match = _ORDINARY.match(self.source, self.pos + 1)
        end = match.end() if match else self.pos + 1
        self.current.append(self.source[self.pos: end])
        self.pos = end

    def _backslash(self) -> None:
        nxt = self.source[self.pos + 1: self.pos + 2]
        if nxt == "$":
            self.current.append(_LITERAL_DOLLAR)
        elif nxt not in ("\n", ""):
            self.current.append("\\" + nxt)
        self.pos += 2

    def _quoted(self, quote: str) -> None:
        start = self.pos
        end = self._closing_quote(quote, start + 1)
        if end < 0:
            line_number = self.source.count("\n", 0, start) + 1
            raise ConfigError("command", f"unbalanced quote: the {quote} on line {line_number} is never closed")
        body = self.source[start: end + 1]
        if quote == '"':
            body = body.replace("\\\n", "").replace("\\$", _LITERAL_DOLLAR)
        else:
            body = body.replace("$", _LITERAL_DOLLAR)
        self.current.append(body)
        self.pos = end + 1

    def _ansi_c_quoted(self) -> None:
        """``$'...'``: backslash escapes (``\\n``, ``\\t``, ``\\'``) decoded, as bash does."""
        index = self.pos + 2
        while index < len(self.source) and self.source[index] != "'":
            index += 2 if self.source[index] == "\\" else 1
        if index >= len(self.source):
            line_number = self.source.count("\n", 0, self.pos) + 1
            raise ConfigError("command", f"unbalanced quote: the $' on line {line_number} is never closed")
        raw = self.source[self.pos + 2: index]
        try:
            text = raw.encode("latin-1", "backslashreplace").decode("unicode_escape")
        except UnicodeDecodeError:
            text = raw
        self.current.append(shlex.quote(text.replace("$", _LITERAL_DOLLAR)))
        self.pos = index + 1

    def _substitution(self) -> None:
        """Keep ``$(...)``, ``$((...))`` or a backquoted command as one opaque word part."""
        start = self.pos
        backquoted = self.source[start] == "`"
        end = self.source.find("`", start + 1) if backquoted else self._closing_paren(start + 2)
        if end < 0:
            line_number = self.source.count("\n", 0, start) + 1
            raise ConfigError("command", f"unbalanced command substitution on line {line_number}")
        self.current.append(shlex.quote(self.source[start: end + 1]))
        self.pos = end + 1

    def _closing_paren(self, index: int) -> int:
        depth = 1
        while index < len(self.source):
            char = self.source[index]
            if char in "'\"":
                index = self._closing_quote(char, index + 1)
                if index < 0:
                    return -1
            elif char == "(":
                depth += 1
            elif char == ")":
                depth -= 1
                if depth == 0:
                    return index
            index += 1
        return -1

    def _closing_quote(self, quote: str, index: int) -> int:
        if quote == "'":
            return self.source.find("'", index)
        match = _DOUBLE_QUOTE_END.match(self.source, index)
        return -1 if match is None else match.end() - 1

    def _at_word_start(self) -> bool:
        return not self.current or self.current[-1][-1] in " \t;&|()"

    def _skip_comment(self) -> None:
        end = self.source.find("\n", self.pos)
        self.pos = len(self.source) if end < 0 else end

    def _array_edge(self, char: str) -> bool:
        """Inside ``NAME=( ... )`` newlines are spaces; toggles the array state at its parentheses."""
        if self.in_array and char in ")\n":
            self.in_array = char != ")"
            return True
        if char == "(" and _ARRAY_START.search("".join(self.current[-64:])):
            self.in_array = True
            return True
        return False

    def _operator(self) -> None:
        end = self.pos
        while end < len(self.source) and self.source[end] in _OPERATOR_CHARS:
            end += 1
        self.current.append(f" {_MARK}{self.source[self.pos: end]} ")
        self.pos = end

    def _heredoc_operator(self) -> None:
        match = _HEREDOC_START.match(self.source, self.pos)
        if match is None:
            self.current.append(f" {_MARK}<< ")
            self.pos += 2
            return
        strip_tabs, single, double, bare = match.groups()
        delimiter = single if single is not None else double if double is not None else bare
        quoted = single is not None or double is not None or match.group(0).find("\\") >= 0
        self.pending.append((delimiter, bool(strip_tabs), quoted))
        self.current.append(f" {_MARK}<< {shlex.quote(delimiter)} ")
        self.pos = match.end()

    def _end_line(self) -> None:
        line = _Line(text="".join(self.current))
        self.current = []
        for delimiter, strip_tabs, quoted in self.pending:
            line.heredocs.append(self._heredoc_body(delimiter, strip_tabs, quoted))
        self.pending = []
        if line.text.strip() or line.heredocs:
            self.lines.append(line)

    def _heredoc_body(self, delimiter: str, strip_tabs: bool, quoted: bool) -> str:
        body: list[str] = []
        while self.pos < len(self.source):
            end = self.source.find("\n", self.pos)
            end = len(self.source) if end < 0 else end
            raw = self.source[self.pos: end]
            self.pos = end + 1
            if (raw.lstrip("\t") if strip_tabs else raw) == delimiter:
                break
            body.append(raw.lstrip("\t") if strip_tabs else raw)
        text = "\n".join(body)
        return text.replace("$", _LITERAL_DOLLAR) if quoted else text.replace("\\\n", "")


def _words(text: str) -> list[str]:
    """Split one logical line into words as POSIX ``shlex`` does with ``whitespace_split``.

    Same rules as ``shlex.shlex(text, posix=True)`` with ``whitespace_split = True`` and no
    commenters (CPython 3.11 ``Lib/shlex.py``, ``read_token``): words break at space, tab, CR and LF;
    ``'...'`` is literal; inside ``"..."`` a backslash escapes only ``"`` and ``\\``; outside quotes
    it escapes any character; an empty quoted word is a word. Written as regex passes because
    ``shlex`` grows each token one character at a time (``self.token += nextchar``), which is
    quadratic in the token's length: a 1 MiB word took 15-20 s.
    """
    words: list[str] = []
    pos = 0
    for match in _RAW_WORD.finditer(text):
        _check_gap(text, pos, match.start())
        raw = match.group()
        words.append(_unquote(raw) if _QUOTING.search(raw) else raw)
        pos = match.end()
    _check_gap(text, pos, len(text))
    return words


def _check_gap(text: str, start: int, end: int) -> None:
    """Between two words only whitespace may stand; anything else is an unclosed quote or escape."""
    gap = text[start: end].lstrip(_WHITESPACE)
    if not gap:
        return
    if gap[0] == "'":
        raise _split_error("No closing quotation")
    trailing_backslashes = len(text) - len(text.rstrip("\\"))
    raise _split_error("No escaped character" if trailing_backslashes % 2 else "No closing quotation")


def _unquote(raw: str) -> str:
    """One word's value: quotes removed, escapes applied (a raw word matched by ``_RAW_WORD``)."""
    pieces: list[str] = []
    for single, double, escaped, plain in _PIECE.findall(raw):
        if double:
            pieces.append(_DOUBLE_QUOTED_ESCAPE.sub(r"\1", double))
        else:
            pieces.append(single or escaped or plain)
    return "".join(pieces)


def _split_error(reason: str) -> ConfigError:
    return ConfigError("command", f"cannot split into words: {reason}")


def _tokens(lines: list[_Line]) -> list[Token]:
    """Every line's words and operators in order, a newline token after each line."""
    tokens: list[Token] = []
    for index, line in enumerate(lines):
        for word in _words(line.text):
            if word.startswith(_MARK):
                tokens.extend(Token(op, index, operator=True) for op in operators(word[len(_MARK):]))
            else:
                tokens.append(Token(word, index))
        tokens.append(Token("\n", index, operator=True))
    return tokens


def _lookup(match: re.Match[str], variables: dict[str, str], expanding: frozenset[str]) -> str | None:
    """The value of one ``$NAME``/``${NAME}``/``${NAME:-default}`` reference, or None if unknown.
    A variable being expanded (``expanding``) is unknown inside its own value. ``:-`` takes the default
    for an empty value too, ``-`` only for an unset one (bash(1), Parameter Expansion)."""
    name = match.group("plain") or match.group("braced")
    if name in variables and name not in expanding:
        if variables[name] or not match.group("colon") or match.group("default") is None:
            return variables[name]
    return match.group("default")


@dataclass(slots=True)
class _Budget:
    """Characters variable expansion may still produce: a few lines can double a value each
    (``b="$a $a"``, ``c="$b $b"``...), so expansion is bounded, not the lines. ``known`` holds the
    words of each variable expansion of the command being expanded (the same reference repeats)."""

    left: int = MAX_EXPANDED_CHARS
    known: dict[tuple[str, frozenset[str]], list[str]] = field(default_factory=dict)

    def spend(self, words: list[str], typed: str = "") -> list[str]:
        """``words`` made from the word ``typed``: the characters added (and a separator per word)."""
        self.left -= sum(len(w) + 1 for w in words) - len(typed) - 1
        if self.left < 0:
            raise ConfigError("command", f"its variables expand to more than {MAX_EXPANDED_CHARS:,} characters; "
                                         "not a launch script")
        return words


def _expand(word: str, variables: dict[str, str], budget: _Budget,
            expanding: frozenset[str] = frozenset()) -> list[str]:
    if "$" not in word:
        return [word]
    whole = _WHOLE_VARIABLE.match(word)
    if whole:
        value = _lookup(whole, variables, expanding)
        if value is None:
            return [word]
        key = (word, expanding)
        if len(expanding) >= MAX_EXPANSION_DEPTH:
            raise ConfigError("command", f"variables nest more than {MAX_EXPANSION_DEPTH} deep ({word}); "
                                         "not a launch script")
        if key not in budget.known:
            inner = expanding | {whole.group("plain") or whole.group("braced")}
            budget.known[key] = [w for part in words_of(value) for w in _expand(part, variables, budget, inner)]
        return budget.spend(budget.known[key], word)

    return budget.spend([_substitute(word, variables, expanding)], word)


def _substitute(word: str, variables: dict[str, str], expanding: frozenset[str] = frozenset()) -> str:
    """``word`` with its known variables replaced in place, as one word (as inside double quotes)."""

    def substitute(match: re.Match[str]) -> str:
        value = _lookup(match, variables, expanding)
        if value is None:
            return match.group(0)
        if "${" in value and value == match.group("default"):  # a nested ${B:-x} in ${A:-${B:-x}}
            return _ANY_VARIABLE.sub(substitute, value)
        return value

    return _ANY_VARIABLE.sub(substitute, word)


def _read_target(command: list[str]) -> str | None:
    """The variable a ``read [options] NAME`` command assigns, if it is one."""
    if not command or command[0] != "read":
        return None
    names = [w for w in command[1:] if _ASSIGNMENT.match(w + "=")]
    return names[-1] if names else None


def _assign(command: list[str], variables: dict[str, str]) -> list[str]:
    """Record a command made only of ``NAME=value`` words (or ``export ...``); strip env prefixes."""
    if command and command[0] in ("export", "local", "declare", "readonly"):
        for word in command[1:]:
            match = _ASSIGNMENT.match(word)
            if match:
                variables[match.group(1)] = match.group(2)
        return []
    index = 0
    while index < len(command) and _ASSIGNMENT.match(command[index]):
        index += 1
    if index < len(command):
        return command[index:]
    for word in command:
        match = _ASSIGNMENT.match(word)
        if match:
            variables[match.group(1)] = match.group(2)
    return []


def _assign_array(command: list[str], variables: dict[str, str]) -> bool:
    """Record ``NAME=( words... )`` (a bash array) as the text of its words; ``NAME+=( ... )`` appends."""
    match = _ARRAY_ASSIGNMENT.match(command[0]) if command else None
    if match is None:
        return False
    items = command[1:-1] if command[-1] == ")" else command[1:]
    name, append = match.group(1), match.group(2)
    before = variables.get(name, "") if append else ""
    variables[name] = " ".join(filter(None, [before, shlex.join(items)]))
    return True


def restore(word: str) -> str:
    """A final word with its quoted ``$`` signs back."""
    return word.replace(_LITERAL_DOLLAR, "$")


def words_of(text: str) -> list[str]:
    """All words of ``text`` as one list (newlines and separators are word breaks)."""
    return [w for line in _Scanner(text).run() for w in _words(line.text) if not w.startswith(_MARK)]


_POSITIONAL = re.compile(r"\$(?:\{([0-9]+|[@*#])\}|([0-9@*#]))")


def _no_arguments(word: str) -> str:
    """``word`` as a script run with no arguments sees it: ``$1``, ``${2}``, ``$@``, ``$*`` empty, ``$#`` 0
    (a pasted script is read as ``bash script.sh``; a ``${1:-default}`` takes its default in ``_lookup``)."""
    return _POSITIONAL.sub(lambda m: "0" if "#" in (m.group(1) or m.group(2)) else "", word)


@dataclass(frozen=True, slots=True)
class Script:
    """What a pasted script runs: its simple commands (expanded), the variables it assigns, and notes on what
    memplan could not settle (a branch it could not choose)."""

    commands: list[list[str]]
    variables: dict[str, str]
    notes: tuple[str, ...]


def split_commands(text: str, environment: dict[str, str] | None = None) -> tuple[list[list[str]], dict[str, str]]:
    """The simple commands of a pasted script (expanded) and the variables it assigns (see :func:`read_script`)."""
    script = read_script(text, environment)
    return script.commands, script.variables


def read_script(text: str, environment: dict[str, str] | None = None) -> Script:
    """The simple commands a pasted script runs, on the branches bash would take (``shell_flow``).
    ``environment``: variables the script starts with, as ``NAME=value bash script.sh`` gives them."""
    variables: dict[str, str] = dict(environment or {})
    commands: list[list[str]] = []
    budget = _Budget()
    clean = text.replace("\r\n", "\n").replace(_MARK, "").replace(_LITERAL_DOLLAR, "")
    lines = _Scanner(clean).run()
    heredocs = [list(line.heredocs) for line in lines]

    def run_command(tokens: list[Token]) -> None:
        budget.known.clear()  # assignments since the last command change what a reference means
        expanded = [w for word in without_redirections(tokens) for w in _expand(word, variables, budget)]
        target = _read_target(expanded)
        if target is not None and heredocs[tokens[0].line]:
            variables[target] = heredocs[tokens[0].line].pop(0)
            return
        if _assign_array(expanded, variables):
            return
        rest = _assign(expanded, variables)
        if rest:
            commands.append(rest)

    flow = Flow(_tokens(lines), run_command=run_command, variable=known_variables(variables),
                expand=lambda word: restore(_substitute(_no_arguments(word), variables)))
    flow.run()
    final = [[restore(w) for w in command] for command in commands]
    return Script(final, {name: restore(value) for name, value in variables.items()}, tuple(flow.notes))
