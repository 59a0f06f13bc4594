"""The Python API: simulate, calibrate, run, info.

Everything the command line does goes through these functions, so scripts
get the same behaviour (and the same one-line errors) as the CLI::

    import pipeline
    pipeline.simulate("sim.zarr", frames=64, size=(256, 256))
    result = pipeline.run("sim.zarr", "out.zarr", {"flatfield": {"output": "transmission"}})
    print(result.frames_per_second)
"""

from __future__ import annotations

import json
import os
import platform
import warnings
import socket
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from . import jit, validate
from ._version import __version__
from .backend import describe_device, resolve_device, say_once
from .config import RunConfig, load_config
from .errors import (AlreadyComplete, CalibrationError, ConfigError, DataError, OutputExistsError, PipelineError,
                     RunInterrupted)
from .io import models, zarr_store
from .ops import afterglow as ag
from .ops.flatfield import Calibration, compute_calibration, saturation_level_for
from .schedule import check_execution, frame_means, frame_statistics, is_distributed, process_frames
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
    ghost: dict | None = None
    mtf_summary: dict | None = None
    skipped_frames: list | None = None
    nonfinite_input_pixels: int = 0
    #: where the time went (:func:`time_account`)
    time_account: dict | None = None
    #: a resumed run: ``blocks_kept``, ``frames_kept`` (from the interrupted run), ``frames_computed``,
    #: ``computed_frames_per_second`` (None: not resumed)
    resumed: dict | None = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def choose_chunk_frames(config: RunConfig, frame_shape, n_frames: int) -> int:
    """Frames per block: the config's number, or ``chunk_bytes`` of float32 when 'auto'."""
    c = config.execution.chunk_frames
    if c == "auto":
        c = max(1, config.execution.chunk_bytes // (4 * int(np.prod(frame_shape))))
    return int(max(1, min(c, n_frames)))


#: Bytes a stored chunk of a recording holds at most (``simulate``, ``ingest``), unless one frame is larger
RECORDING_CHUNK_BYTES = 32 << 20


def recording_chunk_frames(frame_shape, dtype, *, limit: int = 16) -> int:
    """Frames per stored chunk of a recording written by ``simulate`` or ``ingest``.

    The largest power of two up to ``limit`` whose chunk holds at most :data:`RECORDING_CHUNK_BYTES`,
    and at least one frame: 16 frames of 1024² uint16, 4 of 2048², 1 of 4096² (32 MiB). A power of
    two so that it divides the 16-frame blocks these are written in. A reader that wants one frame
    (a viewer, Zarr's own API) then decodes at most that much, not a 512 MiB chunk of 4096² frames;
    a run's blocks may still span or split chunks (its reader decodes only the frames it needs).
    """
    frame_bytes = int(np.prod(frame_shape)) * np.dtype(dtype).itemsize
    n = 1
    while n * 2 <= limit and n * 2 * frame_bytes <= RECORDING_CHUNK_BYTES:
        n *= 2
    return n


# --------------------------------------------------------------------------- calibration
def calibrate(dataset: "str | Path | zarr_store.InputDataset", config: RunConfig | dict | None = None,
              *, afterglow_model: "models.AfterglowModel | None" = None) -> Calibration:
    """Compute the flat-field calibration from a dataset's darks and flats.

    With an afterglow model, the flat signal is divided by the model's DC lag
    gain ``G`` first: flats are recorded at steady state and hold ``G`` times
    the prompt signal, while the afterglow stage restores the prompt signal.
    Transmission is then the same with or without the stage.

    Raises :class:`CalibrationError` when darks or flats are missing.
    """
    cfg = load_config(config)
    ds = dataset if isinstance(dataset, zarr_store.InputDataset) else zarr_store.open_input(dataset)
    validate.check_sizes(cfg, ds.shape[1:])
    ff = cfg.flatfield
    missing = [n for n in ("darks", "flats") if getattr(ds, n) is None]
    if missing:
        raise CalibrationError(
            f"input '{ds.path}' has no {' and no '.join(missing)}; add them to the dataset or pass "
            "--calibration CAL.zarr (from 'xray-pipeline calibrate')"
        )
    if afterglow_model is None and cfg.afterglow.model:
        afterglow_model = load_afterglow(cfg, ds)
    sched = cfg.execution.scheduler if cfg.execution.scheduler != "processes" else "threads"
    dark, dark_std = frame_statistics(ds.array_reader("darks"), statistic=ff.dark_statistic, with_std=True,
                                      scheduler=sched)
    flat, _ = frame_statistics(ds.array_reader("flats"), statistic=ff.flat_statistic, scheduler=sched)
    raw_flat = flat  # saturation is judged on the flats as recorded (before linearisation or the lag gain)
    from .io.checkpoint import checksum

    response = load_response(cfg, dark.shape)
    if response is not None:
        from .ops.characterise import linearize

        flat = dark + linearize((flat - dark).astype(np.float32), response)
    lag_gain = 1.0
    if afterglow_model is not None:
        g = np.asarray(ag.dc_gain(afterglow_model.amplitudes, afterglow_model.ratios), dtype=np.float32)
        flat = dark + (flat - dark) / g
        lag_gain = float(np.mean(g))
    bp = ff.bad_pixels
    try:
        cal = compute_calibration(
            dark, flat, dark_noise=dark_std, exposure_ratio=ff.flat_exposure_ratio, detect=bp.detect,
            dead_below=bp.dead_below, under_below=bp.under_below, over_above=bp.over_above,
            hot_sigma=bp.hot_sigma, noisy_factor=bp.noisy_factor, window=bp.window,
            saturation_level=saturation_level_for(ds.flats.dtype, ff.saturation_level), raw_flat_map=raw_flat,
        )
        return replace(cal, lag_dc_gain=lag_gain,
                       response_checksum=checksum(response) if response is not None else None)
    except ValueError as exc:
        raise CalibrationError(f"calibration from '{ds.path}' failed: {exc}") from None


def save_calibration(cal: Calibration, path: str | Path, *, overwrite: bool = False, source: str = "",
                     inputs=()) -> Path:
    """Write a calibration as its own Zarr group (reuse with ``run --calibration``); ``inputs``: what it was made
    from besides ``source`` (never written over)."""
    w = zarr_store.OutputWriter(path, overwrite=overwrite, inputs=[source or None, *inputs])
    try:
        w.write("dark", np.asarray(cal.dark, np.float32))
        w.write("gain", np.asarray(cal.gain, np.float32))
        w.write("bad_pixels", np.asarray(cal.bad_pixels, np.uint8))
        w.set_attrs({"kind": "xray-pipeline calibration", "flat_level": cal.flat_level,
                     "exposure_ratio": cal.exposure_ratio, "source": str(source), "created": _now(),
                     "lag_dc_gain_removed": float(cal.lag_dc_gain),
                     "response_checksum": cal.response_checksum,
                     "version": __version__,
                     "bad_pixel_bits": {"dead": 1, "hot": 2, "noisy": 4, "over": 8, "under": 16}})
    except BaseException:
        w.abort()
        raise
    return w.commit()


def load_calibration(path: str | Path, frame_shape) -> Calibration:
    arrays, attrs = zarr_store.load_calibration(path, frame_shape)
    attrs = validate.calibration_attrs(attrs, str(path))
    gain = arrays["gain"].astype(np.float32)
    if not np.all(np.isfinite(gain)) or np.any(gain <= 0):
        raise CalibrationError(f"calibration '{path}' has non-positive or non-finite gain values; recompute it")
    return Calibration(dark=arrays["dark"].astype(np.float32), gain=gain, flat_level=float(attrs["flat_level"]),
                       exposure_ratio=float(attrs.get("exposure_ratio", 1.0)), bad_pixels=arrays["bad_pixels"],
                       lag_dc_gain=float(attrs.get("lag_dc_gain_removed", 1.0)),
                       response_checksum=attrs.get("response_checksum"))


def _response_checksum(cfg: RunConfig, frame_shape):
    from .io.checkpoint import checksum

    r = load_response(cfg, frame_shape)
    return checksum(r) if r is not None else None


def _check_response(calibration, cfg: RunConfig, frame_shape):
    """A saved calibration must have been made with the same flatfield.response as the run."""
    had = zarr_store.read_attrs(calibration).get("response_checksum")  # None: made without one
    want = _response_checksum(cfg, frame_shape)
    if had is not None and want is not None and had != want and "-" not in had:  # saved before the CRC-32
        from .io.checkpoint import legacy_checksum

        want = legacy_checksum(load_response(cfg, frame_shape))
    if had != want:
        raise CalibrationError(f"calibration '{calibration}' was made {'without' if had is None else 'with another'} "
                               "flatfield.response; recompute it with 'xray-pipeline calibrate' and the same --set "
                               "flatfield.response=... (or run without --calibration)")


def load_response(cfg: RunConfig, frame_shape):
    """The per-pixel response (multi-point gain) the config names, checked against the frames (or None)."""
    path = cfg.flatfield.response
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"flatfield.response '{p}' does not exist; make it with 'xray-pipeline characterise'")
    try:
        coeffs = np.load(p, allow_pickle=False).astype(np.float32)
    except Exception as exc:
        raise CalibrationError(f"flatfield.response '{p}' is not a NumPy array file ({type(exc).__name__})") from None
    if coeffs.ndim != 3 or coeffs.shape[0] != 4 or tuple(coeffs.shape[1:]) != tuple(frame_shape):
        raise CalibrationError(f"flatfield.response '{p}' has shape {coeffs.shape}; expected (4, "
                               f"{frame_shape[0]}, {frame_shape[1]}) for these frames (from 'characterise')")
    ok = np.all(np.isfinite(coeffs), axis=0) & (coeffs[1] > 0)
    if ok.mean() < 0.5:
        raise CalibrationError(f"flatfield.response '{p}': most pixels have no positive linear response; refit it")
    # dead or broken pixels (replaced later as bad pixels) get the typical response, so nothing divides by zero
    for j in range(coeffs.shape[0]):
        coeffs[j][~ok] = np.median(coeffs[j][ok])
    return coeffs


