"""Hostile input for every memory-relevant flag of estimate, check and plan (issue 11, item 7).

Each example runs the real CLI in-process (``memplan.cli.main.main``) and must end with exit status
0 (an estimate) or 2 (bad input), never a traceback, within a time bound; every exit 2 prints one
line that names where the problem is: the flag exactly as the example typed it, when the example's
only suspicious word is one flag's value.

The flag lists come from OpenRLHF's own argparse tables (``frameworks/openrlhf/data``), so a flag
added to a table is fuzzed without editing this file. Examples are bounded (``MEMPLAN_FUZZ_EXAMPLES``,
default 60 per test) and derandomized, so CI is repeatable; raise the count locally to search harder.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import signal
import time
from collections.abc import Iterator, Sequence

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from memplan.cli.main import main  # noqa: E402
from memplan.frameworks.openrlhf.flags import FlagKind, FlagSpec, load_table, scripts_of  # noqa: E402

EXAMPLES = int(os.environ.get("MEMPLAN_FUZZ_EXAMPLES", "60"))
"""Examples per test (each is one CLI run of a few milliseconds to a few tenths of a second)."""

RUN_SECONDS = 10.0
"""No single run may take longer (the slowest valid input, a plan over four GPU types, takes < 1 s)."""

MODEL = "tests/data/tiny/llama-tiny.json"
"""A shipped config, so no hub access is needed; RL runs use a preset (its heads/lengths are real)."""

FUZZ_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

HOSTILE_NUMBERS = ("-1", "-8", "0", "-0", "1e9", "1000000000", "10000000", "100000000000", "1e12",
                   "99999999999999999999999", "nan", "NaN", "inf", "-inf", "0.0", "1.5", "-0.5", "1e-300",
                   "3", "7", "64", "2.0")
HOSTILE_WORDS = ("", " ", "abc", "bogus", "--", "$X", "'", "\"", "\\", "null", "true", "None", "\x00", "é")


def _hostile_value() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(HOSTILE_NUMBERS + HOSTILE_WORDS),
                     st.integers(min_value=-(10 ** 15), max_value=10 ** 15).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.text(max_size=6))


def _memory_flags(script: str, version: str) -> list[FlagSpec]:
    return [spec for spec in load_table(script, version).flags if spec.memory]


def _method_flags() -> list[tuple[str, str, str, FlagSpec]]:
    """(method, script, version, flag) for every memory flag of every script memplan estimates."""
    script_method = {"train_sft": "sft", "train_rm": "rm", "train_dpo": "dpo", "train_kto": "kto",
                     "train_prm": "prm", "train_kd": "kd", "train_ppo_ray": "ppo"}
    out = []
    for version in ("0.9", "0.11"):
        for script in scripts_of(version):
            out += [(script_method[script], script, version, spec) for spec in _memory_flags(script, version)]
    return out


METHOD_FLAGS = _method_flags()

KNOWN_OPTIONS = frozenset(
    {spec.option for version in ("0.8", "0.9", "0.11") for script in scripts_of(version)
     for spec in load_table(script, version).flags}
    | {"--gpus", "--nodes", "--gpus-per-node", "--gpu", "--host-ram", "--openrlhf-version", "--keep", "--max-gpus"}
    | {"--num_gpus", "--num_nodes", "--include", "--nproc_per_node", "--nnodes"})
"""Every flag a message may name: a cross-flag check names the other flag it holds against the typed one
(``--train_batch_size`` when ``--micro_train_batch_size`` makes it indivisible)."""


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    def _raise(signum: int, frame: object) -> None:
        raise _Timeout(f"run exceeded {seconds} s")

    previous = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds * 3)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_cli(argv: Sequence[str]) -> tuple[int, str, str, float]:
    """Exit status, stdout, stderr and seconds of one in-process CLI run."""
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    with _time_limit(RUN_SECONDS), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue(), time.monotonic() - start


def assert_answered(argv: Sequence[str], *, names: Sequence[str] = ()) -> tuple[int, str]:
    """The run ends with 0 or 2 in time; an exit 2 is one line naming one of ``names`` (when given)."""
    status, _, err, seconds = run_cli(argv)
    assert status in (0, 2), f"exit {status} for {list(argv)!r}: {err[-2000:]}"
    assert seconds < RUN_SECONDS, f"{seconds:.1f} s for {list(argv)!r}"
    if status == 2:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, f"error is not one line for {list(argv)!r}: {err!r}"
        assert "Traceback" not in err
        if names:
            location = _location(lines[0])
            named = any(name in location for name in names) or location.split(" ")[-1] in KNOWN_OPTIONS
            assert named, f"{lines[0]!r} names none of {names} nor another flag ({list(argv)!r})"
    return status, err


def _location(line: str) -> str:
    """Where an error line says the problem is: memplan's ``LOCATION: message`` or argparse's argument."""
    if line.startswith("memplan: error: "):
        return line.removeprefix("memplan: error: ").split(": ", 1)[0]
    match = re.search(r"argument (\S+?)[:/ ]", line)
    return match.group(1) if match else line


def _typed(spec: FlagSpec, value: str, inline: bool) -> list[str]:
    if not spec.takes_value:
        return [f"{spec.option}={value}"] if inline else [spec.option]
    return [f"{spec.option}={value}"] if inline else [spec.option, value]


def _base_argv(method: str, version: str) -> list[str]:
    if method == "ppo":
        return ["estimate", "llama-3.2-1b", "--method", "ppo", "--gpu", "a100-80g", "--remote_rm_url", "http://rm",
                "--openrlhf-version", version]
    return ["estimate", MODEL, "--method", method, "--gpus", "2", "--gpu", "a100-80g", "--openrlhf-version", version]


@FUZZ_SETTINGS
@given(case=st.sampled_from(METHOD_FLAGS), value=_hostile_value(), inline=st.booleans())
def test_estimate_one_hostile_flag(case: tuple[str, str, str, FlagSpec], value: str, inline: bool) -> None:
    """One memory flag at a hostile value: an estimate, or exit 2 naming that flag as typed."""
    method, _, version, spec = case
    argv = _base_argv(method, version) + _typed(spec, value, inline)
    status, err = assert_answered(argv, names=(spec.option,))
    if status == 0 and spec.kind in (FlagKind.INT, FlagKind.FLOAT) and spec.nargs is None:
        number = _number(value)
        assert number is None or math.isfinite(number), f"{spec.option} {value!r} was accepted"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@FUZZ_SETTINGS
@given(cases=st.lists(st.sampled_from(METHOD_FLAGS), min_size=2, max_size=5), values=st.data())
def test_estimate_several_hostile_flags(cases: list[tuple[str, str, str, FlagSpec]], values: st.DataObject) -> None:
    """Several flags of one method at once: an estimate or one line naming one of them."""
    method, _, version, _ = cases[0]
    specs = [spec for m, _, v, spec in cases if (m, v) == (method, version)]
    argv = _base_argv(method, version)
    for spec in specs:
        argv += _typed(spec, values.draw(_hostile_value()), inline=False)
    assert_answered(argv, names=tuple(s.option for s in specs))


CLI_OPTIONS = ("--gpus", "--nodes", "--gpus-per-node", "--gpu", "--host-ram", "--openrlhf-version")


@FUZZ_SETTINGS
@given(option=st.sampled_from(CLI_OPTIONS), value=_hostile_value(), method=st.sampled_from(["sft", "dpo"]))
def test_estimate_cli_options(option: str, value: str, method: str) -> None:
    """memplan's own options at hostile values."""
    argv = ["estimate", MODEL, "--method", method, f"{option}={value}"]
    assert_answered(argv, names=(option, "argument"))


