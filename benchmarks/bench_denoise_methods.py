"""The default denoiser chosen on the numbers: method x (PSNR gain, trail, CPU frames/s, GPU frames/s).

Usage: python benchmarks/bench_denoise_methods.py [--speed-frames 8] [--repeats 3]

A thin wrapper: the measurement is :func:`pipeline.bench.denoise.bench_denoise_methods` (its module docstring says
how each column is measured), the same that ``xray-pipeline bench`` puts in its report. Every row is what
``denoise.enabled: true`` runs with ``denoise.method`` = the row; PSNR gain on the tests' static scene (32 x 256²,
100 quanta per pixel), trail at 1, 3 and 6 px/frame, CPU frames/s on 8 frames of 1024² with the Numba kernels on
1 thread and on all cores. The GPU column is left "not measured" here (``xray-pipeline bench --device gpu``
measures it).

Writes benchmarks/results/denoise_methods_cpu.json and .md.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from _common import write_results
from pipeline.bench.denoise import bench_denoise_methods, table

HERE = Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed-frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    data = bench_denoise_methods(repeats=args.repeats, speed_frames=args.speed_frames, log=partial(print, flush=True))
    write_results(args.out, "denoise_methods_cpu", data, table(data))


if __name__ == "__main__":
    main()
