"""Slanted-edge MTF: speed (ROIs/s, batched vs one at a time) and accuracy of the LSF windows under noise.

Usage: python benchmarks/bench_mtf.py [--batch 64] [--repeats 3] [--seeds 4]

Speed: B noisy edge ROIs of 128x128 and 256x256, one call with all B against B calls,
same process, same data. Accuracy: simulated edges (eu-gc, gc, nc-film at pitches that
resolve them), Poisson noise at 2000 quanta/pixel, flat-field corrected, error of MTF50 and
MTF20 against the analytic truth for each window. Writes benchmarks/results/mtf_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import math
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
from pipeline.ops.edges import find_edge_roi
from pipeline.ops.mtf import slanted_edge_mtf
from pipeline.simulator import pixel_esf

HERE = Path(__file__).resolve().parent


def edge_rois(n, size, rng):
    out = []
    for i in range(n):
        t = math.radians(3 + 5 * rng.random())
        yy, xx = np.mgrid[0:size, 0:size]
        d = (xx - size / 2 + rng.uniform(-3, 3)) * math.cos(t) - (yy - size / 2) * math.sin(t)
        img = 200 + 2000 * pixel_esf(d, math.cos(t), math.sin(t), 1.2, 0.1, 3.0)
        out.append(rng.poisson(img).astype(np.float64))
    return np.stack(out)


def cross(f, m, lv):
    i = int(np.argmax(m < lv))
    return f[i - 1] + (m[i - 1] - lv) * (f[i] - f[i - 1]) / (m[i - 1] - m[i])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    speed = {}
    for size in (128, 256):
        rois = edge_rois(args.batch, size, rng)
        slanted_edge_mtf(rois[:2])  # warm-up
        tb, ts = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            slanted_edge_mtf(rois)
            tb.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for r in rois:
                slanted_edge_mtf(r)
            ts.append(time.perf_counter() - t0)
        speed[f"{size}x{size}"] = {
            "batched_rois_per_s": args.batch / statistics.median(tb),
            "single_rois_per_s": args.batch / statistics.median(ts),
            "speedup": statistics.median(ts) / statistics.median(tb),
            "batched_s": tb, "single_s": ts,
        }
    accuracy = {}
    tmp = Path(tempfile.mkdtemp(prefix="xray-bench-mtf-"))
    try:
        for preset, pitch in (("eu-gc", 0.01), ("gc", 0.02), ("nc-film", 0.05)):
            for seed in range(args.seeds):
                sim = pipeline.simulate(tmp / "s.zarr", preset=preset, frames=1, size=(512, 512), pixel_pitch_mm=pitch,
                                        quanta_per_pixel=2000, seed=seed, overwrite=True)
                pipeline.run(sim, tmp / "o.zarr", overwrite=True)
                g = zarr.open_group(str(sim), mode="r")
                f, m = g["truth/mtf_frequencies_cy_per_px"][:], g["truth/mtf_edge"][:]
                img = zarr.open_group(str(tmp / "o.zarr"), mode="r")["frames"][0]
                y0, y1, x0, x1 = find_edge_roi(img)
                for window in ("tukey", "hann", "none"):
                    r = slanted_edge_mtf(img[y0:y1, x0:x1], window=window)
                    for lv in (0.5, 0.2):
                        err = 100 * (r.crossings_cy_per_px[lv][0] / cross(f, m, lv) - 1)
                        accuracy.setdefault(f"{preset}/{window}/mtf{int(lv * 100)}", []).append(err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    acc = {k: {"mean_error_pct": float(np.mean(v)), "max_abs_error_pct": float(np.max(np.abs(v))), "errors_pct": v}
           for k, v in accuracy.items()}
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "device": "cpu (numpy)",
            "batch": args.batch, "repeats": args.repeats, "noise_seeds": args.seeds}
    lines = [f"# Slanted-edge MTF ({meta['machine']}, {meta['date']})", "",
             f"Speed: {args.batch} noisy edge ROIs, median of {args.repeats}", "",
             "| ROI | batched ROIs/s | one at a time ROIs/s | speed-up |", "|---|---:|---:|---:|"]
    for k, v in speed.items():
        lines.append(f"| {k} | {v['batched_rois_per_s']:.0f} | {v['single_rois_per_s']:.0f} | {v['speedup']:.2f} |")
    lines += ["", f"Accuracy under Poisson noise (2000 quanta/pixel, {args.seeds} seeds, auto ROI): error vs analytic truth, %", "",
              "| preset / window / level | mean | max abs |", "|---|---:|---:|"]
    for k, v in acc.items():
        lines.append(f"| {k} | {v['mean_error_pct']:+.2f} | {v['max_abs_error_pct']:.2f} |")
    write_results(args.out, "mtf_cpu", {"meta": meta, "speed": speed, "accuracy": acc}, lines)


if __name__ == "__main__":
    main()
