"""Errors memplan raises for bad input.

Every user-facing error names *where* the problem is (a flag, a JSON field, a file) so the CLI
can print one line and exit with status 2. Library callers catch :class:`MemplanError`.
"""

from __future__ import annotations


class MemplanError(Exception):
    """Base class: a problem with the user's input, reported without a traceback."""

    def __init__(self, location: str, message: str) -> None:
        super().__init__(f"{location}: {message}" if location else message)
        self.location = location
        self.message = message


class ConfigError(MemplanError):
    """A model config, flag or option value is missing, malformed or out of range."""


class UnsupportedModelError(ConfigError):
    """The model's architecture (``model_type``) has no adapter in memplan."""


class ModelNotFoundError(ConfigError):
    """A model name is neither a preset, a local path, nor reachable on the hub."""
