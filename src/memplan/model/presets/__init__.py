"""Bundled ``config.json`` files of popular open models, addressable by short name or hub id.

The index (``index.toml``) names each preset, its hub id, aliases, file and where the values were
copied from. Loading is explicit and cached; nothing is read at import time.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Preset:
    """One bundled model config."""

    name: str
    """Short name (``llama-2-70b``)."""
    hub_id: str
    """Hugging Face repository id (``meta-llama/Llama-2-70b-hf``)."""
    aliases: tuple[str, ...]
    """Other accepted names."""
    file: str
    """File under ``presets/data/``."""
    source: str
    """Where the config values come from."""

    def config(self) -> dict[str, Any]:
        """The bundled config.json as a dict."""
        text = resources.files(__package__).joinpath("data", self.file).read_text(encoding="utf-8")
        data: dict[str, Any] = json.loads(text)
        return data


@lru_cache(maxsize=1)
def load_presets() -> tuple[Preset, ...]:
    """All presets, in index order."""
    raw = tomllib.loads(resources.files(__package__).joinpath("index.toml").read_text(encoding="utf-8"))
    return tuple(Preset(name=p["name"], hub_id=p["hub_id"], aliases=tuple(p.get("aliases", ())),
                        file=p["file"], source=p["source"]) for p in raw.get("preset", []))


@lru_cache(maxsize=1)
def _lookup() -> dict[str, Preset]:
    table: dict[str, Preset] = {}
    for preset in load_presets():
        for key in (preset.name, preset.hub_id, *preset.aliases):
            table[key.lower()] = preset
    return table


def find_preset(name: str) -> Preset | None:
    """The preset called ``name`` (short name, hub id or alias; case-insensitive), if any."""
    return _lookup().get(name.strip().lower())


def preset_names() -> tuple[str, ...]:
    """Every accepted name, for suggestions."""
    return tuple(_lookup())
