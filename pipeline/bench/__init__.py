"""Throughput benchmarks: every stage alone and whole pipelines, against rooflines and peers, in one run.

``xray-pipeline bench`` (and ``make bench``) calls :func:`run_benchmarks`. Everything is
measured in the same process on the same inputs, so ratios are meaningful even on a busy
machine whose absolute speed drifts:

* **stages alone** (in memory, one block of frames): flat-field, afterglow removal, the
  temporal filter, the configured spatial denoiser, the slanted-edge MTF; each against the
  **memory-copy roofline** of the same bytes (``np.copyto`` of the stage's input into an
  array of its output's dtype; CuPy: the device-to-device copy);
* **peers** on the same data: a textbook NumPy flat-field loop, algotom's
  ``flat_field_correction`` (when installed), scikit-image's denoisers, and a
  straightforward one-ROI-at-a-time MTF;
* **whole pipelines** (Zarr to Zarr through ``pipeline.run``) against the **Zarr-copy
  roofline**: the input copied to a new array with the output's chunks, codec and threads;
* **scaling**: frames/s and peak resident memory (each point in a fresh child process) as
  the video grows, and frames/s against the number of worker threads.

Each figure is the median of ``repeats`` timed runs after a warm-up, with its spread
((max - min) / median). Results go to ``<out>/bench_<device>.json`` and ``.md`` and two PNG
plots.
"""


from __future__ import annotations

import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from .. import api
from ..backend import describe_device
from ..config import RunConfig
from ..errors import DataError
from ..io import zarr_store
from ..io.models import save_model
from ..ops.afterglow import ratios_from_tau, remove_lag
from ..ops.denoise import denoise_spatial, estimate_noise_model, temporal_filter
from ..ops.mtf import slanted_edge_mtf
from ..stages import FlatFieldStage
from .common import (BENCH_AFTERGLOW, _Host, _host_counters, _host_use, _repeat_video, _simulate, edge_roi,  # noqa: F401
                     machine_description, peak_rss_mib, textbook_mtf, time_it)
from .pipelines import PIPELINES, _zarr_copy, bench_pipelines, bench_scaling  # noqa: F401
from .report import write_report  # noqa: F401
from .stages import bench_mtf, bench_stages  # noqa: F401

# Afterglow used by the benchmark: two terms, as fitted for the Eu glass-ceramic screen in the simulator.



def run_benchmarks(*, device: str = "cpu", sizes=(512, 1024), frames: int = 128, repeats: int = 3,
                   out: str | Path = "benchmarks/results", config: RunConfig | None = None,
                   scaling_frames=(256, 1024, 4096), scaling_size: int = 1024, workers=None, full_frames: int = 8,
                   peers: bool = True, mtf: bool = True, command: str = "", log=print) -> tuple[dict, list[Path]]:
    """Run the whole benchmark and write its report; returns ``(data, written paths)``.

    Parameters
    ----------
    device : {'cpu', 'gpu'}
    sizes : frame sizes (square) for the per-stage and pipeline measurements.
    frames : frames of the simulated video per size (the in-memory block is up to 16 of them).
    repeats : timed runs per figure (after one warm-up).
    out : results folder.
    config : the run configuration the stages and pipelines use (default: RunConfig()).
    scaling_frames : video lengths for the scaling measurement (empty: skipped).
    scaling_size : frame size for the scaling measurement.
    workers : worker-thread counts for the worker scaling (default: 1 .. CPU count, powers of 2).
    full_frames : frames for the full default pipeline (its spatial denoiser is slow on a CPU).
    """
    config = config or RunConfig()
    host = _Host(device)
    from .. import jit

    if workers is None:
        workers = sorted({1, *[2**k for k in range(1, 8) if 2**k <= (os.cpu_count() or 1)]})
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="xray-bench-"))
    data: dict = {"sizes": {}}

    def report(done: bool = False) -> list[Path]:
        """Write what is measured so far (after every part: a run stopped at a time limit leaves it)."""
        data["meta"] = {
            "device": device,
            "device_name": describe_device(device),
            "machine": machine_description(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "jit": jit.available(),
            "repeats": repeats,
            "codec": f"{config.output.codec} level {config.output.level}",
            "seconds": time.perf_counter() - t_start,
            "command": (command or "xray-pipeline bench") + ("" if done else " (incomplete: still running)"),
        }
        return write_report(data, Path(out))

    try:
        for size in sizes:
            log(f"{size} x {size}: simulating {frames} frames")
            src = _simulate(tmp / f"in{size}.zarr", frames, size)
            block_frames = min(frames, 16)
            log("  stages alone")
            stages = bench_stages(src, host=host, config=config, repeats=repeats, block_frames=block_frames,
                                  peers=peers, log=log)
            log("  pipelines, Zarr to Zarr")
            ff = min(full_frames, frames)
            pipes = bench_pipelines(src, tmp, config=config, device=device, repeats=repeats, full_frames=ff, log=log)
            data["sizes"][str(size)] = {
                "frames": frames, "block_frames": block_frames, "full_frames": ff,
                "chunk_frames": api.choose_chunk_frames(config, (size, size), frames),
                "stages": stages, "pipelines": pipes}
            shutil.rmtree(tmp / f"in{size}.zarr", ignore_errors=True)
            report()
        if mtf:
            log("slanted-edge MTF")
            data["mtf"] = bench_mtf(repeats=repeats, device=device, log=log)
            report()
        if scaling_frames:
            log(f"scaling at {scaling_size} x {scaling_size}")
            data["scaling"] = bench_scaling(tmp, config=config, device=device, size=scaling_size,
                                            frames=list(scaling_frames), workers=list(workers), log=log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    paths = report(done=True)
    return data, paths
