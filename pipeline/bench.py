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

from . import api
from .backend import describe_device
from .config import RunConfig
from .errors import DataError
from .io import zarr_store
from .io.models import save_model
from .ops.afterglow import ratios_from_tau, remove_lag
from .ops.denoise import denoise_spatial, estimate_noise_model, temporal_filter
from .ops.mtf import slanted_edge_mtf
from .stages import FlatFieldStage

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
            from . import backend

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
    """A noise-free slanted edge (0.2 to 0.8) blurred by a Gaussian of ``sigma`` px: MTF ``exp(-2 pi^2 sigma^2 f^2)``."""
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
def bench_stages(path: Path, *, host: _Host, config: RunConfig, repeats: int, block_frames: int,
                 peers: bool = True, log=print) -> dict:
    """Every stage alone on one in-memory block of the video at ``path``; rooflines and peers beside them."""
    xp = host.xp
    ds = zarr_store.open_input(path)
    raw_h = np.ascontiguousarray(ds.reader()[: block_frames])
    t, h, w = raw_h.shape
    px = h * w
    cal_h = api.calibrate(path, config)
    from .ops.flatfield import Calibration

    cal = Calibration(**{k: (host.put(v) if isinstance(v, np.ndarray) else v) for k, v in vars(cal_h).items()})
    raw = host.put(raw_h)
    ff = FlatFieldStage(cal, config.flatfield, raw_h.dtype)
    block = ff.tail(*ff.head(raw))
    noise = estimate_noise_model(block[: min(8, t)])
    dn = config.denoise
    r = ratios_from_tau(BENCH_AFTERGLOW["tau_s"], BENCH_AFTERGLOW["frame_rate_hz"])
    amps = np.asarray(BENCH_AFTERGLOW["amplitudes"], np.float32)
    out32 = xp.empty((t, h, w), xp.float32)
    work = xp.empty_like(block)
    res: dict = {}
    sync = host.sync

    def run(name, fn, frames, nbytes, roofline=None, kind="stage", reps=repeats, budget=None, warmup=1, setup=None):
        timing = time_it(fn, repeats=reps, warmup=warmup, sync=sync, budget_s=budget, setup=setup)
        res[name] = _entry(timing, frames=frames, nbytes=nbytes, roofline=roofline, kind=kind)
        log(f"    {name:<34} {res[name]['per_s']:9.1f} frames/s  {res[name]['GB_per_s']:7.2f} GB/s")

    b16, b32 = raw_h.itemsize * t * px, 4 * t * px
    # rooflines: a copy of the same bytes
    run("memcopy uint16->float32", lambda: xp.copyto(out32, raw), t, b16 + b32, kind="roofline")
    run("memcopy float32", lambda: xp.copyto(out32, block), t, 2 * b32, kind="roofline")
    # the stages
    # as in a run: the block buffer is reused (a run recycles written blocks), so page faults are not counted
    run("flatfield", lambda: ff.tail(*ff.head(raw, out=out32)), t, b16 + b32, "memcopy uint16->float32")

    lag_state = xp.zeros((2, h, w), xp.float32)

    def fresh():  # the stateful stages work in place: restore their input and state (not timed)
        xp.copyto(work, block)
        lag_state[...] = 0

    run("afterglow (2 terms)", lambda: remove_lag(work, amps, r, lag_state, out=work), t, 2 * b32,
        "memcopy float32", setup=fresh)
    run("denoise temporal", lambda: temporal_filter(work, None, noise=noise, gain_min=dn.temporal_gain_min,
                                                    threshold=dn.temporal_threshold, smooth=dn.temporal_smooth,
                                                    hold=dn.temporal_hold, out=work),
        t, 2 * b32, "memcopy float32", setup=fresh)
    # spatial denoisers cost far more per frame: time a few frames
    n_sp = max(1, min(t, int(4 * (512 * 512) / px)))
    sp = block[:n_sp]
    params = dn.model_dump()
    for method in dict.fromkeys([dn.method, "bilateral"]):
        if method == "none":
            continue
        run(f"denoise {method}" + (" (GAT)" if dn.anscombe else ""),
            lambda m=method: denoise_spatial(sp, m, noise=noise, anscombe=dn.anscombe, params=params),
            n_sp, 2 * 4 * n_sp * px, "memcopy float32", reps=max(1, repeats - 1), budget=20.0)
    if peers and xp is np:
        _bench_peers(run, raw_h, cal_h, sp, noise, params, t, n_sp, px, b16, b32, repeats)
    if xp is not np:
        host_out = np.empty((t, h, w), np.float32)
        run("host->device copy uint16", lambda: xp.asarray(raw_h), t, b16, kind="roofline")
        run("device->host copy float32", lambda: block.get(out=host_out), t, b32, kind="roofline")
        if peers:
            _bench_gpu_peers(run, xp, raw, cal, t, b16, b32)
    return res


