"""Host I/O around the stages: reading input blocks, the uint16 code, progress records.

Usage: python benchmarks/bench_io.py [--frames 64] [--size 2048] [--repeats 5] [--threads 1,2]
       [--parts reads,writes,code,commits] [--name io_cpu]

* **Reads**: a simulated uint16 video (chunks of 4 whole frames, bitshuffle-lz4, as `run` and
  `simulate` write them) read block by block with 1 and 2 threads through Zarr's own API and
  through the pipelines' reader (`FrameReader`: its `ChunkDecoder`) into a new array a block or
  into a buffer reused (as the engines do), in frames/s and process CPU-ms a frame (user and
  system); for Zarr also the CPU time of its event-loop thread (`zarr_io`, from /proc/self/task),
  the share that does not spread over threads.
* **Blocks smaller than the chunks**: a video with chunks of 16 frames (as `simulate` and `ingest`
  wrote them at any frame size before 2026-11-27, and other tools may) read in blocks of 4 (a 2048² run's blocks), through Zarr's API, through the
  pipelines' reader as it is (Blosc: c-blosc decompresses only the part of the chunk a block
  needs), as it is for codecs without partial decoding (each chunk decoded once, its blocks
  served from it) and keeping no decoded chunk (each block decodes its whole chunk again: what
  the reader did before), the same figures.
* **Writes**: blocks of whole chunks written through Zarr's API and through the pipelines' writer
  (`FrameWriter`: its `ChunkEncoder`), float32 and uint16, 1 and 2 threads, the same figures.
* **uint16 code**: `io.packing.encode` to uint16, the Numba pass against the NumPy code.
* **Progress records**: `Checkpoint.commit` per block (marker, states every k-th block, pruning)
  at 1 000 and 4 000 blocks: the cost a block must not grow with the run.

Writes benchmarks/results/io_cpu.json/.md (``--name``: another stem).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from _common import machine, write_results
from pipeline import bench, jit
from pipeline.io import zarr_store
from pipeline.io.checkpoint import Checkpoint
from pipeline.io.packing import encode

HERE = Path(__file__).resolve().parent


def bench_reads(path: Path, repeats: int, threads_list=(1, 2)) -> dict:
    ds = zarr_store.open_input(path)
    arr, reader = ds.frames, ds.reader()
    assert reader._decoder is not None, "the video should be readable by the pipelines' own decoder"
    t, c = arr.shape[0], arr.chunks[0]
    blocks = [(s, min(s + c, t)) for s in range(0, t, c)]
    bufs = threading.local()

    def into_reused(a, b):  # what the CPU engine does now: read into a buffer the thread had before
        buf = getattr(bufs, "buf", None)
        if buf is None or buf.shape[0] != b - a:
            buf = bufs.buf = np.empty((b - a,) + arr.shape[1:], arr.dtype)
        return reader.read_block(a, b, skip=False, out=buf)[0]

    ways = {"zarr API": lambda a, b: np.asarray(arr[a:b]),
            "pipeline reader, new array a block": lambda a, b: reader.read_block(a, b, skip=False)[0],
            "pipeline reader, reused buffer": into_reused}
    for a, b in blocks[:2]:
        for name in list(ways)[1:]:
            np.testing.assert_array_equal(ways["zarr API"](a, b), ways[name](a, b))
    rows = {}
    for threads in threads_list:
        runs = _alternate({name: (lambda fn=fn: _threads(threads, fn, blocks)) for name, fn in ways.items()},
                          repeats, t)
        for name, run in runs.items():
            rows[f"{name}, {threads} thread{'s' if threads > 1 else ''}"] = run
    return rows


def bench_partial_reads(path: Path, repeats: int, threads_list=(1, 2), block: int = 4) -> dict:
    """Blocks of ``block`` frames from larger chunks: Zarr's API, the pipelines' reader, and that reader
    without its decoded-chunk cache (``PARTIAL_CACHE_BYTES = 0``)."""
    ds = zarr_store.open_input(path)
    arr = ds.frames
    t = arr.shape[0]
    assert arr.chunks[0] > block, "the video's chunks should be larger than the blocks"
    blocks = [(s, min(s + block, t)) for s in range(0, t, block)]
    rows = {}
    for threads in threads_list:
        def reader(way: str):
            r = ds.reader()
            if way != "part":  # what a codec without partial decoding gets
                r._decoder._decode_part = None
            if way == "again":  # what the reader did before
                r._decoder._keep = 0
            return lambda a, b: r.read_block(a, b, skip=False)[0]

        ways = {"zarr API": lambda: (lambda a, b: np.asarray(arr[a:b])),
                "pipeline reader (Blosc: only each block's part decompressed)": lambda: reader("part"),
                "pipeline reader, each chunk decoded once and kept for its blocks": lambda: reader("once"),
                "pipeline reader, each block decoding its whole chunk again": lambda: reader("again")}
        for name, make in list(ways.items())[1:]:
            fn = make()
            np.testing.assert_array_equal(fn(4, 8), np.asarray(arr[4:8]))
        # a fresh reader a run (as a run opens its input), so no run finds chunks a previous one left
        runs = _alternate({name: (lambda make=make: _threads(threads, make(), blocks)) for name, make in ways.items()},
                          repeats, t)
        for name, run in runs.items():
            rows[f"{name}, {threads} thread{'s' if threads > 1 else ''}"] = run
    return rows


def _threads(threads, fn, blocks):
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(lambda ab: fn(*ab), blocks))


def _alternate(jobs: dict, repeats: int, frames: int) -> dict:
    """Each job timed ``repeats`` times after a warm-up, the jobs taking turns (this VM's speed drifts
    between minutes, so A-then-B would time the drift): per job the median run's frames/s, and its
    process CPU split into user and system ms a frame (the system part: page faults, zeroed pages,
    copies into the page cache) and Zarr's event-loop thread's."""
    for fn in jobs.values():
        fn()
    runs: dict = {k: [] for k in jobs}
    for _ in range(repeats):
        for name, fn in jobs.items():
            loop0, r0, w0 = zarr_store.loop_thread_cpu_s(), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            fn()
            wall, r1, loop1 = time.perf_counter() - w0, resource.getrusage(resource.RUSAGE_SELF), zarr_store.loop_thread_cpu_s()
            runs[name].append({"frames_per_s": frames / wall,
                               "user_ms_per_frame": 1e3 * (r1.ru_utime - r0.ru_utime) / frames,
                               "system_ms_per_frame": 1e3 * (r1.ru_stime - r0.ru_stime) / frames,
                               "zarr_loop_cpu_ms_per_frame": (1e3 * (loop1 - loop0) / frames
                                                              if loop0 is not None and loop1 is not None else None)})
    out = {}
    for name, rs in runs.items():
        rs = sorted(rs, key=lambda r: r["frames_per_s"])
        med = rs[len(rs) // 2]
        out[name] = {**med, "cpu_ms_per_frame": med["user_ms_per_frame"] + med["system_ms_per_frame"],
                     "frames_per_s_runs": [round(r["frames_per_s"], 1) for r in runs[name]]}
    return out


def bench_writes(tmp: Path, frames: int, size: int, repeats: int, threads_list=(1, 2)) -> dict:
    """Blocks of 4 frames (one chunk each, bitshuffle-lz4) written through Zarr's API and through the
    pipelines' writer (FrameWriter: its ChunkEncoder), float32 and uint16, 1 and 2 threads."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(300, (4, size, size))
    rows = {}
    for dtype in (np.float32, np.uint16):
        block = (counts / 300.0).astype(np.float32) if dtype == np.float32 else counts.astype(np.uint16)
        for threads in threads_list:
            def write(way, threads=threads, block=block, dtype=dtype):
                w = zarr_store.OutputWriter(tmp / f"w-{way}.zarr", overwrite=True)
                target = w.create("frames", (frames, size, size), dtype, chunks=(4, size, size))
                if way == "pipeline writer":
                    target = w.frames_target(target)
                _threads(threads, lambda a, b: target.__setitem__(slice(a, b), block),
                         [(a, a + 4) for a in range(0, frames, 4)])
                w.commit()

            runs = _alternate({way: (lambda way=way: write(way)) for way in ("zarr API", "pipeline writer")}, repeats,
                              frames)
            for way, run in runs.items():
                rows[f"{np.dtype(dtype).name}, {way}, {threads} thread{'s' if threads > 1 else ''}"] = run
    a = zarr_store.open_input(tmp / "w-pipeline writer.zarr").frames  # the last one written: the data, back
    np.testing.assert_array_equal(np.asarray(a[frames - 4:frames]), counts.astype(np.uint16))
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
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", default="1,2", help="thread counts for the reads and writes, comma-separated")
    ap.add_argument("--parts", default="reads,partial,writes,code,commits", help="which parts to run, comma-separated")
    ap.add_argument("--name", default="io_cpu", help="results file stem (a GPU node's session: io_<node>)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    threads = tuple(int(v) for v in args.threads.split(","))
    parts = set(args.parts.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="xray-bench-io-"))
    reads = partial = writes = code = commits = {}
    try:
        if parts & {"reads", "partial"}:
            seed = bench._simulate(tmp / "seed.zarr", 8, args.size)
        if "reads" in parts:
            video = bench._repeat_video(seed, tmp / "video.zarr", args.frames, 4)
            reads = bench_reads(video, args.repeats, threads)
        if "partial" in parts:
            video16 = bench._repeat_video(seed, tmp / "video16.zarr", args.frames, 16)
            partial = bench_partial_reads(video16, args.repeats, threads)
        if "writes" in parts:
            writes = bench_writes(tmp, args.frames, args.size, args.repeats, threads)
        if "code" in parts:
            code = bench_code(1024, args.repeats)
        if "commits" in parts:
            commits = bench_commits(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = {"benchmark": "host I/O: reads, uint16 code, progress records", "machine": machine(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "video": f"{args.frames} x {args.size} x {args.size} uint16, chunks of 4 frames, bitshuffle-lz4"}
    lines = [f"# Host I/O ({meta['machine']}, {meta['date']})", ""]
    for rows, what, title in (
            (reads, "read through", f"Reads of {meta['video']}, block by block (the median of {args.repeats} runs "
             "after a warm-up, the ways taking turns; CPU time of the whole process, split into user and system time):"),
            (partial, "read through", "Reads of the same video stored in chunks of 16 frames, in blocks of 4 (a 2048² "
             "run's blocks; a fresh reader a run), the same way:"),
            (writes, "written as, through", f"Writes of {args.frames} frames of {args.size}², blocks of 4 frames (one "
             "chunk each, bitshuffle-lz4; Poisson counts, float32 as counts / 300), the same way:")):
        if rows:
            lines += [title, ""]
            _io_table(lines, what, rows)
            lines.append("")
    if code:
        lines += ["uint16 code of float32 frames (`io.packing.encode`, 16 x 1024 x 1024, median):", "",
                  "| code | ms per 1024² frame |", "|---|---:|"]
        lines += [f"| {k} | {r['ms_per_frame']:.2f} |" for k, r in code.items()]
        lines.append("")
    if commits:
        lines += ["Progress records (`Checkpoint.commit`: marker, states every k-th block, pruning):", "",
                  "| run | ms per commit | ms per commit, last 200 |", "|---|---:|---:|"]
        lines += [f"| {k} | {r['ms_per_commit']:.2f} | {r['ms_per_commit_last_200']:.2f} |"
                  for k, r in commits.items()]
    write_results(args.out, args.name, {"meta": meta, "reads": reads, "partial_reads": partial, "writes": writes,
                                        "uint16_code": code, "commits": commits}, lines)


def _io_table(lines: list, what: str, rows: dict) -> None:
    lines += [f"| {what} | frames/s | CPU-ms a frame: user | system | Zarr event-loop thread |",
              "|---|---:|---:|---:|---:|"]
    for k, r in rows.items():
        loop = r["zarr_loop_cpu_ms_per_frame"]
        lines.append(f"| {k} | {r['frames_per_s']:.1f} | {r['user_ms_per_frame']:.1f} | {r['system_ms_per_frame']:.1f} | "
                     f"{'' if loop is None else f'{loop:.1f}'} |")


if __name__ == "__main__":
    main()
