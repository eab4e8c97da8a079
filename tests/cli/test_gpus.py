"""``memplan gpus``: the catalogue table, JSON with byte integers, one resolved GPU, one-line errors."""

from __future__ import annotations

import json

import pytest

from memplan.cli.main import main


def run_json(capsys, *argv: str) -> dict:
    assert main(["gpus", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_list_json_has_exact_bytes(capsys) -> None:
    gpus = {g["name"]: g for g in run_json(capsys)["gpus"]}
    a100 = gpus["a100-80g"]
    # nvidia-smi 81920MiB (thamada/nvidia-smi A100SXMx4_smi.py; modal-labs/modal-client#2797)
    assert a100["memory_bytes"] == 81920 * 2**20
    # deviceQuery 85100068864 bytes on the same machine
    assert a100["usable_bytes"] == a100["capacity_bytes"] == 85_100_068_864
    assert a100["vendor_label"] == "80GB HBM2e" and a100["vendor_label_bytes"] == 80 * 2**30
    assert gpus["h20-96g"]["usable_bytes"] is None
    assert gpus["h20-96g"]["capacity_bytes"] == 97871 * 2**20
    assert gpus["v100-32g"]["bf16"] is False
    for gpu in gpus.values():
        assert isinstance(gpu["memory_bytes"], int) and gpu["sources"]


def test_list_table(capsys) -> None:
    assert main(["gpus"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["name", "display", "name"]
    row = next(line for line in lines if line.startswith("a100-80g "))
    # 81920 MiB = 80.00 GiB driver total; 85100068864 B / 2**30 = 79.257 GiB usable
    assert "80.00 GiB" in row and "80GB HBM2e" in row and "79.26 GiB" in row and row.endswith("yes")
    h20 = next(line for line in lines if line.startswith("h20-96g "))
    assert "unknown" in h20  # no runtime total recorded


def test_one_gpu_by_alias(capsys) -> None:
    gpu = run_json(capsys, "h100")["gpu"]
    assert gpu["name"] == "h100-80g"
    assert gpu["memory_bytes"] == 81559 * 2**20  # nvidia-smi 81559MiB


def test_custom_size(capsys) -> None:
    gpu = run_json(capsys, "80GiB")["gpu"]
    assert gpu["name"] == "custom" and gpu["vendor"] == "custom"
    assert gpu["memory_bytes"] == gpu["usable_bytes"] == 80 * 2**30
    assert run_json(capsys, "96GB")["gpu"]["memory_bytes"] == 96 * 10**9


def test_one_gpu_text_shows_every_unit(capsys) -> None:
    assert main(["gpus", "80GiB"]) == 0
    out = capsys.readouterr().out
    # 80 GiB = 85,899,345,920 B = 85.90 GB (decimal) = 80.00 GiB (binary), each labelled
    assert "80.00 GiB = 85.90 GB = 85,899,345,920 B" in out


@pytest.mark.parametrize("argv, words", [
    (["gpus", "80XB"], "unknown unit 'XB'"),
    (["gpus", "--", "-5GB"], "must be positive"),
    (["gpus", "1e30TB"], "absurdly large"),
    (["gpus", "abc"], "unknown GPU 'abc'"),
    (["gpus", "80"], "has no unit"),
])
def test_errors_exit_2_with_one_line(capsys, argv: list[str], words: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "\n" not in err
    assert err.startswith("memplan: error: NAME_OR_SIZE: ") and words in err


def test_dash_size_without_separator_is_an_argparse_error(capsys) -> None:
    # argparse takes "-5GB" for an option; it still exits 2 with one line.
    assert main(["gpus", "-5GB"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