def _bench_gpu_peers(run, xp, raw, cal, t, b16, b32):
    """GPU peers: the same flat-field written naively in CuPy (unfused), and httomolibgpu's when installed."""
    dark = cal.dark
    flat = (dark + cal.gain * np.float32(cal.flat_level)).astype(xp.float32)
    run("peer: cupy naive flat-field", lambda: (raw.astype(xp.float32) - dark) / (flat - dark), t, b16 + b32,
        "memcopy uint16->float32", kind="peer")
    try:
        from httomolibgpu.prep.normalize import dark_flat_field_correction
    except Exception:  # pragma: no cover - optional
        return
    try:  # its keyword options differ between releases: data, flats, darks only
        run("peer: httomolibgpu dark_flat_field_correction",
            lambda: dark_flat_field_correction(raw, flat[None], dark[None]), t, b16 + b32,
            "memcopy uint16->float32", kind="peer")
    except Exception as exc:  # pragma: no cover - depends on the installed release
        print(f"    peer httomolibgpu skipped: {type(exc).__name__}: {exc}")


def _bench_peers(run, raw, cal, sp, noise, params, t, n_sp, px, b16, b32, repeats):
    """CPU peers on the same data: textbook NumPy flat-field, algotom, scikit-image denoisers."""
    dark = np.asarray(cal.dark, np.float32)
    flat = (dark + np.asarray(cal.gain, np.float32) * np.float32(cal.flat_level)).astype(np.float32)
    out = np.empty(raw.shape, np.float32)

    def numpy_loop():
        for k in range(raw.shape[0]):
            out[k] = (raw[k] - dark) / (flat - dark)

    run("peer: numpy loop flat-field", numpy_loop, t, b16 + b32, "memcopy uint16->float32", kind="peer")
    try:
        from algotom.prep.correction import flat_field_correction
    except Exception:  # pragma: no cover - optional
        flat_field_correction = None
    if flat_field_correction is not None:
        run("peer: algotom flat_field_correction", lambda: flat_field_correction(raw, flat, dark), t, b16 + b32,
            "memcopy uint16->float32", kind="peer")
    from skimage.restoration import denoise_bilateral, denoise_nl_means

    from .ops.denoise import gat_forward

    g = np.asarray(gat_forward(sp, noise.alpha, noise.beta), np.float32)
    h = float(params.get("nlm_h", 0.8))

    def sk_nlm():
        for k in range(g.shape[0]):
            denoise_nl_means(g[k], h=h, sigma=float(params.get("nlm_sigma", 1.0)),
                             patch_size=int(params.get("nlm_patch", 5)),
                             patch_distance=int(params.get("nlm_search", 3)), fast_mode=True)

    def sk_bilateral():
        for k in range(g.shape[0]):
            denoise_bilateral(g[k], sigma_color=float(params.get("bilateral_sigma_range", 2.0)),
                              sigma_spatial=float(params.get("bilateral_sigma_spatial", 2.0)), mode="reflect")

    run("peer: skimage denoise_nl_means", sk_nlm, n_sp, 2 * 4 * n_sp * px, "memcopy float32", kind="peer",
        reps=max(1, repeats - 1), budget=20.0)
    run("peer: skimage denoise_bilateral", sk_bilateral, n_sp, 2 * 4 * n_sp * px, "memcopy float32", kind="peer",
        reps=max(1, repeats - 1), budget=20.0)


