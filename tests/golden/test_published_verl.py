"""Published verl outcomes (validation/published/verl/*.toml, from shared/reference/verl-cases.md).

Each expectation of each file is one test: the verdict memplan gives the cited command (with the variant's
``extra_flags``) must be one the source reports. An expectation whose file or entry carries ``known_miss``
is an expected failure whose reason (predicted peak vs capacity, the deciding term) is in the file; it is
strict, so a known miss that starts to reproduce fails here until its ``known_miss`` is removed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from memplan.api import estimate_command
from memplan.errors import ConfigError
from memplan.validation.published import _expectations

DIR = Path(__file__).resolve().parents[2] / "validation" / "published" / "verl"
CASES = [(path, expect) for path in sorted(DIR.glob("*.toml"))
         for expect in _expectations(tomllib.loads(path.read_text(encoding="utf-8")))]


def _verdict(case: dict[str, Any], expect: dict[str, Any]) -> str:
    command = " ".join(case["command"].split() + list(expect.get("extra_flags", [])))
    try:
        return str(estimate_command(command, gpu=case["gpu"], version=case["version"]).verdict)
    except ConfigError as refusal:
        return f"refused: {refusal}"


def test_every_case_has_an_expectation() -> None:
    files = sorted(DIR.glob("*.toml"))
    assert len(files) >= 17
    assert {path for path, _ in CASES} == set(files)


@pytest.mark.parametrize(("path", "expect"), CASES, ids=[f"{p.stem}:{e['variant']}" for p, e in CASES])
def test_published_verl_outcome(path: Path, expect: dict[str, Any]) -> None:
    case = tomllib.loads(path.read_text(encoding="utf-8"))
    accepted = [expect["verdict"]] if "verdict" in expect else list(expect["verdict_in"])
    reason = expect.get("known_miss", case.get("known_miss"))
    verdict = _verdict(case, expect)
    if reason:
        assert verdict not in accepted, f"{path.name} ({expect['variant']}) now reproduces: remove its known_miss"
        pytest.xfail(" ".join(str(reason).split()))
    assert verdict in accepted, (case["source"], expect["variant"], verdict)


def test_qwen2_7b_preset_matches_its_published_module_tree() -> None:
    """Row 8's model. The preset's source prints the module tree of Qwen/Qwen2-7B-Instruct: embed and untied
    lm_head 152064 x 3584 = 544,997,376 each; per layer q 3584x3584+3584 = 12,848,640, k and v 3584x512+512 =
    1,835,520 each, o 3584x3584 = 12,845,056, MLP 3 x 3584x18944 = 203,685,888, two norms 7,168: 233,057,792;
    x 28 = 6,525,618,176; + final norm 3,584 + 2 x 544,997,376 = 7,615,616,512."""
    from memplan.model import load_model_spec, num_params

    assert num_params(load_model_spec("Qwen/Qwen2-7B-Instruct")) == 7_615_616_512


def test_qwen2_72b_preset_matches_its_published_parameter_count() -> None:
    """Row 11's model. The Qwen2 release table (https://qwenlm.github.io/blog/qwen2/, quoted in public copies,
    code index ids 44529703215 and 6762161032) gives Qwen2-72B 72.71B parameters, 70.21B without embeddings.
    By hand from the architecture: embed and untied lm_head 152064 x 8192 = 1,245,708,288 each; per layer
    q 8192x8192+8192 = 67,117,056, k and v 8192x1024+1024 = 8,389,632 each, o 8192x8192 = 67,108,864,
    MLP 3 x 8192x29568 = 726,663,168, two norms 16,384: 877,684,736; x 80 = 70,214,778,880 (the 70.21B);
    + final norm 8,192 + 2 x 1,245,708,288 = 72,706,203,648 (the 72.71B)."""
    from memplan.model import load_model_spec, num_params

    total = num_params(load_model_spec("Qwen/Qwen2-72B-Instruct"))
    assert total == 72_706_203_648
    assert round(total / 1e9, 2) == 72.71
