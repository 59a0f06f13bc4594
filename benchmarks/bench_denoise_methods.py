"""The default denoiser chosen on the numbers: method x (PSNR gain, trail, CPU frames/s, GPU frames/s).

Usage: python benchmarks/bench_denoise_methods.py [--speed-frames 8] [--repeats 3]

Every row is what ``denoise.enabled: true`` runs with ``denoise.method`` = the row (the
motion-adaptive temporal filter, then the spatial method per frame inside the GAT, the schema's
parameters), all in one process on the same inputs:

* PSNR gain: the tests' static scene (tests/ops/test_denoise.py: 32 x 256 x 256, 100 quanta per
  pixel, 80 counts per quantum, seed 1, flat-field corrected), frames 16-31 against
  truth/frames (defect pixels excluded), minus the corrected frames' PSNR;
* trail: the tests' moving scene at 1, 3 and 6 px/frame, mean of (result - truth) over the
  pixels the board uncovered in the last 10 frames (frames 4+), % of the board's contrast;
* CPU frames/s: 8 frames of 1024 x 1024 float32 (the static scene's corrected frames tiled
  4 x 4), temporal filter + spatial step as the pipeline's stages call them, best of
  ``--repeats`` runs in turns; Numba kernels on 1 thread and on all cores (the engine's threads);
  NumPy/SciPy code runs on one thread either way.

Writes benchmarks/results/denoise_methods_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr

import pipeline
from _common import alternate, machine, write_results
from pipeline.config import RunConfig
from pipeline.ops.afterglow import ghost_residual, trail_mask
from pipeline.ops.denoise import denoise_spatial, estimate_noise_model, psnr, temporal_filter

HERE = Path(__file__).resolve().parent
DN = RunConfig().denoise
PARAMS = DN.model_dump()
TEMPORAL = dict(gain_min=DN.temporal_gain_min, threshold=DN.temporal_threshold, smooth=DN.temporal_smooth,
                hold=DN.temporal_hold)
#: row -> (temporal filter on?, spatial method, parameter overrides)
ROWS = {
    "none": (False, "none", {}),
    "temporal only": (True, "none", {}),
    "temporal + gaussian": (True, "gaussian", {}),
    "temporal + bilateral": (True, "bilateral", {}),
    "temporal + guided (default)": (True, "guided", {}),
    "temporal + nlm (quality)": (True, "nlm", {}),
    "temporal + nlm, search 1 (reduced)": (True, "nlm", {"nlm_search": 1}),
}
SPEEDS = (1.0, 3.0, 6.0)


def scene(tmp: Path, speed: float):
    """The tests' scene, flat-field corrected: (frames, truth, truth attrs, defect mask)."""
    name = f"s{speed:g}"
    sim = pipeline.simulate(tmp / f"{name}.zarr", frames=32, size=(256, 256), quanta_per_pixel=100,
                            counts_per_quantum=80.0, afterglow_amplitudes=(0.0,), afterglow_tau_s=(0.01,),
                            speed_px_per_frame=speed, seed=1)
    pipeline.run(sim, tmp / f"{name}-o.zarr")
    g = zarr.open_group(str(sim), mode="r")
    y = zarr.open_group(str(tmp / f"{name}-o.zarr"), mode="r")["frames"][:]
    return y, g["truth/frames"][:], dict(g["truth"].attrs), g["truth/bad_pixels"][:] != 0


def denoise(y, noise, row: str):
    """The row's denoising of (T, H, W) float32 frames, as the pipeline's stages call it."""
    temporal, method, over = ROWS[row]
    if temporal:
        y, _ = temporal_filter(y, None, noise=noise, **TEMPORAL)  # a new block (the stage filters in place)
    return denoise_spatial(y, method, noise=noise, anscombe=True, params={**PARAMS, **over})


def psnr_gain(est, y, truth, peak, bad) -> float:
    """Mean PSNR of frames 16+ of ``est`` minus that of the corrected frames ``y`` (defects excluded)."""
    def score(e):
        e = e[16:].copy()
        e[:, bad] = truth[16:, bad]
        return float(np.mean([psnr(e[k], truth[16 + k], peak) for k in range(e.shape[0])]))

    return score(est) - score(y)


def trail_pct(est, truth, attrs) -> float:
    """Mean trail behind the board over frames 4+, % of its contrast (as tests/ops/test_denoise.py)."""
    ol = attrs["open_level"]
    contrast = attrs["board"]["absorbance"] * ol
    mask, _ = trail_mask(truth, None, background=0.999 * ol, threshold=ol - 0.5 * contrast, window=10)
    g = ghost_residual(est[4:], truth[4:], mask[4:], contrast=contrast)
    return float(100 * np.mean(g[np.isfinite(g)]))


