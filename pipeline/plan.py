"""The plan of a run (what it will do, from the config and the input's metadata) and its preparation (calibration,
models, the first frames' estimates, the stage chain and engine, the fingerprint a resume checks)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import validate
from ._version import __version__
from .backend import resolve_device, say_once
from .calibration import _check_response, _match_lag_gain, calibrate, load_afterglow, load_calibration, load_response
from .config import RunConfig
from .errors import ConfigError, DataError
from .io import zarr_store
from .schedule import check_execution, is_distributed, process_frames
from .stages import build_chain


def choose_chunk_frames(config: RunConfig, frame_shape, n_frames: int) -> int:
    """Frames per block: the config's number, or ``chunk_bytes`` of float32 when 'auto', rounded down to whole
    output chunks of a viewer's size (:func:`pipeline.recordings.recording_chunk_frames`: 67 frames of 1000²
    would otherwise leave only 1-frame chunks that divide every block)."""
    c = config.execution.chunk_frames
    if c == "auto":
        from .recordings import recording_chunk_frames

        c = max(1, config.execution.chunk_bytes // (4 * int(np.prod(frame_shape))))
        v = recording_chunk_frames(tuple(frame_shape), np.float32)
        c = c // v * v if c >= v else c
    return int(max(1, min(c, n_frames)))


def run_inputs(source: Path, calibration, cfg: RunConfig) -> list:
    """Everything a run reads, which its outputs must never overlap."""
    return [Path(str(source).split("::", 1)[0]), calibration, cfg.afterglow.model, cfg.flatfield.response]


def without_scheduling(config: dict) -> dict:
    """A dumped config without how the blocks are scheduled (that does not change the result: tested bit for bit,
    so a resume may use other workers)."""
    out = dict(config)
    if isinstance(out.get("execution"), dict):
        out["execution"] = {k: v for k, v in out["execution"].items()
                            if k not in ("scheduler", "cluster", "num_workers")}
    return out


def _comparable_config(cfg: RunConfig) -> dict:
    """The config as it decides a run's result."""
    return without_scheduling(cfg.model_dump(mode="json"))


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, decided from the config and the input's metadata alone (no frame read).

    ``calibration``: the saved calibration's path, or None (computed from the input's darks and flats);
    ``estimates``: what is measured on the first frames before the blocks run (noise model, MTF edge).
    """

    source: Path
    input: Path
    output: Path
    config: RunConfig
    device: str
    on_cluster: bool
    shape: tuple
    dtype: str
    chunk_frames: int
    calibration: Path | None
    stages: tuple
    estimates: tuple
    inputs: tuple
    input_stamp: str

    def describe(self) -> str:
        """The plan as ``run --dry-run`` prints it."""
        t, h, w = self.shape
        cfg = self.config
        cal = (f"saved, {self.calibration}" if self.calibration is not None
               else ("computed from the input's darks and flats" if cfg.flatfield.enabled else "none (flatfield off)"))
        blocks = -(-t // self.chunk_frames)
        zarr_input = self.input.is_dir()
        rows = [("input", f"{self.source}" + ("" if zarr_input else " (a recording: ingested beside the output "
                                                                      "first)")),
                ("frames", f"{t} x {h} x {w} {self.dtype}"),
                ("output", f"{self.output} ({cfg.output.dtype}, {cfg.output.codec})"),
                ("device", self.device + (" (dask.distributed)" if self.on_cluster else "")),
                ("blocks", f"{blocks} of {self.chunk_frames} frames, scheduler {cfg.execution.scheduler}"),
                ("calibration", cal),
                ("stages", " -> ".join(self.stages) or "none"),
                ("estimated first", ", ".join(self.estimates) or "nothing"),
                ("on a bad chunk", cfg.execution.on_error)]
        return "\n".join(f"{k:16s}: {v}" for k, v in rows)


def planned_stages(cfg: RunConfig) -> tuple:
    """The names of the stages the config asks for, in order (what :attr:`Chain.names` will say)."""
    out = []
    if cfg.flatfield.enabled:
        out.append("flatfield")
    if cfg.afterglow.model:
        out.append("afterglow")
    if cfg.beam.enabled:
        out.append("beam")
    if cfg.denoise.enabled and cfg.denoise.temporal:
        out.append("denoise-temporal")
    if cfg.denoise.enabled and cfg.denoise.method != "none":
        out.append("denoise-spatial")
    if cfg.mtf.enabled:
        out.append("mtf")
    return tuple(out)


def _device(cfg: RunConfig, on_cluster: bool) -> str:
    """The device the stages run on: gpu on a cluster means the workers' GPUs (the client needs none); auto
    only on a local-cuda cluster, whose workers share this machine's GPUs; otherwise this process's device."""
    if on_cluster and cfg.execution.device == "gpu":
        return "gpu"
    if on_cluster and cfg.execution.device == "auto" and cfg.execution.cluster != "local-cuda":
        say_once("execution.device=auto on a dask.distributed cluster runs the stages on the workers' CPUs; "
                 "use --device gpu to run them on the workers' GPUs")
        return "cpu"
    return resolve_device(cfg.execution.device)


def plan_run(input: Path, output: Path, cfg: RunConfig, *, calibration=None, source: Path | None = None,
             overwrite: bool = False) -> RunPlan:
    """Plan a run of the Zarr dataset ``input`` (``source``: what the user gave, if it was ingested first).

    Opens the dataset's metadata only; checks the sizes against the frame and the MTF plot's path.
    """
    from .io.checkpoint import path_stamp

    source = Path(source or input)
    check_execution(cfg.execution.scheduler, cfg.execution.cluster)  # a missing dask-cuda fails before any output
    on_cluster = is_distributed(cfg.execution.scheduler, cfg.execution.cluster)
    device = _device(cfg, on_cluster)
    (t, h, w), dtype = _input_meta(Path(input))
    if t < 1:
        raise DataError(f"input '{input}/frames' holds no frames")
    inputs = tuple(run_inputs(source, calibration, cfg))  # (a staged ingest of the source is ours, beside the output)
    if cfg.mtf.enabled:
        from .measure import mtf_plot_path

        zarr_store.check_output_path(mtf_plot_path(output), overwrite=overwrite, inputs=inputs, kind="file")
    validate.check_sizes(cfg, (h, w))
    _check_beam(cfg, (h, w))
    estimates = tuple(x for x, on in (("beam reference", cfg.beam.enabled and cfg.beam.reference is None),
                                      ("noise model", cfg.denoise.enabled and cfg.denoise.noise_model is None),
                                      ("MTF edge ROI", cfg.mtf.enabled and cfg.mtf.roi is None)) if on)
    return RunPlan(source=source, input=Path(input), output=Path(output), config=cfg, device=device,
                   on_cluster=on_cluster, shape=(t, h, w), dtype=dtype,
                   chunk_frames=choose_chunk_frames(cfg, (h, w), t),
                   calibration=Path(calibration) if calibration is not None else None, stages=planned_stages(cfg),
                   estimates=estimates, inputs=inputs, input_stamp=path_stamp(Path(str(source).split("::", 1)[0]))["digest"])


def _input_meta(path: Path) -> tuple:
    """``((T, H, W), dtype)`` of a Zarr dataset, or of a recording as it would be ingested (nothing written)."""
    if path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file()):
        ds = zarr_store.open_input(path)
        return tuple(ds.shape), str(ds.frames.dtype)
    from .io.ingest import open_sources, storage_dtype

    src = open_sources(path)["frames"]
    if src is None:
        raise DataError(f"'{path}' holds no projection frames (image_key 0)")
    return tuple(int(v) for v in src.shape), str(storage_dtype(src.dtype))


@dataclass
class Prepared:
    """What a plan needs before its blocks run: the dataset, calibration, models, the stage chain and engine."""

    ds: object
    cal: object
    cal_source: str | None
    model: object
    response: object
    chain: object
    noise: object
    mtf_roi: tuple | None
    engine: Callable
    gpu: object
    device: str
    chunk: int
    fingerprint: dict
    #: wall seconds of each set-up phase (calibration, beam reference, noise model and MTF edge, GPU set-up)
    setup_s: dict | None = None


def prepare(plan: RunPlan) -> Prepared:
    """Calibration (loaded or computed), afterglow model and response, noise model and MTF edge (from the first
    readable frames), the stage chain, the engine (CPU graph or GPU conveyor) and the run's fingerprint."""
    from .progress import timed

    setup: dict = {}
    cfg, (_, h, w) = plan.config, plan.shape
    if (cfg.flatfield.enabled and plan.calibration is None) or (plan.device != "gpu" and not plan.on_cluster):
        from . import cpu

        with timed("loading the compiled CPU kernels", setup):  # once per process (Numba's target, its threads):
            cpu.available()  # named here, not hidden in the first block's or the calibration's time
    ds = zarr_store.open_input(plan.input)
    model = load_afterglow(cfg, ds)
    cal = cal_source = None
    if cfg.flatfield.enabled:
        with timed("calibration", setup):
            if plan.calibration is not None:
                cal = _match_lag_gain(load_calibration(plan.calibration, (h, w)), model, plan.calibration)
                cal_source = str(plan.calibration)
                _check_response(plan.calibration, cfg, (h, w))
            else:
                cal, cal_source = calibrate(ds, cfg, afterglow_model=model), f"{plan.input} (darks, flats)"
    response = load_response(cfg, (h, w))
    chain = build_chain(cfg, cal, ds.frames.dtype, afterglow_model=model, response=response)
    if cfg.beam.enabled:
        with timed("beam reference", setup):
            beam = _beam_reference(cfg, chain, ds)
    else:
        beam = None
    if beam is not None:
        chain = build_chain(cfg, cal, ds.frames.dtype, afterglow_model=model, response=response, beam_reference=beam)
    with timed("noise model and MTF edge on the first frames", setup):
        noise = _noise_model(cfg, chain, ds) if cfg.denoise.enabled else None
        mtf_roi = _mtf_roi(cfg, chain, ds) if cfg.mtf.enabled else None
    if noise is not None or mtf_roi is not None:
        chain = build_chain(cfg, cal, ds.frames.dtype, afterglow_model=model, mtf_roi=mtf_roi, noise=noise,
                            response=response, beam_reference=beam)
    engine, gpu, device, chunk = process_frames, None, plan.device, plan.chunk_frames
    if device == "gpu" and plan.on_cluster:  # the same graph; every task runs its stages on its worker's GPU
        from .conveyor import DeviceChain

        chain = DeviceChain(chain)
    elif device == "gpu":  # (or auto with a working GPU): the GPU conveyor, where it can run this chain
        from .conveyor import gpu_engine

        with timed("GPU set-up (kernels compiled)", setup):
            gpu, device = gpu_engine(chain, ds.frames.dtype, (h, w), requested=cfg.execution.device,
                                     execution=cfg.execution)
        if gpu is not None:
            engine, chunk = gpu.process_frames, gpu.fit_block_frames(chunk, ds.frames.dtype)
    fingerprint = _fingerprint(plan, ds, cal, model, response, noise, mtf_roi, device, chunk)
    fingerprint["beam_reference"] = beam
    return Prepared(ds, cal, cal_source, model, response, chain, noise, mtf_roi, engine, gpu, device, chunk,
                    fingerprint, setup)


