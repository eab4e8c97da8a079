"""Hub ids as users type them, against a local HTTP server standing in for the Hugging Face Hub.

The real client (huggingface_hub, the ``hub`` extra) runs in a ``memplan models`` subprocess with
``HF_ENDPOINT`` pointing at a server on 127.0.0.1 and a fresh ``HF_HOME`` / ``HF_HUB_CACHE``. The server
answers like the Hub's ``/{repo}/resolve/main/{file}`` route (huggingface_hub 2.4.0 reads ``X-Repo-Commit``
and ``ETag`` on the HEAD, and the ``X-Error-Code`` header on errors: ``utils/_http.py::hf_raise_for_status``).

Truth for the success cases is independent of memplan: the parameter count transformers gives for the
same config.json (validation/exact/param_counts.json). No test touches the network.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub", reason="the hub extra (huggingface_hub) is not installed")

REPO = Path(__file__).resolve().parents[2]
PRESETS = REPO / "src" / "memplan" / "model" / "presets" / "data"
EXACT = json.loads((REPO / "validation" / "exact" / "param_counts.json").read_text())["cases"]

#: A commit id, as the Hub sends in X-Repo-Commit (40 hex digits).
COMMIT = "0123456789abcdef0123456789abcdef01234567"

#: The Hub's request timeout used in the timeout test (HF_HUB_ETAG_TIMEOUT, huggingface_hub's own variable).
SHORT_TIMEOUT_SECONDS = 1

#: A generous bound on one ``memplan models`` run that gives up on a silent Hub: memplan's deadline
#: (2 request timeouts = 2 s here) plus interpreter start-up on a shared CI machine.
GIVE_UP_WITHIN_SECONDS = 15


@dataclass
class Route:
    """What the fake Hub answers for one repository."""

    status: int = 200
    body: bytes = b""
    error_code: str | None = None
    """X-Error-Code header, as the Hub sets it (GatedRepo, RepoNotFound, EntryNotFound)."""
    sleep: bool = False


@dataclass
class FakeHub:
    url: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, with_body: bool) -> None:
            hub.requests.append((self.command, self.path))
            repo, sep, rest = self.path.lstrip("/").partition("/resolve/main/")
            route = hub.routes.get(repo) if sep else None
            if route is None:
                route = Route(status=404, error_code="RepoNotFound")
            elif rest != "config.json":
                route = Route(status=404, error_code="EntryNotFound")
            if route.sleep:
                hub.release.wait(60)
            self.send_response(route.status)
            self.send_header("X-Repo-Commit", COMMIT)
            if route.error_code:
                self.send_header("X-Error-Code", route.error_code)
            if route.status == 200:
                self.send_header("ETag", f'"{abs(hash(route.body)):x}"')
            self.send_header("Content-Length", str(len(route.body)))
            self.end_headers()
            if with_body:
                self.wfile.write(route.body)

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(with_body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(with_body=True)

    return Handler


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(FakeHub(url="")))
    fake = FakeHub(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(fake)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def hub_env(hub: FakeHub, tmp_path: Path) -> dict[str, str]:
    proxies = ("http_proxy", "https_proxy", "all_proxy")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING_FACE_")) and k.lower() not in proxies}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
               HF_HUB_DISABLE_TELEMETRY="1", NO_PROXY="127.0.0.1,localhost", PYTHONPATH=str(REPO / "src"))
    return env


def memplan_models(model: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memplan", "models", model, "--json"], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def preset_bytes(name: str) -> bytes:
    return (PRESETS / f"{name}.json").read_bytes()


def assert_one_line_error(proc: subprocess.CompletedProcess[str], model: str, *phrases: str) -> str:
    """Exit 2, one line on stderr naming the model as typed, no traceback, nothing on stdout."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"memplan: error: {model}"), lines[0]
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert proc.stdout == ""
    return lines[0]


def test_hub_id_fetches_only_config_json(hub: FakeHub, hub_env: dict[str, str]) -> None:
    """A team's fine-tune by hub id: HEAD then GET of config.json, nothing else (no weights, no API call)."""
    hub.routes["someteam/qwen-finetune"] = Route(body=preset_bytes("qwen2.5-0.5b"))
    proc = memplan_models("someteam/qwen-finetune", hub_env)
    assert proc.returncode == 0, proc.stderr
    # transformers' count for the same config.json, from validation/exact
    assert json.loads(proc.stdout)["num_params"] == EXACT["preset:qwen2.5-0.5b"]["num_params"] == 494_032_768
    path = "/someteam/qwen-finetune/resolve/main/config.json"
    assert hub.requests == [("HEAD", path), ("GET", path)]