LAUNCHERS = (
    ("deepspeed", "--num_gpus"), ("deepspeed", "--num_nodes"), ("torchrun", "--nproc_per_node"),
    ("torchrun", "--nnodes"),
)


@FUZZ_SETTINGS
@given(launcher=st.sampled_from(LAUNCHERS), value=_hostile_value(),
       script=st.sampled_from(["train_sft", "train_rm", "train_dpo"]))
def test_check_launcher_world(launcher: tuple[str, str], value: str, script: str) -> None:
    """A pasted command whose launcher asks for a hostile world size."""
    name, option = launcher
    entry = ["--module", f"openrlhf.cli.{script}"] if name == "deepspeed" else ["-m", f"openrlhf.cli.{script}"]
    command = [name, option, value, *entry, "--pretrain", MODEL]
    assert_answered(["check", "--gpu", "a100-80g", "--", *command], names=(option, "command"))


@FUZZ_SETTINGS
@given(case=st.sampled_from([c for c in METHOD_FLAGS if c[2] == "0.11"]), value=_hostile_value())
def test_check_pasted_flag(case: tuple[str, str, str, FlagSpec], value: str) -> None:
    """A pasted one-line command with one hostile flag."""
    method, script, _, spec = case
    if method == "ppo":
        head = ["python3", "-m", "openrlhf.cli.train_ppo_ray", "--pretrain", "llama-3.2-1b", "--remote_rm_url", "x"]
    else:
        head = ["deepspeed", "--num_gpus", "2", "--module", f"openrlhf.cli.{script}", "--pretrain", MODEL]
    assert_answered(["check", "--gpu", "a100-80g", "--", *head, *_typed(spec, value, inline=False)],
                    names=(spec.option,))


SHELL_PIECES = ("deepspeed", "--module", "openrlhf.cli.train_sft", "--pretrain", MODEL, "\\\n", "'", "\"", "$(",
                ")", "`", "<<EOF", "EOF", "&&", ";", "|", "#", "\n", "bash -c", "ray job submit --", "python3 -m",
                "openrlhf.cli.train_ppo_ray", "--zero_stage", "3", "--max_len", "=", "${A:-1}", "export A=2",
                "if", "then", "elif", "else", "fi", "case", "in", "esac", ";;", ";&", "[", "]", "[[", "]]", "((",
                "))", "-n", "!=", "a)", "*)", "exit 1", "$1", "$#")


@FUZZ_SETTINGS
@given(pieces=st.lists(st.one_of(st.sampled_from(SHELL_PIECES), st.text(max_size=5)), max_size=30))
def test_check_pasted_text(pieces: list[str]) -> None:
    """Arbitrary pasted text (quotes, heredocs, continuations, garbage) read from one argument."""
    assert_answered(["check", "--", " ".join(pieces)])


PLAN_KEEPS = ("zero_stage", "micro_train_batch_size", "adam_offload", "gradient_checkpointing",
              "actor_num_gpus_per_node", "vllm_num_engines", "vllm_tensor_parallel_size",
              "vllm_gpu_memory_utilization", "max_len", "lora_rank", "bogus_flag")


@settings(max_examples=max(EXAMPLES // 3, 10), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(PLAN_KEEPS), value=_hostile_value(),
       option=st.sampled_from(["--keep", "--gpus-per-node", "--max-gpus", "--host-ram"]))
def test_plan_hostile(key: str, value: str, option: str) -> None:
    """plan with a hostile --keep, --gpus-per-node, --max-gpus or --host-ram."""
    typed = f"{key}={value}" if option == "--keep" else value
    argv = ["plan", MODEL, "--method", "sft", "--gpu", "a100-80g", option, typed]
    assert_answered(argv, names=(option, key, "argument"))
