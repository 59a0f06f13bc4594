"""Throughput of `run` (flat-field only) against a Zarr-to-Zarr copy of the same data, same process.

Usage: python benchmarks/bench_flatfield.py [--frames 256] [--size 1024] [--repeats 3]

Writes benchmarks/results/flatfield_<device>.json and .md. Ratios are taken
against baselines measured in the same process on the same files:
* copy_uint16: the input frames copied to a new Zarr array with the same chunks and codecs;
* copy_float32: the same frames cast to float32 and written with the output's chunks and codecs
  (the pipeline's I/O with zero compute: its practical roofline).
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr

import pipeline
from _common import machine, write_results
from pipeline.io.zarr_store import FrameReader, OutputWriter
from pipeline.schedule import process_frames

HERE = Path(__file__).resolve().parent


def _copy(src_path: Path, dst: Path, dtype, chunk: int, codec: str, level: int) -> float:
    src = zarr.open_group(str(src_path), mode="r")["frames"]
    t0 = time.perf_counter()
    w = OutputWriter(dst, overwrite=True)
    target = w.create("frames", src.shape, dtype, chunks=(chunk,) + tuple(src.shape[1:]), codec=codec, level=level)
    process_frames(FrameReader(src, "frames"), target, lambda b: b.astype(dtype, copy=False), chunk_frames=chunk)
    w.commit()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=256)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="xray-bench-"))
    try:
        src = tmp / "input.zarr"
        t0 = time.perf_counter()
        pipeline.simulate(src, frames=args.frames, size=(args.size, args.size), truth_frames=False)
        sim_s = time.perf_counter() - t0
        cfg = pipeline.load_config()
        chunk = pipeline.api.choose_chunk_frames(cfg, (args.size, args.size), args.frames)
        codec, level = cfg.output.codec, cfg.output.level
        in_codec = zarr.open_group(str(src), mode="r")["frames"].compressors
        cal = tmp / "cal.zarr"
        pipeline.save_calibration(pipeline.calibrate(src), cal)

        times = {"run_flatfield": [], "copy_uint16": [], "copy_float32": []}
        # warm-up (imports, thread pools, page cache)
        _copy(src, tmp / "warm.zarr", np.float32, chunk, codec, level)
        jobs = {
            "copy_uint16": lambda: _copy(src, tmp / "c16.zarr", np.uint16, chunk, codec, level),
            "copy_float32": lambda: _copy(src, tmp / "c32.zarr", np.float32, chunk, codec, level),
            "run_flatfield": lambda: pipeline.run(src, tmp / "out.zarr", calibration=cal, overwrite=True).seconds,
        }
        order = list(jobs)
        for i in range(args.repeats):  # rotate the order so no job always follows the same one
            for k in order[i % 3:] + order[: i % 3]:
                times[k].append(jobs[k]())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n, px = args.frames, args.size * args.size
    res = {}
    for k, v in times.items():
        med = statistics.median(v)
        res[k] = {"seconds": v, "median_s": med, "frames_per_s": n / med,
                  "input_GB_per_s": n * px * 2 / med / 1e9,
                  "spread_pct": 100 * (max(v) - min(v)) / med}
    res["ratios"] = {
        "run_vs_copy_uint16": res["copy_uint16"]["median_s"] / res["run_flatfield"]["median_s"],
        "run_vs_copy_float32": res["copy_float32"]["median_s"] / res["run_flatfield"]["median_s"],
    }
    meta = {
        "benchmark": "flat-field run vs Zarr-to-Zarr copy",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "device": "cpu",
        "python": platform.python_version(),
        "video": f"{n} x {args.size} x {args.size} uint16 (simulated, eu-gc)",
        "chunk_frames": chunk,
        "output_codec": f"{codec} level {level}",
        "input_codecs": [type(c).__name__ for c in in_codec],
        "repeats": args.repeats,
        "simulate_seconds": sim_s,
        "note": "order rotated each repeat; run time includes calibration loading, stage compute, float32 write; copy_float32 = same I/O, no compute (integer-valued float32 compresses better but more slowly than corrected data)",
    }
    out = {"meta": meta, "results": res}
    lines = [f"# Flat-field throughput ({meta['machine']}, {meta['date']})", "",
             f"{meta['video']}, chunk {chunk} frames, output {meta['output_codec']}, median of {args.repeats}", "",
             "| what | frames/s | input GB/s | median s | spread % |", "|---|---:|---:|---:|---:|"]
    for k in ("run_flatfield", "copy_uint16", "copy_float32"):
        r = res[k]
        lines.append(f"| {k} | {r['frames_per_s']:.1f} | {r['input_GB_per_s']:.3f} | {r['median_s']:.2f} | {r['spread_pct']:.0f} |")
    lines += ["", f"run / copy_uint16 throughput ratio: {res['ratios']['run_vs_copy_uint16']:.2f}; "
              f"run / copy_float32: {res['ratios']['run_vs_copy_float32']:.2f}", ""]
    write_results(args.out, "flatfield_cpu", out, lines)


if __name__ == "__main__":
    main()
