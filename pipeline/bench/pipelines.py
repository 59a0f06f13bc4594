"""Zarr-to-Zarr pipelines against the plain Zarr copy (their roofline), and scaling over frames and workers."""


from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .. import api
from ..config import RunConfig
from ..io import zarr_store
from .common import _afterglow_model, _entry, _host_counters, _host_use, _repeat_video, _simulate, peak_rss_mib


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
    from ..schedule import process_frames

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
    """Frames/s and peak RSS against video length; frames/s against worker threads.

    The pipeline is flat-field + afterglow + temporal filter.
    """
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


# --------------------------------------------------------------------------- child-process entry


def _main(argv: list[str]) -> None:  # pragma: no cover - child-process entry, exercised by bench_scaling
    if len(argv) >= 5 and argv[0] == "point":
        print(json.dumps(_point(Path(argv[1]), Path(argv[2]), argv[3], argv[4], argv[5:])))
        return
    raise SystemExit("usage: python -m pipeline.bench point INPUT OUTPUT CALIBRATION|'' CONFIG_JSON [OVERRIDES...]")
