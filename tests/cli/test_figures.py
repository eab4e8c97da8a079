"""``--plot FILE.svg|FILE.png`` and ``--report FILE.html`` for estimate, check and plan."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET

import pytest

from memplan.cli.main import main

pytest.importorskip("vl_convert", reason="the web extra is not installed (pip install '.[web]')")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SFT_CMD = "deepspeed --num_gpus 8 --module openrlhf.cli.train_sft --pretrain llama-3-8b --zero_stage 2"
COMMANDS = {
    "estimate": ["estimate", "llama-2-70b", "--method", "ppo", "--gpu", "a800-80g", "--reward_pretrain", "llama-2-70b",
                 "--actor_num_gpus_per_node", "8", "--critic_num_gpus_per_node", "8", "--ref_num_gpus_per_node", "4",
                 "--reward_num_gpus_per_node", "4", "--vllm_num_engines", "4", "--vllm_tensor_parallel_size", "2"],
    "check": ["check", "--gpu", "a100-80g", "--", SFT_CMD],
    "plan": ["plan", "llama-3-8b", "--method", "dpo", "--gpu", "a100-80g,rtx4090-24g", "--max-gpus", "8"],
}


def _with(argv: list[str], *extra: str) -> list[str]:
    """Options go before ``--`` for check."""
    return argv[:1] + list(extra) + argv[1:] if argv[0] == "check" else argv + list(extra)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_plot_svg_and_png_and_report(command, tmp_path, capsys) -> None:
    svg, png, report = tmp_path / "m.svg", tmp_path / "m.png", tmp_path / "r.html"
    assert main(_with(COMMANDS[command], "--plot", str(svg), "--report", str(report))) == 0
    assert main(_with(COMMANDS[command], "--plot", str(png), "--json")) == 0
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and float(root.get("width")) > 200
    assert "GiB" in svg.read_text()
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    page = report.read_text()
    assert page.startswith("<!doctype html>") and "<svg" in page and "<script" not in page
    assert ("openrlhf.cli.train_" in page) and "GiB" in page
    err = capsys.readouterr().err
    assert f"memplan: wrote {svg}" in err and f"memplan: wrote {png}" in err


def test_estimate_report_lists_every_term_with_its_source(tmp_path) -> None:
    report = tmp_path / "r.html"
    assert main(["estimate", "llama-3-8b", "--method", "sft", "--gpus", "8", "--gpu", "a100-80g",
                 "--report", str(report)]) == 0
    page = report.read_text()
    assert "policy.optimizer" in page and "deepspeed" in page.lower()


@pytest.mark.parametrize(("flag", "name", "message"), [
    ("--plot", "chart.pdf", "must end in .svg or .png"),
    ("--report", "report.txt", "must end in .html"),
    ("--plot", "missing-dir/chart.svg", "no such directory"),
])
def test_bad_output_names_fail_before_any_work(flag, name, message, tmp_path, capsys) -> None:
    assert main(["estimate", "llama-3-8b", "--method", "sft", flag, str(tmp_path / name)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and len(captured.err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_plot_without_web_extra_is_one_line(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "vl_convert", None)  # import fails
    assert main(["plan", "llama-3-8b", "--method", "sft", "--gpu", "a100-80g", "--plot", str(tmp_path / "x.svg")]) == 2
    assert capsys.readouterr().err.strip() == ("memplan: error: --plot: needs the web extra (vl-convert-python): "
                                               "pip install 'memplan[web]'")
