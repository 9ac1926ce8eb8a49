"""Errors the user can fix: the pipeline prints them as one line and exits non-zero."""

from __future__ import annotations

from typing import Any


class DuelError(Exception):
    """An error the user can fix; the message names the problem and the fix."""


class DataError(DuelError):
    """Missing, corrupt or insufficient data."""


class ConfigError(DuelError):
    def __init__(self, key: str, value: Any, allowed: str) -> None:
        super().__init__(f"params: {key}={value!r} is not allowed: {allowed}")
