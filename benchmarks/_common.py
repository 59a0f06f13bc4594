"""Shared by the benchmark scripts: the machine's description and writing a results pair (.json + .md)."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.bench import machine_description as machine  # noqa: F401 - one description for every results file


def write_results(out_dir: Path, stem: str, data: dict, lines: list[str]) -> None:
    """Write ``stem.json`` (the data) and ``stem.md`` (the table lines) into ``out_dir`` and print the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(data, indent=2))
    (out_dir / f"{stem}.md").write_text("\n".join(lines).rstrip("\n") + "\n")
    print("\n".join(lines))
