"""The time stamps written into provenance and models: UTC, ISO 8601, to the second."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    """Now, as ``2026-12-06T16:45:00+00:00``."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
