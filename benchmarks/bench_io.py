"""Host I/O around the stages: reading input blocks, the uint16 code, progress records.

Usage: python benchmarks/bench_io.py [--frames 64] [--size 2048] [--repeats 3]

* **Reads**: a simulated uint16 video (chunks of 4 whole frames, bitshuffle-lz4, as `run` and
  `simulate` write them) read block by block with 1 and 2 threads through Zarr's own API and
  through the pipelines' reader (`FrameReader`: its `ChunkDecoder`), in frames/s and process
  CPU-ms a frame; for Zarr also the CPU time of its event-loop thread (`zarr_io`, from
  /proc/self/task), the share that does not spread over threads.
* **uint16 code**: `ops.quantise.encode` to uint16, the Numba pass against the NumPy code.
* **Progress records**: `Checkpoint.commit` per block (marker, states every k-th block, pruning)
  at 1 000 and 4 000 blocks: the cost a block must not grow with the run.

Writes benchmarks/results/io_cpu.json/.md.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from _common import machine, write_results
from pipeline import bench, jit
from pipeline.io import zarr_store
from pipeline.io.checkpoint import Checkpoint
from pipeline.ops.quantise import encode

HERE = Path(__file__).resolve().parent


def bench_reads(path: Path, repeats: int) -> dict:
    ds = zarr_store.open_input(path)
    arr, reader = ds.frames, ds.reader()
    assert reader._decoder is not None, "the video should be readable by the pipelines' own decoder"
    t, c = arr.shape[0], arr.chunks[0]
    blocks = [(s, min(s + c, t)) for s in range(0, t, c)]
    ways = {"zarr API": lambda a, b: np.asarray(arr[a:b]),
            "pipeline reader": lambda a, b: reader.read_block(a, b, skip=False)[0]}
    for a, b in blocks[:2]:
        np.testing.assert_array_equal(ways["zarr API"](a, b), ways["pipeline reader"](a, b))
    rows = {}
    for threads in (1, 2):
        for name, fn in ways.items():
            best = None
            for _ in range(repeats + 1):  # the first is a warm-up (page cache)
                loop0, c0, w0 = zarr_store.loop_thread_cpu_s(), time.process_time(), time.perf_counter()
                with ThreadPoolExecutor(threads) as ex:
                    list(ex.map(lambda ab: fn(*ab), blocks))
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                loop1 = zarr_store.loop_thread_cpu_s()
                run = {"frames_per_s": t / wall, "cpu_ms_per_frame": 1e3 * cpu / t,
                       "zarr_loop_cpu_ms_per_frame": (1e3 * (loop1 - loop0) / t
                                                      if loop0 is not None and loop1 is not None else None)}
                if best is None or run["frames_per_s"] > best["frames_per_s"]:
                    best = run
            rows[f"{name}, {threads} thread{'s' if threads > 1 else ''}"] = best
    return rows


def bench_code(size: int, repeats: int) -> dict:
    v = np.random.default_rng(0).uniform(0, 2, (16, size, size)).astype(np.float32)
    out = np.empty(v.shape, np.uint16)
    res = {}
    for name, off in (("numba (one pass)", False), ("numpy", True)):
        def run():
            if off:
                with jit.disabled():
                    encode(v, "uint16", scale=50000.0, offset=500.0, out=out)
            else:
                encode(v, "uint16", scale=50000.0, offset=500.0, out=out)
        s = bench.time_it(run, repeats=repeats, warmup=1)["median_s"]
        res[name] = {"ms_per_frame": 1e3 * s / v.shape[0]}
    return res


def bench_commits(tmp: Path) -> dict:
    res = {}
    states = [np.zeros((2, 8, 8), np.float32)]
    for n in (1000, 4000):
        ck = Checkpoint(tmp / f"p{n}")
        ck.start({"run": n})
        t0 = time.perf_counter()
        for c in range(n):
            ck.commit(c, c, c + 1, "x", states, {}, block_bytes=4 * 4 * 8 * 8)
            if c == n - 200:
                t_last = time.perf_counter()
        res[f"{n} blocks"] = {"ms_per_commit": 1e3 * (time.perf_counter() - t0) / n,
                              "ms_per_commit_last_200": 1e3 * (time.perf_counter() - t_last) / 200}
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xray-bench-io-"))
    try:
        seed = bench._simulate(tmp / "seed.zarr", 8, args.size)
        video = bench._repeat_video(seed, tmp / "video.zarr", args.frames, 4)
        reads = bench_reads(video, args.repeats)
        code = bench_code(1024, args.repeats)
        commits = bench_commits(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = {"benchmark": "host I/O: reads, uint16 code, progress records", "machine": machine(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "video": f"{args.frames} x {args.size} x {args.size} uint16, chunks of 4 frames, bitshuffle-lz4"}
    lines = [f"# Host I/O ({meta['machine']}, {meta['date']})", "",
             f"Reads of {meta['video']}, block by block (best of {args.repeats} after a warm-up):", "",
             "| read through | frames/s | process CPU-ms a frame | Zarr event-loop thread CPU-ms a frame |",
             "|---|---:|---:|---:|"]
    for k, r in reads.items():
        loop = r["zarr_loop_cpu_ms_per_frame"]
        lines.append(f"| {k} | {r['frames_per_s']:.1f} | {r['cpu_ms_per_frame']:.1f} | "
                     f"{'' if loop is None else f'{loop:.1f}'} |")
    lines += ["", "uint16 code of float32 frames (`ops.quantise.encode`, 16 x 1024 x 1024, median):", "",
              "| code | ms per 1024² frame |", "|---|---:|"]
    lines += [f"| {k} | {r['ms_per_frame']:.2f} |" for k, r in code.items()]
    lines += ["", "Progress records (`Checkpoint.commit`: marker, states every k-th block, pruning):", "",
              "| run | ms per commit | ms per commit, last 200 |", "|---|---:|---:|"]
    lines += [f"| {k} | {r['ms_per_commit']:.2f} | {r['ms_per_commit_last_200']:.2f} |" for k, r in commits.items()]
    write_results(args.out, "io_cpu", {"meta": meta, "reads": reads, "uint16_code": code, "commits": commits}, lines)


if __name__ == "__main__":
    main()
