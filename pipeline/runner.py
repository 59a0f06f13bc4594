"""``run``: a recorded video through the configured stages, Zarr in, Zarr out, resumable.

A run is planned (:func:`plan_run`: config, device, chunking, calibration source, stages; nothing read but
metadata), prepared (:func:`prepare`: calibration, models, noise model, MTF edge, the stage chain, the
fingerprint), executed block by block (:func:`execute`: the writer, resume, the engine) and finalised
(:func:`finalise`: summaries, provenance, the atomic commit). :func:`run` holds the output's lock around it all
and ingests a non-Zarr recording first.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ._version import __version__
from .clock import utc_now as _now
from .backend import describe_device
from .config import RunConfig, load_config
from .errors import AlreadyComplete, DataError, OutputExistsError, PipelineError, RunInterrupted
from .io import zarr_store
from .plan import (Prepared, RunPlan, _comparable_config, without_scheduling, choose_chunk_frames, plan_run, planned_stages,  # noqa: F401
                   prepare, run_inputs)
from .io.outputs import sidecar
from .sources import RecordingOptions, discard


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
    #: what the run found (:func:`findings`): bad pixels by class, afterglow model, noise model, denoise gain,
    #: output bytes on disk, the input's metadata and where it came from
    findings: dict | None = None


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
    source_options: "RecordingOptions | None" = None,
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
    source_options : RecordingOptions, optional
        How to read a recording that is not a Zarr dataset, or what to change in one (darks, flats, a frame
        range, pixel pitch, frame rate): :mod:`pipeline.sources`. The config's ``input`` section is its
        metadata's config layer.

    Returns
    -------
    RunResult
    """
    from .io import outputs
    from .progress import phase
    from .sources import NONE, needs_staging

    cfg = load_config(config, overrides=overrides)
    src = Path(input)
    opts = (source_options or NONE).with_config(cfg)
    inputs = run_inputs(src, calibration, cfg) + opts.inputs()
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
        if needs_staging(src, opts):
            with phase("reading the recording into Zarr"):
                staged = _stage_recording(src, opts, outputs.sidecar(out, ".ingest.zarr"), resume=resume)
        try:
            plan = plan_run(staged or src, out, cfg, calibration=calibration, source=src, overwrite=overwrite)
            return execute(plan, prepare(plan), lock=lock, resume=resume, overwrite=overwrite, progress=progress)
        except PipelineError as exc:
            if staged is None:
                raise
            raise type(exc)(str(exc).replace(str(staged), str(src))) from None
        finally:
            if staged is not None and not progress_path.exists():  # kept only while a resume may need it
                discard(staged)
    finally:
        lock.release()


def dry_run(input, output, config=None, *, overrides=None, calibration=None) -> RunPlan:
    """The plan of :func:`run` with these arguments, checked (paths, sizes, device) but not carried out: nothing is
    read but metadata and nothing is written (``run --dry-run`` prints :meth:`RunPlan.describe`)."""
    from .io import outputs

    cfg = load_config(config, overrides=overrides)
    src = Path(input)
    outputs.check_output_path(output, overwrite=True, inputs=run_inputs(src, calibration, cfg))
    if not Path(str(src).split("::", 1)[0]).exists():
        raise DataError(f"input '{src}' does not exist; check the path")
    return plan_run(src, Path(output).resolve(), cfg, calibration=calibration, source=src, overwrite=True)


