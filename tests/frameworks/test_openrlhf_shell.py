"""The shell reader on large and arbitrary text: same words as POSIX ``shlex``, in linear time.

Truth here is independent of the code under test: the Python standard library's ``shlex`` (the
splitter the reader used to call, CPython ``Lib/shlex.py``) and the literal text each test builds.
How fast the reader is, is measured by ``benchmarks/shell_speed.py``, not asserted here.
"""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memplan.errors import ConfigError
from memplan.frameworks.openrlhf import parse_command
from memplan.frameworks.shell import _words, split_commands

ONE_MIB = 1 << 20
SFT = "deepspeed --module openrlhf.cli.train_sft --pretrain llama-2-7b"


def _shlex_words(text: str) -> list[str] | str:
    lexer = shlex.shlex(text, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        return list(lexer)
    except ValueError as error:
        return str(error)


def _reader_words(text: str) -> list[str] | str:
    try:
        return _words(text)
    except ConfigError as error:
        return str(error).rsplit("words: ", 1)[-1]


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(" \t\r\n'\"\\ab$#;=\u00e9\u2003\x00"), max_size=24))
def test_words_match_posix_shlex(text: str) -> None:
    assert _reader_words(text) == _shlex_words(text)


def test_one_mib_token_is_one_word() -> None:
    token = "a" * ONE_MIB
    parsed = parse_command(f"{SFT} --save_path {token}")
    assert parsed.values["save_path"] == token


def test_one_mib_quoted_token_with_spaces_is_one_word() -> None:
    token = "a b" * (ONE_MIB // 3)
    parsed = parse_command(f"{SFT} --save_path '{token}'")
    assert parsed.values["save_path"] == token


def test_one_mib_script_of_many_lines() -> None:
    lines = [f"export VAR{i}=value{i}  # comment {i}" for i in range(ONE_MIB // 36)]
    script = "\n".join(lines) + f"\n{SFT} \\\n  --save_path $VAR7 --zero_stage 2\n"
    assert len(script) > ONE_MIB - 1024
    commands, variables = split_commands(script)
    assert len(variables) == len(lines)
    assert commands == [SFT.split() + ["--save_path", "value7", "--zero_stage", "2"]]


def _doubling(lines: int, reverse: bool) -> str:
    """``a1="$a0 $a0"``, ``a2="$a1 $a1"``...: each line doubles the words ``$a{lines - 1}`` stands for.
    Reversed, every value still names the variable above it when the command runs."""
    assignments = ["a0=x"] + [f'a{i}="$a{i - 1} $a{i - 1}"' for i in range(1, lines)]
    if reverse:
        assignments.reverse()
    return "\n".join([*assignments, f"{SFT} --save_path $a{lines - 1}"])


def test_doubling_variables_expand_while_small() -> None:
    for reverse in (False, True):
        commands, _ = split_commands(_doubling(10, reverse))
        assert commands[0][-2 ** 9:] == ["x"] * 2 ** 9  # 10 lines: 2^9 words


@pytest.mark.parametrize("reverse", [False, True])
def test_doubling_variables_are_refused_not_expanded_forever(reverse: bool) -> None:
    # 40 lines would stand for 2^39 words; the reader stops at MAX_EXPANDED_CHARS instead.
    with pytest.raises(ConfigError, match="variables expand to more than 1,048,576 characters"):
        split_commands(_doubling(40, reverse))


def test_deeply_nested_variables_are_refused() -> None:
    chain = "\n".join([f"a{i}=$a{i + 1}" for i in range(100)] + ["a100=x", f"{SFT} --save_path $a0"])
    with pytest.raises(ConfigError, match="variables nest more than 64 deep"):
        split_commands(chain)
