"""Errors that end start-up with a message an operator can act on."""

from __future__ import annotations


class AlcoveError(Exception):
    """Base class for errors Alcove explains to a human."""


class ConfigError(AlcoveError):
    """A config key is wrong or missing. ``path`` names the key, e.g. ``staff[2].role``."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class StartupError(AlcoveError):
    """Alcove cannot start; the message says what to fix."""