def _match_lag_gain(cal: Calibration, model, path) -> Calibration:
    """Make a saved calibration's flat level agree with the afterglow model's DC gain (uniform amplitudes)."""
    had = float(cal.lag_dc_gain)
    if model is None:
        want = 1.0
    elif np.ndim(model.amplitudes) > 1:
        if abs(had - 1.0) < 1e-12:
            raise CalibrationError(f"calibration '{path}' was made without the per-pixel afterglow model; "
                                   "recompute it with 'xray-pipeline calibrate --set afterglow.model=MODEL.json'")
        return cal
    else:
        want = float(ag.dc_gain(model.amplitudes, model.ratios))
    if abs(had - want) < 1e-9:
        return cal
    return replace(cal, flat_level=cal.flat_level * had / want, lag_dc_gain=want)


def load_afterglow(config: RunConfig, ds: "zarr_store.InputDataset"):
    """The afterglow model the config names, checked against the data (or None)."""
    if not config.afterglow.model:
        return None
    model = models.load_model(config.afterglow.model, ds.shape[1:])
    if config.afterglow.check_frame_rate:
        fr = ds.attrs.get("frame_rate_hz")
        if fr is None:
            raise DataError(f"input '{ds.path}' has no frame_rate_hz attribute to check the afterglow model against; "
                            "add it (xray-pipeline ingest --frame-rate) or set afterglow.check_frame_rate: false")
        if abs(float(fr) - model.frame_rate_hz) > 1e-6 * model.frame_rate_hz:
            raise CalibrationError(f"afterglow model '{model.path}' was fitted at {model.frame_rate_hz:g} Hz but "
                                   f"'{ds.path}' was recorded at {float(fr):g} Hz; refit the model at the data's frame rate")
    return model


