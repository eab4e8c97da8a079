"""What a launch script's conditions mean: bash tests and arithmetic over the script's own values.

bash(1) CONDITIONAL EXPRESSIONS and ARITHMETIC EVALUATION, for the forms launch scripts use: ``[ ... ]``,
``test ...`` and ``[[ ... ]]`` with ``-n``, ``-z``, a bare string, ``=``/``==``/``!=`` (in ``[[`` the right side
of ``==``/``!=`` is a glob pattern), ``-eq``/``-ne``/``-lt``/``-le``/``-gt``/``-ge``, ``!``, ``-a``/``-o``
(``[``) and ``&&``/``||`` (``[[``); ``(( expression ))`` over integers. What the text does not settle (a
variable the script never assigns, a command's output, a file test) raises :class:`Unknowable`.
"""

from __future__ import annotations

import ast
import fnmatch
import operator
import re
from collections.abc import Callable

#: Deepest nesting of variables inside arithmetic (a name whose value names another...).
MAX_NESTING = 64
_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")
_COMPARISONS: dict[str, Callable[[int, int], bool]] = {
    "-eq": operator.eq, "-ne": operator.ne, "-lt": operator.lt, "-le": operator.le, "-gt": operator.gt,
    "-ge": operator.ge}
_UNKNOWABLE_TESTS = frozenset({"-a", "-b", "-c", "-d", "-e", "-f", "-g", "-h", "-k", "-p", "-r", "-s", "-t", "-u",
                               "-w", "-x", "-G", "-L", "-N", "-O", "-S", "-v", "-R", "-o"})
"""Unary tests on files, terminals, shell options or set-ness: what the machine has, not what the text says."""
_ARITHMETIC_OPERATORS: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.floordiv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}
_ARITHMETIC_COMPARISONS: dict[type, Callable[[int, int], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge}


class Unknowable(Exception):
    """A condition the script's text does not settle; the message says why."""


def arithmetic(body: str, value_of: Callable[[str], str | None], depth: int = 0) -> int:
    """bash arithmetic over integers (bash(1), ARITHMETIC EVALUATION): ``+ - * / %``, parentheses, unary
    minus, comparisons and ``&& || !``, a name standing for its variable's value (itself evaluated, as bash
    does). ``/`` truncates toward zero. Raises :class:`Unknowable` for a name ``value_of`` does not know
    (None) and ``ValueError`` for anything else it does not read.
    """
    text = body.replace("$", "").replace("&&", " and ").replace("||", " or ")
    text = re.sub(r"!(?!=)", " not ", text).strip()
    try:
        tree = ast.parse(text or "0", mode="eval").body
    except SyntaxError:
        raise ValueError(body) from None
    return _evaluate(tree, value_of, depth)


def _evaluate(node: ast.AST, value_of: Callable[[str], str | None], depth: int) -> int:
    if depth > MAX_NESTING:
        raise ValueError("nested too deep")
    inner = depth + 1
    if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name):
        value = value_of(node.id)
        if value is None:
            raise Unknowable(f"{node.id} is never assigned in the script")
        stripped = value.strip()
        if stripped.startswith("$((") and stripped.endswith("))"):
            stripped = stripped[3:-2]
        return arithmetic(stripped, value_of, inner)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
        value = _evaluate(node.operand, value_of, inner)
        return -value if isinstance(node.op, ast.USub) else int(not value) if isinstance(node.op, ast.Not) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC_OPERATORS:
        left, right = _evaluate(node.left, value_of, inner), _evaluate(node.right, value_of, inner)
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)):
            if right == 0:
                raise ValueError("division by zero")
            quotient = abs(left) // abs(right) * (1 if (left >= 0) == (right >= 0) else -1)
            return quotient if not isinstance(node.op, ast.Mod) else left - right * quotient
        return _ARITHMETIC_OPERATORS[type(node.op)](left, right)
    if isinstance(node, ast.Compare) and all(type(op) in _ARITHMETIC_COMPARISONS for op in node.ops):
        values = [_evaluate(n, value_of, inner) for n in (node.left, *node.comparators)]
        return int(all(_ARITHMETIC_COMPARISONS[type(op)](a, b) for op, a, b in zip(node.ops, values, values[1:])))
    if isinstance(node, ast.BoolOp):
        values = [_evaluate(n, value_of, inner) for n in node.values]
        return int(all(values) if isinstance(node.op, ast.And) else any(values))
    raise ValueError(ast.dump(node)[:80])


def test_expression(words: list[str], *, double: bool) -> bool:
    """``[ words ]`` (``double``: ``[[ words ]]``), the words expanded, brackets removed."""
    for joiner in (("||", "&&") if double else ("-o", "-a")):  # OR binds loosest: split at its rightmost
        for index in range(len(words) - 2, 0, -1):
            if words[index] == joiner:
                left = test_expression(words[:index], double=double)
                right = test_expression(words[index + 1:], double=double)
                return (left or right) if joiner in ("||", "-o") else (left and right)
    if words and words[0] == "!":
        return not test_expression(words[1:], double=double)
    if len(words) == 3 and words[0] == "(" and words[2] == ")":
        return test_expression(words[1:2], double=double)
    if len(words) == 3 and words[1] in ("=", "==", "!="):
        left, right = _known(words[0]), _known(words[2])
        equal = fnmatch.fnmatchcase(left, right) if double else left == right
        return equal if words[1] != "!=" else not equal
    if len(words) == 3 and words[1] in _COMPARISONS:
        left, right = _known(words[0]), _known(words[2])
        if not (_INTEGER.match(left) and _INTEGER.match(right)):
            raise Unknowable(f"{words[1]} needs integers, got {left!r} and {right!r}")
        return _COMPARISONS[words[1]](int(left), int(right))
    if len(words) == 2 and words[0] in ("-n", "-z"):
        return bool(_known(words[1])) == (words[0] == "-n")
    if len(words) == 2 and words[0] in _UNKNOWABLE_TESTS:
        raise Unknowable(f"{words[0]} {words[1]} asks about the machine the script runs on")
    if len(words) == 1:
        return bool(_known(words[0]))
    if not words:
        return False
    raise Unknowable(f"memplan does not read the test {' '.join(words)!r}")


def _known(word: str) -> str:
    if "$" in word or "`" in word:
        raise Unknowable(f"{word!r} is a variable the script never assigns or a command's output")
    return word
