"""Fetch a model's ``config.json`` from the Hugging Face Hub (the ``hub`` extra), and nothing else.

Only ``config.json`` is downloaded, never weights and never modeling code: a config with ``auto_map``
is read by memplan's own adapters for its ``model_type``. huggingface_hub keeps the file in its cache
(``HF_HUB_CACHE``), so a later run works offline (``HF_HUB_OFFLINE=1``). Every failure is one
:class:`~memplan.errors.ConfigError` naming the model as the user typed it.

How huggingface_hub fetches the file (huggingface_hub 2.4.0, ``file_download.py``):
``hf_hub_download`` sends ``HEAD {HF_ENDPOINT}/{repo_id}/resolve/main/config.json`` (``get_hf_file_metadata``,
which reads ``X-Repo-Commit`` and ``ETag``; errors come from ``utils/_http.py::hf_raise_for_status``, which
maps ``X-Error-Code: GatedRepo`` to ``GatedRepoError`` and ``RepoNotFound`` to ``RepositoryNotFoundError``),
then ``GET`` of the same URL into the cache. When the HEAD fails with a network error or a timeout and
the file is not cached, it retries with a 60 s timeout and up to 5 retries (``_ETAG_RETRY_TIMEOUT``,
``http_backoff``): minutes. memplan therefore runs the download under its own deadline.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from memplan.errors import ConfigError, ModelNotFoundError

#: Seconds one Hub request may take: huggingface_hub's ``DEFAULT_ETAG_TIMEOUT`` (10, constants.py),
#: or its ``HF_HUB_ETAG_TIMEOUT`` environment variable when the user sets it.
DEFAULT_REQUEST_TIMEOUT_SECONDS = 10.0

#: The whole fetch (HEAD, then GET of a few KB) gets this many request timeouts before memplan gives up.
DEADLINE_REQUESTS = 2

#: Most seconds one request may take whatever ``HF_HUB_ETAG_TIMEOUT`` says: a config.json is a few KB, and
#: a minute per request keeps the whole fetch (``DEADLINE_REQUESTS`` of them) under two minutes.
MAX_REQUEST_TIMEOUT_SECONDS = 60.0

#: Told to the user on every failure: the offline way round.
LOCAL_HINT = "or download its config.json and pass that local path"


def _request_timeout(configured: Any) -> float:
    """``HF_HUB_ETAG_TIMEOUT`` as seconds, within (0, MAX_REQUEST_TIMEOUT_SECONDS]; unset means the default.

    A value that is not a positive number is refused (ConfigError naming the variable), not replaced.
    """
    if configured is None:
        return DEFAULT_REQUEST_TIMEOUT_SECONDS
    try:
        seconds = float(configured)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not 0 < seconds <= MAX_REQUEST_TIMEOUT_SECONDS:
        raise ConfigError("HF_HUB_ETAG_TIMEOUT", f"must be a number of seconds in (0, {MAX_REQUEST_TIMEOUT_SECONDS:g}], "
                                                 f"got {configured!r}")
    return seconds


def _offline_requested() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _host_resolves(endpoint: str) -> bool:
    """Whether the endpoint's host name resolves (fail fast without network, not after minutes of retries)."""
    parsed = urlparse(endpoint)
    try:
        socket.getaddrinfo(parsed.hostname or "", parsed.port or 443)
    except (OSError, UnicodeError):
        return False
    return True


def _explain(repo_id: str, exc: BaseException, endpoint: str) -> ConfigError:
    """One line for each way huggingface_hub fails (checked most specific first)."""
    from huggingface_hub.utils import (  # type: ignore[import-not-found]
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return ConfigError(repo_id, "gated repository on the Hub: accept its terms on its Hub page and set HF_TOKEN "
                                    f"(or run `hf auth login`), {LOCAL_HINT}")
    if isinstance(exc, RepositoryNotFoundError):
        return ModelNotFoundError(repo_id, "no such repository on the Hub, or it is private (then set HF_TOKEN); "
                                           f"check the id, {LOCAL_HINT}")
    if isinstance(exc, RevisionNotFoundError):
        return ModelNotFoundError(repo_id, "the Hub repository has no 'main' revision; " + LOCAL_HINT)
    if isinstance(exc, LocalEntryNotFoundError) and exc.__cause__ is not None:
        return _explain(repo_id, exc.__cause__, endpoint)  # the Hub's own answer, wrapped by hf_hub_download
    if isinstance(exc, LocalEntryNotFoundError):
        return ModelNotFoundError(repo_id, "config.json is not in the local Hugging Face cache and the Hub is not "
                                           f"used (HF_HUB_OFFLINE or no network); {LOCAL_HINT}")
    if isinstance(exc, EntryNotFoundError):
        return ModelNotFoundError(repo_id, f"the Hub repository has no config.json; {LOCAL_HINT}")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return ConfigError(repo_id, f"the Hub refused access (HTTP {status}): a gated or private repository needs "
                                    f"HF_TOKEN (or `hf auth login`); {LOCAL_HINT}")
    if status is not None:
        return ConfigError(repo_id, f"the Hub answered HTTP {status} for config.json; {LOCAL_HINT}")
    return ConfigError(repo_id, f"could not fetch config.json from {endpoint} ({type(exc).__name__}); "
                                f"offline? set HF_HUB_OFFLINE=1 to use the cache, {LOCAL_HINT}")


def download_config(repo_id: str) -> Path:
    """The cached path of ``repo_id``'s ``config.json``, downloaded if needed, within a bounded time."""
    try:
        from huggingface_hub import constants, hf_hub_download  # type: ignore[import-not-found]
    except ImportError:
        raise ModelNotFoundError(repo_id, "not a bundled preset, and huggingface_hub is not installed to fetch it; "
                                          "pass a local config.json path or install memplan[hub]") from None
    import logging

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    endpoint = str(constants.ENDPOINT)
    unresolved = not _offline_requested() and not _host_resolves(endpoint)
    offline = _offline_requested() or unresolved
    timeout = _request_timeout(constants.HF_HUB_ETAG_TIMEOUT)
    outcome: dict[str, Any] = {}

    def fetch() -> None:
        try:
            outcome["path"] = hf_hub_download(repo_id=repo_id, filename="config.json", local_files_only=offline,
                                              etag_timeout=timeout)
        except BaseException as exc:  # noqa: BLE001 - reported below as one line
            outcome["error"] = exc

    worker = threading.Thread(target=fetch, name=f"memplan-hub-{repo_id}", daemon=True)
    worker.start()
    deadline = DEADLINE_REQUESTS * timeout
    worker.join(deadline)
    if worker.is_alive():  # the daemon thread is abandoned; it ends with its own timeouts or the process
        raise ConfigError(repo_id, f"could not get an answer from the Hub ({endpoint}) within {deadline:g} s; "
                                   f"set HF_HUB_OFFLINE=1 to use the cache, {LOCAL_HINT}")
    if "error" in outcome and unresolved:
        raise ModelNotFoundError(repo_id, f"cannot resolve {urlparse(endpoint).hostname} (no network?) and config.json "
                                          f"is not in the local Hugging Face cache; {LOCAL_HINT}")
    if "error" in outcome:
        raise _explain(repo_id, outcome["error"], endpoint) from None
    return Path(outcome["path"])


def read_hub_config(repo_id: str) -> dict[str, Any]:
    """``repo_id``'s config.json as a dict; a malformed file is reported under the hub id, not the cache path."""
    from memplan.model.loader import read_config_file

    path = download_config(repo_id)
    try:
        return read_config_file(path)
    except ConfigError as exc:
        raise ConfigError(f"{repo_id}/config.json", exc.message) from None
