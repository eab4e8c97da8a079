"""``memplan models``: listing and one-model view."""

from __future__ import annotations

import json

from memplan.cli.main import main


def test_models_json_shape(capsys) -> None:
    assert main(["models", "llama-2-7b", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    # Llama-2-7B: 6,738,415,616 parameters (LlamaForCausalLM on the meta device, transformers 5.24.0).
    assert data["num_params"] == 6_738_415_616
    assert data["spec"]["hidden_size"] == 4096
    assert data["largest_layer_params"] == 32000 * 4096


def test_models_by_hub_id(capsys) -> None:
    assert main(["models", "meta-llama/Llama-2-7b-hf", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_params"] == 6_738_415_616


def test_models_list(capsys) -> None:
    assert main(["models", "--json"]) == 0
    names = {m["name"] for m in json.loads(capsys.readouterr().out)["models"]}
    assert "llama-2-7b" in names


def test_help_and_no_command(capsys) -> None:
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out