def bench_mtf(*, repeats: int, roi: int = 128, n: int = 64, device: str = "cpu", log=print) -> dict:
    """Slanted-edge MTF: the batched implementation against one ROI at a time and a textbook per-ROI peer, all
    on NumPy arrays (the CPU); with ``device="gpu"`` also the batched one on ROIs already on the GPU (its results
    come back to the host, so each timed call ends synchronised)."""
    rng = np.random.default_rng(5)
    rois = _edge_rois(n, roi, rng)
    res = {}
    jobs = {
        "mtf batched": lambda: slanted_edge_mtf(rois),
        "mtf one ROI at a time": lambda: [slanted_edge_mtf(rois[i : i + 1]) for i in range(n)],
        "peer: textbook per-ROI mtf": lambda: [textbook_mtf(rois[i]) for i in range(n)],
    }
    if device == "gpu":
        on_gpu = _Host("gpu").put(rois)
        jobs["mtf batched [gpu]"] = lambda: slanted_edge_mtf(on_gpu)
    for name, fn in jobs.items():
        timing = time_it(fn, repeats=repeats, warmup=1)
        res[name] = _entry(timing, frames=n, nbytes=4 * n * roi * roi, kind="peer" if "peer" in name else "stage",
                           unit=f"ROIs ({roi}x{roi})")
        log(f"    {name:<34} {res[name]['per_s']:9.1f} ROIs/s")
    return res


# --------------------------------------------------------------------------- whole pipelines
PIPELINES = {
    "flat-field": [],
    "flat-field, uint16 output": ["output.dtype=uint16"],
    "flat-field + afterglow + temporal": ["denoise.enabled=true", "denoise.method=none"],
    "full default (+ spatial denoiser)": ["denoise.enabled=true"],
}


def _zarr_copy(src: Path, dst: Path, dtype, config: RunConfig, chunk: int, *, own_io: bool = False) -> None:
    """Copy the frames with Dask's threads: through Zarr's own API (a plain Zarr copy, the roofline the
    pipelines are held to) or, with ``own_io``, through the pipelines' reader and writer (their chunk
    decoder and encoder)."""
    from .schedule import process_frames

    ds = zarr_store.open_input(src)
    w = zarr_store.OutputWriter(dst, overwrite=True)
    target = w.create("frames", ds.shape, dtype, chunks=(chunk,) + tuple(ds.shape[1:]), codec=config.output.codec,
                      level=config.output.level)
    t0 = time.perf_counter()
    results = process_frames(ds.reader() if own_io else ds.frames, w.frames_target(target) if own_io else target,
                             lambda b: b.astype(dtype, copy=False),
                             chunk_frames=chunk,
                             scheduler=config.execution.scheduler, num_workers=config.execution.num_workers)
    blocks_s = time.perf_counter() - t0
    w.commit()
    threads = config.execution.num_workers or os.cpu_count()
    return _Copied(api.time_account(results, blocks_s, threads=threads, blocks_s=blocks_s))


class _Copied:
    """A Zarr copy's time account, as a pipeline run's result carries its own."""

    def __init__(self, time_account: dict):
        self.time_account = time_account


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


