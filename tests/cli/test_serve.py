"""``memplan serve``: binds this machine only by default, warns for every interface, and says in one line
when the web extra is missing."""

from __future__ import annotations

import builtins
import sys

import pytest

from memplan.cli.main import main


@pytest.fixture
def fake_uvicorn(monkeypatch):
    pytest.importorskip("fastapi", reason="the web extra is not installed")
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    return calls


def test_default_binds_localhost(fake_uvicorn, capsys) -> None:
    assert main(["serve"]) == 0
    assert fake_uvicorn == [{"host": "127.0.0.1", "port": 8000, "log_level": "warning"}]
    assert "warning" not in capsys.readouterr().err


def test_all_interfaces_warns_in_one_line(fake_uvicorn, capsys) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert fake_uvicorn[0]["host"] == "0.0.0.0" and fake_uvicorn[0]["port"] == 8123
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "every network interface" in warnings[0]


def test_bad_port(capsys) -> None:
    assert main(["serve", "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == "memplan: error: --port: must be 1..65535, got 70000"


def test_missing_web_extra_is_one_line_exit_2(monkeypatch, capsys) -> None:
    real_import = builtins.__import__

    def no_uvicorn(name, *args, **kwargs):
        if name == "uvicorn":
            raise ImportError("No module named 'uvicorn'", name="uvicorn")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "uvicorn", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["memplan serve: needs the web extra (uvicorn is missing): pip install 'memplan[web]'"]