def test_cached_config_works_offline(hub: FakeHub, hub_env: dict[str, str]) -> None:
    hub.routes["someteam/qwen-finetune"] = Route(body=preset_bytes("qwen2.5-0.5b"))
    assert memplan_models("someteam/qwen-finetune", hub_env).returncode == 0
    seen = len(hub.requests)
    hub.routes.clear()  # the Hub no longer has it: only the cache can answer
    proc = memplan_models("someteam/qwen-finetune", {**hub_env, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["num_params"] == 494_032_768
    assert len(hub.requests) == seen  # offline: not one request


def test_offline_without_cache_says_so(hub: FakeHub, hub_env: dict[str, str]) -> None:
    hub.routes["someteam/qwen-finetune"] = Route(body=preset_bytes("qwen2.5-0.5b"))
    proc = memplan_models("someteam/qwen-finetune", {**hub_env, "HF_HUB_OFFLINE": "1"})
    assert_one_line_error(proc, "someteam/qwen-finetune", "not in the local Hugging Face cache", "config.json")
    assert hub.requests == []


def test_missing_repository_404(hub: FakeHub, hub_env: dict[str, str]) -> None:
    proc = memplan_models("someteam/does-not-exist", hub_env)
    assert_one_line_error(proc, "someteam/does-not-exist", "no such repository on the Hub", "config.json")


def test_repository_without_config_json(hub: FakeHub, hub_env: dict[str, str]) -> None:
    hub.routes["someteam/dataset-like"] = Route(status=404, error_code="EntryNotFound")
    proc = memplan_models("someteam/dataset-like", hub_env)
    assert_one_line_error(proc, "someteam/dataset-like", "has no config.json")


@pytest.mark.parametrize("status", [401, 403])
def test_gated_repository(hub: FakeHub, hub_env: dict[str, str], status: int) -> None:
    """The Hub answers 401 (no token) or 403 (token, terms not accepted) with X-Error-Code: GatedRepo."""
    hub.routes["someorg/Gated-Model-8B"] = Route(status=status, error_code="GatedRepo")
    proc = memplan_models("someorg/Gated-Model-8B", hub_env)
    assert_one_line_error(proc, "someorg/Gated-Model-8B", "gated repository", "HF_TOKEN", "local", "config.json")


@pytest.mark.parametrize("status", [401, 403])
def test_refused_without_error_code(hub: FakeHub, hub_env: dict[str, str], status: int) -> None:
    """A mirror or proxy that refuses with a bare 401/403 (no X-Error-Code) is still explained."""
    hub.routes["someteam/private"] = Route(status=status)
    proc = memplan_models("someteam/private", hub_env)
    assert_one_line_error(proc, "someteam/private", f"HTTP {status}", "HF_TOKEN", "config.json")


def test_silent_hub_times_out_within_a_bound(hub: FakeHub, hub_env: dict[str, str]) -> None:
    """A Hub that never answers: memplan gives up after 2 request timeouts, not after the client's retries."""
    hub.routes["someteam/slow"] = Route(body=preset_bytes("qwen2.5-0.5b"), sleep=True)
    start = time.monotonic()
    proc = memplan_models("someteam/slow", {**hub_env, "HF_HUB_ETAG_TIMEOUT": str(SHORT_TIMEOUT_SECONDS)})
    elapsed = time.monotonic() - start
    assert_one_line_error(proc, "someteam/slow", "within 2 s", "HF_HUB_OFFLINE", "config.json")
    assert elapsed < GIVE_UP_WITHIN_SECONDS


def test_malformed_config_json(hub: FakeHub, hub_env: dict[str, str]) -> None:
    hub.routes["someteam/broken"] = Route(body=b'{"model_type": "llama", "hidden_size": 4096,')
    proc = memplan_models("someteam/broken", hub_env)
    assert_one_line_error(proc, "someteam/broken/config.json", "invalid JSON at line 1")


def test_auto_map_with_known_model_type_is_read(hub: FakeHub, hub_env: dict[str, str]) -> None:
    """Phi-3-mini's config names remote code (auto_map); its model_type phi3 is read, no code is fetched."""
    assert "auto_map" in json.loads(preset_bytes("phi-3-mini"))
    hub.routes["someteam/phi3-finetune"] = Route(body=preset_bytes("phi-3-mini"))
    proc = memplan_models("someteam/phi3-finetune", hub_env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["num_params"] == EXACT["preset:phi-3-mini"]["num_params"] == 3_821_079_552
    assert {path for _, path in hub.requests} == {"/someteam/phi3-finetune/resolve/main/config.json"}


def test_auto_map_with_unknown_model_type_is_explained(hub: FakeHub, hub_env: dict[str, str]) -> None:
    config = {"model_type": "my_custom_lm", "auto_map": {"AutoModelForCausalLM": "modeling_custom.MyLM"},
              "hidden_size": 1024}
    hub.routes["someteam/custom"] = Route(body=json.dumps(config).encode())
    proc = memplan_models("someteam/custom", hub_env)
    assert_one_line_error(proc, "someteam/custom/config.json", "my_custom_lm", "auto_map", "never executes")
    assert {path for _, path in hub.requests} == {"/someteam/custom/resolve/main/config.json"}


def test_unreachable_hub_gives_up_within_a_bound(hub_env: dict[str, str]) -> None:
    """Nothing listens at HF_ENDPOINT (connection refused): huggingface_hub would retry with backoff for
    minutes; memplan stops at its deadline with one line."""
    with socket.socket() as probe:  # a port that was free a moment ago and is closed now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**hub_env, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HUB_ETAG_TIMEOUT": str(SHORT_TIMEOUT_SECONDS)}
    start = time.monotonic()
    proc = memplan_models("someteam/qwen-finetune", env)
    assert_one_line_error(proc, "someteam/qwen-finetune", "within 2 s", "config.json")
    assert time.monotonic() - start < GIVE_UP_WITHIN_SECONDS


@pytest.mark.parametrize("value", [0, -1, 1e9, "soon"])
def test_request_timeout_out_of_range_is_refused_not_defaulted(value) -> None:  # type: ignore[no-untyped-def]
    """``HF_HUB_ETAG_TIMEOUT=0`` used to become the default 10 s silently; a huge one made the fetch unbounded."""
    from memplan.errors import ConfigError
    from memplan.model.hub import _request_timeout

    with pytest.raises(ConfigError, match="HF_HUB_ETAG_TIMEOUT"):
        _request_timeout(value)
    assert _request_timeout(None) == 10.0  # huggingface_hub's DEFAULT_ETAG_TIMEOUT (constants.py)
