"""Output chunks sized for viewers: the write speed of a run, and what a viewer pays to show one frame.

Usage: python benchmarks/bench_output_chunks.py [--frames 128] [--size 1024] [--block 64] [--repeats 3]

Before 2026-12-06 a run stored its output in chunks of its processing block (64 frames of 1024²
float32: 256 MiB that a viewer decodes to show one frame); now in chunks of up to 16 frames within
32 MiB (``output.chunk_frames``, null), a divisor of the block, still written straight by the
pipelines' chunk encoder. The same run (flat-field only, blocks of ``--block`` frames) is timed
with ``output.chunk_frames`` = the block (before) and the default (after), in turns in one process:
frames/s of the whole run, the writing thread-seconds of its time account, and the time to read
one frame back through Zarr's API (a viewer's request, cold: a new array handle each time).

Writes benchmarks/results/output_chunks_cpu.json/.md.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from _common import alternate, machine, write_results

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import zarr

    import pipeline

    tmp = Path(tempfile.mkdtemp(prefix="bench-outchunks-"))
    try:
        src = tmp / "in.zarr"
        pipeline.simulate(src, frames=args.frames, size=(args.size, args.size), truth_frames=False, seed=1)
        common = [f"execution.chunk_frames={args.block}", "denoise.enabled=false", "mtf.enabled=false"]
        variants = {"before: chunk = block": common + [f"output.chunk_frames={args.block}"],
                    "after: viewer chunks (default)": common}
        results = {k: {"frames_per_s": [], "write_s": [], "read_one_frame_ms": [], "chunk_frames": None}
                   for k in variants}

        def job(name):
            def go():
                out = tmp / "out.zarr"
                res = pipeline.run(src, out, overrides=variants[name], overwrite=True)
                results[name]["frames_per_s"].append(res.frames_per_second)
                results[name]["write_s"].append(res.time_account["write_s"])
                arr = zarr.open_array(str(out / "frames"), mode="r")
                results[name]["chunk_frames"] = int(arr.chunks[0])
                t0 = time.perf_counter()
                zarr.open_array(str(out / "frames"), mode="r")[args.frames // 2]
                results[name]["read_one_frame_ms"].append((time.perf_counter() - t0) * 1e3)
            return go

        alternate({k: job(k) for k in variants}, args.repeats)
        for r in results.values():  # the warm-up run is not counted
            for k in ("frames_per_s", "write_s", "read_one_frame_ms"):
                r[k] = r[k][1:]
        lines = [f"# Output chunks: write speed and one-frame reads ({args.frames} frames of {args.size}², float32, "
                 f"blocks of {args.block})", "", f"{machine()}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; "
                 f"median of {args.repeats} runs in turns (one process)", "",
                 "| output chunks | frames per chunk | run frames/s | writing thread-s | one frame read back (ms) |",
                 "|---|---|---|---|---|"]
        for k, r in results.items():
            lines.append(f"| {k} | {r['chunk_frames']} | {statistics.median(r['frames_per_s']):.1f} | "
                         f"{statistics.median(r['write_s']):.2f} | {statistics.median(r['read_one_frame_ms']):.1f} |")
        b, a = (results[k] for k in variants)
        ratio = statistics.median(a["frames_per_s"]) / statistics.median(b["frames_per_s"])
        lines += ["", f"after / before: run speed x{ratio:.2f}, one-frame read x"
                      f"{statistics.median(b['read_one_frame_ms']) / statistics.median(a['read_one_frame_ms']):.1f} "
                      "faster"]
        write_results(HERE / "results", "output_chunks_cpu",
                      {"machine": machine(), "args": vars(args), "results": results, "run_speed_ratio": ratio}, lines)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
