"""What a run pays before its first block: the calibration from darks and flats, and the noise-model fit.

Usage: python benchmarks/bench_setup.py [--size 2048] [--frames 16] [--repeats 3]

Every part against the way it was done before, in the same process on the same data, alternating
(medians of ``--repeats``):
* the bad-pixel detection's local median (``flatfield.bad_pixels.window``, 9 x 9) of a flat-signal
  map: the Numba sliding-window kernel (pipeline.ops.filters.median_filter) against
  scipy.ndimage.median_filter on the whole map (one thread) and on row strips over all cores
  (the fallback for NaN or an even window);
* the darks' per-pixel mean and standard deviation: exact int64 sums in one pass
  (pipeline.schedule.frame_statistics) against the float64 Dask reduction it replaced;
* the first frames' noise-model fit (denoisers on): with the exact selection (its noise level's median) and
  radix-sort (its quantile bins) kernels of pipeline.jit against NumPy's nanmedian and stable argsort;
* the whole ``calibrate``, for the record;
* a flat-field run's set-up (its wall time less its blocks' time) without and with a saved
  calibration.

Writes benchmarks/results/setup_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import dask
import dask.array as da
import numpy as np
from scipy import ndimage

import pipeline
from _common import alternate, machine, write_results
from pipeline.io import zarr_store
from pipeline.ops.filters import _scipy_strips, median_filter
from pipeline.schedule import frame_statistics

HERE = Path(__file__).resolve().parent


def _dask_float64_mean_std(source):
    """The reduction frame_statistics made before: the frames cast to float64, Dask's mean and std."""
    n, h, w = source.shape
    x = da.from_array(source, chunks=(min(8, n), h, w), asarray=False, lock=False,
                      meta=np.empty((0, 0, 0), dtype=source.dtype)).astype(np.float64)
    mean, std = dask.compute(x.mean(axis=0), x.std(axis=0, ddof=1), scheduler="threads")
    return mean.astype(np.float32), std.astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="xray-bench-setup-"))
    try:
        src = tmp / "input.zarr"
        pipeline.simulate(src, frames=args.frames, size=(args.size, args.size), truth_frames=False)
        ds = zarr_store.open_input(src)
        darks = zarr_store.FrameReader(ds.darks, f"{src}/darks")
        cfg = pipeline.load_config()
        window = cfg.flatfield.bad_pixels.window
        dark, dark_std = frame_statistics(darks, with_std=True)
        flat, _ = frame_statistics(zarr_store.FrameReader(ds.flats, f"{src}/flats"))
        signal = flat - dark

        # the same answers first: the timings compare equal work
        ref = ndimage.median_filter(signal, size=window, mode="reflect")
        assert np.array_equal(median_filter(signal, size=window), ref)
        assert np.array_equal(_scipy_strips(signal, window, np.empty_like(signal)), ref)
        old_mean, old_std = _dask_float64_mean_std(darks)
        mean_equal = bool(np.array_equal(old_mean, dark))
        std_max_rel = float(np.max(np.abs(old_std - dark_std) / np.maximum(old_std, 1e-30)))

        times = alternate({
            "median: sliding-window kernel": lambda: median_filter(signal, size=window),
            "median: scipy, one thread": lambda: ndimage.median_filter(signal, size=window, mode="reflect"),
            "median: scipy, row strips": lambda: _scipy_strips(signal, window, np.empty_like(signal)),
        }, args.repeats)
        times.update(alternate({
            "dark mean + std: exact int64 sums": lambda: frame_statistics(darks, with_std=True),
            "dark mean + std: Dask float64": lambda: _dask_float64_mean_std(darks),
        }, args.repeats))
        cal = tmp / "cal.zarr"
        pipeline.save_calibration(pipeline.calibrate(src), cal)
        times.update(alternate({
            "calibrate (darks, flats, bad pixels)": lambda: pipeline.calibrate(src),
        }, args.repeats))

        # the noise-model fit (denoisers on): the exact selection and radix-sort kernels against NumPy's nanmedian
        # and stable argsort, which they replace (the same model, asserted)
        from pipeline import api, jit, runner
        from pipeline.stages import build_chain

        cfg_dn = pipeline.load_config(None, overrides=["denoise.enabled=true"])
        chain = build_chain(cfg_dn, pipeline.load_calibration(cal, (args.size, args.size)), ds.frames.dtype)
        kernels = (jit.nanmedian_f32, jit.argsort_f32)

        def fit(use_kernels: bool):
            jit.nanmedian_f32, jit.argsort_f32 = kernels if use_kernels else (lambda v: None, lambda v: None)
            try:
                return runner._noise_model(cfg_dn, chain, ds)
            finally:
                jit.nanmedian_f32, jit.argsort_f32 = kernels

        assert fit(True) == fit(False)
        times.update(alternate({
            "noise-model fit: selection and radix-sort kernels": lambda: fit(True),
            "noise-model fit: NumPy nanmedian and stable argsort": lambda: fit(False),
        }, args.repeats))

        def run(**kw):
            return pipeline.run(src, tmp / "out.zarr", overwrite=True, **kw).time_account

        setups = alternate({
            "run set-up, calibration from the darks and flats": lambda: run(),
            "run set-up, saved calibration": lambda: run(calibration=cal),
            "run set-up, saved calibration + noise-model fit (denoise on)": lambda: run(
                calibration=cal, overrides=["denoise.enabled=true", "denoise.method=none"]),
        }, args.repeats, measure=lambda acc: acc["wall_s"] - (acc["blocks_s"] or 0.0))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    res = {k: {"seconds": v, "median_s": statistics.median(v),
               "spread_pct": 100 * (max(v) - min(v)) / statistics.median(v)} for k, v in {**times, **setups}.items()}
    med = {k: r["median_s"] for k, r in res.items()}
    speedups = {
        "median kernel vs scipy one thread": med["median: scipy, one thread"] / med["median: sliding-window kernel"],
        "median kernel vs scipy row strips": med["median: scipy, row strips"] / med["median: sliding-window kernel"],
        "exact sums vs Dask float64": med["dark mean + std: Dask float64"] / med["dark mean + std: exact int64 sums"],
        "noise-model fit, kernels vs NumPy": (med["noise-model fit: NumPy nanmedian and stable argsort"]
                                              / med["noise-model fit: selection and radix-sort kernels"]),
    }
    meta = {"benchmark": "a run's set-up: calibration and noise model", "machine": machine(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
            "size": args.size, "frames": args.frames, "darks": int(ds.darks.shape[0]), "flats": int(ds.flats.shape[0]),
            "median_window": window, "repeats": args.repeats, "mean_bit_equal_to_dask": mean_equal,
            "std_max_relative_difference_to_dask": std_max_rel}
    lines = [f"# A run's set-up ({meta['machine']}, {meta['date']})", "",
             f"{args.size} x {args.size} uint16 (simulated, eu-gc): {meta['darks']} darks, {meta['flats']} flats, "
             f"{args.frames} frames; medians of {args.repeats} alternating runs after a warm-up. The local median is "
             f"{window} x {window} (bad-pixel detection runs it on the flat signal and on the dark map).", "",
             "| what | median s | spread % |", "|---|---:|---:|"]
    lines += [f"| {k} | {r['median_s']:.3f} | {r['spread_pct']:.0f} |" for k, r in res.items()]
    lines += ["", "Speed-ups (same process, same data): " + "; ".join(f"{k} {v:.1f}x" for k, v in speedups.items()) + ".",
              "", f"The kernel's and the strips' medians equal scipy's (asserted above). The exact sums' "
              f"mean equals Dask's float64 one bit for bit: {mean_equal}; their std differs from it by at most "
              f"{std_max_rel:.1e} (relative; float64 rounding in Dask's two passes).", ""]
    write_results(args.out, "setup_cpu", {"meta": meta, "results": res, "speedups": speedups}, lines)


if __name__ == "__main__":
    main()