def bench_pipelines(path: Path, tmp: Path, *, config: RunConfig, device: str, repeats: int, full_frames: int,
                    log=print) -> dict:
    """Zarr-to-Zarr: the Zarr-copy rooflines and the pipelines of :data:`PIPELINES`."""
    ds = zarr_store.open_input(path)
    t, h, w = ds.shape
    chunk = api.choose_chunk_frames(config, (h, w), t)
    model = _afterglow_model(tmp / "afterglow.json")
    cal = tmp / "cal.zarr"
    api.save_calibration(api.calibrate(path, config), cal, overwrite=True)
    short = tmp / "short.zarr"
    if full_frames < t:
        _repeat_video(path, short, full_frames, min(chunk, full_frames))
    res = {}
    b16, b32 = 2 * t * h * w, 4 * t * h * w
    jobs = {
        "zarr copy uint16": (lambda: _zarr_copy(path, tmp / "c16.zarr", np.uint16, config, chunk), t, 2 * b16),
        "zarr copy uint16->float32": (lambda: _zarr_copy(path, tmp / "c32.zarr", np.float32, config, chunk), t,
                                      b16 + b32),
        "zarr copy uint16->float32, pipeline I/O": (
            lambda: _zarr_copy(path, tmp / "c32.zarr", np.float32, config, chunk, own_io=True), t, b16 + b32),
    }
    # on a GPU, every pipeline also on the CPU engine of the same machine: the speed-up
    devices = [device] if device == "cpu" else [device, "cpu"]
    for name, over0 in PIPELINES.items():
        for dev in devices:
            over = [*over0, f"execution.device={dev}"]
            if name not in ("flat-field", "flat-field, uint16 output"):  # the others correct afterglow too
                over.append(f"afterglow.model={model}")
            src, n = (short, full_frames) if name.startswith("full") and full_frames < t else (path, t)
            out_bytes = 2 if "uint16 output" in name else 4
            key = name if dev == device else f"{name} [cpu engine]"
            jobs[key] = (lambda s=src, o=over: api.run(s, tmp / "out.zarr", config, overrides=o, calibration=cal,
                                                      overwrite=True), n, n * h * w * (2 + out_bytes))
    order = list(jobs)
    times: dict = {k: [] for k in order}
    accounts: dict = {}  # the time accounts (api.time_account) of each job's last timed run
    hosts: dict = {}  # and what the host did during it (_host_use)
    for k in order:  # warm-up: compilation, page cache
        # the full pipelines are slow on a CPU, and their Numba kernels load from the disk cache; on the GPU engine
        # the first run pays one-time costs (CuPy compiling the GAT's and the NaN checks' elementwise kernels into
        # a cold cache): warmed up there, so that its one timed run is not also its first
        if not k.startswith("full") or (device != "cpu" and not k.endswith("[cpu engine]")):
            jobs[k][0]()
    for i in range(repeats):  # rotate the order so no job always follows the same one
        for k in order[i % len(order):] + order[: i % len(order)]:
            if k.startswith("full") and i >= max(1, repeats - 1):
                continue
            c0 = _host_counters()
            done = jobs[k][0]()
            c1 = _host_counters()
            times[k].append(c1["wall"] - c0["wall"])
            hosts[k] = _host_use(c0, c1)
            if getattr(done, "time_account", None):
                accounts[k] = done.time_account
    for k in order:
        med = statistics.median(times[k])
        timing = {"median_s": med, "seconds": times[k],
                  "spread_pct": 100 * (max(times[k]) - min(times[k])) / med}
        res[k] = _entry(timing, frames=jobs[k][1], nbytes=jobs[k][2],
                        roofline=None if k.startswith("zarr") else "zarr copy uint16",
                        kind="roofline" if k.startswith("zarr") else "pipeline")
        if k in accounts:
            res[k]["time_account"] = accounts[k]
        if k in hosts:
            res[k]["host"] = hosts[k]
    for k in order:  # a float32 output: also against the copy that writes the same dtype
        if not k.startswith("zarr") and "uint16 output" not in k:
            res[k]["ratio_to_float32_copy"] = res[k]["per_s"] / res["zarr copy uint16->float32"]["per_s"]
            res[k]["ratio_to_io_copy"] = res[k]["per_s"] / res["zarr copy uint16->float32, pipeline I/O"]["per_s"]
        if f"{k} [cpu engine]" in res:
            res[k]["speedup_vs_cpu_engine"] = res[k]["per_s"] / res[f"{k} [cpu engine]"]["per_s"]
        log(f"    {k:<34} {res[k]['per_s']:9.1f} frames/s")
    for p in ("c16.zarr", "c32.zarr", "out.zarr", "short.zarr"):
        shutil.rmtree(tmp / p, ignore_errors=True)
    return res


# --------------------------------------------------------------------------- scaling (child processes)
def _point(input: Path, output: Path, calibration: str, config_json: str, overrides: list[str]) -> dict:
    """One scaling measurement in this (fresh) process: run, time, peak RSS."""
    cfg = RunConfig.model_validate(json.loads(config_json))
    t0 = time.perf_counter()
    res = api.run(input, output, cfg, overrides=overrides, overwrite=True, calibration=calibration or None)
    sec = time.perf_counter() - t0
    n = res.frames
    return {"seconds": sec, "frames": n, "frames_per_s": n / sec, "peak_rss_MiB": peak_rss_mib()}


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


