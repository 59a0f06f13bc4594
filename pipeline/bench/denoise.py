"""The denoising methods side by side: method x (PSNR gain, trail behind a moving object, CPU and GPU frames/s).

Every row is what ``denoise.enabled: true`` runs with ``denoise.method`` = the row (the motion-adaptive temporal
filter, then the spatial method per frame inside the GAT, with the schema's parameters), all in one process on the
same inputs:

* **PSNR gain**: the tests' static scene (tests/ops/test_denoise.py: 32 x 256 x 256, 100 quanta per pixel, 80
  counts per quantum, seed 1, flat-field corrected by a default run), the second half of the frames (16-31)
  against ``truth/frames`` (defect pixels excluded), minus the corrected frames' PSNR;
* **trail**: the tests' moving scene at 1, 3 and 6 px/frame, mean of (result - truth) over the pixels the board
  uncovered in the last 10 frames (frames 4+), % of the board's contrast;
* **CPU frames/s**: 8 frames of 1024 x 1024 float32 (the static scene's corrected frames tiled 4 x 4), temporal
  filter + spatial step as the pipeline's stages call them, best of ``repeats`` runs in turns; the Numba kernels
  on 1 thread and on all cores (the engine's threads); NumPy/SciPy code runs on one thread either way;
* **GPU frames/s** (``device="gpu"`` only): the same on 2048 x 2048 frames (the scene tiled 8 x 8) already on the
  device, each timed run ending synchronised; otherwise not measured, and the table says so.

:func:`bench_denoise_methods` measures; :func:`rows_table` and :func:`table` write the Markdown
(``benchmarks/bench_denoise_methods.py`` writes ``denoise_methods_cpu.json/.md`` with them, ``xray-pipeline bench``
puts the rows in its own report).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import api
from ..config import RunConfig
from ..ops.afterglow import ghost_residual, trail_mask
from ..ops.denoise import denoise_spatial, estimate_noise_model, psnr, temporal_filter
from .common import _Host, alternate, machine_description

#: row -> (temporal filter on?, spatial method, parameter overrides)
ROWS = {
    "none": (False, "none", {}),
    "temporal only": (True, "none", {}),
    "temporal + gaussian": (True, "gaussian", {}),
    "temporal + bilateral": (True, "bilateral", {}),
    "temporal + guided (default)": (True, "guided", {}),
    "temporal + nlm (quality)": (True, "nlm", {}),
    "temporal + nlm, search 1 (reduced)": (True, "nlm", {"nlm_search": 1}),
}
#: board speeds (px/frame) of the trail columns
SPEEDS = (1.0, 3.0, 6.0)


def _params() -> tuple[dict, dict]:
    """The schema's denoiser parameters and the temporal filter's keywords."""
    dn = RunConfig().denoise
    temporal = dict(gain_min=dn.temporal_gain_min, threshold=dn.temporal_threshold, smooth=dn.temporal_smooth,
                    hold=dn.temporal_hold)
    return dn.model_dump(), temporal


def scene(tmp: Path, speed: float, *, frames: int = 32, size: int = 256):
    """The tests' scene at ``speed`` px/frame, flat-field corrected by a default run.

    Returns
    -------
    tuple
        ``(frames, truth, truth attrs, defect mask)``: float32 (T, H, W), the lag-free truth (T, H, W), the
        simulation's truth attributes, and the (H, W) bad-pixel mask.
    """
    import zarr

    name = f"s{speed:g}"
    sim = api.simulate(tmp / f"{name}.zarr", frames=frames, size=(size, size), quanta_per_pixel=100,
                       counts_per_quantum=80.0, afterglow_amplitudes=(0.0,), afterglow_tau_s=(0.01,),
                       speed_px_per_frame=speed, seed=1, overwrite=True)
    api.run(sim, tmp / f"{name}-o.zarr", overwrite=True)
    g = zarr.open_group(str(sim), mode="r")
    y = zarr.open_group(str(tmp / f"{name}-o.zarr"), mode="r")["frames"][:]
    return y, g["truth/frames"][:], dict(g["truth"].attrs), g["truth/bad_pixels"][:] != 0


def denoise(y, noise, row: str, params: dict, temporal: dict):
    """The row's denoising of (T, H, W) float32 frames (NumPy or CuPy), as the pipeline's stages call it."""
    on, method, over = ROWS[row]
    if on:
        y, _ = temporal_filter(y, None, noise=noise, **temporal)  # a new block (the stage filters in place)
    return denoise_spatial(y, method, noise=noise, anscombe=True, params={**params, **over})


def psnr_gain(est, y, truth, peak: float, bad, first: int) -> float:
    """Mean PSNR of frames ``first``+ of ``est`` minus that of the corrected frames ``y`` (defects excluded)."""
    def score(e):
        e = np.array(e[first:])
        e[:, bad] = truth[first:, bad]
        return float(np.mean([psnr(e[k], truth[first + k], peak) for k in range(e.shape[0])]))

    return score(est) - score(y)


def trail_pct(est, truth, attrs: dict) -> float:
    """Mean trail behind the board over frames 4+, % of its contrast (as tests/ops/test_denoise.py)."""
    ol = attrs["open_level"]
    contrast = attrs["board"]["absorbance"] * ol
    mask, _ = trail_mask(truth, None, background=0.999 * ol, threshold=ol - 0.5 * contrast, window=10)
    g = ghost_residual(est[4:], truth[4:], mask[4:], contrast=contrast)
    return float(100 * np.mean(g[np.isfinite(g)]))


def _tiled(y, first: int, n: int, size: int) -> np.ndarray:
    """``n`` corrected frames from ``first`` on (cycled), tiled in space to ``size`` x ``size``."""
    idx = first + np.arange(n) % (y.shape[0] - first)
    reps = -(-size // y.shape[1]), -(-size // y.shape[2])
    return np.ascontiguousarray(np.tile(y[idx], (1, *reps))[:, :size, :size], dtype=np.float32)


def cpu_fps(big, noise, repeats: int, params: dict, temporal: dict, log=print) -> dict:
    """Frames/s (best of ``repeats`` in turns) of every row on ``big``, the Numba kernels on 1 thread and on all.

    Returns
    -------
    dict
        Threads (int) -> row -> frames/s (the row ``none`` has nothing to time and is left out).
    """
    from ..cpu import _nb

    cores = os.cpu_count() or 1
    if _nb is not None:
        cores = min(cores, _nb.config.NUMBA_NUM_THREADS)
        before = _nb.get_num_threads()
    out = {}
    try:
        for threads in dict.fromkeys((1, cores)):
            if _nb is not None:
                _nb.set_num_threads(threads)
            jobs = {row: (lambda r=row: denoise(big, noise, r, params, temporal)) for row in ROWS if row != "none"}
            secs = alternate(jobs, repeats)
            out[threads] = {row: big.shape[0] / min(v) for row, v in secs.items()}
            log(f"    CPU, {threads} thread(s): " + ", ".join(f"{k} {v:.1f}" for k, v in out[threads].items()))
    finally:
        if _nb is not None:
            _nb.set_num_threads(before)
    return out


def gpu_fps(big, noise, repeats: int, params: dict, temporal: dict, log=print) -> tuple[dict, str]:
    """Frames/s (best of ``repeats`` in turns) of every row on ``big`` copied to the GPU first (not timed).

    Returns
    -------
    tuple
        ``(row -> frames/s, the device's name)``.
    """
    from ..backend import describe_device

    host = _Host("gpu")
    on = host.put(big)
    host.sync()
    jobs = {row: (lambda r=row: denoise(on, noise, r, params, temporal)) for row in ROWS if row != "none"}
    secs = alternate(jobs, repeats, sync=host.sync)
    out = {row: big.shape[0] / min(v) for row, v in secs.items()}
    log("    GPU: " + ", ".join(f"{k} {v:.1f}" for k, v in out.items()))
    return out, describe_device("gpu")


def _gpu_absent() -> str:
    """Why the GPU column is empty in a run without ``device="gpu"``."""
    from ..backend import gpu_unavailable_reason

    try:
        reason = gpu_unavailable_reason()
    except Exception as exc:  # pragma: no cover - depends on the machine
        reason = f"{type(exc).__name__}: {exc}"
    return "not measured (no device)" if reason else "not measured (--device cpu)"


def bench_denoise_methods(*, repeats: int = 3, speed_frames: int = 8, device: str = "cpu", scene_frames: int = 32,
                          scene_size: int = 256, speed_size: int = 1024, gpu_size: int = 2048, gpu_frames: int = 16,
                          log=print) -> dict:
    """Every denoising method's image quality and speed, in this process on the same inputs.

    Parameters
    ----------
    repeats : int
        Timed runs of each row per speed figure (best of them, in turns, after a warm-up).
    speed_frames : int
        Frames per timed call on the CPU.
    device : {'cpu', 'gpu'}
        With ``'gpu'`` the GPU column is measured too (arrays on the device); else it says "not measured".
    scene_frames, scene_size : int
        The simulated scenes (the tests': 32 frames of 256 x 256). The PSNR is taken over the second half of the
        frames; smaller scenes are for quick checks only.
    speed_size : int
        Side of the frames timed on the CPU (the scene tiled).
    gpu_size, gpu_frames : int
        Side and number of the frames timed on the GPU.
    log : callable
        Progress lines.

    Returns
    -------
    dict
        ``{"meta": {...}, "rows": [{"method", "gain_db", "trail_pct": {speed: %}, "cpu_fps": {threads: frames/s or
        None}, "gpu_fps": frames/s or None}, ...]}``, every row of :data:`ROWS` in order.
    """
    params, temporal = _params()
    load_before = round(os.getloadavg()[0], 2)
    tmp = Path(tempfile.mkdtemp(prefix="xray-bench-dnm-"))
    first = scene_frames // 2
    try:
        log(f"  quality: {scene_frames} frames of {scene_size}^2, static and at {', '.join(f'{s:g}' for s in SPEEDS)}"
            " px/frame")
        y, truth, attrs, bad = scene(tmp, 0.0, frames=scene_frames, size=scene_size)
        noise = estimate_noise_model(y[:8])
        peak = float(attrs["open_level"])
        moving = {s: scene(tmp, s, frames=scene_frames, size=scene_size) for s in SPEEDS}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for row in ROWS:
        r = {"method": row, "gain_db": psnr_gain(denoise(y, noise, row, params, temporal), y, truth, peak, bad, first),
             "trail_pct": {}}
        for s, (ym, tm, am, _) in moving.items():
            r["trail_pct"][f"{s:g}"] = trail_pct(denoise(ym, estimate_noise_model(ym[:8]), row, params, temporal),
                                                 tm, am)
        rows.append(r)
        log(f"    {row:<36} {r['gain_db']:+6.2f} dB, trail " + " / ".join(f"{v:+.2f}" for v in r["trail_pct"].values())
            + " %")
    log(f"  CPU speed: {speed_frames} frames of {speed_size}^2")
    big = _tiled(y, first, speed_frames, speed_size)
    fps = cpu_fps(big, noise, repeats, params, temporal, log=log)
    del big
    gpu, gpu_name = {}, None
    if device == "gpu":
        log(f"  GPU speed: {gpu_frames} frames of {gpu_size}^2 on the device")
        gpu, gpu_name = gpu_fps(_tiled(y, first, gpu_frames, gpu_size), noise, repeats, params, temporal, log=log)
    for r in rows:
        r["cpu_fps"] = {str(t): v.get(r["method"]) for t, v in fps.items()}  # none: nothing to time
        r["gpu_fps"] = gpu.get(r["method"])
    tiles = f"{math.ceil(speed_size / scene_size)} x {math.ceil(speed_size / scene_size)}"
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_description(),
            "cores": max(int(t) for t in fps) if fps else 1, "load_before": load_before,
            "load_after": round(os.getloadavg()[0], 2),
            "psnr": f"{scene_frames} x {scene_size}^2 static scene, 100 quanta/px, frames {first}-{scene_frames - 1} "
                    "vs truth, minus the corrected frames' PSNR",
            "trail": "moving board, mean (result - truth) over pixels uncovered in the last 10 frames, frames 4+",
            "cpu": f"{speed_frames} frames of {speed_size}^2 float32 (the static scene tiled {tiles}), best of "
                   f"{repeats} in turns",
            "cpu_size": speed_size, "gpu_size": gpu_size, "gpu_measured": device == "gpu",
            "gpu": (f"{gpu_frames} frames of {gpu_size}^2 float32 on the device ({gpu_name}), best of {repeats} in "
                    "turns, each run synchronised" if device == "gpu" else _gpu_absent()),
            "params": {k: v for k, v in params.items() if k.startswith(("temporal", "guided", "nlm", "bilateral",
                                                                         "gaussian"))}}
    return {"meta": meta, "rows": rows}


def rows_table(data: dict) -> list[str]:
    """The Markdown table of ``data["rows"]`` (header included)."""
    meta, rows = data["meta"], data["rows"]
    nt = str(meta["cores"])
    cpu, gsz = meta.get("cpu_size", 1024), meta.get("gpu_size", 2048)
    lines = ["| method | PSNR gain dB | trail % at 1 / 3 / 6 px/frame | "
             f"CPU frames/s {cpu}², 1 thread | CPU frames/s {cpu}², {nt} threads | GPU frames/s {gsz}² |",
             "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        tr = " / ".join(f"{v:+.2f}" for v in r["trail_pct"].values())
        f1, fn = (("—" if v is None else f"{v:.1f}") for v in (r["cpu_fps"].get("1"), r["cpu_fps"].get(nt)))
        g = r.get("gpu_fps")
        gpu = f"{g:.1f}" if g is not None else ("—" if meta.get("gpu_measured") else meta["gpu"])
        lines.append(f"| {r['method']} | {r['gain_db']:+.2f} | {tr} | {f1} | {fn} | {gpu} |")
    return lines


def describe(meta: dict) -> str:
    """One paragraph saying how each column was measured."""
    return (f"PSNR gain: {meta['psnr']}. Trail: {meta['trail']}. CPU: {meta['cpu']}. GPU: {meta['gpu']}. "
            f"Load average during the run: {meta['load_before']} -> {meta['load_after']} (other jobs share the "
            "cores).")


def table(data: dict) -> list[str]:
    """The standalone results file (``denoise_methods_<device>.md``): title, how it was measured, targets, rows."""
    meta = data["meta"]
    return [f"# Denoising methods side by side ({meta['machine']}, {meta['date']})", "", describe(meta),
            "Targets (#24): >= 6 dB, <= 1 % trail, >= 50 frames/s at 1024^2 on 2 cores, >= 3000 frames/s at 2048^2 "
            "on an H100.", "", *rows_table(data)]