# --------------------------------------------------------------------------- run
def run(
    input: str | Path,
    output: str | Path,
    config: "RunConfig | dict | str | Path | None" = None,
    *,
    overrides: list[str] | dict | None = None,
    calibration: str | Path | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
    _source: Path | None = None,
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
    resume : bool
        Continue an interrupted run of the same input, config and calibration: blocks already
        written and verified are kept; the result is bit-identical to an uninterrupted run.
    progress : callable, optional
        Called with the number of frames finished after each block.

    Returns
    -------
    RunResult
    """
    from .io import outputs

    cfg = load_config(config, overrides=overrides)
    src = Path(input)
    inputs = run_inputs(src, calibration, cfg)
    out = outputs.check_output_path(output, overwrite=True, inputs=inputs)  # overlaps first, whatever exists
    progress_path, partial = outputs.sidecar(out, ".progress"), outputs.sidecar(out, ".partial")
    lock = outputs.OutputLock(out)  # one writer per output, from here until it is committed or left for --resume
    try:
        if resume and out.exists() and not partial.exists() and not overwrite:
            _resume_complete(out, src, cfg)  # raises: nothing to resume, or made from something else
        if not resume and not overwrite:
            _refuse_to_drop_finished_work(out)
        outputs.check_output_path(output, overwrite=overwrite, inputs=inputs)
        staged = None
        if not is_zarr_group(src):
            staged = _stage_recording(src, outputs.sidecar(out, ".ingest.zarr"), resume=resume)
        try:
            return _run(staged or src, out, cfg, calibration=calibration, overwrite=overwrite, resume=resume,
                        progress=progress, source=src, lock=lock)
        except PipelineError as exc:
            if staged is None:
                raise
            raise type(exc)(str(exc).replace(str(staged), str(src))) from None
        finally:
            if staged is not None and not progress_path.exists():  # kept only while a resume may need it
                outputs.remove(staged)
    finally:
        lock.release()


def is_zarr_group(path: Path) -> bool:
    """A folder holding a Zarr group (v3 ``zarr.json``, or v2 ``.zgroup``); anything else is a recording to ingest."""
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file())


def run_inputs(source: Path, calibration, cfg: RunConfig) -> list:
    """Everything a run reads, which its outputs must never overlap."""
    return [source, calibration, cfg.afterglow.model, cfg.flatfield.response]


def _stage_recording(src: Path, staged: Path, *, resume: bool) -> Path:
    """A TIFF/HDF5/raw/video/npy recording ingested next to the output (kept for ``--resume`` while the
    recording's files are unchanged: :func:`pipeline.io.checkpoint.path_stamp`)."""
    from .io import outputs
    from .io.checkpoint import path_stamp

    if not src.exists():
        raise DataError(f"input '{src}' does not exist; check the path")
    stamp = path_stamp(src)
    if (resume and outputs.marked(staged, "staged-ingest")
            and zarr_store.read_attrs(staged).get("source_stamp") == stamp):
        return staged
    ingest(src, staged, overwrite=True)
    zarr_store.set_attrs_in_place(staged, {"source_stamp": stamp, outputs.ROLE_ATTR: "staged-ingest"})
    return staged


def _refuse_to_drop_finished_work(out: Path) -> None:
    """A run without --resume or --overwrite never deletes an interrupted run's finished blocks."""
    from .io import outputs
    from .io.checkpoint import Checkpoint

    progress_dir, partial = outputs.sidecar(out, ".progress"), outputs.sidecar(out, ".partial")
    if not (outputs.marked(progress_dir, "progress") and partial.is_dir()):
        return
    cp = Checkpoint(progress_dir)
    fp = cp.stored_fingerprint() or {}
    done = len(cp.markers())
    if done == 0:  # nothing finished: nothing to lose
        return
    shape, chunk = fp.get("shape"), fp.get("chunk_frames")
    total = f" of {-(-int(shape[0]) // int(chunk))}" if shape and chunk else ""
    raise OutputExistsError(f"'{out}' holds an interrupted run ({done}{total} blocks finished); add --resume to "
                            "continue it, or --overwrite to start afresh")


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two fingerprints (config keys as 'config.section.key')."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def _comparable_config(cfg: RunConfig) -> dict:
    """The config as it decides a run's result: how the blocks are scheduled does not (tested bit for bit)."""
    run_config = cfg.model_dump(mode="json")
    for key in ("scheduler", "cluster", "num_workers"):
        run_config["execution"].pop(key, None)
    return run_config


def _resume_complete(out: Path, src: Path, cfg: RunConfig):
    """``--resume`` of a complete output: nothing to do where it was made from this input and config, else refused."""
    from .io import outputs
    from .io.checkpoint import path_stamp

    prov = zarr_store.read_attrs(out).get("provenance") or {}
    had_cfg = dict(prov.get("config") or {})
    if had_cfg.get("execution"):
        had_cfg["execution"] = {k: v for k, v in had_cfg["execution"].items()
                                if k not in ("scheduler", "cluster", "num_workers")}
    same = (prov.get("input") == str(src.resolve()) and had_cfg == _comparable_config(cfg)
            and prov.get("input_stamp") in (None, path_stamp(src)["digest"]))
    if not same:
        raise DataError(f"'{out}' is complete but was made from another input, config or version of the input; "
                        "rerun without --resume (add --overwrite to replace it) or choose another output")
    progress_dir = outputs.sidecar(out, ".progress")
    if outputs.marked(progress_dir):  # killed after its final move, before the progress folder went
        outputs.remove(progress_dir)
    raise AlreadyComplete(f"'{out}' is complete; nothing to resume")


def _run(input: Path, out_path: Path, cfg: RunConfig, *, calibration, overwrite: bool, resume: bool, progress,
         source: Path, lock) -> RunResult:
    """:func:`run` on a Zarr dataset, its output's lock held (handed to the writer, which releases it)."""
    from .io.checkpoint import CHECKSUM, Checkpoint, block_checksum, checksum, path_stamp

    _source = source
    output = out_path
    check_execution(cfg.execution.scheduler, cfg.execution.cluster)  # a missing dask-cuda fails before any output
    on_cluster = is_distributed(cfg.execution.scheduler, cfg.execution.cluster)
    # device gpu on a cluster: the workers' GPUs (the client needs none); auto: only on a local-cuda cluster,
    # whose workers share this machine's GPUs; otherwise this process's device
    if on_cluster and cfg.execution.device == "gpu":
        device = "gpu"
    elif on_cluster and cfg.execution.device == "auto" and cfg.execution.cluster != "local-cuda":
        say_once("execution.device=auto on a dask.distributed cluster runs the stages on the workers' CPUs; "
                 "use --device gpu to run them on the workers' GPUs")
        device = "cpu"
    else:
        device = resolve_device(cfg.execution.device)
    ds = zarr_store.open_input(input)
    t, h, w = ds.shape
    if t < 1:
        raise DataError(f"input '{input}/frames' holds no frames")
    inputs = run_inputs(source, calibration, cfg)  # (a staged ingest of the source is ours, beside the output)
    if cfg.mtf.enabled:
        zarr_store.check_output_path(mtf_plot_path(out_path), overwrite=overwrite, inputs=inputs, kind="file")
    validate.check_sizes(cfg, (h, w))
    input_stamp = path_stamp(source)["digest"]
    start_wall, start = _now(), time.perf_counter()

    model = load_afterglow(cfg, ds)
    cal = None
    cal_source = None
    if cfg.flatfield.enabled:
        if calibration is not None:
            cal = _match_lag_gain(load_calibration(calibration, (h, w)), model, calibration)
            cal_source = str(calibration)
            _check_response(calibration, cfg, (h, w))
        else:
            cal, cal_source = calibrate(ds, cfg, afterglow_model=model), f"{input} (darks, flats)"
    response = load_response(cfg, (h, w))
    chain = build_chain(cfg, cal, ds.frames.dtype, afterglow_model=model, response=response)
    chunk = choose_chunk_frames(cfg, (h, w), t)
    noise = _noise_model(cfg, chain, ds) if cfg.denoise.enabled else None
    mtf_roi = _mtf_roi(cfg, chain, ds) if cfg.mtf.enabled else None
    if noise is not None or mtf_roi is not None:
        chain = build_chain(cfg, cal, ds.frames.dtype, afterglow_model=model, mtf_roi=mtf_roi, noise=noise,
                            response=response)
    engine = process_frames  # device gpu (or auto with a working GPU): the GPU conveyor, where it can run this chain
    gpu = None
    if device == "gpu" and on_cluster:  # the same graph; every task runs its stages on its worker's GPU
        from .conveyor import DeviceChain

        chain = DeviceChain(chain)
    elif device == "gpu":
        from .conveyor import gpu_engine

        gpu, device = gpu_engine(chain, ds.frames.dtype, (h, w), requested=cfg.execution.device,
                                 execution=cfg.execution)
        if gpu is not None:
            engine, chunk = gpu.process_frames, gpu.fit_block_frames(chunk, ds.frames.dtype)

    cal_sum = None
    if cal is not None:
        cal_sum = checksum(np.concatenate([np.asarray(cal.dark, np.float32).ravel(),
                                           np.asarray(cal.gain, np.float32).ravel(),
                                           np.asarray([cal.flat_level], np.float32)]))
    # how the blocks are scheduled does not change the result (tested bit for bit): a resume may use other workers
    fingerprint = {
        "version": __version__, "checksum": CHECKSUM, "config": _comparable_config(cfg), "device": device,
        "input": str(Path(input).resolve()), "input_stamp": input_stamp,
        "shape": [t, h, w], "dtype": str(ds.frames.dtype), "calibration_checksum": cal_sum, "chunk_frames": chunk,
        "afterglow_model": (model.info if model is not None else None),
        "noise_model": ([noise.alpha, noise.beta, noise.box_factor] if noise else None), "mtf_roi": mtf_roi,
        "response_checksum": checksum(response) if response is not None else None,
        "source_stamp": ds.attrs.get("source_stamp"),
    }
    progress_dir = Checkpoint(out_path.with_name(out_path.name + ".progress"))
    resuming = bool(resume) and progress_dir.matches(fingerprint) and \
        out_path.with_name(out_path.name + ".partial").is_dir()
    if resume and not resuming and progress_dir.has_fingerprint() and not progress_dir.matches(fingerprint):
        old = progress_dir.stored_fingerprint() or {}
        if old.get("checksum") != CHECKSUM or old.get("version") != __version__:
            raise DataError(f"the interrupted run at '{output}' was made by an earlier xray-pipeline "
                            f"({old.get('version', '?')}); rerun with --overwrite instead of --resume (it starts afresh)")
        if old.get("input_stamp") != input_stamp and old.get("input") == fingerprint["input"]:
            raise DataError(f"the input's files changed since the interrupted run at '{output}'; rerun with "
                            "--overwrite instead of --resume (it starts afresh)")
        differ = [d.removeprefix("config.") for d in _differences(old, json.loads(json.dumps(fingerprint)))]
        raise DataError(f"the interrupted run at '{output}' was made with another {', '.join(differ[:4])}"
                        f"{' ...' if len(differ) > 4 else ''}; resume with the same settings, or rerun with "
                        "--overwrite instead of --resume (it starts afresh)")
    writer = target = None
    if resuming:
        try:  # a kill can land while the partial output was being set up: then start afresh
            writer = zarr_store.OutputWriter(out_path, overwrite=overwrite, inputs=inputs, resume=True, lock=lock)
            target = writer.group["frames"]
            if tuple(target.shape) != (t, h, w) or target.chunks[0] != chunk:
                raise ValueError("partial output does not match")
        except Exception:
            resuming = False
    if not resuming:
        writer = zarr_store.OutputWriter(out_path, overwrite=overwrite, inputs=inputs, lock=lock)
    n_blocks = -(-t // chunk)
    stages = list(chain.stateful)
    has_states = bool(stages)  # what on_commit needs (it travels to the workers: not the stages themselves)
    start_block, states, skip, earlier = 0, None, set(), {}
    if resuming:
        for c, m in progress_dir.markers().items():
            try:  # a chunk lost or torn by a crash (files are not synced) does not decode: the block is redone
                if 0 <= c < n_blocks and m["checksum"] == block_checksum(np.asarray(target[m["t0"]:m["t1"]])):
                    earlier[c] = m
            except Exception:
                continue
        # restart after the longest finished prefix whose states were saved; later finished blocks are kept
        prefix = -1
        while prefix + 1 in earlier:
            prefix += 1
        while prefix >= 0 and stages and progress_dir.states_after(prefix, len(stages)) is None:
            prefix -= 1
        start_block = prefix + 1
        if stages and prefix >= 0:
            states = progress_dir.states_after(prefix, len(stages))
        skip = {c for c in earlier if c >= start_block}
        if progress is not None and start_block > 0:
            progress(min(start_block * chunk, t))
    else:
        progress_dir.start(fingerprint)
        storage = chain.storage
        target = writer.create("frames", (t, h, w), storage.numpy_dtype, chunks=(chunk, h, w),
                               codec=cfg.output.codec, level=cfg.output.level,
                               fill_value=0 if storage.dtype == "uint16" else np.nan)  # a missing value either way
        writer.set_attrs(storage.attributes(), "frames")

    block_bytes = chunk * h * w * chain.storage.numpy_dtype.itemsize

    def on_commit(c, t0, t1, written, sts):
        extra = {"measured": written["measured"], "info": written["info"]}
        progress_dir.commit(c, t0, t1, written["checksum"], sts if has_states else None, extra,
                            block_bytes=block_bytes)

    on_commit.block_bytes = block_bytes  # the GPU engine downloads the states of the blocks that save them only

    try:
        engine_start = time.perf_counter()
        source = ds.reader(check_missing=cfg.execution.check_missing_chunks)
        results = engine(source, writer.frames_target(target), chain,
                         chunk_frames=chunk, scheduler=cfg.execution.scheduler, cluster=cfg.execution.cluster,
                         num_workers=cfg.execution.num_workers, progress=progress, start_block=start_block,
                         initial_states=states, skip_write=skip, on_commit=on_commit,
                         skip_errors=cfg.execution.on_error == "skip", recycle=True)
        engine_s = time.perf_counter() - engine_start
    except KeyboardInterrupt:
        raise RunInterrupted(f"interrupted; the finished blocks are kept: resume with 'xray-pipeline run "
                             f"{_source or input} {output} --resume{' --overwrite' if overwrite else ''}' and the same "
                             "config and calibration") from None
    # every block's record: from this run, or from the earlier run for the blocks it kept
    records = {r["t0"] // chunk: r for r in results if not r["skipped_write"]}
    for c, m in earlier.items():
        if c not in records:
            records[c] = {"t0": m["t0"], "n": m["t1"] - m["t0"], "measured": _revive(m["extra"].get("measured")),
                          "info": m["extra"].get("info", {})}
    ordered = [records[c] for c in sorted(records)]
    skipped = [list(s) for r in ordered for s in ((r["info"] or {}).get("skipped") or [])]
    nonfinite = int(sum((r["info"] or {}).get("nonfinite", 0) for r in ordered))
    at_limit = int(sum((r["info"] or {}).get("at_limit", 0) for r in ordered))
    measured = [(r["t0"], r["measured"]) for r in ordered if r["measured"] is not None]
    mtf_summary = None
    if cfg.mtf.enabled:
        mtf_summary = _write_mtf(writer, measured, t, ds.attrs.get("pixel_pitch_mm"), mtf_roi, cfg)
    if cal is not None:
        writer.write("calibration/bad_pixels", np.asarray(cal.bad_pixels, np.uint8))
        writer.write("calibration/gain", np.asarray(cal.gain, np.float32))
    seconds = time.perf_counter() - start
    if gpu is not None:
        threads = {"readers": gpu.readers, "writers": int(cfg.execution.num_workers or gpu.writers)}
    elif on_cluster:
        threads = None  # the cluster's
    else:
        threads = 1 if cfg.execution.scheduler == "synchronous" else int(cfg.execution.num_workers or os.cpu_count() or 1)
    account = time_account(results, seconds, threads=threads, blocks_s=engine_s,
                           waits=dict(gpu.waits) if gpu is not None else None,
                           busy_s=gpu.busy_s if gpu is not None else None)
    ghost = None
    if model is not None and ds.has_truth and cfg.flatfield.output == "counts" and not skipped:
        ghost = ghost_report(ds, zarr_store.Decoded(target, chain.storage.decode), model, chunk)
        writer.write("ghost/before", ghost.pop("before"))
        writer.write("ghost/after", ghost.pop("after"))
    attrs = {k: v for k, v in ds.attrs.items() if k in ("pixel_pitch_mm", "frame_rate_hz")}
    attrs["skipped_frames"] = skipped
    attrs["provenance"] = {
        "package": "xray-pipeline",
        "version": __version__,
        "config": cfg.model_dump(mode="json"),
        "input": str(Path(_source or input).resolve()),
        "input_stamp": input_stamp,
        "input_shape": [t, h, w],
        "input_dtype": str(ds.frames.dtype),
        "calibration": cal_source,
        "calibration_checksum": cal_sum,
        "afterglow_model": str(Path(cfg.afterglow.model).resolve()) if model is not None else None,
        "ghost": ghost,
        "mtf": {k: v for k, v in mtf_summary.items() if k != "_curves"} if mtf_summary else None,
        "noise_model": ({"alpha": noise.alpha, "beta": noise.beta, "box_factor": noise.box_factor,
                         "meaning": "var = alpha * mean + beta of the corrected frames"} if noise else None),
        "stages": chain.names,
        "chunk_frames": chunk,
        "skipped_frames": skipped,
        "input_missing_chunks": ds.reader(check_missing=cfg.execution.check_missing_chunks).missing_rule,
        "nonfinite_input_pixels": nonfinite,
        "stored_at_limit": at_limit,
        "resumed": ({"from_block": start_block, "blocks_kept": sorted(earlier)} if resuming else None),
        "start": start_wall,
        "end": _now(),
        "seconds": seconds,
        "frames_per_second": t / seconds if seconds > 0 else None,
        "time_account": account,
        "device": "gpu (each dask.distributed worker's)" if device == "gpu" and on_cluster else describe_device(device),
        "host": socket.gethostname(),
        "python": platform.python_version(),
    }
    writer.set_attrs(attrs)
    final = writer.commit()
    progress_dir.remove()
    if mtf_summary is not None:
        from . import report

        from .io.outputs import atomic_file

        m50, m20, unit = mtf_summary.pop("_curves")
        with atomic_file(mtf_summary["plot"], overwrite=True, inputs=inputs) as tmp:  # (checked before the run)
            report.resolution_over_time(m50, m20, unit.replace("_per_", "/"), tmp)
    if nonfinite:
        warnings.warn(f"{nonfinite} NaN/Inf pixels in the input frames of '{input}' (NaN in the output)", stacklevel=2)
    if at_limit:
        st = chain.storage
        fix = ("lower output.scale (values too large) or raise output.offset (negative values)"
               if st.dtype == "uint16" else "use output.dtype: float32")
        warnings.warn(f"{at_limit} output values sit at the ends of {st.dtype}'s range (clipped or Inf): {fix}",
                      stacklevel=2)
    nbad = int(np.count_nonzero(cal.bad_pixels)) if cal is not None else 0
    resumed = None
    if resuming:
        computed = int(sum(r["n"] for r in results if not r["skipped_write"]))
        kept = sorted(set(range(start_block)) | set(skip))
        resumed = {"blocks_kept": len(kept), "frames_kept": t - computed, "frames_computed": computed,
                   "computed_frames_per_second": computed / seconds if seconds > 0 else None}
    return RunResult(final, t, seconds, t / seconds if seconds > 0 else float("inf"), tuple(chain.names), nbad, ghost,
                     mtf_summary, skipped, nonfinite, account, resumed)


def time_account(results, seconds: float, *, threads, blocks_s: float | None = None,
                 waits: dict | None = None, busy_s: float | None = None) -> dict:
    """Where a run's time went, from the blocks' records (:func:`pipeline.schedule.process_frames`).

    Returns ``wall_s``; ``blocks_s``: the part of it spent running the blocks (the rest: opening,
    calibrating, fitting the noise model, finding the MTF edge, writing the summaries);
    ``read_s``, ``stages_s``, ``write_s``, ``record_s``: thread-seconds summed over this run's
    blocks (reading and decompressing the input; the stages and the storage
    encoding, on the CPU engine; compressing and storing the output; measurements, checksums and
    progress markers); ``threads``: how many threads shared them (an int, ``{"readers": n,
    "writers": n}`` on the GPU engine, None on a cluster); on the GPU engine ``gpu_waits_s``: the
    seconds its conveyor thread waited on the ``reads``, the ``device`` (transfers and kernels) and
    the ``writers``, ``gpu_busy_s``: the seconds it worked itself (copies into pinned memory,
    launches), and ``bound_by``: the largest of the four (``conveyor`` for its own work): what set
    the pace.
    """
    tot = {"read": 0.0, "stages": 0.0, "write": 0.0, "record": 0.0}
    for r in results:
        for k, v in (r.get("seconds") or {}).items():
            tot[k] = tot.get(k, 0.0) + float(v)
    out = {"wall_s": float(seconds), "blocks_s": None if blocks_s is None else float(blocks_s), "threads": threads,
           **{f"{k}_s": round(v, 4) for k, v in tot.items()}}
    if waits is not None:
        out["gpu_waits_s"] = {k: round(float(v), 4) for k, v in waits.items()}
        out["gpu_busy_s"] = round(float(busy_s or 0.0), 4)
        pace = {**waits, "conveyor": float(busy_s or 0.0)}
        out["bound_by"] = max(pace, key=pace.get) if any(pace.values()) else None
    return out


def _revive(measured):
    """Measurements read back from a progress marker (lists, None for NaN) as arrays."""
    if not measured:
        return None
    out = {}
    for name, d in measured.items():
        out[name] = {k: (np.asarray(v, dtype=np.float64) if k != "flags" else v) for k, v in d.items()}
    return out


def _noise_model(cfg: RunConfig, chain, ds):
    """The noise model of the corrected frames: from the config, or estimated on the first frames (once per run,
    so every block uses the same one and chunking cannot change the result)."""
    from .ops.denoise import NoiseModel, estimate_noise_model

    if cfg.denoise.noise_model is not None:
        a, b = cfg.denoise.noise_model
        return NoiseModel(float(a), float(b))
    raw = _first_readable(cfg, ds, min(cfg.denoise.noise_frames, ds.shape[0]), "the noise model")
    probe, _ = chain(raw)
    model = estimate_noise_model(probe)
    # the level at which noise-unit parameters are scaled without the GAT: once per run (chunking-independent)
    level = 0.0
    if np.isfinite(probe).any():
        level = jit.nanmedian_f32(probe)
        level = float(np.nanmedian(probe)) if level is None else level
    return NoiseModel(model.alpha, model.beta, model.box_factor, level)


def _first_readable(cfg: RunConfig, ds, n: int, what: str):
    """The first ``n`` frames that read (unreadable ones passed over where ``execution.on_error: skip``),
    consecutive runs of them as read: set-up statistics are never made of NaN frames."""
    reader = ds.reader(check_missing=cfg.execution.check_missing_chunks)
    skip = cfg.execution.on_error == "skip"
    t = ds.shape[0]
    step = max(n, int(ds.frames.chunks[0]) if hasattr(ds.frames, "chunks") else n)
    parts, got, t0 = [], 0, 0
    while got < n and t0 < t:
        t1 = min(t0 + step, t)
        raw, bad = reader.read_block(t0, t1, skip=skip)
        good = np.ones(t1 - t0, bool)
        for a, b, *_ in bad:
            good[a - t0 : b + 1 - t0] = False
        take = raw[good][: n - got]
        if take.size:
            parts.append(take)
            got += take.shape[0]
        t0 = t1
    if not got:
        raise DataError(f"no frame of '{ds.path}' could be read for {what}; restore the recording's chunks")
    if len({p.dtype for p in parts}) > 1:  # a block with unreadable frames came back as float32
        parts = [p.astype(np.float32, copy=False) for p in parts]
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _mtf_roi(cfg: RunConfig, chain, ds) -> tuple[int, int, int, int]:
    """The MTF ROI: from the config (checked) or found on the first corrected frame."""
    from .ops.mtf import find_edge_roi

    t, h, w = ds.shape
    if cfg.mtf.roi is not None:
        y0, y1, x0, x1 = cfg.mtf.roi
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w) or min(y1 - y0, x1 - x0) < 16:
            raise ConfigError(f"mtf.roi {list(cfg.mtf.roi)} must lie inside the {h} x {w} frames and be >= 16 px a side")
        return tuple(cfg.mtf.roi)
    first, _ = chain(_first_readable(cfg, ds, 1, "the MTF edge"))
    try:
        return find_edge_roi(np.nan_to_num(first[0]))
    except ValueError as exc:
        raise DataError(f"mtf stage: {exc} (first frame of '{ds.path}'); set mtf.roi") from None


def _write_mtf(writer, measured, t, pitch, roi, cfg) -> dict:
    """Assemble per-block MTF results into mtf/ arrays of the output, plus a PNG of resolution over time."""

    f = None
    mtf, curves = None, {}
    flags: list = [[] for _ in range(t)]
    for t0, meas in measured:
        m = meas["mtf"]
        n = m["mtf"].shape[0]
        if mtf is None:
            f = m["frequencies_cy_per_px"]
            mtf = np.full((t, f.size), np.nan)
            curves = {k: np.full(t, np.nan) for k in ("mtf50", "mtf20", "mtf10", "angle_deg")}
        mtf[t0 : t0 + n] = m["mtf"]
        for k in curves:
            curves[k][t0 : t0 + n] = m[k]
        flags[t0 : t0 + n] = m["flags"]
    writer.write("mtf/frequencies_cy_per_px", f)
    writer.write("mtf/mtf", mtf.astype(np.float32), chunks=(min(t, 256), f.size))
    writer.write("mtf/edge_angle_deg", curves["angle_deg"])
    unit, k = ("cy_per_px", 1.0) if not pitch else ("lp_per_mm", 1.0 / float(pitch))
    if pitch:
        writer.write("mtf/frequencies_lp_per_mm", f * k)
    for lv in ("mtf50", "mtf20", "mtf10"):
        writer.write(f"mtf/{lv}_{unit}", curves[lv] * k)
        if pitch:
            writer.write(f"mtf/{lv}_cy_per_px", curves[lv])
    counts: dict = {}
    for fl in flags:
        for x in fl:
            counts[x] = counts.get(x, 0) + 1
    summary = {
        "roi": list(roi), "window": cfg.mtf.window, "oversample": cfg.mtf.oversample, "unit": unit,
        "pixel_pitch_mm": pitch,
        "mtf20_median": float(np.nanmedian(curves["mtf20"]) * k) if np.isfinite(curves["mtf20"]).any() else None,
        "mtf50_median": float(np.nanmedian(curves["mtf50"]) * k) if np.isfinite(curves["mtf50"]).any() else None,
        "flag_counts": counts,
    }
    writer.set_attrs(summary, "mtf")
    summary["plot"] = str(mtf_plot_path(writer.final))
    summary["_curves"] = (curves["mtf50"] * k, curves["mtf20"] * k, unit)
    return summary


def mtf_plot_path(output: Path) -> Path:
    """Where the resolution-over-time PNG of a run goes: beside the output group."""
    return output.with_name(output.name + ".resolution.png")


def measure_mtf(
    path: str | Path,
    *,
    roi: tuple[int, int, int, int] | None = None,
    pixel_pitch_mm: float | None = None,
    window: str = "tukey",
    oversample: int = 4,
    f_max: float = 1.0,
    block_frames: int = 64,
) -> dict:
    """Slanted-edge MTF of an image (TIFF/PNG/NPY) or of every frame of a Zarr dataset (batched).

    Returns a JSON-ready dict (every field names its unit) plus ``"result"``
    (the :class:`~pipeline.ops.mtf.MTFResult`, not serialisable).
    """
    from .io.images import read_image
    from .ops.mtf import auto_n_fft, concat_results, expand_result, find_edge_roi, slanted_edge_mtf

    if pixel_pitch_mm is not None:
        pixel_pitch_mm = validate.positive_finite(pixel_pitch_mm, "--pixel-pitch", unit="mm", upper=10,
                                                  fix="give the pixel pitch in mm at the scintillator, e.g. --pixel-pitch 0.1")
    p = Path(path)
    is_zarr = p.is_dir()
    if is_zarr:
        ds = zarr_store.open_input(p)
        frames = ds.frames
        pitch = pixel_pitch_mm or ds.attrs.get("pixel_pitch_mm")
        first = np.asarray(frames[0 : min(4, frames.shape[0])], dtype=np.float64)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # frames skipped as NaN: the others' mean
            first = np.nanmean(first, axis=0)
    else:
        img = read_image(p)
        frames = img[None] if img.ndim == 2 else img
        pitch = pixel_pitch_mm
        first = frames[0]
    t, h, w = frames.shape
    if roi is None:
        try:
            roi = find_edge_roi(np.nan_to_num(first))
        except ValueError as exc:
            raise DataError(f"'{path}': {exc}") from None
    y0, y1, x0, x1 = (int(v) for v in roi)
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w) or min(y1 - y0, x1 - x0) < 16:
        raise DataError(f"roi {list(roi)} must lie inside the {h} x {w} image and be at least 16 px a side")
    n_fft = auto_n_fft(max(y1 - y0, x1 - x0), oversample)
    parts, pending = [], []  # pending: blocks with no finite ROI, made NaN once a frequency grid is known
    for t0 in range(0, t, block_frames):
        block = np.asarray(frames[t0 : t0 + block_frames, y0:y1, x0:x1], dtype=np.float64)
        finite = np.isfinite(block).all(axis=(1, 2))  # a frame skipped as NaN: flagged, the others measured
        if not finite.any():
            pending.append((len(parts), finite))
            parts.append(None)
            continue
        try:
            res = slanted_edge_mtf(block[finite], window=window, oversample=oversample, f_max=f_max, n_fft=n_fft)
        except ValueError as exc:
            raise DataError(f"'{path}' roi {[y0, y1, x0, x1]}: {exc}") from None
        parts.append(expand_result(res, finite))
    known = next((p for p in parts if p is not None), None)
    if known is None:
        raise DataError(f"'{path}': no frame has a finite edge ROI {[y0, y1, x0, x1]} (all NaN); nothing to measure")
    for i, finite in pending:
        parts[i] = _nan_result(known, finite.size)
    res = concat_results(parts)
    out = res.to_dict(pitch, roi=[y0, y1, x0, x1], index=0 if (t == 1) else None)
    out["source"] = str(p)
    out["frames"] = t
    out["units"] = {"frequencies_cy_per_px": "cycles per pixel along the edge normal",
                    "frequencies_lp_per_mm": "line pairs per mm at the scintillator plane",
                    "edge_angle_deg": "degrees from the nearest pixel axis", "roi": "pixels [y0, y1, x0, x1)"}
    if not pitch:
        out["note"] = "no pixel pitch known: frequencies in cycles/pixel only (pass --pixel-pitch MM)"
    return {**out, "result": res}


def _nan_result(like, n: int):
    """A result of ``n`` ROIs none of which could be measured, on ``like``'s frequency grid."""
    from .ops.mtf import expand_result

    none = replace(like, mtf=like.mtf[:0], esf=like.esf[:0], lsf=like.lsf[:0], angle_deg=like.angle_deg[:0],
                   edge_fit_rms_px=like.edge_fit_rms_px[:0], flags=[], messages=[],
                   crossings_cy_per_px={k: v[:0] for k, v in like.crossings_cy_per_px.items()})
    return expand_result(none, np.zeros(n, bool))


def ghost_report(ds: "zarr_store.InputDataset", corrected, model, chunk: int) -> dict:
    """Ghost behind the moving object, before and after afterglow removal, against the simulator's truth.

    "Before" is the flat-field-only result, rebuilt exactly from the corrected
    frames by the forward model (the correction is linear and invertible).
    Per frame: mean of (result - truth) over pixels uncovered by the object in
    the last few frames, as a fraction of the object's contrast.
    """
    tr = ds.truth_attrs
    open_level = float(tr["open_level"])
    contrast = float(tr.get("board", {}).get("absorbance", 0.3)) * open_level
    window = int(min(50, max(5, 5 * max(model.tau_s) * model.frame_rate_hz)))
    t = ds.shape[0]
    before, after = np.full(t, np.nan), np.full(t, np.nan)
    state = since = None
    truth = ds.truth_frames
    for t0 in range(0, t, chunk):
        t1 = min(t0 + chunk, t)
        x = np.nan_to_num(np.asarray(corrected[t0:t1], dtype=np.float32))
        ref = np.asarray(truth[t0:t1], dtype=np.float32)
        if state is None:
            state = ag.steady_state(x[0] * np.float32(np.mean(ag.dc_gain(model.amplitudes, model.ratios))),
                                    model.amplitudes, model.ratios)
        lagged, state = ag.add_lag(x, model.amplitudes, model.ratios, state)
        mask, since = ag.trail_mask(ref, since, background=0.999 * open_level,
                                    threshold=open_level - 0.5 * contrast, window=window)
        with np.errstate(invalid="ignore"):
            after[t0:t1] = ag.ghost_residual(x, ref, mask, contrast=contrast)
            before[t0:t1] = ag.ghost_residual(lagged, ref, mask, contrast=contrast)
    ok = np.isfinite(before) & np.isfinite(after)
    e_before = float(np.sum(before[ok] ** 2))
    e_after = float(np.sum(after[ok] ** 2))
    return {
        "before": before, "after": after,
        "frames_with_trail": int(ok.sum()),
        "mean_abs_before": float(np.mean(np.abs(before[ok]))) if ok.any() else None,
        "mean_abs_after": float(np.mean(np.abs(after[ok]))) if ok.any() else None,
        "energy_reduction": (e_before / e_after) if e_after > 0 else None,
        "unit": "fraction of the object's contrast",
    }


# --------------------------------------------------------------------------- afterglow fit
def fit_afterglow(
    calibration: str | Path,
    output: str | Path,
    *,
    plot: str | Path | None = None,
    per_pixel: bool = False,
    max_terms: int = 4,
    skip: int | None = None,
    roi: tuple[int, int, int, int] | None = None,
    frame_rate_hz: float | None = None,
    overwrite: bool = False,
) -> dict:
    """Fit the afterglow model from a falling-step recording and save MODEL.json.

    The recording's ``frames`` hold the beam on at steady state, then off;
    ``darks`` are subtracted when present (otherwise an offset is fitted).

    Returns the saved document (plus the :class:`~pipeline.ops.afterglow.StepFit` under ``"fit"``).
    """
    from .io import outputs

    out = Path(output)
    for f in (out, out.with_suffix(".amplitudes.npy") if per_pixel else None, plot):
        if f is not None:
            outputs.check_output_path(f, overwrite=overwrite, inputs=[calibration], kind="file", sidecars=False)
    if frame_rate_hz is not None:
        frame_rate_hz = validate.positive_finite(frame_rate_hz, "--frame-rate", unit="Hz", upper=1e7,
                                                 fix="give the recording's frame rate in Hz, e.g. --frame-rate 50")
    ds = zarr_store.open_input(calibration)
    fr = frame_rate_hz if frame_rate_hz is not None else ds.attrs.get("frame_rate_hz")
    if fr is None:
        raise DataError(f"'{calibration}' has no frame_rate_hz attribute; pass --frame-rate HZ")
    t, h, w = ds.shape
    if roi is not None:
        y0, y1, x0, x1 = roi
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise DataError(f"roi {roi} lies outside the {h} x {w} frames")
    reader = ds.reader()
    means = frame_means(reader, roi=roi)
    dark_map = None
    if ds.darks is not None:
        dark_map, _ = frame_statistics(ds.array_reader("darks"))
        region = dark_map if roi is None else dark_map[roi[0]:roi[1], roi[2]:roi[3]]
        means = means - float(region.mean(dtype=np.float64))
    try:
        fit = ag.fit_falling_step(means, float(fr), max_terms=max_terms, skip=skip, fit_offset=dark_map is None)
    except ValueError as exc:
        raise CalibrationError(f"afterglow fit of '{calibration}': {exc}") from None
    amap = None
    if per_pixel:
        if dark_map is None:
            raise CalibrationError(f"per-pixel afterglow maps need darks in '{calibration}'")
        kc = fit.cutoff_frame
        on = np.asarray(reader[max(kc // 2, 0): max(kc - 1, 1)], dtype=np.float32).mean(axis=0) - dark_map
        n_after = int(min(t - kc, max(8, 5 * max(fit.tau_s) * float(fr))))
        after = np.asarray(reader[kc: kc + n_after], dtype=np.float32) - dark_map
        amap = ag.fit_amplitude_maps(after, on, fit.tau_s, float(fr), first_frame=fit.skipped_frames)
    resid = (fit.data - fit.model) if fit.data is not None else np.zeros(1)
    doc = {
        "version": __version__,
        "source": str(Path(calibration).resolve()),
        "created": _now(),
        "model": "y_k = x_k + sum_n L_n,k ; L_n,k+1 = r_n (L_n,k + a_n x_k) ; r_n = exp(-1 / (frame_rate_hz tau_n))",
        "frame_rate_hz": float(fr),
        "tau_s": [float(v) for v in fit.tau_s],
        "amplitudes": [float(v) for v in fit.amplitudes],
        "step_amplitudes": [float(v) for v in fit.step_amplitudes],
        "dc_gain": fit.dc_gain,
        "figures": {**fit.figures(), "unit": "fraction of the steady signal in a frame starting that long after cut-off"},
        "fit": {
            "criterion": "NNLS spectrum over 80 log-spaced time constants, bounded least-squares refinement of 1-4 terms, "
                         "number of terms by minimum BIC (chi-square with the noise measured on the beam-on frames + p ln n)",
            "cutoff_frame": fit.cutoff_frame, "skipped_frames": fit.skipped_frames, "points": fit.n_points,
            "residual_rms": float(np.sqrt(np.mean(resid**2))), "noise_rms": fit.noise / fit.steady_level,
            "steady_level_counts": fit.steady_level, "offset_counts": fit.offset, "bic": fit.bic,
            "roi": list(roi) if roi else None, "darks_subtracted": dark_map is not None,
        },
    }
    path = models.save_model(out, doc, amplitude_map=amap, overwrite=overwrite, inputs=[calibration])
    if plot:
        from . import report

        with outputs.atomic_file(plot, overwrite=overwrite, inputs=[calibration]) as tmp:
            report.afterglow_fit(fit, tmp)
    return {**doc, "path": path, "fit_result": fit}


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
    # chunk_frames: the stored chunks only; the simulation's own blocks (and so its random streams) stay 16 frames,
    # so that a seed gives the same frames whatever the chunks
    stored = spec_fields.pop("chunk_frames", None)
    if stored is not None and (isinstance(stored, bool) or not isinstance(stored, (int, np.integer)) or stored < 1):
        raise DataError(f"simulate: chunk_frames must be a positive integer, not {stored!r}")
    for key, unit, upper in (("pixel_pitch_mm", "mm", 10), ("frame_rate_hz", "Hz", 1e7), ("quanta_per_pixel", "", None)):
        if spec_fields.get(key) is not None:
            spec_fields[key] = validate.positive_finite(spec_fields[key], key, unit=unit, upper=upper,
                                                        fix=f"give a positive finite {key}")
    try:
        spec = SimulationSpec(preset=preset, frames=frames, height=size[0], width=size[1], seed=seed, **spec_fields)
    except TypeError as exc:
        raise DataError(f"simulate: {exc}") from None
    except ValueError as exc:
        raise DataError(f"simulate: {exc}") from None
    sim = build(spec)
    t, h, w = spec.frames, spec.height, spec.width
    def chunks(n, dtype, given=None, limit=16):  # given: the frames' chunk_frames (darks and flats: at most 8 frames)
        return (min(int(given) if given is not None else recording_chunk_frames((h, w), dtype, limit=limit), n), h, w)

    writer = zarr_store.OutputWriter(output, overwrite=overwrite)
    try:
        raw = writer.frames_target(writer.create("frames", (t, h, w), np.uint16, chunks=chunks(t, np.uint16, stored)))
        truth = (writer.frames_target(writer.create("truth/frames", (t, h, w), np.float32,
                                                    chunks=chunks(t, np.float32, stored)))
                 if spec.truth_frames else None)
        writer.write("darks", sim.darks, chunks=chunks(sim.darks.shape[0], sim.darks.dtype, limit=8))
        writer.write("flats", sim.flats, chunks=chunks(sim.flats.shape[0], sim.flats.dtype, limit=8))
        for name, arr in sim.truth_maps.items():
            writer.write(f"truth/{name}", arr)
        for start, block, tblock in sim.iter_chunks():
            raw[start : start + block.shape[0]] = block
            if truth is not None:  # (C order: the pipelines' own chunk writer takes it, not Zarr's slower path)
                truth[start : start + block.shape[0]] = np.ascontiguousarray(tblock)
            if progress:
                progress(block.shape[0])
        writer.set_attrs(sim.attrs)
        writer.set_attrs(sim.truth_attrs, "truth")
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def ingest(
    source: str | Path,
    output: str | Path,
    *,
    darks: str | Path | None = None,
    flats: str | Path | None = None,
    pixel_pitch_mm: float | None = None,
    frame_rate_hz: float | None = None,
    dataset: str | None = None,
    raw_dtype: str | None = None,
    raw_shape: tuple | None = None,
    header: int = 0,
    chunk_frames: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Convert a recording (TIFF file or folder, HDF5/NeXus, raw, video, npy) into the Zarr data contract.

    ``chunk_frames``: frames per stored chunk (default: from the frame size, :func:`recording_chunk_frames`).
    Frames are streamed a few whole chunks at a time (as many as fit in 16 frames, at least one); the
    source is only read. Returns a summary.
    """
    from .io.ingest import open_sources, storage_dtype

    if chunk_frames is not None and (isinstance(chunk_frames, bool) or not isinstance(chunk_frames, (int, np.integer))
                                     or chunk_frames < 1):
        raise DataError(f"ingest: chunk_frames must be a positive integer (or None: from the frame size), "
                        f"not {chunk_frames!r}")
    if pixel_pitch_mm is not None:
        pixel_pitch_mm = validate.positive_finite(pixel_pitch_mm, "--pixel-pitch", unit="mm", upper=10,
                                                  fix="give the pixel pitch in mm at the scintillator, e.g. --pixel-pitch 0.1")
    if frame_rate_hz is not None:
        frame_rate_hz = validate.positive_finite(frame_rate_hz, "--frame-rate", unit="Hz", upper=1e7,
                                                 fix="give the recording's frame rate in Hz, e.g. --frame-rate 50")
    kw = dict(dataset=dataset, raw_dtype=raw_dtype, raw_shape=raw_shape, header=header)
    srcs = open_sources(source, **kw)
    if srcs["frames"] is None:
        raise DataError(f"'{source}' holds no projection frames (image_key 0)")
    for name, extra in (("darks", darks), ("flats", flats)):
        if extra is not None:
            srcs[name] = open_sources(extra, **kw)["frames"]
    fr = srcs["frames"]
    t, h, w = fr.shape
    for name in ("darks", "flats"):
        s_ = srcs[name]
        if s_ is not None and tuple(s_.shape[1:]) != (h, w):
            raise DataError(f"{name} '{s_.label}' are {tuple(s_.shape[1:])} frames but the recording is {(h, w)}; "
                            "they must match")
    writer = zarr_store.OutputWriter(output, overwrite=overwrite,
                                     inputs=[p for p in (source, darks, flats) if p is not None])
    summary = {"source": str(source), "frames": [t, h, w], "nonfinite_pixels": 0}
    try:
        for name in ("frames", "darks", "flats"):
            s_ = srcs[name]
            if s_ is None:
                continue
            dt = storage_dtype(s_.dtype)
            n = s_.shape[0]
            chunk = chunk_frames or recording_chunk_frames((h, w), dt)
            arr = writer.frames_target(writer.create(name, s_.shape, dt, chunks=(min(chunk, n), h, w)))
            step = chunk * max(1, 16 // chunk)  # whole chunks a read
            for t0 in range(0, n, step):
                t1 = min(t0 + step, n)
                block = np.asarray(s_.read(t0, t1))
                if block.shape[1:] != (h, w):
                    raise DataError(f"{s_.label}: frame {t0} is {block.shape[1:]}, expected {(h, w)}")
                if dt.kind == "f":
                    summary["nonfinite_pixels"] += int(block.size - np.count_nonzero(np.isfinite(block)))
                arr[t0:t1] = block.astype(dt, copy=False)
                if progress is not None and name == "frames":
                    progress(t1 - t0)
            summary[name] = [int(v) for v in s_.shape]
            summary[f"{name}_dtype"] = str(dt)
        attrs = {"source": str(Path(source).resolve()), "ingested": _now(), "version": __version__}
        if pixel_pitch_mm is not None:
            attrs["pixel_pitch_mm"] = float(pixel_pitch_mm)
        if frame_rate_hz is not None:
            attrs["frame_rate_hz"] = float(frame_rate_hz)
        attrs["nonfinite_pixels"] = summary["nonfinite_pixels"]
        writer.set_attrs({**srcs["frames"].attrs, **attrs})
    except BaseException:
        writer.abort()
        raise
    summary["output"] = writer.commit()
    return summary


def export(
    dataset: str | Path,
    dest: str | Path,
    *,
    array: str = "frames",
    window: tuple[float, float] | None = None,
    fps: float = 20.0,
    side_by_side: bool = False,
    overwrite: bool = False,
) -> Path:
    """Export a dataset's frames: ``.tif`` stack (values exact) or ``.mp4``/``.gif`` preview (8-bit, windowed).

    ``window``: intensity range mapped to black..white (default: the 0.5-99.5 % percentiles of a sample).
    ``side_by_side``: the preview shows the run's raw input next to the processed frames.
    """
    from .io import outputs
    from .io.export import write_preview, write_tiff_stack

    d = Path(dest)
    outputs.check_output_path(d, overwrite=overwrite, inputs=[dataset], kind="file", sidecars=False)
    g = zarr_store.open_group_readonly(dataset)
    if array not in g:
        raise DataError(f"'{dataset}' has no array '{array}'")
    frames = g[array]
    if not hasattr(frames, "dtype") or len(frames.shape) not in (2, 3):
        raise DataError(f"'{dataset}/{array}' is not an array of frames (a group, or not 2D/3D); "
                        "pick a (T, H, W) or (H, W) array with --array")
    label = f"{dataset}/{array}"
    if len(frames.shape) == 2:
        frames = zarr_store.read_checked(frames, label)[None]
    else:  # checked as read (a lost chunk is an error, never black frames); float16/uint16 outputs: their values
        frames = zarr_store.checked_frames(frames, label)
    suf = d.suffix.lower()
    if frames.shape[0] < 1:
        raise DataError(f"'{dataset}/{array}' holds no frames; nothing to export")
    if suf in (".tif", ".tiff"):
        return write_tiff_stack(frames, d)
    if suf not in (".mp4", ".gif"):
        raise DataError(f"'{d}': export writes .tif/.tiff (exact) or .mp4/.gif (preview)")
    if not 0.01 <= float(fps) <= 1000:
        raise DataError(f"--fps {fps:g} is outside 0.01..1000 frames per second; choose a playable rate")
    if min(frames.shape[1:]) < 2:
        raise DataError(f"'{dataset}/{array}' has {frames.shape[1]} x {frames.shape[2]} frames; a {suf} preview "
                        "needs at least 2 x 2 pixels: export them as .tif")
    left = None
    if side_by_side:
        src = (dict(g.attrs).get("provenance") or {}).get("input")
        if not src or not Path(src).exists():
            raise DataError(f"'{dataset}' does not name an existing input in its provenance; drop --side-by-side")
        left = zarr_store.checked_frames(zarr_store.open_group_readonly(src)["frames"], f"{src}/frames")
    return write_preview(frames, d, window=window, fps=fps, left=left)


def info(path: str | Path) -> dict:
    """Describe a dataset: arrays (shape, dtype, chunks, codecs) and attributes."""
    return zarr_store.describe(path)


__all__ = ["RunResult", "run", "time_account", "simulate", "calibrate", "save_calibration", "load_calibration", "info",
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
    """Simulate a recording and a beam-off calibration, fit the afterglow, correct, report into ``outdir``.

    Returns a mapping of what was written and measured.
    """
    from . import report
    from .ops.flatfield import BAD_PIXEL_CLASSES

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    sim_path, run_path = out / "simulated.zarr", out / "corrected.zarr"
    step_path, model_path = out / "afterglow_step.zarr", out / "afterglow_model.json"
    for p in (sim_path, run_path, step_path):
        zarr_store.check_output_path(p, overwrite=overwrite)
    for p in (model_path, mtf_plot_path(run_path.resolve()), out / "afterglow_fit.png"):
        zarr_store.check_output_path(p, overwrite=overwrite, kind="file")
    simulate(sim_path, preset=preset, frames=frames, size=size, seed=seed, overwrite=overwrite)
    simulate(step_path, preset=preset, frames=160, size=(min(size[0], 256), min(size[1], 256)), seed=seed + 1,
             scene="open", beam_off_frame=40, truth_frames=False, overwrite=overwrite)
    fit = fit_afterglow(step_path, model_path, plot=out / "afterglow_fit.png", overwrite=overwrite)
    result = run(sim_path, run_path, overrides=[f"afterglow.model={model_path}", "mtf.enabled=true"],
                 overwrite=overwrite, progress=progress)
    tf = zarr_store.read_array(sim_path, "truth/mtf_frequencies_cy_per_px")
    tm = zarr_store.read_array(sim_path, "truth/mtf_edge")
    i20 = int(np.argmax(tm < 0.2))
    true20 = (tf[i20 - 1] + (tm[i20 - 1] - 0.2) * (tf[i20] - tf[i20 - 1]) / (tm[i20 - 1] - tm[i20])) \
        / zarr_store.read_attrs(sim_path)["pixel_pitch_mm"]
    tr_ag = zarr_store.read_attrs(sim_path, "truth")["afterglow"]
    true_lag = ag.figures(ag.step_amplitudes(tr_ag["amplitudes"], tr_ag["ratios_per_frame"]), tr_ag["tau_s"],
                          fit["frame_rate_hz"])["lag_first_frame"]

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
                                         title_corr=f"corrected (flat-field, afterglow), frame {k} (counts)"),
        "bad_pixels": report.bad_pixel_map(detected, out / "bad_pixels.png", BAD_PIXEL_CLASSES),
        "gain": report.gain_map(gain, out / "gain_map.png"),
        "afterglow": out / "afterglow_fit.png",
        "resolution": Path(result.mtf_summary["plot"]),
    }
    mt = result.mtf_summary
    gh = result.ghost or {}
    summary = {
        "preset": preset,
        "frames": f"{frames} of {size[0]} x {size[1]}",
        "throughput": f"{result.frames_per_second:.1f} frames/s ({result.seconds:.2f} s)",
        "bad pixels found": f"{int(np.count_nonzero(detected))} (recall {recall:.3f}, precision {precision:.3f} vs truth)",
        "open-beam non-uniformity": f"raw {rel(raw.astype(np.float64)) * 100:.2f} % -> corrected {rel(corr) * 100:.2f} % "
                                    f"(truth {rel(truth) * 100:.2f} %; the rest is quantum noise)",
        "afterglow model": f"{len(fit['tau_s'])} term(s), tau "
                           + ", ".join(f"{t * 1e3:.3g} ms" for t in fit["tau_s"])
                           + f"; first-frame lag {fit['figures']['lag_first_frame'] * 100:.3f} % (truth {true_lag * 100:.3f} %)",
        "ghost behind moving board": (f"{gh['mean_abs_before'] * 100:.3f} % of contrast before, "
                                      f"{gh['mean_abs_after'] * 100:.3f} % after afterglow removal"
                                      if gh.get("mean_abs_before") is not None else "n/a"),
        "resolution (slanted edge)": (f"MTF20 {mt['mtf20_median']:.2f} lp/mm, MTF50 {mt['mtf50_median']:.2f} lp/mm "
                                      f"(median over frames; analytic MTF20 {true20:.2f} lp/mm)"
                                      if mt and mt.get("mtf20_median") else "n/a"),
        "corrected - truth": f"mean {float(np.nanmean(corr - truth)):+.2f} counts, rms {float(np.sqrt(np.nanmean((corr - truth) ** 2))):.2f} counts",
        "outputs": ", ".join(str(p.name) for p in files.values()),
    }
    text = report.summary_text(summary)
    (out / "summary.txt").write_text(text)
    return {"summary": summary, "text": text, "files": files, "result": result,
            "simulated": sim_path, "corrected": run_path}


# characterisation lives in its own module; re-exported here for the API
from .characterisation import characterise, simulate_characterisation  # noqa: E402,F401