def _child(input: Path, output: Path, config: RunConfig, overrides: list[str], calibration: Path | None = None,
           threads: int | None = None) -> dict:
    cmd = [sys.executable, "-m", "pipeline.bench", "point", str(input), str(output), str(calibration or ""),
           config.model_dump_json(), *overrides]
    env = dict(os.environ)
    if threads:  # k workers on k cores: the Numba kernels too
        env["NUMBA_NUM_THREADS"] = str(threads)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"bench scaling point failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_scaling(tmp: Path, *, config: RunConfig, device: str, size: int, frames: list[int], workers: list[int],
                  log=print) -> dict:
    """Frames/s and peak RSS against video length; frames/s against worker threads (flat-field + afterglow + temporal)."""
    seed = _simulate(tmp / "seed.zarr", 32, size, seed=3)
    model = _afterglow_model(tmp / "afterglow-scaling.json")
    cal = api.save_calibration(api.calibrate(seed, config), tmp / "cal-scaling.zarr", overwrite=True)
    over = ["denoise.enabled=true", "denoise.method=none", f"afterglow.model={model}", f"execution.device={device}"]
    chunk = api.choose_chunk_frames(config, (size, size), max(frames))
    out: dict = {"size": size, "pipeline": "flat-field + afterglow + temporal", "frames": [], "workers": []}
    for n in frames:
        src = _repeat_video(seed, tmp / "long.zarr", n, chunk)
        p = _child(src, tmp / "long-out.zarr", config, over, cal)
        out["frames"].append(p)
        log(f"    {n:5d} frames: {p['frames_per_s']:7.1f} frames/s, peak RSS {p['peak_rss_MiB']:.0f} MiB")
        shutil.rmtree(tmp / "long-out.zarr", ignore_errors=True)
        if n != frames[0]:
            shutil.rmtree(tmp / "long.zarr", ignore_errors=True)
    src = _repeat_video(seed, tmp / "long.zarr", frames[0], chunk)
    for k in workers:
        p = _child(src, tmp / "long-out.zarr", config, [*over, f"execution.num_workers={k}"], cal, threads=k)
        p["workers"] = k
        out["workers"].append(p)
        log(f"    {k:2d} worker threads (and Numba threads): {p['frames_per_s']:7.1f} frames/s")
        shutil.rmtree(tmp / "long-out.zarr", ignore_errors=True)
    shutil.rmtree(tmp / "long.zarr", ignore_errors=True)
    return out


# --------------------------------------------------------------------------- report
def machine_description() -> str:
    """Architecture, cores and processor, for the results' headers."""
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}"


def _ratio(res: dict, name: str):
    r = res[name].get("roofline")
    if not r or r not in res:
        return None
    return res[name]["per_s"] / res[r]["per_s"]


def _table(lines: list, res: dict, unit: str = "frames/s"):
    lines += [f"| what | {unit} | GB/s | vs roofline | roofline | median s | spread % |",
              "|---|---:|---:|---:|---|---:|---:|"]
    for name, e in res.items():
        ratio = _ratio(res, name)
        lines.append(f"| {name} | {e['per_s']:.1f} | {e['GB_per_s']:.2f} | "
                     f"{'' if ratio is None else f'{ratio:.2f}'} | {e.get('roofline') or ''} | "
                     f"{e['median_s']:.3f} | {e['spread_pct']:.0f} |")


