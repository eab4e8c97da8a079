"""verl's own example scripts parse with no unknown key (issue 14 acceptance), read from a local checkout.

Skipped unless MEMPLAN_VERL_REPO names a verl git directory or work tree holding the pinned commit
(tests/data/verl_examples/README.md).
"""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from memplan.errors import ConfigError
from memplan.frameworks.verl.command import find_invocations, read_config
from memplan.frameworks.verl.defaults import Engine
from memplan.frameworks.verl.run import build_run

EXPECTED = tomllib.loads((Path(__file__).parents[1] / "data" / "verl_examples" / "expected.toml")
                         .read_text(encoding="utf-8"))


def _git(*args: str) -> str:
    repo = os.environ.get("MEMPLAN_VERL_REPO")
    if not repo:
        pytest.skip("set MEMPLAN_VERL_REPO to a local verl checkout to parse its example scripts")
    done = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"{EXPECTED['commit'][:8]} not readable in {repo}: {done.stderr.strip()[:200]}")
    return done.stdout


def _scripts() -> dict[str, str]:
    names = [n for n in _git("ls-tree", "-r", "--name-only", EXPECTED["commit"], "examples").split()
             if n.endswith(".sh")]
    return {n: _git("show", f"{EXPECTED['commit']}:{n}") for n in names}


def _read(text: str) -> list:
    return [read_config(invocation, EXPECTED["version"]) for invocation in find_invocations(text)]


def test_every_example_parses_or_is_a_listed_unknown() -> None:
    with_main_ppo, runs, failures = 0, 0, {}
    for name, text in _scripts().items():
        try:
            configs = _read(text)
        except ConfigError as error:
            with_main_ppo += 1
            failures[name] = error.location
            continue
        if not configs:
            continue
        with_main_ppo += 1
        for config in configs:
            if config.table.engine is Engine.DP:
                build_run(config)
                runs += 1
    assert failures == {name: row["location"] for name, row in EXPECTED["unknown"].items()}
    assert with_main_ppo == EXPECTED["num_scripts_with_main_ppo"]
    assert runs == EXPECTED["num_fsdp_runs"]


@pytest.mark.parametrize("name", sorted(EXPECTED["scripts"]))
def test_example_values(name: str) -> None:
    expected = EXPECTED["scripts"][name]
    [config] = _read(_git("show", f"{EXPECTED['commit']}:{name}"))
    assert config.table.engine.value == expected["engine"]
    assert {key: config.get(key) for key in expected["values"]} == expected["values"]
    if "run" not in expected:
        return
    run = build_run(config)
    want = expected["run"]
    assert run.method.value == want["method"]
    assert (run.critic is not None) == want["critic"]
    if "ref" in want:
        assert (run.ref is not None) == want["ref"]
    assert run.actor.ulysses_sequence_parallel_size == want["ulysses"]
    assert run.actor.update.max_token_len_per_gpu == want["actor_max_token_len_per_gpu"]
    for field in ("max_prompt_length", "max_response_length"):
        if field in want:
            assert getattr(run, field) == want[field]
