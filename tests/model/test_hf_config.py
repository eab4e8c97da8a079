"""config.json → ModelSpec: family defaults and hostile inputs (one clear error, exit status 2)."""

from __future__ import annotations

import json

import pytest

from memplan.cli.main import main
from memplan.errors import ConfigError, UnsupportedModelError
from memplan.model import load_model_spec, num_params
from memplan.model.spec import AttentionType

TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 176, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}


def test_llama_defaults_follow_transformers(write_config) -> None:
    spec = load_model_spec(str(write_config(TINY_LLAMA)))
    # LlamaConfig defaults (transformers v5.24.0): head_dim = hidden/heads, untied, no biases.
    assert spec.head_dim == 16 and not spec.tie_word_embeddings and not spec.attention_bias
    # embed 1000*64 + lm_head 1000*64 + final norm 64
    # per layer: q 64*64, k 64*32, v 64*32, o 64*64, MLP 3*64*176, two norms 2*64
    per_layer = 64 * 64 + 64 * 32 + 64 * 32 + 64 * 64 + 3 * 64 * 176 + 2 * 64
    assert num_params(spec) == 2 * 1000 * 64 + 64 + 2 * per_layer


def test_directory_with_config(tmp_path, write_config) -> None:
    write_config(TINY_LLAMA)
    assert load_model_spec(str(tmp_path)).hidden_size == 64


def test_gemma_defaults_tied_and_head_dim_256(write_config) -> None:
    cfg = {"model_type": "gemma2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
           "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 500}
    spec = load_model_spec(str(write_config(cfg)))
    assert spec.tie_word_embeddings and spec.head_dim == 256 and spec.norms_per_layer == 4
    assert spec.layer_types == (AttentionType.SLIDING, AttentionType.FULL) * 2
    assert spec.final_logit_softcapping == 30.0


def test_mistral_null_sliding_window_means_none(write_config) -> None:
    cfg = {**TINY_LLAMA, "model_type": "mistral", "sliding_window": None}
    assert load_model_spec(str(write_config(cfg))).sliding_window is None
    cfg.pop("sliding_window")
    assert load_model_spec(str(write_config(cfg))).sliding_window == 4096  # MistralConfig default


def test_rope_scaling_read(write_config) -> None:
    cfg = {**TINY_LLAMA, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
    spec = load_model_spec(str(write_config(cfg)))
    assert spec.rope_scaling_type == "llama3" and spec.rope_scaling_factor == 8.0


HOSTILE = [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "must hold a JSON object"),
    (json.dumps({k: v for k, v in TINY_LLAMA.items() if k != "hidden_size"}), "hidden_size: required field is missing"),
    (json.dumps({**TINY_LLAMA, "num_hidden_layers": -3}), "num_hidden_layers: must be >= 1"),
    (json.dumps({**TINY_LLAMA, "vocab_size": "lots"}), "vocab_size: must be an integer"),
    (json.dumps({**TINY_LLAMA, "hidden_size": 1e30}), "hidden_size"),
    (json.dumps({**TINY_LLAMA, "hidden_size": 10**30}), "beyond any real model"),
    (json.dumps({**TINY_LLAMA, "num_attention_heads": 0}), "num_attention_heads: must be >= 1"),
    (json.dumps({**TINY_LLAMA, "num_key_value_heads": 3}), "does not divide"),
    (json.dumps({**TINY_LLAMA, "tie_word_embeddings": "yes"}), "tie_word_embeddings: must be true or false"),
    (json.dumps({**TINY_LLAMA, "model_type": "gpt_foo"}), "unsupported architecture 'gpt_foo'"),
    (json.dumps({k: v for k, v in TINY_LLAMA.items() if k != "model_type"}), "model_type: required field is missing"),
    ("[" * 100000 + "]" * 100000, "JSON"),
]


@pytest.mark.parametrize(("text", "expected"), HOSTILE)
def test_hostile_config_is_one_clear_error(write_config, capsys, text: str, expected: str) -> None:
    path = write_config(text)
    with pytest.raises(ConfigError) as info:
        load_model_spec(str(path))
    assert expected in str(info.value)
    assert main(["models", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memplan: error:") and expected in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_remote_code_config_refused_with_explanation(write_config) -> None:
    cfg = {**TINY_LLAMA, "model_type": "internlm2", "auto_map": {"AutoModelForCausalLM": "modeling_internlm2.X"}}
    with pytest.raises(UnsupportedModelError, match="never executes"):
        load_model_spec(str(write_config(cfg)))


def test_huge_file_refused(tmp_path, capsys) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"pad": "' + "x" * (50 * 2**20) + '"}')  # a 50 MB file
    assert main(["models", str(path)]) == 2
    assert "a model config.json is a few KB" in capsys.readouterr().err


def test_directory_without_config(tmp_path, capsys) -> None:
    assert main(["models", str(tmp_path)]) == 2
    assert "directory has no config.json" in capsys.readouterr().err


def test_unknown_model_name_suggests(capsys) -> None:
    assert main(["models", "llama-2-7"]) == 2
    err = capsys.readouterr().err
    assert "unknown model" in err and "llama-2-7b" in err


def test_missing_json_path(capsys) -> None:
    assert main(["models", "nope/config.json"]) == 2
    assert "no such file" in capsys.readouterr().err
