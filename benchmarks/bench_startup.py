"""What a command line call costs before its work: ``--help``, ``config``, ``info`` and a tiny ``run``.

Usage: python benchmarks/bench_startup.py [--repeats 5]

Each call is a fresh process (``python -m pipeline.cli ...``), timed wall-clock from start to exit.
*cold*: the first call (Numba's on-disk kernel cache in the package's __pycache__ folders emptied first, so
the tiny run compiles what it uses); *warm*: the median of the next ``--repeats`` calls. The tiny run
is 16 frames of 128² with the default stages (its blocks take ~0.03 s: the rest is set-up). Writes
benchmarks/results/startup_cpu.json/.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, write_results

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _time(args, cwd) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        subprocess.run([sys.executable, "-m", "pipeline.cli", "simulate", str(tmp / "tiny.zarr"), "--frames", "16",
                        "--size", "128", "128", "-q"], check=True)
        calls = {"--help": ["--help"], "config": ["config"], "info": ["info", "tiny.zarr"],
                 "run (16 frames of 128²)": ["run", "tiny.zarr", "out.zarr", "--overwrite", "-q"]}
        for cache in ROOT.joinpath("pipeline").rglob("__pycache__"):
            for f in cache.glob("*.nbi"):
                f.unlink()
            for f in cache.glob("*.nbc"):
                f.unlink()
        res = {}
        for name, argv in calls.items():
            cold = _time(argv, tmp)
            warm = [_time(argv, tmp) for _ in range(args.repeats)]
            res[name] = {"cold_s": cold, "warm_s": statistics.median(warm), "warm_all_s": warm}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = ["# Command-line start-up (fresh processes)", "", f"{machine()}; median of {args.repeats} warm calls", "",
             "| call | cold (s) | warm (s) |", "|---|---|---|"]
    lines += [f"| `{k}` | {v['cold_s']:.2f} | {v['warm_s']:.2f} |" for k, v in res.items()]
    write_results(HERE / "results", "startup_cpu", {"machine": machine(), "results": res}, lines)


if __name__ == "__main__":
    main()
