"""Throughput benchmarks: every stage alone and whole pipelines, against rooflines and peers, in one run.

``xray-pipeline bench`` (and ``make bench``) calls :func:`run_benchmarks`. Everything is
measured in the same process on the same inputs, so ratios are meaningful even on a busy
machine whose absolute speed drifts:

* **stages alone** (in memory, one block of frames): flat-field, afterglow removal, the
  temporal filter, the spatial denoisers (the configured one, guided, NLM, bilateral); each
  against the **memory-copy roofline** of the same bytes (``np.copyto`` of the stage's input into an
  array of its output's dtype; CuPy: the device-to-device copy);
* **peers** on the same data: a textbook NumPy flat-field loop, algotom's
  ``flat_field_correction`` (when installed), scikit-image's denoisers, and a
  straightforward one-ROI-at-a-time MTF;
* **whole pipelines** (Zarr to Zarr through ``pipeline.run``) against the **Zarr-copy
  roofline**: the input copied to a new array with the output's chunks, codec and threads;
* **the slanted-edge MTF** at 128² and 256² ROIs: batched, one ROI at a time, and the textbook
  per-ROI peer (:func:`bench_mtf_sizes`);
* **the denoising methods side by side**: PSNR gain, trail behind a moving object and CPU (and,
  with ``device="gpu"``, GPU) frames/s of each ``denoise.method`` (:mod:`.denoise`);
* **scaling**: frames/s and peak resident memory (each point in a fresh child process) as
  the video grows, and frames/s against the number of worker threads;
* **start-up**: cold and warm wall time of command-line calls, each a fresh process (:mod:`.startup`).

Each figure is the median of ``repeats`` timed runs after a warm-up, with its spread
((max - min) / median); the denoising methods' frames/s are the best of ``repeats`` runs in
turns. Results go to ``<out>/bench_<device>.json`` and ``.md`` and two PNG plots.
"""


from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import api
from ..backend import describe_device
from ..config import RunConfig
from .common import (BENCH_AFTERGLOW, _host_counters, _Host, _host_use, _repeat_video, _simulate, alternate, edge_roi,
                     machine_description, peak_rss_mib, textbook_mtf, time_it)
from .denoise import bench_denoise_methods
from .pipelines import PIPELINES, _zarr_copy, bench_pipelines, bench_scaling
from .report import write_report
from .startup import bench_startup
from .stages import SPATIAL_METHODS, bench_mtf, bench_mtf_sizes, bench_stages

__all__ = ["run_benchmarks", "bench_stages", "bench_mtf", "bench_mtf_sizes", "bench_pipelines", "bench_scaling",
           "bench_denoise_methods", "bench_startup", "write_report", "time_it", "alternate", "edge_roi",
           "textbook_mtf", "peak_rss_mib", "machine_description", "BENCH_AFTERGLOW", "PIPELINES", "SPATIAL_METHODS",
           "_Host", "_host_counters", "_host_use", "_repeat_video", "_simulate", "_zarr_copy"]