def cpu_fps(big, noise, repeats: int) -> dict:
    """Frames/s of every row on ``big`` with the Numba kernels on 1 thread and on all cores."""
    from pipeline.cpu import _nb

    out = {}
    for threads in (1, os.cpu_count() or 1):
        if _nb is not None:
            _nb.set_num_threads(threads)
        jobs = {row: (lambda r=row: denoise(big, noise, r)) for row in ROWS if row != "none"}
        secs = alternate(jobs, repeats)
        out[threads] = {row: big.shape[0] / min(v) for row, v in secs.items()}
        print(f"{threads} thread(s):", {k: round(v, 1) for k, v in out[threads].items()}, flush=True)
    if _nb is not None:
        _nb.set_num_threads(os.cpu_count() or 1)
    return out


def measure(tmp: Path, speed_frames: int, repeats: int) -> list[dict]:
    """Every row's numbers: PSNR gain, trails, CPU frames/s."""
    y, truth, attrs, bad = scene(tmp, 0.0)
    noise = estimate_noise_model(y[:8])
    peak = float(attrs["open_level"])
    moving = {s: scene(tmp, s) for s in SPEEDS}
    rows = []
    for row in ROWS:
        r = {"method": row, "gain_db": psnr_gain(denoise(y, noise, row), y, truth, peak, bad), "trail_pct": {}}
        for s, (ym, tm, am, _) in moving.items():
            r["trail_pct"][f"{s:g}"] = trail_pct(denoise(ym, estimate_noise_model(ym[:8]), row), tm, am)
        rows.append(r)
        print(row, r, flush=True)
    big = np.ascontiguousarray(np.tile(y[16 : 16 + speed_frames], (1, 4, 4)), dtype=np.float32)
    fps = cpu_fps(big, noise, repeats)
    for r in rows:
        r["cpu_fps"] = {str(t): v.get(r["method"]) for t, v in fps.items()}  # none: nothing to time
        r["gpu_fps"] = None
    return rows


def table(rows: list[dict], meta: dict) -> list[str]:
    """The Markdown table of ``rows``."""
    nt = str(meta["cores"])
    lines = [f"# Denoising methods side by side ({meta['machine']}, {meta['date']})", "",
             f"PSNR gain: {meta['psnr']}. Trail: {meta['trail']}. CPU: {meta['cpu']}. "
             f"Load average during the run: {meta['load_before']} -> {meta['load_after']} (other jobs share the cores).",
             "Targets (#24): >= 6 dB, <= 1 % trail, >= 50 frames/s at 1024^2 on 2 cores, >= 3000 frames/s at 2048^2 "
             "on an H100.", "",
             "| method | PSNR gain dB | trail % at 1 / 3 / 6 px/frame | CPU frames/s 1024², 1 thread | "
             f"CPU frames/s 1024², {nt} threads | GPU frames/s 2048² |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        tr = " / ".join(f"{v:+.2f}" for v in r["trail_pct"].values())
        f1, fn = (("—" if v is None else f"{v:.1f}") for v in (r["cpu_fps"]["1"], r["cpu_fps"][nt]))
        lines.append(f"| {r['method']} | {r['gain_db']:+.2f} | {tr} | {f1} | {fn} | not measured (no device) |")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--speed-frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xray-bench-dnm-"))
    load_before = round(os.getloadavg()[0], 2)
    try:
        rows = measure(tmp, args.speed_frames, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
            "cores": os.cpu_count() or 1, "load_before": load_before, "load_after": round(os.getloadavg()[0], 2),
            "psnr": "32 x 256^2 static scene, 100 quanta/px, frames 16-31 vs truth, minus the corrected frames' PSNR",
            "trail": "moving board, mean (result - truth) over pixels uncovered in the last 10 frames, frames 4+",
            "cpu": f"{args.speed_frames} frames of 1024^2 float32 (the static scene tiled 4 x 4), best of "
                   f"{args.repeats} in turns",
            "params": {k: v for k, v in PARAMS.items() if k.startswith(("temporal", "guided", "nlm", "bilateral",
                                                                         "gaussian"))}}
    write_results(args.out, "denoise_methods_cpu", {"meta": meta, "rows": rows}, table(rows, meta))


if __name__ == "__main__":
    main()
