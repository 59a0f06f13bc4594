"""The GPU engine's host side alone: Zarr to Zarr through the conveyor with an infinitely fast "GPU".

Usage: python benchmarks/bench_conveyor_host.py [--size 1024] [--frames 128] [--repeats 5] [--name NAME]

The Zarr-to-Zarr target of the GPU engine (within 0.9 of a plain Zarr copy with the same codecs
and threads) is a claim about the host: reading and decompressing ahead, compressing and writing
behind, the pinned pools, the conveyor thread's hand-offs. This measures that side on any machine,
GPU or not: the conveyor runs its own threads and logic unchanged on a stand-in device whose
transfers and kernels cost the host nothing (on a GPU they are DMA and device work). Its launch
runs nothing, so the conveyor thread's own launch work (Python and CuPy calls per block: small for
the fused flat field, more for chains with denoisers) is left out. Its pinned
output blocks hold a real corrected block (the CPU chain's output for the first frames), so the
writers compress realistic data. Against, in the same process, alternating (medians):
* the plain Zarr copy uint16 -> float32 (Zarr's API, Dask threads): the target's roofline;
* the same copy through the pipelines' own reader and writer;
* the CPU engine on the same chain (flat field with bad pixels).
With the default threads (the conveyor: half the cores reading, all of them writing; Dask: one per
core). Writes benchmarks/results/conveyor_host_<name>.json and .md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import pipeline
from _common import alternate, machine, write_results
from pipeline import api
from pipeline.bench import _zarr_copy
from pipeline.conveyor import Conveyor
from pipeline.io import zarr_store
from pipeline.schedule import process_frames
from pipeline.stages import build_chain

HERE = Path(__file__).resolve().parent


class HostOnlyDevice:
    """The conveyor's device interface with free transfers and kernels: only the host's work remains.

    Device buffers are never touched (np.empty: address space only); pinned float32 blocks are
    filled once with ``template`` (a corrected block) so that what the writers compress is real.
    """

    name = "host-only"

    def __init__(self, template: np.ndarray):
        self.template = template
        self.pinned: list[np.ndarray] = []

    def free_bytes(self):
        return 64 << 30

    def empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def empty_pinned(self, shape, dtype):
        a = np.empty(shape, dtype)
        if a.dtype == np.float32 and a.ndim == 3:
            reps = -(-a.shape[0] // self.template.shape[0])
            a[...] = np.concatenate([self.template] * reps)[: a.shape[0]]
        self.pinned.append(a)
        return a

    def is_pinned(self, array):
        if not isinstance(array, np.ndarray) or not array.flags.c_contiguous or array.size == 0:
            return False
        p = array.ctypes.data
        return any(b.ctypes.data <= p and p + array.nbytes <= b.ctypes.data + b.nbytes for b in self.pinned)

    def upload(self, array):
        return np.asarray(array)

    def download(self, array):
        return np.asarray(array)

    def stream(self):
        return object()

    def event(self):
        return object()

    def record(self, event, stream):
        pass

    def wait(self, stream, event):
        pass

    def sync(self, event):
        pass

    def synchronize(self):
        pass

    def h2d(self, dst, src, stream):
        pass

    def d2h(self, dst, src, stream):
        pass

    def launch(self, stream, fn):
        pass  # the stages' work is the device's, not the host's

    def prepare(self, params):
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--frames", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--name", default="cpu", help="results file: conveyor_host_<name>.md")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="xray-bench-conveyor-"))
    try:
        src = tmp / "input.zarr"
        pipeline.simulate(src, frames=args.frames, size=(args.size, args.size), truth_frames=False)
        cfg = pipeline.load_config()
        ds = zarr_store.open_input(src)
        t, h, w = ds.shape
        chunk = api.choose_chunk_frames(cfg, (h, w), t)
        chain = build_chain(cfg, api.calibrate(src, cfg), ds.frames.dtype)
        first, _ = ds.reader().read_block(0, min(chunk, t), skip=False)
        template, _ = chain(first)
        template = np.ascontiguousarray(template, np.float32)
        conv = Conveyor(chain, (h, w), device=HostOnlyDevice(template))

        def run(engine):
            wr = zarr_store.OutputWriter(tmp / "out.zarr", overwrite=True)
            target = wr.create("frames", (t, h, w), np.float32, chunks=(chunk, h, w), codec=cfg.output.codec,
                               level=cfg.output.level, fill_value=np.nan)
            engine(ds.reader(), wr.frames_target(target), chain, chunk_frames=chunk)
            wr.commit()

        jobs = {
            "zarr copy uint16->float32 (Zarr's API)": lambda: _zarr_copy(src, tmp / "c.zarr", np.float32, cfg, chunk),
            "zarr copy uint16->float32 (pipeline I/O)": lambda: _zarr_copy(src, tmp / "c.zarr", np.float32, cfg, chunk,
                                                                           own_io=True),
            "CPU engine, flat field": lambda: run(process_frames),
            "GPU engine's host side, flat field (free device)": lambda: run(conv.process_frames),
        }
        waits = []

        def conveyor_waits(name):
            if name.startswith("GPU"):
                waits.append({**{k: round(v, 3) for k, v in conv.waits.items()}, "own": round(conv.busy_s, 3)})

        # the warm-up also fills the page cache and the conveyor's pools
        times = alternate(jobs, args.repeats, after=conveyor_waits)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    res = {k: {"seconds": v, "median_s": statistics.median(v), "frames_per_s": t / statistics.median(v),
               "spread_pct": 100 * (max(v) - min(v)) / statistics.median(v)} for k, v in times.items()}
    copy = res["zarr copy uint16->float32 (Zarr's API)"]["frames_per_s"]
    for r in res.values():
        r["vs_zarr_copy"] = r["frames_per_s"] / copy
    meta = {"benchmark": "the GPU engine's host side, Zarr to Zarr, against a plain Zarr copy", "machine": machine(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
            "video": f"{t} x {h} x {w} uint16 (simulated, eu-gc)", "chunk_frames": chunk,
            "output": f"float32, {cfg.output.codec} level {cfg.output.level}", "cores": os.cpu_count(),
            "conveyor_threads": {"readers": conv.readers, "writers": conv.writers}, "repeats": args.repeats}
    lines = [f"# The GPU engine's host side ({meta['machine']}, {meta['date']})", "",
             f"{meta['video']}, chunk {chunk} frames, output {meta['output']}; medians of {args.repeats} alternating "
             f"runs after a warm-up. The conveyor ran on a stand-in device whose transfers and kernels cost the host "
             f"nothing ({conv.readers} reading, {conv.writers} writing threads); Dask used {os.cpu_count()} threads.", "",
             "| what | frames/s | vs the Zarr copy | median s | spread % |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {r['frames_per_s']:.1f} | {r['vs_zarr_copy']:.2f} | {r['median_s']:.3f} | {r['spread_pct']:.0f} |"
              for k, r in res.items()]
    lines += ["", "The conveyor thread's waits in each timed run (s: on the readers, the device, the writers; "
              "and its own work): " + "; ".join(str(wt) for wt in waits) + ".", ""]
    write_results(args.out, f"conveyor_host_{args.name}", {"meta": meta, "results": res, "conveyor_waits": waits},
                  lines)


if __name__ == "__main__":
    main()
