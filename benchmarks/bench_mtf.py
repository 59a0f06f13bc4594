"""Slanted-edge MTF: speed (ROIs/s, the batched engine against the textbook one-ROI-at-a-time peer) and accuracy
against analytic truths (noise-free edges, the noisy sharp edge, simulated scintillators).

Usage: python benchmarks/bench_mtf.py [--batch 256] [--repeats 7] [--seeds 4] [--baseline-rev REV]

Speed: B noisy edge ROIs (float32, Poisson, random angles 3-8 deg and offsets) of 128x128 and 256x256; in one
process on the same arrays, in turns (the order rotated each repeat): the batched call on all B, the same
engine one ROI at a time, and the textbook per-ROI peer (``pipeline.bench.textbook_mtf``: row centroids, a
fitted line, 4x binned ESF, Hamming window, FFT). ``--baseline-rev`` also times the engine as it was at a git
revision (read with ``git show``). A GPU row when CuPy and a device are usable (ROIs already on the device).

Accuracy: MTF50/MTF20 error against the analytic truth for the noise-free edges of tests/ops/test_mtf.py, for
the noisy sharp edge (point-sampled erf, Gaussian LSF with MTF20 = 0.3 cycles/pixel, 2000 quanta/pixel, 5 deg;
adaptive and plain ESF), and for simulated eu-gc / gc / nc-film frames run through the pipeline (each window).
Writes benchmarks/results/mtf_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr

import pipeline
from _common import alternate, machine, write_results
from pipeline.bench import textbook_mtf
from pipeline.ops.edges import find_edge_roi
from pipeline.ops.mtf import slanted_edge_mtf
from pipeline.screen import gaussian_edges
from pipeline.simulator import PRESETS, lsf_mtf, pixel_esf

HERE = Path(__file__).resolve().parent


def edge_rois(n, size, rng):
    """Noisy slanted edges: 3-8 deg, +-3 px offsets, Gaussian + tail LSF, 200 + 2000 quanta, Poisson; float32."""
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for _ in range(n):
        t = math.radians(3 + 5 * rng.random())
        d = (xx - size / 2 + rng.uniform(-3, 3)) * math.cos(t) - (yy - size / 2) * math.sin(t)
        out.append(rng.poisson(200 + 2000 * pixel_esf(d, math.cos(t), math.sin(t), 1.2, 0.1, 3.0)))
    return np.stack(out).astype(np.float32)


noisy_sharp_edges = gaussian_edges  # the analytic truth lives with the screens' (pipeline.screen)


def cross(f, m, lv):
    i = int(np.argmax(m < lv))
    return f[i - 1] + (m[i - 1] - lv) * (f[i] - f[i - 1]) / (m[i - 1] - m[i])


def baseline_engine(rev: str):
    """``slanted_edge_mtf`` as pipeline/ops/mtf.py was at git revision ``rev`` (a module beside the current one)."""
    src = subprocess.run(["git", "show", f"{rev}:pipeline/ops/mtf.py"], cwd=HERE.parent, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="xray-bench-mtf-base-")) / "mtf_baseline.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("pipeline.ops._mtf_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod.slanted_edge_mtf


def speed(batch: int, repeats: int, base) -> dict:
    """ROIs/s of each job on the same B ROIs (medians of ``repeats`` runs in turns)."""
    rng = np.random.default_rng(0)
    out = {}
    for size in (128, 256):
        rois = edge_rois(batch, size, rng)
        jobs = {"batched": lambda: slanted_edge_mtf(rois),
                "engine, one ROI at a time": lambda: [slanted_edge_mtf(r) for r in rois],
                "textbook per-ROI peer": lambda: [textbook_mtf(r) for r in rois]}
        if base is not None:
            jobs[f"batched, engine at {base[1]}"] = lambda: base[0](rois)
        times = alternate(jobs, repeats)
        out[f"{size}x{size}"] = {k: {"rois_per_s": batch / statistics.median(v), "best_rois_per_s": batch / min(v),
                                     "seconds": v} for k, v in times.items()}
        row = out[f"{size}x{size}"]
        row["speedup_vs_textbook"] = row["batched"]["rois_per_s"] / row["textbook per-ROI peer"]["rois_per_s"]
    return out


def gpu_speed(batch: int, repeats: int) -> dict:
    """ROIs/s of the batched engine on ROIs already on the GPU (results come back to the host each call)."""
    from pipeline.backend import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason:
        return {"status": f"not measured (no device: {reason})"}
    import cupy as cp

    out = {"status": "measured", "device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode()}
    for size in (128, 256):
        n = batch if size == 128 else batch // 4
        rois = cp.asarray(np.tile(edge_rois(64, size, np.random.default_rng(1)), (n // 64, 1, 1)))
        times = alternate({"gpu": lambda: slanted_edge_mtf(rois)}, repeats)["gpu"]
        out[f"{size}x{size}"] = {"batch": n, "rois_per_s": n / statistics.median(times), "seconds": times}
    return out


def clean_accuracy() -> dict:
    """Max |error| (%) over 5 angles of MTF50 and MTF20 for the noise-free edges of the unit tests."""
    out = {}
    for lsf in ("gauss-narrow", "gauss-wide", "eu-gc", "gc", "nc-film"):
        if lsf.startswith("gauss"):  # sigma (px), tail weight, tail length (px)
            args, (h, w) = ((0.6 if lsf == "gauss-narrow" else 2.5), 0.0, 1.0), (160, 120)
        else:
            p, pitch = PRESETS[lsf], {"eu-gc": 0.01, "gc": 0.02, "nc-film": 0.05}[lsf]
            args, (h, w) = (p.sigma_mm / pitch, p.tail_weight, p.tail_length_mm / pitch), (200, 180)
        errs = []
        f = np.linspace(0, 2, 8001)
        for angle in (2.0, 3.5, 5.0, 7.5, 10.0):
            t = math.radians(angle)
            yy, xx = np.mgrid[0:h, 0:w]
            d = (xx - (w - 1) / 2 + 3.3) * math.cos(t) - (yy - (h - 1) / 2) * math.sin(t)
            img = 100 + 900 * pixel_esf(d, math.cos(t), math.sin(t), *args)
            truth = lsf_mtf(f, *args) * np.abs(np.sinc(f * math.cos(t)) * np.sinc(f * math.sin(t)))
            r = slanted_edge_mtf(img)
            errs += [100 * (r.crossings_cy_per_px[lv][0] / cross(f, truth, lv) - 1) for lv in (0.5, 0.2)]
        out[lsf] = {"max_abs_error_pct": float(np.max(np.abs(errs))), "errors_pct": errs}
    return out


def noisy_sharp_accuracy(n: int, base) -> dict:
    """MTF20 error (%) on the noisy sharp edge: median, median |.|, 90th percentile |.| over n ROIs per size."""
    out = {}
    for size in (128, 256):
        rois = noisy_sharp_edges(n, size, np.random.default_rng(size))
        engines = {"adaptive ESF": lambda r: slanted_edge_mtf(r),
                   "plain binned ESF": lambda r: slanted_edge_mtf(r, esf_smoothing="none")}
        if base is not None:
            engines[f"engine at {base[1]}"] = base[0]
        for name, fn in engines.items():
            e = 100 * (fn(rois).crossings_cy_per_px[0.2] / 0.3 - 1)
            out[f"{size}x{size}/{name}"] = {"median_error_pct": float(np.median(e)),
                                            "median_abs_error_pct": float(np.median(np.abs(e))),
                                            "p90_abs_error_pct": float(np.percentile(np.abs(e), 90)),
                                            "max_abs_error_pct": float(np.max(np.abs(e)))}
    return out


def simulated_accuracy(seeds: int) -> dict:
    """MTF50/MTF20 error (%) on simulated frames (2000 quanta/pixel) run through the pipeline, per window."""
    accuracy = {}
    tmp = Path(tempfile.mkdtemp(prefix="xray-bench-mtf-"))
    try:
        for preset, pitch in (("eu-gc", 0.01), ("gc", 0.02), ("nc-film", 0.05)):
            for seed in range(seeds):
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
    return {k: {"mean_error_pct": float(np.mean(v)), "max_abs_error_pct": float(np.max(np.abs(v))), "errors_pct": v}
            for k, v in accuracy.items()}


def table(meta, spd, gpu, clean, noisy, sim) -> list[str]:
    lines = [f"# Slanted-edge MTF ({meta['machine']}, {meta['date']})", "",
             f"Speed: {meta['batch']} noisy edge ROIs (float32) per call, same arrays for every job, one process, "
             f"median of {meta['repeats']} runs in turns (best in brackets)", "",
             "| ROI | job | ROIs/s | vs textbook |", "|---|---|---:|---:|"]
    for size, row in spd.items():
        tb = row["textbook per-ROI peer"]["rois_per_s"]
        for job, v in row.items():
            if isinstance(v, dict):
                lines.append(f"| {size} | {job} | {v['rois_per_s']:.0f} ({v['best_rois_per_s']:.0f}) | "
                             f"{v['rois_per_s'] / tb:.2f} |")
    gpu_rows = [f"| {k} | batched on the GPU ({gpu['device']}, {v['batch']} ROIs) | {v['rois_per_s']:.0f} | |"
                for k, v in gpu.items() if isinstance(v, dict)]
    lines += gpu_rows or [f"| - | batched on the GPU | {gpu['status']} | |"]
    lines += ["", "Accuracy, noise-free edges (tests/ops/test_mtf.py, 5 angles 2-10 deg): max |error| of MTF50 and "
              "MTF20 vs the analytic truth, %", "", "| LSF | max abs |", "|---|---:|"]
    lines += [f"| {k} | {v['max_abs_error_pct']:.2f} |" for k, v in clean.items()]
    lines += ["", f"Accuracy, noisy sharp edge (point-sampled erf, MTF20 = 0.3 cycles/pixel, 2000 quanta/pixel, "
              f"5 deg, {meta['noisy_rois']} ROIs per size): MTF20 error, %", "",
              "| ROI / ESF | median | median abs | 90th pct abs | max abs |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {v['median_error_pct']:+.2f} | {v['median_abs_error_pct']:.2f} | {v['p90_abs_error_pct']:.2f} "
              f"| {v['max_abs_error_pct']:.2f} |" for k, v in noisy.items()]
    lines += ["", f"Accuracy under Poisson noise (simulated frames, 2000 quanta/pixel, {meta['noise_seeds']} seeds, "
              "auto ROI): error vs analytic truth, %", "", "| preset / window / level | mean | max abs |",
              "|---|---:|---:|"]
    lines += [f"| {k} | {v['mean_error_pct']:+.2f} | {v['max_abs_error_pct']:.2f} |" for k, v in sim.items()]
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--noisy-rois", type=int, default=64)
    ap.add_argument("--gpu-batch", type=int, default=8192)
    ap.add_argument("--baseline-rev", default=None, help="also time the engine as at this git revision")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    base = (baseline_engine(args.baseline_rev), args.baseline_rev) if args.baseline_rev else None
    spd = speed(args.batch, args.repeats, base)
    gpu = gpu_speed(args.gpu_batch, args.repeats)
    clean, noisy = clean_accuracy(), noisy_sharp_accuracy(args.noisy_rois, base)
    sim = simulated_accuracy(args.seeds)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
            "device": "cpu (numpy), one thread", "batch": args.batch, "repeats": args.repeats,
            "noise_seeds": args.seeds, "noisy_rois": args.noisy_rois, "baseline_rev": args.baseline_rev}
    data = {"meta": meta, "speed": spd, "gpu": gpu, "accuracy_clean": clean, "accuracy_noisy_sharp": noisy,
            "accuracy": sim}
    write_results(args.out, "mtf_cpu", data, table(meta, spd, gpu, clean, noisy, sim))


if __name__ == "__main__":
    main()
