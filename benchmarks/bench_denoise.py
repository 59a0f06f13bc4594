"""Denoising: PSNR/SSIM against the noise-free truth at three doses, runtime per frame, and trails behind motion.

Usage: python benchmarks/bench_denoise.py [--size 256] [--frames 32]

Static scene (the board held still), no afterglow, flat-field corrected, doses 100 / 1000 /
10000 quanta per pixel: every spatial method (inside the GAT and, for reference, without),
the motion-adaptive temporal filter alone and with each spatial method; scores on the last
half of the frames (the recursive filter has settled). Moving board at 1, 3 and 6 px/frame:
the trail behind it (mean of result - truth over pixels it uncovered in the last 10 frames,
as a fraction of its contrast) for the motion-adaptive filter and for a plain recursive
filter with the same gain (the same noise reduction on a still scene).
Writes benchmarks/results/denoise_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import zarr
from skimage.metrics import structural_similarity

import pipeline
from _common import machine, write_results
from pipeline.config import RunConfig
from pipeline.ops.afterglow import ghost_residual, trail_mask
from pipeline.ops.denoise import denoise_spatial, estimate_noise_model, psnr, temporal_filter

HERE = Path(__file__).resolve().parent
METHODS = ["none", "median", "gaussian", "bilateral", "tv", "nlm"]
DN = RunConfig().denoise  # the schema's defaults: the temporal filter as a run would use it
TEMPORAL = dict(gain_min=DN.temporal_gain_min, threshold=DN.temporal_threshold, smooth=DN.temporal_smooth,
                hold=DN.temporal_hold)


def corrected(tmp, dose, frames, size, speed, seed=1):
    # the camera gain is set so the open beam sits near 8000 counts at every dose (no saturation)
    sim = pipeline.simulate(tmp / "s.zarr", frames=frames, size=(size, size), quanta_per_pixel=dose,
                            counts_per_quantum=8000.0 / dose,
                            speed_px_per_frame=speed, afterglow_amplitudes=(0.0,), afterglow_tau_s=(0.01,),
                            seed=seed, overwrite=True)
    pipeline.run(sim, tmp / "o.zarr", overwrite=True)
    g = zarr.open_group(str(sim), mode="r")
    out = zarr.open_group(str(tmp / "o.zarr"), mode="r")["frames"][:]
    return out, g["truth/frames"][:], dict(g["truth"].attrs), g["truth/bad_pixels"][:] != 0


def scores(est, truth, peak, bad):
    e, t = est.copy(), truth
    e[:, bad] = t[:, bad]  # defect pixels are estimates of the flat-field stage, not of the denoiser
    p = float(np.mean([psnr(e[k], t[k], peak) for k in range(e.shape[0])]))
    s = float(np.mean([structural_similarity(np.nan_to_num(e[k]), t[k], data_range=peak) for k in range(e.shape[0])]))
    return p, s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xray-bench-dn-"))
    rows, trails = [], []
    try:
        for dose in (100, 1000, 10000):
            y, truth, ta, bad = corrected(tmp, dose, args.frames, args.size, speed=0.0)
            peak = float(ta["open_level"])
            noise = estimate_noise_model(y[:8])
            half = args.frames // 2
            base = scores(y[half:], truth[half:], peak, bad)
            rows.append({"dose": dose, "method": "raw (flat-field only)", "psnr_db": base[0], "ssim": base[1],
                         "gain_db": 0.0, "ms_per_frame": 0.0})
            t0 = time.perf_counter()
            tf, _ = temporal_filter(y, None, noise=noise, **TEMPORAL)
            t_ms = 1e3 * (time.perf_counter() - t0) / args.frames
            for temporal in (False, True):
                src = tf if temporal else y
                for m in METHODS:
                    for gat in ((True, False) if m not in ("none",) and not temporal else (True,)):
                        if m == "none" and not temporal:
                            continue
                        t0 = time.perf_counter()
                        est = denoise_spatial(src[half:], m, noise=noise, anscombe=gat, params=DN.model_dump())
                        ms = 1e3 * (time.perf_counter() - t0) / (args.frames - half) + (t_ms if temporal else 0)
                        p, s = scores(est, truth[half:], peak, bad)
                        name = ("temporal + " if temporal else "") + m + ("" if m == "none" else (" (GAT)" if gat else " (no GAT)"))
                        if name == "temporal + none":
                            name = "temporal"
                        rows.append({"dose": dose, "method": name, "psnr_db": p, "ssim": s, "gain_db": p - base[0],
                                     "ms_per_frame": ms})
                        print(dose, name, f"{p:.2f} dB (+{p - base[0]:.2f}) ssim {s:.3f} {ms:.1f} ms/frame", flush=True)
            print(f"noise model at dose {dose}: alpha {noise.alpha:.4g} beta {noise.beta:.4g} box {noise.box_factor:.3f}")
            if dose == 100:  # the plain recursive gain that removes as much noise on this still scene
                target = scores(tf[half:], truth[half:], peak, bad)[0]
                best = None
                for k_plain in np.linspace(0.05, 1.0, 96):
                    est, _ = temporal_filter(y, None, noise=noise, gain_min=float(k_plain), threshold=(1e9, 2e9))
                    err = abs(scores(est[half:], truth[half:], peak, bad)[0] - target)
                    if best is None or err < best[0]:
                        best = (err, float(k_plain))
                k_same = best[1]
        for speed in (1.0, 3.0, 6.0):
            y, truth, ta, bad = corrected(tmp, 100, args.frames, args.size, speed=speed)
            noise = estimate_noise_model(y[:8])
            open_level = float(ta["open_level"])
            contrast = float(ta["board"]["absorbance"]) * open_level
            mask, _ = trail_mask(truth, None, background=0.999 * open_level, threshold=open_level - 0.5 * contrast,
                                 window=10)
            for name, kw in (("motion-adaptive", TEMPORAL),
                             (f"plain recursive, same still-pixel gain K={DN.temporal_gain_min:g}",
                              {**TEMPORAL, "threshold": (1e9, 2e9), "hold": 0.0}),
                             (f"plain recursive, same static PSNR gain (K={k_same:.2f})",
                              {**TEMPORAL, "gain_min": k_same, "threshold": (1e9, 2e9), "hold": 0.0})):
                est, _ = temporal_filter(y, None, noise=noise, **kw)
                g = ghost_residual(est[4:], truth[4:], mask[4:], contrast=contrast)
                ok = np.isfinite(g)
                trails.append({"speed_px_per_frame": speed, "filter": name, "trail_mean_pct": float(100 * np.mean(g[ok])),
                               "trail_max_pct": float(100 * np.max(np.abs(g[ok]))), "frames": int(ok.sum())})
                print(speed, name, trails[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "device": "cpu",
            "video": f"{args.frames} x {args.size} x {args.size}, eu-gc, no afterglow, flat-field corrected",
            "scored": f"frames {args.frames // 2}-{args.frames - 1} against truth/frames, defect pixels excluded",
            "temporal": {k: list(v) if isinstance(v, tuple) else v for k, v in TEMPORAL.items()}, "gat": "generalised Anscombe, Makitalo-Foi inverse"}
    lines = [f"# Denoising ({meta['machine']}, {meta['date']})", "", f"{meta['video']}; {meta['scored']}", "",
             "| dose | method | PSNR dB | gain dB | SSIM | ms/frame |", "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['dose']} | {r['method']} | {r['psnr_db']:.2f} | {r['gain_db']:+.2f} | {r['ssim']:.3f} | {r['ms_per_frame']:.1f} |")
    lines += ["", "Trail behind the moving board (dose 100; fraction of the board's contrast, % ; frames 4+):", "",
              "| speed px/frame | filter | mean trail % | max trail % |", "|---:|---|---:|---:|"]
    for t in trails:
        lines.append(f"| {t['speed_px_per_frame']:g} | {t['filter']} | {t['trail_mean_pct']:+.3f} | {t['trail_max_pct']:.3f} |")
    write_results(args.out, "denoise_cpu", {"meta": meta, "static": rows, "trails": trails}, lines)


if __name__ == "__main__":
    main()
