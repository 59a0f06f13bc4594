"""Shared by the benchmark scripts: the machine's description, jobs timed in turns, writing a results pair."""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.bench import machine_description as machine  # noqa: F401 - one description for every results file


def write_results(out_dir: Path, stem: str, data: dict, lines: list[str]) -> None:
    """Write ``stem.json`` (the data) and ``stem.md`` (the table lines) into ``out_dir`` and print the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(data, indent=2))
    (out_dir / f"{stem}.md").write_text("\n".join(lines).rstrip("\n") + "\n")
    print("\n".join(lines))


def alternate(jobs: dict, repeats: int, *, measure=None, after=None) -> dict:
    """Run every job once (warm-up), then ``repeats`` times in turns, the order rotated each repeat (this VM's
    speed drifts between minutes: A-then-B would time the drift). Returns ``{name: [values]}``: the seconds of
    each run, or what ``measure`` makes of the job's return value; ``after(name)`` is called after each run."""
    for fn in jobs.values():
        fn()
    values: dict = {k: [] for k in jobs}
    order = list(jobs)
    for i in range(repeats):
        for k in order[i % len(order):] + order[: i % len(order)]:
            t0 = time.perf_counter()
            out = jobs[k]()
            values[k].append(time.perf_counter() - t0 if measure is None else measure(out))
            if after is not None:
                after(k)
    return values