def _calibration_checksum(cal) -> str | None:
    from .io.checkpoint import checksum

    if cal is None:
        return None
    return checksum(np.concatenate([np.asarray(cal.dark, np.float32).ravel(), np.asarray(cal.gain, np.float32).ravel(),
                                    np.asarray([cal.flat_level], np.float32)]))


def _fingerprint(plan, ds, cal, model, response, noise, mtf_roi, device, chunk) -> dict:
    """What decides a run's result, for ``--resume`` (how the blocks are scheduled does not: tested bit for bit,
    so a resume may use other workers)."""
    from .io.checkpoint import CHECKSUM, checksum

    t, h, w = plan.shape
    return {
        "version": __version__, "checksum": CHECKSUM, "config": _comparable_config(plan.config), "device": device,
        "input": str(plan.input.resolve()), "input_stamp": plan.input_stamp,
        "shape": [t, h, w], "dtype": str(ds.frames.dtype), "calibration_checksum": _calibration_checksum(cal),
        "chunk_frames": chunk, "afterglow_model": (model.info if model is not None else None),
        "noise_model": ([noise.alpha, noise.beta, noise.box_factor] if noise else None), "mtf_roi": mtf_roi,
        "response_checksum": checksum(response) if response is not None else None,
        "source_stamp": ds.attrs.get("source_stamp"),
    }


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
        from . import jit

        level = jit.nanmedian_f32(probe)
        level = float(np.nanmedian(probe)) if level is None else level
    return NoiseModel(model.alpha, model.beta, model.box_factor, level)


