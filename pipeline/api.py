"""The Python API: simulate, calibrate, run, info.

Everything the command line does goes through these functions, so scripts
get the same behaviour (and the same one-line errors) as the CLI::

    import pipeline
    pipeline.simulate("sim.zarr", frames=64, size=(256, 256))
    result = pipeline.run("sim.zarr", "out.zarr", {"flatfield": {"output": "transmission"}})
    print(result.frames_per_second)
"""

from __future__ import annotations

import platform
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from ._version import __version__
from .backend import describe_device, resolve_device
from .config import RunConfig, load_config
from .errors import CalibrationError, DataError, PipelineError
from .io import zarr_store
from .ops.flatfield import Calibration, compute_calibration
from .schedule import frame_statistics, process_frames
from .simulator import SimulationSpec, build
from .stages import build_chain


@dataclass(frozen=True)
class RunResult:
    """What :func:`run` did."""

    output: Path
    frames: int
    seconds: float
    frames_per_second: float
    stages: tuple[str, ...]
    bad_pixels: int


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def choose_chunk_frames(config: RunConfig, frame_shape, n_frames: int) -> int:
    """Frames per block: the config's number, or ``chunk_bytes`` of float32 when 'auto'."""
    c = config.execution.chunk_frames
    if c == "auto":
        c = max(1, config.execution.chunk_bytes // (4 * int(np.prod(frame_shape))))
    return int(max(1, min(c, n_frames)))


# --------------------------------------------------------------------------- calibration
def calibrate(dataset: "str | Path | zarr_store.InputDataset", config: RunConfig | dict | None = None) -> Calibration:
    """Compute the flat-field calibration from a dataset's darks and flats.

    Raises :class:`CalibrationError` when darks or flats are missing.
    """
    cfg = load_config(config)
    ds = dataset if isinstance(dataset, zarr_store.InputDataset) else zarr_store.open_input(dataset)
    ff = cfg.flatfield
    missing = [n for n in ("darks", "flats") if getattr(ds, n) is None]
    if missing:
        raise CalibrationError(
            f"input '{ds.path}' has no {' and no '.join(missing)}; add them to the dataset or pass "
            "--calibration CAL.zarr (from 'xray-pipeline calibrate')"
        )
    sched = cfg.execution.scheduler if cfg.execution.scheduler != "processes" else "threads"
    dark, dark_std = frame_statistics(zarr_store.FrameReader(ds.darks, f"{ds.path}/darks"),
                                      statistic=ff.dark_statistic, with_std=True, scheduler=sched)
    flat, _ = frame_statistics(zarr_store.FrameReader(ds.flats, f"{ds.path}/flats"),
                               statistic=ff.flat_statistic, scheduler=sched)
    bp = ff.bad_pixels
    try:
        return compute_calibration(
            dark, flat, dark_noise=dark_std, exposure_ratio=ff.flat_exposure_ratio, detect=bp.detect,
            dead_below=bp.dead_below, under_below=bp.under_below, over_above=bp.over_above,
            hot_sigma=bp.hot_sigma, noisy_factor=bp.noisy_factor, window=bp.window,
        )
    except ValueError as exc:
        raise CalibrationError(f"calibration from '{ds.path}' failed: {exc}") from None


def save_calibration(cal: Calibration, path: str | Path, *, overwrite: bool = False, source: str = "") -> Path:
    """Write a calibration as its own Zarr group (reuse with ``run --calibration``)."""
    w = zarr_store.OutputWriter(path, overwrite=overwrite, inputs=[source] if source else [])
    try:
        w.write("dark", np.asarray(cal.dark, np.float32))
        w.write("gain", np.asarray(cal.gain, np.float32))
        w.write("bad_pixels", np.asarray(cal.bad_pixels, np.uint8))
        w.set_attrs({"kind": "xray-pipeline calibration", "flat_level": cal.flat_level,
                     "exposure_ratio": cal.exposure_ratio, "source": str(source), "created": _now(),
                     "version": __version__,
                     "bad_pixel_bits": {"dead": 1, "hot": 2, "noisy": 4, "over": 8, "under": 16}})
    except BaseException:
        w.abort()
        raise
    return w.commit()


def load_calibration(path: str | Path, frame_shape) -> Calibration:
    arrays, attrs = zarr_store.load_calibration(path, frame_shape)
    gain = arrays["gain"].astype(np.float32)
    if not np.all(np.isfinite(gain)) or np.any(gain <= 0):
        raise CalibrationError(f"calibration '{path}' has non-positive or non-finite gain values; recompute it")
    return Calibration(dark=arrays["dark"].astype(np.float32), gain=gain, flat_level=float(attrs["flat_level"]),
                       exposure_ratio=float(attrs.get("exposure_ratio", 1.0)), bad_pixels=arrays["bad_pixels"])


# --------------------------------------------------------------------------- run
def run(
    input: str | Path,
    output: str | Path,
    config: "RunConfig | dict | str | Path | None" = None,
    *,
    overrides: list[str] | dict | None = None,
    calibration: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> RunResult:
    """Process a recorded video: Zarr in, configured stages per block of frames, Zarr out.

    Parameters
    ----------
    input : path
        Input dataset (see the data contract in the README).
    output : path
        New Zarr group; refused if it exists unless ``overwrite``.
    config : RunConfig, mapping or YAML path, optional
        Defaults to ``configs/default.yaml``'s values.
    overrides : list of 'section.key=value' or mapping, optional
    calibration : path, optional
        Saved calibration group; otherwise computed from the input's darks/flats.
    progress : callable, optional
        Called with the number of frames finished after each block.

    Returns
    -------
    RunResult
    """
    cfg = load_config(config, overrides=overrides)
    device = resolve_device(cfg.execution.device)
    ds = zarr_store.open_input(input)
    t, h, w = ds.shape
    if t < 1:
        raise DataError(f"input '{input}/frames' holds no frames")
    writer_check = zarr_store.check_output_path(output, overwrite=overwrite, inputs=[input, calibration])
    start_wall, start = _now(), time.perf_counter()

    cal = None
    cal_source = None
    if cfg.flatfield.enabled:
        if calibration is not None:
            cal, cal_source = load_calibration(calibration, (h, w)), str(calibration)
        else:
            cal, cal_source = calibrate(ds, cfg), f"{input} (darks, flats)"
    chain = build_chain(cfg, cal, ds.frames.dtype)
    chunk = choose_chunk_frames(cfg, (h, w), t)

    writer = zarr_store.OutputWriter(writer_check, overwrite=overwrite, inputs=[input, calibration])
    try:
        target = writer.create("frames", (t, h, w), np.float32, chunks=(chunk, h, w),
                               codec=cfg.output.codec, level=cfg.output.level, fill_value=np.nan)
        process_frames(ds.reader(), target, chain, chunk_frames=chunk, scheduler=cfg.execution.scheduler,
                       num_workers=cfg.execution.num_workers, progress=progress)
        if cal is not None:
            writer.write("calibration/bad_pixels", np.asarray(cal.bad_pixels, np.uint8))
            writer.write("calibration/gain", np.asarray(cal.gain, np.float32))
        seconds = time.perf_counter() - start
        attrs = {k: v for k, v in ds.attrs.items() if k in ("pixel_pitch_mm", "frame_rate_hz")}
        attrs["provenance"] = {
            "package": "xray-pipeline",
            "version": __version__,
            "config": cfg.model_dump(mode="json"),
            "input": str(Path(input).resolve()),
            "input_shape": [t, h, w],
            "input_dtype": str(ds.frames.dtype),
            "calibration": cal_source,
            "stages": chain.names,
            "chunk_frames": chunk,
            "start": start_wall,
            "end": _now(),
            "seconds": seconds,
            "frames_per_second": t / seconds if seconds > 0 else None,
            "device": describe_device(device),
            "host": socket.gethostname(),
            "python": platform.python_version(),
        }
        writer.set_attrs(attrs)
    except BaseException:
        writer.abort()
        raise
    final = writer.commit()
    nbad = int(np.count_nonzero(cal.bad_pixels)) if cal is not None else 0
    return RunResult(final, t, seconds, t / seconds if seconds > 0 else float("inf"), tuple(chain.names), nbad)


# --------------------------------------------------------------------------- simulate
def simulate(
    output: str | Path,
    *,
    preset: str = "eu-gc",
    frames: int = 64,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    **spec_fields,
) -> Path:
    """Write a simulated recording in the data contract, with a ``truth/`` subgroup.

    Extra keyword arguments set fields of :class:`pipeline.simulator.SimulationSpec`
    (e.g. ``quanta_per_pixel=100``, ``truth_frames=False``).
    """
    try:
        spec = SimulationSpec(preset=preset, frames=frames, height=size[0], width=size[1], seed=seed, **spec_fields)
    except TypeError as exc:
        raise DataError(f"simulate: {exc}") from None
    except ValueError as exc:
        raise DataError(f"simulate: {exc}") from None
    sim = build(spec)
    t, h, w = spec.frames, spec.height, spec.width
    chunk = spec.chunk_frames
    writer = zarr_store.OutputWriter(output, overwrite=overwrite)
    try:
        raw = writer.create("frames", (t, h, w), np.uint16, chunks=(min(chunk, t), h, w))
        truth = writer.create("truth/frames", (t, h, w), np.float32, chunks=(min(chunk, t), h, w)) if spec.truth_frames else None
        writer.write("darks", sim.darks, chunks=(min(8, sim.darks.shape[0]), h, w))
        writer.write("flats", sim.flats, chunks=(min(8, sim.flats.shape[0]), h, w))
        for name, arr in sim.truth_maps.items():
            writer.write(f"truth/{name}", arr)
        for start, block, tblock in sim.iter_chunks():
            raw[start : start + block.shape[0]] = block
            if truth is not None:
                truth[start : start + block.shape[0]] = tblock
            if progress:
                progress(block.shape[0])
        writer.set_attrs(sim.attrs)
        writer.set_attrs(sim.truth_attrs, "truth")
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def info(path: str | Path) -> dict:
    """Describe a dataset: arrays (shape, dtype, chunks, codecs) and attributes."""
    return zarr_store.describe(path)


__all__ = ["RunResult", "run", "simulate", "calibrate", "save_calibration", "load_calibration", "info",
           "PipelineError"]


# --------------------------------------------------------------------------- demo
def demo(
    outdir: str | Path = "demo-output",
    *,
    preset: str = "eu-gc",
    frames: int = 64,
    size: tuple[int, int] = (512, 512),
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Simulate a recording, correct it, and write PNGs and a text summary into ``outdir``.

    Returns a mapping of what was written and measured.
    """
    from . import report
    from .ops.flatfield import BAD_PIXEL_CLASSES

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    sim_path, run_path = out / "simulated.zarr", out / "corrected.zarr"
    for p in (sim_path, run_path):
        zarr_store.check_output_path(p, overwrite=overwrite)
    simulate(sim_path, preset=preset, frames=frames, size=size, seed=seed, overwrite=overwrite)
    result = run(sim_path, run_path, overwrite=overwrite, progress=progress)

    k = frames // 2
    raw = zarr_store.read_frame(sim_path, "frames", k)
    corr = zarr_store.read_frame(run_path, "frames", k)
    truth = zarr_store.read_frame(sim_path, "truth/frames", k)
    detected = zarr_store.read_array(run_path, "calibration/bad_pixels")
    true_bad = zarr_store.read_array(sim_path, "truth/bad_pixels")
    gain = zarr_store.read_array(run_path, "calibration/gain")
    tp = int(np.count_nonzero((detected != 0) & (true_bad != 0)))
    recall = tp / max(1, int(np.count_nonzero(true_bad)))
    precision = tp / max(1, int(np.count_nonzero(detected)))
    open_beam = (truth >= 0.999 * float(np.max(truth))) & (true_bad == 0)  # pixels the scene leaves unobstructed

    def rel(a):
        v = a[open_beam]
        return float(np.nanstd(v) / np.nanmean(v))

    files = {
        "frame": report.frame_comparison(raw, corr, out / "frame_raw_vs_corrected.png",
                                         title_corr=f"flat-field corrected, frame {k} (counts)"),
        "bad_pixels": report.bad_pixel_map(detected, out / "bad_pixels.png", BAD_PIXEL_CLASSES),
        "gain": report.gain_map(gain, out / "gain_map.png"),
    }
    summary = {
        "preset": preset,
        "frames": f"{frames} of {size[0]} x {size[1]}",
        "throughput": f"{result.frames_per_second:.1f} frames/s ({result.seconds:.2f} s)",
        "bad pixels found": f"{int(np.count_nonzero(detected))} (recall {recall:.3f}, precision {precision:.3f} vs truth)",
        "open-beam non-uniformity": f"raw {rel(raw.astype(np.float64)) * 100:.2f} % -> corrected {rel(corr) * 100:.2f} % "
                                    f"(truth {rel(truth) * 100:.2f} %; the rest is quantum noise)",
        "corrected - truth": f"mean {float(np.nanmean(corr - truth)):+.2f} counts, rms {float(np.sqrt(np.nanmean((corr - truth) ** 2))):.2f} counts",
        "outputs": ", ".join(str(p.name) for p in files.values()),
    }
    text = report.summary_text(summary)
    (out / "summary.txt").write_text(text)
    return {"summary": summary, "text": text, "files": files, "result": result,
            "simulated": sim_path, "corrected": run_path}