def _stage_recording(src: Path, opts, staged: Path, *, resume: bool) -> Path:
    """The recording as the Zarr dataset the run reads (:func:`pipeline.sources.stage`: ingested, or linked with
    the given metadata), next to the output; kept for ``--resume`` while the recording's files and the options
    are unchanged (:func:`pipeline.io.checkpoint.path_stamp`)."""
    from .io import outputs
    from .io.checkpoint import path_stamp
    from .sources import discard, file_of, stage

    if not file_of(src).exists():
        raise DataError(f"input '{file_of(src)}' does not exist; check the path")
    stamp = {**path_stamp(file_of(src)), "options": opts.stamp(), "name": str(src),
             **({"darks": path_stamp(opts.darks)} if opts.darks and Path(opts.darks).exists() else {}),
             **({"flats": path_stamp(opts.flats)} if opts.flats and Path(opts.flats).exists() else {})}
    stamp = json.loads(json.dumps(stamp, default=str))
    if (resume and outputs.marked(staged, "staged-ingest")
            and zarr_store.read_attrs(staged).get("source_stamp") == stamp):
        return staged
    discard(staged)
    stage(src, opts, staged)
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


def _resume_complete(out: Path, src: Path, cfg: RunConfig):
    """``--resume`` of a complete output: nothing to do where it was made from this input and config, else refused."""
    from .io import outputs
    from .io.checkpoint import path_stamp

    prov = zarr_store.read_attrs(out).get("provenance") or {}
    same = (prov.get("input") == str(src.resolve()) and without_scheduling(prov.get("config") or {})
            == _comparable_config(cfg)
            and prov.get("input_stamp") in (None, path_stamp(src)["digest"]))
    if not same:
        raise DataError(f"'{out}' is complete but was made from another input, config or version of the input; "
                        "rerun without --resume (add --overwrite to replace it) or choose another output")
    progress_dir = outputs.sidecar(out, ".progress")
    if outputs.marked(progress_dir):  # killed after its final move, before the progress folder went
        outputs.remove(progress_dir)
    raise AlreadyComplete(f"'{out}' is complete; nothing to resume")


def _check_resumable(plan: RunPlan, prep: Prepared, progress_dir) -> bool:
    """Whether ``--resume`` continues the interrupted run (same fingerprint, partial output there); refused in one
    line naming what differs where it was made with other settings, another release or since-changed input."""
    from .io.checkpoint import CHECKSUM

    fingerprint, output = prep.fingerprint, plan.output
    if progress_dir.matches(fingerprint):
        return sidecar(output, ".partial").is_dir()
    if not progress_dir.has_fingerprint():
        return False
    old = progress_dir.stored_fingerprint() or {}
    if old.get("checksum") != CHECKSUM or old.get("version") != __version__:
        raise DataError(f"the interrupted run at '{output}' was made by an earlier xray-pipeline "
                        f"({old.get('version', '?')}); rerun with --overwrite instead of --resume (it starts afresh)")
    if old.get("input_stamp") != plan.input_stamp and old.get("input") == fingerprint["input"]:
        raise DataError(f"the input's files changed since the interrupted run at '{output}'; rerun with "
                        "--overwrite instead of --resume (it starts afresh)")
    differ = [d.removeprefix("config.") for d in _differences(old, json.loads(json.dumps(fingerprint)))]
    raise DataError(f"the interrupted run at '{output}' was made with another {', '.join(differ[:4])}"
                    f"{' ...' if len(differ) > 4 else ''}; resume with the same settings, or rerun with "
                    "--overwrite instead of --resume (it starts afresh)")


@dataclass
class _Resume:
    """Where a resumed run starts: the first block to run, the states before it, the finished blocks kept."""

    start_block: int = 0
    states: list | None = None
    skip: set = None
    earlier: dict = None


def _open_writer(plan: RunPlan, prep: Prepared, lock, progress_dir, resume: bool, overwrite: bool):
    """The output writer and its frames array: the interrupted run's partial output where it resumes, else new."""
    t, h, w = plan.shape
    if resume:
        try:  # a kill can land while the partial output was being set up: then start afresh
            writer = zarr_store.OutputWriter(plan.output, overwrite=overwrite, inputs=plan.inputs, resume=True,
                                             lock=lock)
            target = writer.group["frames"]
            if tuple(target.shape) != (t, h, w) or target.chunks[0] != output_chunk_frames(plan, prep):
                raise ValueError("partial output does not match")
            return writer, target, True
        except Exception:
            pass
    writer = zarr_store.OutputWriter(plan.output, overwrite=overwrite, inputs=plan.inputs, lock=lock)
    progress_dir.start(prep.fingerprint)
    storage = prep.chain.storage
    cfg = plan.config
    target = writer.create("frames", (t, h, w), storage.numpy_dtype, chunks=(output_chunk_frames(plan, prep), h, w),
                           codec=cfg.output.codec, level=cfg.output.level,
                           fill_value=0 if storage.dtype == "uint16" else np.nan)  # a missing value either way
    writer.set_attrs(storage.attributes(), "frames")
    return writer, target, False


