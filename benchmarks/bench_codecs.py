"""Output codecs and block checksums: write/read speed and size on corrected float32 frames.

Usage: python benchmarks/bench_codecs.py [--frames 32] [--size 1024]

The frames are simulated (eu-gc) and flat-field corrected, as a run writes them; each codec
writes them into a Zarr array with the run's chunks (16 frames), then reads them back; the
raw uint16 frames likewise. Also the cost of a block checksum (what `run` stores per block for
`--resume`): the one used (CRC-32C in hardware) against zlib's CRC-32 and BLAKE2b-128. Writes benchmarks/results/codecs_cpu.json/.md.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import zlib
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import pipeline
from _common import machine, write_results
from pipeline.bench import time_it
from pipeline.config import RunConfig
from pipeline.io import zarr_store
from pipeline.stages import FlatFieldStage

HERE = Path(__file__).resolve().parent
CODECS = ["bitshuffle-lz4", "lz4", "zstd", "none"]


def _median_time(fn, repeats=3):
    return time_it(fn, repeats=repeats, warmup=1)["median_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="xray-codecs-"))
    rows = {}
    try:
        src = pipeline.simulate(tmp / "s.zarr", frames=args.frames, size=(args.size, args.size), truth_frames=False)
        raw = np.ascontiguousarray(zarr_store.open_input(src).reader()[:])
        ff = FlatFieldStage(pipeline.calibrate(src), RunConfig().flatfield, raw.dtype)
        corrected = ff.tail(*ff.head(raw))
        for what, data in (("float32 corrected", corrected), ("uint16 raw", raw)):
            for codec in CODECS:
                path = tmp / f"{codec}.zarr"

                def write():
                    w = zarr_store.OutputWriter(path, overwrite=True)
                    a = w.create("frames", data.shape, data.dtype, chunks=(16,) + data.shape[1:], codec=codec, level=1)
                    a[:] = data
                    w.commit()

                tw = _median_time(write)
                arr = zarr_store.open_input(path).frames
                tr = _median_time(lambda: arr[:])
                size = sum(f.stat().st_size for f in (path / "frames").rglob("*") if f.is_file())
                rows[f"{what} / {codec}"] = {"write_frames_per_s": data.shape[0] / tw,
                                            "read_frames_per_s": data.shape[0] / tr,
                                            "ratio": data.nbytes / size}
        block = corrected[:16]
        from pipeline.io.checkpoint import CHECKSUM, block_checksum

        checks = {
            f"block_checksum ({CHECKSUM}, used)": lambda: block_checksum(block),
            "crc32 (zlib)": lambda: zlib.crc32(block.view(np.uint8).reshape(-1)),
            "blake2b-128": lambda: hashlib.blake2b(block.view(np.uint8).reshape(-1), digest_size=16).digest(),
        }
        sums = {k: 1e3 * _median_time(f) / block.shape[0] for k, f in checks.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = {"benchmark": "output codecs and block checksums", "machine": machine(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "video": f"{args.frames} x {args.size} x {args.size}, simulated eu-gc", "chunk_frames": 16, "level": 1}
    lines = [f"# Output codecs ({meta['machine']}, {meta['date']})", "",
             f"{meta['video']}; Zarr arrays with 16-frame chunks, level 1; median of 3 after a warm-up", "",
             "| data / codec | write frames/s | read frames/s | compression ratio |", "|---|---:|---:|---:|"]
    for k, r in rows.items():
        lines.append(f"| {k} | {r['write_frames_per_s']:.1f} | {r['read_frames_per_s']:.1f} | {r['ratio']:.2f} |")
    lines += ["", "| block checksum | ms per frame |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in sums.items()]
    write_results(args.out, "codecs_cpu", {"meta": meta, "codecs": rows, "checksum_ms_per_frame": sums}, lines)


if __name__ == "__main__":
    main()
