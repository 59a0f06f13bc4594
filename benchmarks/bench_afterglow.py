"""Afterglow stage speed (CPU): the op alone at 1024 x 1024 with 2 and 4 terms, and its cost inside a run.

Usage: python benchmarks/bench_afterglow.py [--size 1024] [--frames 64] [--repeats 5]

Same process, same data: the op is compared with a plain float32 memory copy of the
block (np.copyto, the memory roofline); the run with the stage is compared with the
same run without it (the cost of carrying the lag state in time order in the Dask graph).
Writes benchmarks/results/afterglow_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import pipeline
from _common import machine, write_results
from pipeline.bench import time_it
from pipeline.io.models import save_model
from pipeline.ops.afterglow import remove_lag, steady_state

HERE = Path(__file__).resolve().parent
TERMS = {2: ((0.01, 0.003), (0.015, 0.12)), 4: ((0.01, 0.004, 0.002, 0.001), (0.005, 0.03, 0.12, 0.5))}


def _median_time(fn, repeats):
    t = time_it(fn, repeats=repeats, warmup=1)
    return t["median_s"], t["seconds"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--run-frames", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    block = (rng.random((args.frames, args.size, args.size), dtype=np.float32) * 8000).astype(np.float32)
    work = np.empty_like(block)
    results = {}
    med, ts = _median_time(lambda: np.copyto(work, block), args.repeats)
    results["memcopy_float32"] = {"frames_per_s": args.frames / med, "times_s": ts}
    for n, (a, tau) in TERMS.items():
        r = np.exp(-1.0 / (50.0 * np.asarray(tau)))
        st = steady_state(block[0], a, r)

        def op():
            np.copyto(work, block)
            remove_lag(work, a, r, st.copy(), out=work)

        med, ts = _median_time(op, args.repeats)
        results[f"remove_lag_{n}_terms"] = {"frames_per_s": args.frames / med, "times_s": ts,
                                           "note": "includes one copy of the block (to start from the same data)"}
    # inside a run: flat-field only vs flat-field + afterglow (2 terms)
    tmp = Path(tempfile.mkdtemp(prefix="xray-bench-ag-"))
    try:
        src = pipeline.simulate(tmp / "in.zarr", frames=args.run_frames, size=(args.size, args.size), truth_frames=False)
        cal = tmp / "cal.zarr"
        pipeline.save_calibration(pipeline.calibrate(src), cal)
        a, tau = TERMS[2]
        model = save_model(tmp / "m.json", {"frame_rate_hz": 50.0, "tau_s": list(tau), "amplitudes": list(a)})
        runs = {"run_flatfield": [], "run_flatfield_afterglow": []}
        pipeline.run(src, tmp / "warm.zarr", calibration=cal)
        for i in range(args.repeats):
            for key in (list(runs) if i % 2 == 0 else list(runs)[::-1]):
                extra = [f"afterglow.model={model}"] if key.endswith("afterglow") else []
                runs[key].append(pipeline.run(src, tmp / "o.zarr", calibration=cal, overwrite=True,
                                              overrides=extra).seconds)
        for k, v in runs.items():
            results[k] = {"frames_per_s": args.run_frames / statistics.median(v), "times_s": v}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "device": "cpu",
        "frame": f"{args.size} x {args.size} float32", "op_block_frames": args.frames,
        "run_video": f"{args.run_frames} frames uint16, default chunking, saved calibration", "repeats": args.repeats,
    }
    ratios = {
        "remove_lag_2_vs_memcopy": results["remove_lag_2_terms"]["frames_per_s"] / results["memcopy_float32"]["frames_per_s"],
        "remove_lag_4_vs_memcopy": results["remove_lag_4_terms"]["frames_per_s"] / results["memcopy_float32"]["frames_per_s"],
        "run_with_afterglow_vs_without": results["run_flatfield_afterglow"]["frames_per_s"] / results["run_flatfield"]["frames_per_s"],
    }
    lines = [f"# Afterglow stage throughput ({meta['machine']}, {meta['date']})", "",
             f"{meta['frame']} frames; op on in-memory blocks of {args.frames}; run on {meta['run_video']}; median of {args.repeats}", "",
             "| what | frames/s |", "|---|---:|"]
    for k, v in results.items():
        lines.append(f"| {k} | {v['frames_per_s']:.1f} |")
    lines += ["", *(f"- {k}: {v:.2f}" for k, v in ratios.items()), ""]
    write_results(args.out, "afterglow_cpu", {"meta": meta, "results": results, "ratios": ratios}, lines)


if __name__ == "__main__":
    main()