def output_chunk_frames(plan: RunPlan, prep: Prepared) -> int:
    """Frames per stored chunk of the output: ``output.chunk_frames``, else the rule ingest uses (up to 16 frames
    within 32 MiB: a viewer decodes one chunk to show a frame, not a whole 64-frame block), made a divisor of the
    processing block where there are several (so every block is whole chunks, written straight by the chunk
    encoder, and no two blocks share a chunk)."""
    from .recordings import recording_chunk_frames

    t, h, w = plan.shape
    want = plan.config.output.chunk_frames or recording_chunk_frames((h, w), prep.chain.storage.numpy_dtype)
    want = max(1, min(int(want), prep.chunk))
    if prep.chunk >= t:  # one block: no boundary between blocks to fall on
        return want
    return max(d for d in range(1, want + 1) if prep.chunk % d == 0)


def _resume_point(prep: Prepared, target, progress_dir, t: int) -> _Resume:
    """The finished blocks that still read back as checksummed, and the newest saved states within their prefix."""
    from .io.checkpoint import block_checksum

    n_blocks = -(-t // prep.chunk)
    stages = list(prep.chain.stateful)
    earlier = {}
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
    states = progress_dir.states_after(prefix, len(stages)) if stages and prefix >= 0 else None
    return _Resume(prefix + 1, states, {c for c in earlier if c > prefix}, earlier)


def execute(plan: RunPlan, prep: Prepared, *, lock, resume: bool = False, overwrite: bool = False,
            progress: Callable[[int], None] | None = None) -> RunResult:
    """Run the prepared plan block by block (resuming the interrupted run where asked and possible), then
    :func:`finalise` it."""
    from .io.checkpoint import Checkpoint

    cfg, (t, h, w) = plan.config, plan.shape
    start_wall, start = _now(), time.perf_counter()
    progress_dir = Checkpoint(sidecar(plan.output, ".progress"))
    resuming = bool(resume) and _check_resumable(plan, prep, progress_dir)
    writer, target, resuming = _open_writer(plan, prep, lock, progress_dir, resuming, overwrite)
    where = _Resume(skip=set(), earlier={})
    if hasattr(progress, "set_total"):  # a pipeline.progress.Progress: the work is known now
        progress.set_total(t)
    if resuming:
        where = _resume_point(prep, target, progress_dir, t)
        if progress is not None and where.start_block > 0:
            kept = min(where.start_block * prep.chunk, t)
            progress.already_done(kept) if hasattr(progress, "already_done") else progress(kept)
    block_bytes = prep.chunk * h * w * prep.chain.storage.numpy_dtype.itemsize
    has_states = bool(list(prep.chain.stateful))  # what on_commit needs (it travels to the workers, not the stages)

    def on_commit(c, t0, t1, written, sts):
        extra = {"measured": written["measured"], "info": written["info"]}
        progress_dir.commit(c, t0, t1, written["checksum"], sts if has_states else None, extra,
                            block_bytes=block_bytes)

    on_commit.block_bytes = block_bytes  # the GPU engine downloads the states of the blocks that save them only
    try:
        engine_start = time.perf_counter()
        results = prep.engine(prep.ds.reader(check_missing=cfg.execution.check_missing_chunks),
                              writer.frames_target(target), prep.chain, chunk_frames=prep.chunk,
                              scheduler=cfg.execution.scheduler, cluster=cfg.execution.cluster,
                              num_workers=cfg.execution.num_workers, progress=progress, start_block=where.start_block,
                              initial_states=where.states, skip_write=where.skip, on_commit=on_commit,
                              skip_errors=cfg.execution.on_error == "skip", recycle=True)
        engine_s = time.perf_counter() - engine_start
    except KeyboardInterrupt:
        raise RunInterrupted(f"interrupted; the finished blocks are kept: resume with 'xray-pipeline run "
                             f"{plan.source} {plan.output} --resume{' --overwrite' if overwrite else ''}' and the "
                             "same config and calibration") from None
    return finalise(plan, prep, writer, target, progress_dir, results, where if resuming else None,
                    timing=(start_wall, start, engine_s))


def _records(results, earlier: dict, chunk: int) -> list:
    """Every block's record, in order: from this run, or from the interrupted run for the blocks it kept."""
    records = {r["t0"] // chunk: r for r in results if not r["skipped_write"]}
    for c, m in earlier.items():
        if c not in records:
            records[c] = {"t0": m["t0"], "n": m["t1"] - m["t0"], "measured": _revive(m["extra"].get("measured")),
                          "info": m["extra"].get("info", {})}
    return [records[c] for c in sorted(records)]


def _threads(cfg: RunConfig, prep: Prepared, on_cluster: bool):
    if prep.gpu is not None:
        return {"readers": prep.gpu.readers, "writers": int(cfg.execution.num_workers or prep.gpu.writers)}
    if on_cluster:
        return None  # the cluster's
    return 1 if cfg.execution.scheduler == "synchronous" else int(cfg.execution.num_workers or os.cpu_count() or 1)


def finalise(plan: RunPlan, prep: Prepared, writer, target, progress_dir, results, resumed: _Resume | None, *,
             timing) -> RunResult:
    """Summaries (MTF, calibration maps, ghost), provenance, the atomic commit, the plot and warnings."""
    cfg, t, ds, chain = plan.config, plan.shape[0], prep.ds, prep.chain
    start_wall, start, engine_s = timing
    ordered = _records(results, resumed.earlier if resumed else {}, prep.chunk)
    info = [r["info"] or {} for r in ordered]
    skipped = [list(s) for i in info for s in (i.get("skipped") or [])]
    nonfinite = int(sum(i.get("nonfinite", 0) for i in info))
    at_limit = int(sum(i.get("at_limit", 0) for i in info))
    mtf_summary = None
    if cfg.mtf.enabled:
        measured = [(r["t0"], r["measured"]) for r in ordered if r["measured"] is not None]
        from .measure import _write_mtf

        mtf_summary = _write_mtf(writer, measured, t, ds.attrs.get("pixel_pitch_mm"), prep.mtf_roi, cfg)
    if prep.cal is not None:
        writer.write("calibration/bad_pixels", np.asarray(prep.cal.bad_pixels, np.uint8))
        writer.write("calibration/gain", np.asarray(prep.cal.gain, np.float32))
    seconds = time.perf_counter() - start
    gpu = prep.gpu
    account = time_account(results, seconds, threads=_threads(cfg, prep, plan.on_cluster), blocks_s=engine_s,
                           waits=dict(gpu.waits) if gpu is not None else None,
                           busy_s=gpu.busy_s if gpu is not None else None)
    if prep.setup_s:  # before the run's clock started: what preparing it cost
        account["prepare_s"] = {k: round(v, 4) for k, v in prep.setup_s.items()}
    ghost = None
    if prep.model is not None and ds.has_truth and cfg.flatfield.output == "counts" and not skipped:
        from .measure import ghost_report

        ghost = ghost_report(ds, zarr_store.Decoded(target, chain.storage.decode), prep.model, prep.chunk)
        writer.write("ghost/before", ghost.pop("before"))
        writer.write("ghost/after", ghost.pop("after"))
    attrs = {k: v for k, v in ds.attrs.items() if k in ("pixel_pitch_mm", "frame_rate_hz")}
    attrs["skipped_frames"] = skipped
    found = findings(prep, target, chain)
    attrs["provenance"] = _provenance(plan, prep, ghost, mtf_summary, skipped, nonfinite, at_limit, resumed,
                                      start_wall, seconds, account)
    attrs["provenance"]["findings"] = found
    writer.set_attrs(attrs)
    final = writer.commit()
    found["output_bytes"] = sum(f.stat().st_size for f in Path(final).rglob("*") if f.is_file())
    progress_dir.remove()
    if mtf_summary is not None:
        from . import report
        from .io.outputs import atomic_file

        m50, m20, unit = mtf_summary.pop("_curves")
        with atomic_file(mtf_summary["plot"], overwrite=True, inputs=plan.inputs) as tmp:  # (checked when planned)
            report.resolution_over_time(m50, m20, unit.replace("_per_", "/"), tmp)
    _warn(plan, chain, nonfinite, at_limit)
    nbad = int(np.count_nonzero(prep.cal.bad_pixels)) if prep.cal is not None else 0
    again = None
    if resumed is not None:
        computed = int(sum(r["n"] for r in results if not r["skipped_write"]))
        kept = sorted(set(range(resumed.start_block)) | set(resumed.skip))
        again = {"blocks_kept": len(kept), "frames_kept": t - computed, "frames_computed": computed,
                 "computed_frames_per_second": computed / seconds if seconds > 0 else None}
    return RunResult(final, t, seconds, t / seconds if seconds > 0 else float("inf"), tuple(chain.names), nbad, ghost,
                     mtf_summary, skipped, nonfinite, account, again, found)


def findings(prep: Prepared, target, chain) -> dict:
    """What a run found, for its summary: bad pixels by class, the afterglow model, the noise model and the
    denoiser's gain, and the input's pixel pitch and frame rate with where they came from.

    The denoise gain is a noise reduction, not a PSNR (what a filter's blur costs is not counted): the noise
    model's variance at the output's level (the noise before denoising) against the output's own noise variance,
    measured from the differences of its last frames at lags of 16 and 32 frames (both averaged over the central
    512 x 512 pixels at most; a static scene assumed: motion can only lower it), in dB; absent with fewer than 40
    frames or no noise model.
    """
    from .ops.badpixels import BAD_PIXEL_CLASSES

    out: dict = {}
    if prep.cal is not None:
        mask = np.asarray(prep.cal.bad_pixels)
        out["bad_pixels"] = {name: int(np.count_nonzero(mask & bit)) for name, bit in BAD_PIXEL_CLASSES.items()}
        out["bad_pixels"]["total"] = int(np.count_nonzero(mask))
    if prep.model is not None:
        out["afterglow_model"] = {"path": str(prep.model.path), "tau_s": [float(v) for v in prep.model.tau_s],
                                  "amplitudes": [float(v) for v in prep.model.amplitudes]}
    noise = prep.noise
    if noise is not None:
        out["noise_model"] = {"alpha": float(noise.alpha), "beta": float(noise.beta)}
        gain = _denoise_gain(noise, zarr_store.Decoded(target, chain.storage.decode), target.shape)
        if gain is not None:
            out["denoise_gain_db"] = gain
    meta = prep.ds.attrs.get("metadata_sources") or {}
    out["metadata"] = {k: [prep.ds.attrs[k], meta.get(k, "the dataset's attribute")]
                       for k in ("pixel_pitch_mm", "frame_rate_hz") if prep.ds.attrs.get(k) is not None}
    return out


def _denoise_gain(noise, frames, shape, *, lag: int = 16, pairs: int = 8, crop: int = 512) -> float | None:
    # the noise reduction in dB (findings): the noise model's variance at the output's level against the output's
    # own noise variance, both averaged over the pixels, from the last frames' differences at lags L and 2L. A
    # recursive (temporal) filter keeps a memory of earlier frames, so a difference at lag L holds 2 var (1 - rho_L);
    # with rho_2L = rho_L^2 (a geometric memory) the two lags give var = d_L / (2 - d_2L / d_L). Means, not medians:
    # the noise's variance differs from pixel to pixel (a median of pooled squares would understate it), and a
    # moving object can only add variance (understate the gain). The central crop x crop pixels.
    t, h, w = shape
    if t < 2 * lag + pairs:
        return None
    rows = slice(max(0, (h - crop) // 2), max(0, (h - crop) // 2) + min(h, crop))
    cols = slice(max(0, (w - crop) // 2), max(0, (w - crop) // 2) + min(w, crop))
    k0 = t - 2 * lag - pairs
    a, b, c = (np.asarray(frames[k0 + o:k0 + o + pairs, rows, cols], np.float64) for o in (0, lag, 2 * lag))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (skipped) frames
        d1 = float(np.nanmean((b - a) ** 2)) / 2
        d2 = float(np.nanmean((c - a) ** 2)) / 2
        var_in = noise.alpha * float(np.nanmean(c)) + noise.beta  # the model's variance, averaged over the pixels
    if not (d1 > 0 and np.isfinite(d2) and var_in > 0):
        return None
    memory = min(max(d2 / d1 - 1.0, 0.0), 0.9)  # rho_L; beyond 0.9 the lags are too short to say
    return float(10 * np.log10(var_in * (1.0 - memory) / d1))


def _provenance(plan, prep, ghost, mtf_summary, skipped, nonfinite, at_limit, resumed, start_wall, seconds,
                account) -> dict:
    cfg, ds, noise, t = plan.config, prep.ds, prep.noise, plan.shape[0]
    return {
        "package": "xray-pipeline",
        "version": __version__,
        "config": cfg.model_dump(mode="json"),
        "input": str(plan.source.resolve()),
        "input_stamp": plan.input_stamp,
        "input_shape": list(plan.shape),
        "input_dtype": str(ds.frames.dtype),
        "calibration": prep.cal_source,
        "calibration_checksum": prep.fingerprint["calibration_checksum"],
        "afterglow_model": str(Path(cfg.afterglow.model).resolve()) if prep.model is not None else None,
        "ghost": ghost,
        "mtf": {k: v for k, v in mtf_summary.items() if k != "_curves"} if mtf_summary else None,
        "noise_model": ({"alpha": noise.alpha, "beta": noise.beta, "box_factor": noise.box_factor,
                         "meaning": "var = alpha * mean + beta of the corrected frames"} if noise else None),
        "stages": prep.chain.names,
        "chunk_frames": prep.chunk,
        "skipped_frames": skipped,
        "input_missing_chunks": ds.reader(check_missing=cfg.execution.check_missing_chunks).missing_rule,
        "nonfinite_input_pixels": nonfinite,
        "stored_at_limit": at_limit,
        "resumed": ({"from_block": resumed.start_block, "blocks_kept": sorted(resumed.earlier)} if resumed else None),
        "start": start_wall,
        "end": _now(),
        "seconds": seconds,
        "frames_per_second": t / seconds if seconds > 0 else None,
        "time_account": account,
        "device": ("gpu (each dask.distributed worker's)" if prep.device == "gpu" and plan.on_cluster
                   else describe_device(prep.device)),
        "host": socket.gethostname(),
        "python": platform.python_version(),
    }


def _warn(plan, chain, nonfinite: int, at_limit: int) -> None:
    if nonfinite:
        warnings.warn(f"{nonfinite} NaN/Inf pixels in the input frames of '{plan.input}' (NaN in the output)",
                      stacklevel=3)
    if at_limit:
        st = chain.storage
        fix = ("lower output.scale (values too large) or raise output.offset (negative values)"
               if st.dtype == "uint16" else "use output.dtype: float32")
        warnings.warn(f"{at_limit} output values sit at the ends of {st.dtype}'s range (clipped or Inf): {fix}",
                      stacklevel=3)


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
