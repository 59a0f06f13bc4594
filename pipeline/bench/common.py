"""Shared helpers of the benchmark: timing, host counters, inputs (simulated videos, edges, the afterglow model)."""


from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .. import api
from ..errors import DataError
from ..io import zarr_store
from ..io.models import save_model


# Afterglow used by the benchmark: two terms, as fitted for the Eu glass-ceramic screen in the simulator.


BENCH_AFTERGLOW = {"amplitudes": [0.015, 0.005], "tau_s": [0.015, 0.12], "frame_rate_hz": 50.0}


# --------------------------------------------------------------------------- timing


def time_it(fn: Callable[[], object], *, repeats: int = 3, warmup: int = 1, sync: Callable[[], None] | None = None,
            budget_s: float | None = None, setup: Callable[[], object] | None = None) -> dict:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs.

    ``sync`` (e.g. a device synchronise) is called after every run, inside the timing;
    ``setup`` (e.g. restoring an input a stage works on in place) before every run, outside it.
    With ``budget_s``, repeats stop early once that much time is spent (at least one run).
    Returns ``{"median_s", "spread_pct", "seconds"}``.
    """
    for _ in range(warmup):
        if setup:
            setup()
        fn()
        if sync:
            sync()
    samples = []
    start = time.perf_counter()
    for _ in range(max(1, repeats)):
        if setup:
            setup()
            if sync:
                sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append(time.perf_counter() - t0)
        if budget_s is not None and time.perf_counter() - start > budget_s:
            break
    med = statistics.median(samples)
    spread = 100.0 * (max(samples) - min(samples)) / med if med > 0 else 0.0
    return {"median_s": med, "spread_pct": spread, "seconds": samples}


def alternate(jobs: dict, repeats: int, *, sync: Callable[[], None] | None = None) -> dict:
    """Run every job once (warm-up), then ``repeats`` times in turns, the order rotated each repeat.

    A shared machine's speed drifts between minutes: timing all of A, then all of B, would time the drift.

    Parameters
    ----------
    jobs : dict
        Name -> callable of no arguments.
    repeats : int
        Timed runs of each job.
    sync : callable, optional
        Called after every run, inside its timing (a device synchronise).

    Returns
    -------
    dict
        Name -> the seconds of each timed run, in the order run.
    """
    for fn in jobs.values():
        fn()
        if sync:
            sync()
    seconds: dict = {k: [] for k in jobs}
    order = list(jobs)
    for i in range(max(1, repeats)):
        for k in order[i % len(order):] + order[: i % len(order)]:
            t0 = time.perf_counter()
            jobs[k]()
            if sync:
                sync()
            seconds[k].append(time.perf_counter() - t0)
    return seconds


def _entry(timing: dict, *, frames: int, nbytes: int, roofline: str | None = None, kind: str = "stage",
           unit: str = "frames") -> dict:
    med = timing["median_s"]
    out = dict(timing, kind=kind, items=frames, unit=unit, per_s=frames / med, GB_per_s=nbytes / med / 1e9,
               bytes=nbytes, roofline=roofline)
    return out


# --------------------------------------------------------------------------- backends


class _Host:
    """The device the stages run on: NumPy, or CuPy through :mod:`pipeline.backend`."""

    def __init__(self, device: str):
        self.device = device
        if device == "gpu":
            from .. import backend

            reason = backend.gpu_unavailable_reason()
            if reason:
                raise DataError(f"bench --device gpu: {reason}; use --device cpu")
            self.xp = backend.cupy_module()
        else:
            self.xp = np

    def put(self, a):
        return a if self.xp is np else self.xp.asarray(a)

    def sync(self):
        if self.xp is not np:
            self.xp.cuda.runtime.deviceSynchronize()


# --------------------------------------------------------------------------- inputs


def _simulate(path: Path, frames: int, size: int, seed: int = 0) -> Path:
    return api.simulate(path, frames=frames, size=(size, size), seed=seed, truth_frames=False, overwrite=True)


def _afterglow_model(path: Path) -> Path:
    return save_model(path, dict(BENCH_AFTERGLOW, source="xray-pipeline bench (fixed two-term model)"), overwrite=True)


def _repeat_video(seed: Path, path: Path, frames: int, chunk: int) -> Path:
    """A ``frames``-long input made by cycling the frames of ``seed`` (darks, flats and attributes copied)."""
    ds = zarr_store.open_input(seed)
    src = ds.reader()[:]
    t, h, w = src.shape
    writer = zarr_store.OutputWriter(path, overwrite=True)
    try:
        arr = writer.create("frames", (frames, h, w), src.dtype, chunks=(chunk, h, w))
        for t0 in range(0, frames, chunk):
            idx = np.arange(t0, min(t0 + chunk, frames)) % t
            arr[t0 : t0 + idx.size] = src[idx]
        for name in ("darks", "flats"):
            maps = getattr(ds, name)
            if maps is not None:
                writer.write(name, maps[:], chunks=tuple(maps.chunks))
        writer.set_attrs(dict(ds.attrs))
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def edge_roi(size: int, *, sigma: float = 1.2, angle_deg: float = 5.0) -> np.ndarray:
    """A noise-free slanted edge (0.2 to 0.8) blurred by a Gaussian of ``sigma`` px.

    Its MTF is ``exp(-2 pi^2 sigma^2 f^2)``.
    """
    from scipy.special import erf

    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    ang = math.radians(angle_deg)
    d = (x - size / 2) * math.cos(ang) - (y - size / 2) * math.sin(ang)
    return 0.2 + 0.6 * 0.5 * (1 + erf(d / (sigma * math.sqrt(2))))


def _edge_rois(n: int, size: int, rng) -> np.ndarray:
    """``n`` noisy slanted-edge ROIs (:func:`edge_roi` plus 1 % Gaussian noise)."""
    return (edge_roi(size)[None] + 0.01 * rng.standard_normal((n, size, size))).astype(np.float32)


def textbook_mtf(roi: np.ndarray, oversample: int = 4) -> np.ndarray:
    """A straightforward single-ROI slanted-edge MTF (the peer): row centroids, a fitted line, 4x binned ESF, FFT."""
    img = np.asarray(roi, dtype=np.float64)
    h, w = img.shape
    d = np.abs(np.diff(img, axis=1))
    cols = np.arange(w - 1) + 0.5
    centre = (d * cols).sum(axis=1) / np.maximum(d.sum(axis=1), 1e-12)
    slope, icpt = np.polyfit(np.arange(h), centre, 1)
    yy, xx = np.mgrid[0:h, 0:w]
    dist = (xx - (slope * yy + icpt)) * math.cos(math.atan(slope))
    bins = np.round(dist * oversample).astype(np.int64)
    bins -= bins.min()
    counts = np.bincount(bins.ravel())
    esf = np.bincount(bins.ravel(), img.ravel()) / np.maximum(counts, 1)
    good = counts > 0
    esf = np.interp(np.arange(esf.size), np.nonzero(good)[0], esf[good])
    lsf = np.gradient(esf) * np.hamming(esf.size)
    mtf = np.abs(np.fft.rfft(lsf))
    return mtf / mtf[0]


# --------------------------------------------------------------------------- stages alone


def _host_counters() -> dict:
    """Counters for :func:`_host_use`: wall and process CPU time, Zarr's event-loop thread CPU time,
    and the machine's CPU time by state (the first line of /proc/stat, Linux)."""
    c = {"wall": time.perf_counter(), "cpu": time.process_time(), "loop": zarr_store.loop_thread_cpu_s()}
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        c["ticks"], c["iowait"] = sum(ticks), ticks[4]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        pass
    return c


def _host_use(c0: dict, c1: dict) -> dict:
    """What the host did between two :func:`_host_counters`: ``cores_busy`` (this process's CPU
    seconds per wall second), ``zarr_loop_busy`` (the share of the wall time Zarr's one event-loop
    thread was working: near 1, it sets the pace) and ``iowait_pct`` (the machine's CPU time spent
    waiting on the disk); None where unknown."""
    wall = max(c1["wall"] - c0["wall"], 1e-9)
    loop = (c1["loop"] - c0["loop"]) / wall if c0["loop"] is not None and c1["loop"] is not None else None
    ticks = c1.get("ticks", 0) - c0.get("ticks", 0)
    return {"cores_busy": round((c1["cpu"] - c0["cpu"]) / wall, 3),
            "zarr_loop_busy": None if loop is None else round(loop, 3),
            "iowait_pct": round(100 * (c1["iowait"] - c0["iowait"]) / ticks, 2) if ticks > 0 else None}


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this program's own memory.
    (``getrusage``'s ``ru_maxrss`` survives ``exec``: a child started from a big parent would
    report at least the parent's size.)
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:  # pragma: no cover - not Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # pragma: no cover


def machine_description() -> str:
    """Architecture, cores and processor, for the results' headers."""
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}"
