"""What a command-line call costs before its work: ``--help``, ``config``, ``info`` and a tiny ``run``.

Each call is a fresh process (``python -m pipeline.cli ...``), timed wall-clock from start to exit. *cold*: the
first call with Numba's on-disk kernel cache empty, so that the tiny run compiles what it uses; *warm*: the median
of the next ``repeats`` calls, which load the kernels the cold calls cached. The empty cache is a fresh folder
named by ``NUMBA_CACHE_DIR`` for these calls only (Numba then neither reads nor writes the cache in the package's
``__pycache__`` folders, which other processes may be using). The tiny run is 16 frames of 128² with the default
stages (its blocks take a few hundredths of a second: the rest is set-up). With the run, 8 copies of that video
are run by 8 calls and by one call with the 8 as inputs (``run A B ... OUT/``): what a batch of short clips saves
by paying the start-up once. And the tiny run by the console script and by ``main()`` in a process of its own, in
turns: the console script freezes the cyclic garbage collector once the command is done, so the interpreter's exit
skips its full passes over the objects Numba, Zarr and Dask leave.

``benchmarks/bench_startup.py`` writes ``startup_cpu.json/.md`` with :func:`bench_startup` and :func:`table`;
``xray-pipeline bench`` puts the same rows in its own report.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import machine_description


def _calls(frames: int, size: int) -> dict:
    return {"--help": ["--help"], "config": ["config"], "info": ["info", "tiny.zarr"],
            f"run ({frames} frames of {size}²)": ["run", "tiny.zarr", "out.zarr", "--overwrite", "-q"]}


# the command line as a caller's own process runs it: main(), whose exit leaves the cyclic collector its last passes
_MAIN = ["-c", "import sys; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))"]


def _time(args: list[str], cwd: Path, env: dict, entry=("-m", "pipeline.cli")) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *entry, *args], cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def _row(warm: list[float], cold: float | None = None) -> dict:
    """One table row: the cold call (None: not timed) and the median of the warm ones, every sample kept."""
    return {"cold_s": cold, "warm_s": statistics.median(warm), "warm_all_s": warm}


def _exits(args: list[str], cwd: Path, env: dict, repeats: int) -> dict:
    """The tiny run by the console script and by ``main()`` in its own process, in turns (warm cache; the median of
    ``repeats`` of each): what the script's exit, with the collector frozen, saves over the interpreter's usual one."""
    script, plain = [], []
    for _ in range(max(1, repeats)):
        script.append(_time(args, cwd, env))
        plain.append(_time(args, cwd, env, _MAIN))
    return {"run, in turns: the console script": _row(script), "run, in turns: main(), the usual exit": _row(plain)}


def _batch(tmp: Path, env: dict, clips: int, repeats: int) -> dict:
    """``clips`` copies of the tiny video run by ``clips`` calls, and by one call with ``clips`` inputs (warm
    cache; the median of ``repeats`` of each, in turns): the start-up a batch pays once."""
    names = [f"clip{i}.zarr" for i in range(clips)]
    for n in names:
        shutil.copytree(tmp / "tiny.zarr", tmp / n)
    one = ["run", *names, "batch", "--overwrite", "-q"]
    separate, together = [], []
    for _ in range(max(1, repeats)):
        separate.append(sum(_time(["run", n, f"single/{n}", "--overwrite", "-q"], tmp, env) for n in names))
        together.append(_time(one, tmp, env))
    return {f"run, {clips} such inputs: {clips} calls": _row(separate),
            f"run, {clips} such inputs: one call": _row(together)}


def bench_startup(*, repeats: int = 5, frames: int = 16, size: int = 128, calls=None, batch: int = 8,
                  log=print) -> dict:
    """Cold and warm wall time of each command-line call of :func:`_calls`, each a fresh process.

    Parameters
    ----------
    repeats : int
        Warm calls per command (their median is reported).
    frames, size : int
        The tiny video the ``info`` and ``run`` calls read (``size`` x ``size``).
    calls : sequence of str, optional
        Only these calls, by their first word (``--help``, ``config``, ``info``, ``run``); default all, in that
        order (the cold figures depend on it: a call's cold run finds what the cold calls before it cached).
    batch : int
        With the ``run`` call: also ``batch`` copies of the tiny video, run by as many calls and by one call with
        them all as inputs (0: not); the median of 3 (or ``repeats``, if fewer) of each.
    log : callable
        Progress lines.

    Returns
    -------
    dict
        ``{"machine", "repeats", "results": {call: {"cold_s", "warm_s", "warm_all_s"}}}``.
    """
    tmp = Path(tempfile.mkdtemp(prefix="xray-bench-startup-"))
    env = dict(os.environ)
    env["NUMBA_CACHE_DIR"] = str(tmp / "numba-cache")  # empty: the first calls compile what they use
    here = str(Path(__file__).resolve().parents[2])  # the children import this very package
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    res = {}
    try:
        subprocess.run([sys.executable, "-m", "pipeline.cli", "simulate", str(tmp / "tiny.zarr"), "--frames",
                        str(frames), "--size", str(size), str(size), "-q"], check=True, capture_output=True,
                       env={k: v for k, v in env.items() if k != "NUMBA_CACHE_DIR"})
        for name, argv in _calls(frames, size).items():
            if calls is not None and argv[0] not in calls:
                continue
            cold = _time(argv, tmp, env)
            warm = [_time(argv, tmp, env) for _ in range(max(1, repeats))]
            res[name] = _row(warm, cold)
            log(f"    {name:<34} cold {cold:6.2f} s, warm {res[name]['warm_s']:6.2f} s")
            if argv[0] == "run":
                rows = _exits(argv, tmp, env, repeats)
                res.update(rows)
                log("    in turns: " + ", ".join(f"{k.split(': ')[1]} {v['warm_s']:.2f} s" for k, v in rows.items()))
            if argv[0] == "run" and batch > 1:
                rows = _batch(tmp, env, batch, min(3, repeats))
                res.update(rows)
                log("    " + ", ".join(f"{k.split(': ')[1]} {v['warm_s']:.2f} s" for k, v in rows.items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"machine": machine_description(), "repeats": max(1, repeats), "results": res}


def rows_table(data: dict) -> list[str]:
    """The Markdown table of ``data["results"]`` (header included)."""
    lines = ["| call | cold (s) | warm (s) |", "|---|---|---|"]
    lines += [f"| `{k}` | {'-' if v['cold_s'] is None else format(v['cold_s'], '.2f')} | {v['warm_s']:.2f} |"
              for k, v in data["results"].items()]
    return lines


def table(data: dict) -> list[str]:
    """The standalone results file (``startup_cpu.md``)."""
    return ["# Command-line start-up (fresh processes)", "",
            f"{data['machine']}; median of {data['repeats']} warm calls{_batch_note(data)}", "", *rows_table(data)]


def _batch_note(data: dict) -> str:
    """How many calls the batch rows' medians are of, where they differ from the others'."""
    counts = {len(v["warm_all_s"]) for k, v in data["results"].items() if " such inputs: " in k}
    if len(counts) != 1 or counts == {data["repeats"]}:
        return ""
    return f" (the rows of several inputs: median of {counts.pop()})"
