"""``sandboxed()``: while serving web requests a model name never reaches the file system, and reaches the
hub only when the server allows it."""

from __future__ import annotations

import threading

import pytest

from memplan.errors import ModelNotFoundError
from memplan.model import load_model_spec, loader
from memplan.model.sandbox import sandboxed

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 1000}


def test_paths_are_refused_inside_and_read_outside(write_config) -> None:
    path = write_config(TINY)
    assert load_model_spec(str(path)).hidden_size == 64  # the CLI reads local configs
    with sandboxed():
        for name in (str(path), str(path.parent), "../config.json"):
            with pytest.raises(ModelNotFoundError, match="reads no paths"):
                load_model_spec(name)
        assert load_model_spec("llama-3-8b").hidden_size == 4096  # presets still resolve


def test_uploaded_configs_resolve_by_name_only_inside() -> None:
    with sandboxed({"mine": TINY}):
        assert load_model_spec("mine").num_hidden_layers == 2
    with pytest.raises(ModelNotFoundError):
        load_model_spec("mine")


def test_hub_only_when_allowed(monkeypatch) -> None:
    fetched = []

    real = loader.load_model_spec

    def fake_load(name):  # the loader outside the sandbox, with its hub branch faked
        if "/" in name:
            fetched.append(name)
            raise ModelNotFoundError(name, "offline")
        return real(name)

    monkeypatch.setattr(loader, "load_model_spec", fake_load)
    with sandboxed(), pytest.raises(ModelNotFoundError, match="no hub"):
        load_model_spec("some-org/some-model")
    assert fetched == []
    with sandboxed(allow_hub=True), pytest.raises(ModelNotFoundError, match="offline"):
        load_model_spec("some-org/some-model")
    assert fetched == ["some-org/some-model"]


def test_sandbox_is_per_thread(write_config) -> None:
    path = write_config(TINY)
    seen = []
    with sandboxed():
        thread = threading.Thread(target=lambda: seen.append(load_model_spec(str(path)).hidden_size))
        thread.start()
        thread.join()
    assert seen == [64]  # another thread (the CLI, another request) is not affected
