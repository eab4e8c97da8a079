"""What a model name may resolve to while ``memplan serve`` answers a client: a bundled preset, a config.json
the request uploaded (parsed data), or, only when the server was started with ``--allow-hub``, a hub id.
Never a file or directory path, so a client cannot make the server read its files.

The sandbox is a context variable: it holds for the thread (or task) that entered ``sandboxed()`` only;
the CLI and other requests are unaffected.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memplan.errors import ModelNotFoundError
from memplan.model.spec import ModelSpec

#: A Hugging Face repository id: ``owner/name`` of letters, digits, ``-``, ``_`` and ``.``
#: (huggingface_hub's ``validate_repo_id``); ``..`` is refused on top, as the hub does.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True, slots=True, kw_only=True)
class Sandbox:
    """The names a request may use."""

    configs: Mapping[str, dict[str, Any]]
    """Uploaded config.json objects by the name the request gave them."""
    allow_hub: bool
    """Whether hub ids that are not presets may be fetched."""

    def load(self, model: str) -> ModelSpec:
        """The ModelSpec of ``model``, or ModelNotFoundError naming what this server accepts."""
        from memplan.model.loader import spec_from_config
        from memplan.model.presets import find_preset, preset_names

        if model in self.configs:
            return spec_from_config(self.configs[model], name=model, location=f"{model} (uploaded config.json)")
        preset = find_preset(model)
        if preset is not None:
            return spec_from_config(preset.config(), name=preset.name, location=f"preset {preset.name}")
        if self.allow_hub and _HUB_ID.fullmatch(model) and ".." not in model and not _exists(model):
            return _unsandboxed_load(model)  # not a path (checked above): the loader's hub branch
        close = difflib.get_close_matches(model.lower(), preset_names(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        accepted = "a preset, an uploaded config.json or a hub id" if self.allow_hub else \
            "a preset or an uploaded config.json"
        raise ModelNotFoundError(model, f"not {accepted} (this server reads no paths"
                                        f"{'' if self.allow_hub else ' and no hub'}){hint}")


_ACTIVE: ContextVar[Sandbox | None] = ContextVar("memplan_model_sandbox", default=None)


def _exists(name: str) -> bool:
    try:
        return Path(name).exists()
    except (OSError, ValueError):
        return True


def _unsandboxed_load(model: str) -> ModelSpec:
    from memplan.model.loader import load_model_spec

    token = _ACTIVE.set(None)
    try:
        return load_model_spec(model)
    finally:
        _ACTIVE.reset(token)


def active_sandbox() -> Sandbox | None:
    """The sandbox of the current thread or task, if any."""
    return _ACTIVE.get()


@contextlib.contextmanager
def sandboxed(configs: Mapping[str, dict[str, Any]] | None = None, *, allow_hub: bool = False) -> Iterator[None]:
    """Within this block, model names resolve through a :class:`Sandbox`."""
    token = _ACTIVE.set(Sandbox(configs=dict(configs or {}), allow_hub=allow_hub))
    try:
        yield
    finally:
        _ACTIVE.reset(token)
