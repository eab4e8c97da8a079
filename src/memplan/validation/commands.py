"""The memplan call that predicts a reference: from the command stored in its record.

Reference records store a command line: ``memplan trace MODEL --method M --engine E ... --gpus N``
(traced and deepspeed-cpu records), ``memplan estimate MODEL --method M ...`` or
``memplan check [--gpu G] -- COMMAND`` (GPU-measured records). Apart from memplan's own options, their
flags are OpenRLHF flags, so they pass through to :func:`memplan.api.estimate` unchanged.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from memplan.api import estimate, estimate_command
from memplan.errors import ConfigError
from memplan.jobs.result import Estimate
from memplan.memory.logits import LogProbImpl

#: memplan options (not OpenRLHF flags) that take a value, per sub-command.
_VALUE_OPTIONS = {
    "trace": ("--method", "--engine", "--gpus"),
    "estimate": ("--method", "--gpus", "--nodes", "--gpus-per-node", "--gpu", "--host-ram", "--openrlhf-version"),
}
#: memplan options without a value that change no prediction.
_SWITCHES = ("--json", "--quiet", "--explain")


@dataclass(frozen=True, slots=True, kw_only=True)
class Prediction:
    """What to call: either a model + method + OpenRLHF flags, or a launch command for ``check``."""

    model: str | None
    """MODEL of ``trace``/``estimate``; None for ``check``."""
    method: str | None
    """``--method``."""
    flags: tuple[str, ...]
    """OpenRLHF flags (or, for ``check``, the launch command's words)."""
    options: dict[str, str]
    """memplan options that were given (``--gpus``, ``--gpu``, ...)."""


def _split(words: Sequence[str], sub: str) -> Prediction:
    options: dict[str, str] = {}
    flags: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in _VALUE_OPTIONS[sub] and i + 1 < len(words):
            options[word] = words[i + 1]
            i += 2
            continue
        if word == "--modules":  # trace's module table: an optional depth
            i += 2 if i + 1 < len(words) and words[i + 1].isdigit() else 1
            continue
        if word not in _SWITCHES:
            flags.append(word)
        i += 1
    if not flags or flags[0].startswith("-") or "--method" not in options:
        raise ConfigError("command", f"expected 'memplan {sub} MODEL --method METHOD ...'")
    return Prediction(model=flags[0], method=options["--method"], flags=tuple(flags[1:]), options=options)


def parse_command(command: str) -> Prediction:
    """Split a stored ``memplan trace|estimate|check ...`` command into what :func:`predict` needs."""
    words = shlex.split(command)
    if len(words) < 2 or words[0] != "memplan" or words[1] not in ("trace", "estimate", "check"):
        raise ConfigError("command", f"not a memplan trace/estimate/check command: {command[:80]!r}")
    if words[1] != "check":
        return _split(words[2:], words[1])
    if "--" not in words:
        raise ConfigError("command", "memplan check needs '-- COMMAND'")
    cut = words.index("--")
    head = words[2:cut]
    options = {head[i]: head[i + 1] for i in range(0, len(head) - 1) if head[i].startswith("--")}
    return Prediction(model=None, method=None, flags=tuple(words[cut + 1:]), options=options)


def with_flag(flags: Sequence[str], flag: str, value: str) -> tuple[str, ...]:
    """``flags`` with ``flag``'s value replaced (or the flag appended)."""
    out = list(flags)
    if flag in out:
        at = out.index(flag)
        out[at + 1: at + 2] = [value]
        return tuple(out)
    return (*out, flag, value)


def predict(pred: Prediction, *, logprob_impl: LogProbImpl) -> Estimate:
    """Run the estimate a :class:`Prediction` stands for."""
    gpu = pred.options.get("--gpu")
    version = pred.options.get("--openrlhf-version")
    if pred.model is None:
        return estimate_command(list(pred.flags), gpu=gpu, version=version, logprob_impl=logprob_impl)
    assert pred.method is not None
    ints = {k: int(pred.options[k]) for k in ("--gpus", "--nodes", "--gpus-per-node") if k in pred.options}
    return estimate(pred.model, pred.method, pred.flags, gpus=ints.get("--gpus"), nodes=ints.get("--nodes"),
                    gpus_per_node=ints.get("--gpus-per-node"), gpu=gpu, version=version, logprob_impl=logprob_impl)