def run_benchmarks(*, device: str = "cpu", sizes=(512, 1024), frames: int = 128, repeats: int = 3,
                   out: str | Path = "benchmarks/results", config: RunConfig | None = None,
                   scaling_frames=(256, 1024, 4096), scaling_size: int = 1024, workers=None, full_frames: int | None = None,
                   peers: bool = True, mtf: bool = True, mtf_sizes=(128, 256), mtf_rois: int = 256,
                   denoise_methods: bool = True,
                   denoise_options: dict | None = None, startup: bool = True, startup_repeats: int = 5,
                   startup_calls=None, command: str = "", log=print) -> tuple[dict, list[Path]]:
    """Run the whole benchmark and write its report; returns ``(data, written paths)``.

    Parameters
    ----------
    device : {'cpu', 'gpu'}
    sizes : frame sizes (square) for the per-stage and pipeline measurements (empty: skipped).
    frames : frames of the simulated video per size (the in-memory block is up to 16 of them).
    repeats : timed runs per figure (after one warm-up).
    out : results folder.
    config : the run configuration the stages and pipelines use (default: RunConfig()).
    scaling_frames : video lengths for the scaling measurement (empty: skipped).
    scaling_size : frame size for the scaling measurement.
    workers : worker-thread counts for the worker scaling (default: 1 .. CPU count, powers of 2).
    full_frames : frames for the full default pipeline (None: ``frames``, as every other pipeline; fewer where a
        slow spatial denoiser such as NLM is configured).
    peers : also time the peers (scikit-image, algotom, the textbook NumPy loop).
    mtf : time the slanted-edge MTF, at each ROI size of ``mtf_sizes``, ``mtf_rois`` ROIs per call.
    denoise_methods : measure every denoising method's quality and speed (:func:`bench_denoise_methods`, with
        ``repeats`` and the keywords of ``denoise_options``, e.g. smaller scenes for a quick check).
    startup : time command-line calls in fresh processes (:func:`bench_startup`), ``startup_repeats`` warm calls
        each; ``startup_calls`` picks some of them (default all).
    command : the command line, for the report's header.
    log : progress lines.
    """
    config = config or RunConfig()
    if workers is None:
        workers = sorted({1, *[2**k for k in range(1, 8) if 2**k <= (os.cpu_count() or 1)]})
    t_start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="xray-bench-"))
    data: dict = {"sizes": {}}

    def report(done: bool = False) -> list[Path]:
        """Write what is measured so far (after every part: a run stopped at a time limit leaves it)."""
        data["meta"] = _meta(device, config, repeats, time.perf_counter() - t_start,
                             (command or "xray-pipeline bench") + ("" if done else " (incomplete: still running)"))
        return write_report(data, Path(out))

    try:
        for size in sizes:
            data["sizes"][str(size)] = _bench_size(tmp, size, host=_Host(device), config=config, device=device,
                                                   frames=frames, full_frames=full_frames, repeats=repeats,
                                                   peers=peers, log=log)
            report()
        if mtf and mtf_sizes:
            log("slanted-edge MTF")
            data["mtf"] = bench_mtf_sizes(repeats=repeats, sizes=tuple(mtf_sizes), n=mtf_rois, device=device,
                                           log=log)
            report()
        if denoise_methods:
            log("denoising methods: quality and speed")
            data["denoise_methods"] = bench_denoise_methods(repeats=repeats, device=device, log=log,
                                                            **(denoise_options or {}))
            report()
        if scaling_frames:
            log(f"scaling at {scaling_size} x {scaling_size}")
            data["scaling"] = bench_scaling(tmp, config=config, device=device, size=scaling_size,
                                            frames=list(scaling_frames), workers=list(workers), log=log)
            report()
        if startup:
            log("start-up of command-line calls (fresh processes)")
            data["startup"] = bench_startup(repeats=startup_repeats, calls=startup_calls, log=log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    paths = report(done=True)
    return data, paths


def _meta(device: str, config: RunConfig, repeats: int, seconds: float, command: str) -> dict:
    """The report's header: the device and machine, the versions, the codec and how long it took."""
    from .. import jit

    return {
        "device": device,
        "device_name": describe_device(device),
        "machine": machine_description(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jit": jit.available(),
        "repeats": repeats,
        "codec": f"{config.output.codec} level {config.output.level}",
        "seconds": seconds,
        "command": command,
    }


def _bench_size(tmp: Path, size: int, *, host, config: RunConfig, device: str, frames: int, full_frames: int,
                repeats: int, peers: bool, log) -> dict:
    """The stages alone and the pipelines on a simulated ``size`` x ``size`` video of ``frames`` frames."""
    log(f"{size} x {size}: simulating {frames} frames")
    src = _simulate(tmp / f"in{size}.zarr", frames, size)
    block_frames = min(frames, 16)
    log("  stages alone")
    stages = bench_stages(src, host=host, config=config, repeats=repeats, block_frames=block_frames, peers=peers,
                          log=log)
    log("  pipelines, Zarr to Zarr")
    ff = frames if full_frames is None else min(full_frames, frames)
    pipes = bench_pipelines(src, tmp, config=config, device=device, repeats=repeats, full_frames=ff, log=log)
    shutil.rmtree(tmp / f"in{size}.zarr", ignore_errors=True)
    return {"frames": frames, "block_frames": block_frames, "full_frames": ff,
            "chunk_frames": api.choose_chunk_frames(config, (size, size), frames), "stages": stages,
            "pipelines": pipes}