def _check_beam(cfg: RunConfig, frame_shape) -> None:
    if not cfg.beam.enabled:
        return
    h, w = frame_shape
    if cfg.beam.region is None:
        raise ConfigError("beam.enabled needs beam.region: Y0 Y1 X0 X1 of an area the beam reaches unobstructed in "
                          "every frame")
    y0, y1, x0, x1 = cfg.beam.region
    if y1 > h or x1 > w:
        raise ConfigError(f"beam.region {list(cfg.beam.region)} must lie inside the {h} x {w} frames")
    if not cfg.flatfield.enabled:
        raise ConfigError("beam.enabled needs flatfield.enabled: true (the region's mean must be dark-subtracted)")


def _beam_reference(cfg: RunConfig, chain, ds) -> float:
    """The beam stage's level: the config's, or the median of the region's means over the first readable frames
    (corrected up to the beam stage; once per run, so that every block uses the same one)."""
    from .ops.beam import region_means

    if cfg.beam.reference is not None:
        return float(cfg.beam.reference)
    n = min(cfg.beam.reference_frames, ds.shape[0])
    probe, _ = chain(_first_readable(cfg, ds, n, "the beam reference"))
    m = region_means(probe, region=cfg.beam.region)
    m = m[np.isfinite(m) & (m > 0)]
    if m.size == 0:
        raise DataError(f"beam.region {list(cfg.beam.region)} has no positive signal in the first frames of "
                        f"'{ds.path}'; choose an open-beam region or set beam.reference")
    return float(np.median(m))


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
    from .ops.edges import find_edge_roi

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