def _time_table(lines: list, pipelines: dict):
    """Where each job's time went (its last timed run): thread-seconds, the GPU conveyor's waits, and
    what the host did (cores busy, Zarr's event-loop thread, the disk)."""
    rows = {k: e for k, e in pipelines.items() if e.get("time_account") or e.get("host")}
    if not rows:
        return
    lines += ["Where the time went (last timed run of each; thread-seconds summed over the blocks; the GPU "
              "engine's conveyor waits and what it waited on most; cores busy = process CPU-s per wall s; "
              "Zarr loop = the share of the wall time Zarr's one event-loop thread worked; iowait = the "
              "machine's CPU time waiting on the disk):", "",
              "| job | wall s | blocks s | frames/s on the blocks | read | stages | write | record | threads | "
              "waits: reads / device / writers, own work s | paced by | cores busy | Zarr loop | iowait % |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|---:|---:|---:|"]

    def num(v, fmt):
        return "" if v is None else format(v, fmt)

    for k, e in rows.items():
        a, h = e.get("time_account") or {}, e.get("host") or {}
        blocks = a.get("blocks_s")
        rate = f"{e['items'] / blocks:.1f}" if blocks else ""
        th = a.get("threads")
        th = f"{th['readers']} + {th['writers']}" if isinstance(th, dict) else ("" if th is None else str(th))
        w = a.get("gpu_waits_s")
        ws = (" / ".join(f"{w[x]:.2f}" for x in ("reads", "device", "writers")) + f", {a.get('gpu_busy_s', 0):.2f}"
              if w else "")
        lines.append(f"| {k} | {num(a.get('wall_s'), '.2f')} | {num(blocks, '.2f')} | {rate} | "
                     f"{num(a.get('read_s'), '.2f')} | {num(a.get('stages_s'), '.2f')} | {num(a.get('write_s'), '.2f')} | "
                     f"{num(a.get('record_s'), '.2f')} | {th} | {ws} | {a.get('bound_by') or ''} | "
                     f"{num(h.get('cores_busy'), '.1f')} | {num(h.get('zarr_loop_busy'), '.2f')} | "
                     f"{num(h.get('iowait_pct'), '.1f')} |")
    lines.append("")


