"""Bash expansions the shell reader follows, as bash(1) "Parameter Expansion" and "Arrays" define them.

Each expected value is what ``bash -c`` prints for the same script (run by hand, bash 5.2).
"""

from __future__ import annotations

from memplan.frameworks.shell import split_commands


def _echo(script: str) -> list[str]:
    commands, _ = split_commands(script)
    return commands[-1][1:]


def test_colon_dash_takes_the_default_for_an_empty_value() -> None:
    # X=; echo ${X:-8} ${X-8}  ->  "8 " (bash drops the empty word): 8
    assert _echo("X=\necho ${X:-8} ${X-8}") == ["8"]


def test_nested_default() -> None:
    # unset A B; echo ${A:-${B:-8}}x  ->  8x
    assert _echo("echo ${A:-${B:-8}}x") == ["8x"]
    assert _echo("B=3\nN=${A:-${B:-8}}\necho $N") == ["3"]


def test_positional_parameter_default() -> None:
    # a pasted script has no arguments: ${1:-vllm} -> vllm
    assert _echo("E=${1:-vllm}\necho $E") == ["vllm"]


def test_array_append() -> None:
    # A=(a b); A+=(c); echo "${A[@]}"  ->  a b c
    assert _echo("A=(a b)\nA+=(c)\necho \"${A[@]}\"") == ["a", "b", "c"]
