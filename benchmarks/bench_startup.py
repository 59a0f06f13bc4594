"""What a command line call costs before its work: ``--help``, ``config``, ``info`` and a tiny ``run``.

Usage: python benchmarks/bench_startup.py [--repeats 5]

A thin wrapper: the measurement is :func:`pipeline.bench.startup.bench_startup`, the same that
``xray-pipeline bench`` puts in its report. Each call is a fresh process (``python -m pipeline.cli ...``), timed
wall-clock from start to exit. *cold*: the first call, with Numba's on-disk kernel cache empty (a fresh
``NUMBA_CACHE_DIR`` for these calls), so the tiny run compiles what it uses; *warm*: the median of the next
``--repeats`` calls. The tiny run is 16 frames of 128² with the default stages (its blocks take ~0.03 s: the rest
is set-up); the tiny run by the console script and by ``main()`` in turns (what the script's quick exit saves);
8 copies of it by 8 calls and by one call with 8 inputs. Writes benchmarks/results/startup_cpu.json/.md.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from _common import write_results
from pipeline.bench.startup import bench_startup, table

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    data = bench_startup(repeats=args.repeats, log=partial(print, flush=True))
    write_results(args.out, "startup_cpu", data, table(data))


if __name__ == "__main__":
    main()