def write_report(data: dict, out: Path) -> list[Path]:
    """``bench_<device>.json``, ``.md`` and the two plots into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    dev = data["meta"]["device"]
    stem = f"bench_{dev}"
    for size, block in data["sizes"].items():
        for name, e in block["stages"].items():
            e["ratio_to_roofline"] = _ratio(block["stages"], name)
        for name, e in block["pipelines"].items():
            e["ratio_to_roofline"] = _ratio(block["pipelines"], name)
    m = data["meta"]
    lines = [f"# Throughput benchmark ({dev}; {m['machine']}; {m['date']})", "",
             f"Made by `{m['command']}` in {m['seconds']:.0f} s; Python {m['python']}, NumPy {m['numpy']}, "
             f"Numba kernels {'on' if m['jit'] else 'off'}. Medians of {m['repeats']} runs after a warm-up; "
             "spread = (max - min) / median. Ratios are against the roofline measured in the same run.", ""]
    for size, block in data["sizes"].items():
        lines += [f"## {size} x {size}, uint16 input (simulated, eu-gc)", "",
                  f"Stages alone, in memory ({block['block_frames']} frames per block):", ""]
        _table(lines, block["stages"])
        lines += ["", f"Zarr to Zarr ({block['frames']} frames, chunk {block['chunk_frames']} frames, output "
                      f"{m['codec']}; the full default pipeline on {block['full_frames']} frames):", ""]
        _table(lines, block["pipelines"])
        lines += ["", "Against the Zarr copy that writes float32 (the pipelines' output dtype): " + ", ".join(
            f"{k} {e['ratio_to_float32_copy']:.2f}" for k, e in block["pipelines"].items()
            if "ratio_to_float32_copy" in e and "[cpu engine]" not in k) + ".",
            "Against the same copy through the pipelines' reader and writer (their own chunk decoder and "
            "encoder, not Zarr's): " + ", ".join(f"{k} {e['ratio_to_io_copy']:.2f}" for k, e in block["pipelines"].items()
                                                if "ratio_to_io_copy" in e and "[cpu engine]" not in k) + ".", ""]
        speed = [f"{k}: {e['speedup_vs_cpu_engine']:.1f}x" for k, e in block["pipelines"].items()
                 if "speedup_vs_cpu_engine" in e]
        if speed:
            lines += ["Speed-up over the CPU engine on this machine (same run): " + "; ".join(speed) + ".", ""]
        _time_table(lines, block["pipelines"])
    if data.get("mtf"):
        lines += ["## Slanted-edge MTF", ""]
        if any(k.endswith("[gpu]") for k in data["mtf"]):
            lines += ["On NumPy arrays (the CPU, one thread), and on ROIs already on the GPU where marked [gpu].", ""]
        _table(lines, data["mtf"], unit="ROIs/s")
        lines.append("")
    sc = data.get("scaling")
    if sc:
        lines += [f"## Scaling ({sc['pipeline']}, {sc['size']} x {sc['size']}, each point a fresh process)", "",
                  "| frames | frames/s | peak RSS MiB |", "|---:|---:|---:|"]
        lines += [f"| {p['frames']} | {p['frames_per_s']:.1f} | {p['peak_rss_MiB']:.0f} |" for p in sc["frames"]]
        lines += ["", "| worker threads (Dask and Numba) | frames/s |", "|---:|---:|"]
        lines += [f"| {p['workers']} | {p['frames_per_s']:.1f} |" for p in sc["workers"]]
        lines.append("")
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(data, indent=2, default=float) + "\n")
    paths[1].write_text("\n".join(lines))
    paths += _plots(data, out, stem)
    return paths


def _plots(data: dict, out: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    sizes = sorted(int(s) for s in data["sizes"])
    names = list(data["sizes"][str(sizes[0])]["stages"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8))
    for name in names:
        ys = [data["sizes"][str(s)]["stages"].get(name, {}).get("per_s", np.nan) for s in sizes]
        kind = data["sizes"][str(sizes[0])]["stages"][name]["kind"]
        style = {"roofline": "k--", "peer": ":", "stage": "-"}[kind]
        a.plot(sizes, ys, style, marker="o", label=name)
    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xlabel("frame size (pixels per side)")
    a.set_ylabel("frames/s")
    a.set_title("Stages alone (in memory)")
    a.legend(fontsize=7)
    a.grid(True, which="both", alpha=0.3)
    big = data["sizes"][str(sizes[-1])]
    labels, vals = [], []
    for grp in ("stages", "pipelines"):
        for name, e in big[grp].items():
            if e.get("ratio_to_roofline") is not None:
                labels.append(name)
                vals.append(e["ratio_to_roofline"])
    b.barh(range(len(vals)), vals, color=["C0" if not lab.startswith("peer") else "C7" for lab in labels])
    b.set_yticks(range(len(vals)), labels, fontsize=7)
    b.axvline(1.0, color="k", lw=0.8)
    b.set_xscale("log")
    b.set_xlabel("throughput / roofline (memory copy; Zarr copy for pipelines)")
    b.set_title(f"Against the rooflines at {sizes[-1]} x {sizes[-1]}")
    fig.tight_layout()
    p = out / f"{stem}_stages.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    sc = data.get("scaling")
    if sc:
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        n = [q["frames"] for q in sc["frames"]]
        a.plot(n, [q["frames_per_s"] for q in sc["frames"]], "o-", color="C0")
        a.set_xscale("log", base=2)
        a.set_xlabel("frames in the video")
        a.set_ylabel("frames/s", color="C0")
        a.set_ylim(bottom=0)
        a2 = a.twinx()
        a2.plot(n, [q["peak_rss_MiB"] for q in sc["frames"]], "s--", color="C3")
        a2.set_ylabel("peak RSS (MiB)", color="C3")
        a2.set_ylim(bottom=0)
        a.set_title(f"{sc['pipeline']}, {sc['size']}^2")
        w = [q["workers"] for q in sc["workers"]]
        b.plot(w, [q["frames_per_s"] for q in sc["workers"]], "o-")
        b.set_xlabel("worker threads")
        b.set_ylabel("frames/s")
        b.set_ylim(bottom=0)
        b.set_xticks(w)
        b.set_title("Worker scaling")
        fig.tight_layout()
        p = out / f"{stem}_scaling.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


# --------------------------------------------------------------------------- entry point
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
    from . import jit

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


def _main(argv: list[str]) -> None:  # pragma: no cover - child-process entry, exercised by bench_scaling
    if len(argv) >= 5 and argv[0] == "point":
        print(json.dumps(_point(Path(argv[1]), Path(argv[2]), argv[3], argv[4], argv[5:])))
        return
    raise SystemExit("usage: python -m pipeline.bench point INPUT OUTPUT CALIBRATION|'' CONFIG_JSON [OVERRIDES...]")


if __name__ == "__main__":  # pragma: no cover
    _main(sys.argv[1:])
