"""Commands that correct: calibrate, run, afterglow fit; and the lines a run prints about itself."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .app import cli
from .options import _NAMES, _config_options, _progress, _recording_options, _say_metadata, _source_options


def _bad_pixel_classes(cal) -> str:
    """``"12 bad pixels: 3 dead, 9 hot"`` from a calibration's class mask (ASTM E2597)."""
    import numpy as np

    from ..ops.badpixels import BAD_PIXEL_CLASSES

    mask = np.asarray(cal.bad_pixels)
    n = int(np.count_nonzero(mask))
    by = [f"{int(np.count_nonzero(mask & bit))} {name}" for name, bit in BAD_PIXEL_CLASSES.items()
          if np.count_nonzero(mask & bit)]
    return f"{n} bad pixel{'s' if n != 1 else ''}" + (f": {', '.join(by)}" if by else "")


@cli.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@_config_options
@_recording_options
@click.option("--overwrite", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
def calibrate(input, output, config_file, overrides, overwrite, quiet, **rec):
    """Compute dark, gain and bad-pixel maps from INPUT's darks/flats; save to OUTPUT.

    INPUT is a Zarr dataset or a recording (TIFF file or folder, HDF5, raw, npy, video) with --darks/--flats.
    """
    from ..calibration import calibrate as _calibrate, save_calibration
    from ..config import load_config
    from ..io.zarr_store import check_output_path
    from ..sources import staged

    cfg = load_config(config_file, overrides=list(overrides))
    opts = _source_options(rec, cfg)
    inputs = [input, cfg.afterglow.model, cfg.flatfield.response, *opts.inputs()]
    check_output_path(output, overwrite=overwrite, inputs=inputs)
    with _progress("calibrate", None, quiet) as bar:
        with bar.phase("reading the recording"), staged(input, opts, near=output) as z:
            with bar.phase("dark, gain and bad-pixel maps"):
                cal = _calibrate(z, cfg)
    path = save_calibration(cal, output, overwrite=overwrite, source=str(input), inputs=inputs)
    classes = _bad_pixel_classes(cal)
    if not quiet:
        click.echo(f"calibration -> {path} (flat level {cal.flat_level:.1f} counts, {classes})")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="INPUT... OUTPUT")
@_config_options
@click.option("--calibration", type=click.Path(path_type=Path), default=None, help="saved calibration group")
@click.option("--chunk-frames", type=click.IntRange(min=1), default=None, help="frames per block")
@click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default=None)
@click.option("--scheduler", default=None, metavar="NAME|ADDRESS",
              help="threads | synchronous | processes, or a dask.distributed scheduler address (tcp://HOST:8786)")
@click.option("--cluster", default=None, metavar="none|local|local-cuda",
              help="start a dask.distributed cluster for the run (local: --set execution.num_workers=N processes)")
@click.option("--overwrite", is_flag=True, help="replace OUTPUT if it exists (only once the new one is complete)")
@click.option("--resume", is_flag=True, help="continue an interrupted run (same input, config and calibration)")
@click.option("--on-error", type=click.Choice(["fail", "skip"]), default=None,
              help="a corrupt or missing input chunk: fail, or fill with NaN, record and continue")
@click.option("--quiet", "-q", is_flag=True)
@click.option("--dry-run", is_flag=True, help="print the plan (input, device, blocks, calibration, stages) and exit; "
                                               "nothing is read but metadata, nothing written")
@_recording_options
def run(paths, config_file, overrides, calibration, chunk_frames, device, scheduler, cluster, overwrite, resume,
        on_error, quiet, dry_run, **rec):
    """Correct the video INPUT and write OUTPUT (Zarr).

    INPUT is a Zarr dataset, or a TIFF/HDF5/raw/video/npy recording (ingested on the fly, with the options below).
    Several INPUTs (many short clips) go into the folder OUTPUT, one OUTPUT/NAME.zarr each, with the same config
    and options: the start-up (imports, loading the compiled kernels) is paid once, not once per clip.
    """
    from ..config import load_config

    if len(paths) < 2:
        raise click.UsageError("expected INPUT... OUTPUT: at least one input and the output")
    *inputs, output = paths
    extra = list(overrides)
    for key, value in (("chunk_frames", chunk_frames), ("device", device), ("scheduler", scheduler),
                       ("cluster", cluster), ("on_error", on_error)):
        if value:
            extra.append(f"execution.{key}={value}")
    cfg = load_config(config_file, overrides=extra)
    opts = _source_options(rec)
    jobs = [(inputs[0], output)] if len(inputs) == 1 else batch_outputs(
        inputs, output, calibration=calibration, config=cfg, options=opts, replace=overwrite or resume)
    if dry_run:
        from ..runner import dry_run as _dry_run

        for src, out in jobs:
            click.echo(_dry_run(src, out, cfg, calibration=calibration).describe())
        return
    many, frames, start = len(jobs) > 1, 0, time.perf_counter()
    for i, (src, out) in enumerate(jobs, 1):
        res = _run_one(src, out, cfg, opts, calibration=calibration, overwrite=overwrite, resume=resume,
                       quiet=quiet, label=f"run {i}/{len(jobs)} ({Path(src).name})" if many else "run",
                       batch=(i, len(jobs), output) if many else None)
        frames += res.frames if res is not None else 0
    if many and not quiet:
        click.echo(f"{len(jobs)} inputs, {frames} frames in {time.perf_counter() - start:.2f} s (set-up included) "
                   f"-> {output}")


def batch_outputs(inputs, folder, *, calibration=None, config=None, options=None, replace=False) -> list:
    """``[(input, folder/NAME.zarr), ...]`` for several inputs, every output checked before anything runs.

    NAME is the input's file name without its extension, or its folder name without ``.zarr`` (``clip1.tif``,
    ``clip1/`` and ``clip1.zarr/`` give ``clip1.zarr``; ``run.v2/`` gives ``run.v2.zarr``). Refused in one line:
    an input that does not exist, a ``folder`` that is a file or a Zarr dataset, two inputs with the same NAME, an
    output that overlaps anything a run reads (any of the inputs, the calibration, the config's model files,
    ``--darks``/``--flats``), an existing output unless ``replace`` (``--overwrite`` or ``--resume``).
    """
    from ..errors import DataError, OutputExistsError
    from ..io.outputs import check_output_path
    from ..plan import run_inputs
    from ..recordings import is_zarr_group

    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or is_zarr_group(folder)):
        what = "a Zarr dataset" if folder.is_dir() else "a file"
        raise OutputExistsError(f"'{folder}' is {what}: several inputs go into a folder, one NAME.zarr each; name a "
                                "new or existing folder as the last argument")
    reads = [p for src in inputs for p in run_inputs(Path(src), calibration, config)]
    reads += options.inputs() if options is not None else []
    files = [Path(str(src).split("::", 1)[0]) for src in inputs]  # an HDF5 input may name its dataset: F.h5::/path
    for src, path in zip(inputs, files):  # a typo in the last of many inputs is found before the first runs
        if not path.exists():
            raise DataError(f"input '{src}' does not exist; check the path (nothing was run)")
    jobs, seen = [], {}
    for src, path in zip(inputs, files):
        name = path.stem if path.is_file() or path.suffix == ".zarr" else path.name  # a folder 'run.v2/' keeps its dot
        if name in seen:
            raise OutputExistsError(f"'{seen[name]}' and '{src}' would both write '{folder / name}.zarr'; rename one "
                                    "or run them separately")
        seen[name] = src
        out = folder / f"{name}.zarr"
        check_output_path(out, overwrite=replace, inputs=reads)
        jobs.append((src, out))
    return jobs


def _run_one(src, out, cfg, opts, *, calibration, overwrite, resume, quiet, label, batch):
    """One input's run and its report lines; None where ``--resume`` finds it complete in a batch (said, skipped).
    In a batch (``(i, n, folder)``) an error names the input and how many inputs are done."""
    from ..errors import AlreadyComplete, PipelineError, RunInterrupted
    from ..io.zarr_store import open_input
    from ..recordings import is_zarr_group
    from ..runner import run as _run

    try:
        total = open_input(src).shape[0] if is_zarr_group(Path(src)) and not opts.frames else None
        with _progress(label, total, quiet) as bar:
            res = _run(src, out, cfg, calibration=calibration, overwrite=overwrite, resume=resume, progress=bar,
                       source_options=opts)
    except AlreadyComplete as exc:
        if batch is None:
            raise
        click.echo(str(exc))
        return None
    except RunInterrupted:
        raise
    except PipelineError as exc:
        if batch is None:
            raise
        i, n, folder = batch
        raise type(exc)(f"{src}: {exc} ({i - 1} of {n} inputs done in '{folder}': a rerun with --resume "
                        "keeps them)") from None
    _report_run(res, quiet)
    return res


def _report_run(res, quiet: bool) -> None:
    """The lines a run prints about itself: frames and rate, time account, findings, skipped frames, MTF, ghost."""
    if res.resumed:
        r = res.resumed
        rate = f" ({r['computed_frames_per_second']:.1f} frames/s)" if r["computed_frames_per_second"] else ""
        click.echo(f"resumed: kept {r['blocks_kept']} finished blocks ({r['frames_kept']} frames); computed "
                   f"{r['frames_computed']} frames in {res.seconds:.2f} s{rate} -> {res.output}")
    else:
        click.echo(f"{res.frames} frames in {res.seconds:.2f} s ({res.frames_per_second:.1f} frames/s) -> "
                   f"{res.output}")
    if res.time_account and not quiet:
        click.echo(describe_time(res.time_account))
    if not quiet:
        for line in describe_findings(res):
            click.echo(line)
    if res.skipped_frames:
        click.echo("skipped (unreadable input, NaN in the output): "
                   + ", ".join(f"frames {a}-{b}" for a, b, _ in res.skipped_frames), err=True)
    if res.nonfinite_input_pixels:
        click.echo(f"{res.nonfinite_input_pixels} NaN/Inf pixels in the input frames (NaN in the output)", err=True)
    mt = (res.mtf_summary or {})
    if mt.get("mtf20_median") is not None:
        click.echo(f"MTF20 median {mt['mtf20_median']:.4g} {mt['unit'].replace('_per_', '/')}, MTF50 median "
                   f"{mt['mtf50_median']:.4g} (roi {mt['roi']}); per frame in {res.output}/mtf/")
    if res.ghost and res.ghost.get("mean_abs_before") is not None:
        gh = res.ghost
        click.echo(f"ghost behind the moving object (vs truth, {gh['frames_with_trail']} frames): "
                   f"{gh['mean_abs_before'] * 100:.3f} % of contrast before, {gh['mean_abs_after'] * 100:.3f} % after "
                   f"afterglow removal (energy reduced {gh['energy_reduction']:.0f}x)")


@cli.group()
def afterglow():
    """Afterglow / lag: fit the model from a beam-off (falling-step) recording."""


@afterglow.command("fit")
@click.argument("calibration", type=click.Path(path_type=Path))
@click.option("--out", "output", type=click.Path(path_type=Path), required=True, help="MODEL.json to write")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="PNG of data, fit and residual")
@click.option("--per-pixel", is_flag=True, help="also fit per-pixel amplitude maps (non-uniform screens)")
@click.option("--max-terms", type=click.IntRange(1, 4), default=4, show_default=True)
@click.option("--skip", type=click.IntRange(min=0), default=None, help="frames after cut-off to leave out (ramp); default: auto")
@click.option("--roi", type=(int, int, int, int), default=None, metavar="Y0 Y1 X0 X1", help="region to average")
@_recording_options
@click.option("--overwrite", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
def afterglow_fit(calibration, output, plot, per_pixel, max_terms, skip, roi, overwrite, quiet, **rec):
    """Fit the multi-exponential lag model from CALIBRATION (beam on to steady state, then off): a Zarr dataset
    or a recording (TIFF file or folder, HDF5, raw, npy, video)."""
    from ..measure import fit_afterglow
    from ..sources import staged

    from ..io.outputs import check_output_path

    opts = _source_options(rec)
    for f in (output, Path(output).with_suffix(".amplitudes.npy") if per_pixel else None, plot):
        if f is not None:  # before the recording is read: a refused output costs nothing
            check_output_path(f, overwrite=overwrite, inputs=[calibration, *opts.inputs()], kind="file",
                              sidecars=False)
    with _progress("afterglow fit", None, quiet) as bar:
        with bar.phase("reading the recording"), staged(calibration, opts, near=output,
                                                        report=lambda d: _say_metadata(d, quiet)) as z:
            with bar.phase("fitting"):
                doc = fit_afterglow(z, output, plot=plot, per_pixel=per_pixel, max_terms=max_terms, skip=skip,
                                    roi=roi, overwrite=overwrite, inputs=[calibration, *opts.inputs()])
    if quiet:
        return
    terms = ", ".join(f"a={a:.4g} tau={t * 1e3:.4g} ms" for a, t in zip(doc["amplitudes"], doc["tau_s"]))
    f = doc["figures"]
    click.echo(f"{len(doc['tau_s'])} term(s): {terms}; DC gain {doc['dc_gain']:.4f}")
    click.echo(f"lag left after cut-off: 1st frame {f['lag_first_frame'] * 100:.3f} %, 3 ms {f['afterglow_3ms'] * 100:.3f} %, "
               f"10 ms {f['afterglow_10ms'] * 100:.3f} %, 100 ms {f['afterglow_100ms'] * 100:.4f} %")
    click.echo(f"fit residual rms {doc['fit']['residual_rms']:.2e} (noise {doc['fit']['noise_rms']:.2e}) -> {doc['path']}")


def describe_findings(res) -> list[str]:
    """Lines on what a run found (:func:`pipeline.runner.findings`)."""
    f = res.findings or {}
    lines = []
    meta = f.get("metadata") or {}
    if meta:
        lines.append("input: " + "; ".join(f"{_NAMES[k][0]} {v:g} {_NAMES[k][1]} (from {where})"
                                           for k, (v, where) in meta.items() if k in _NAMES))
    if "pixel_pitch_mm" not in meta and (res.mtf_summary or {}).get("mtf20_median") is not None:
        lines.append("no pixel pitch: the MTF is in cycles/pixel; pass --pixel-pitch MM for lp/mm")
    bp = f.get("bad_pixels")
    if bp is not None:
        by = ", ".join(f"{v} {k}" for k, v in bp.items() if k != "total" and v)
        lines.append(f"bad pixels: {bp['total']}" + (f" ({by})" if by else "") + ", replaced")
    ag = f.get("afterglow_model")
    if ag:
        terms = ", ".join(f"{a:.3g} x exp(-t/{tau * 1e3:.3g} ms)" for a, tau in zip(ag["amplitudes"], ag["tau_s"]))
        lines.append(f"afterglow model {ag['path']}: {terms}")
    nm = f.get("noise_model")
    if nm:
        gain = f.get("denoise_gain_db")
        if gain is None:
            said = ""
        elif gain > 0:
            said = (f"; denoising reduced the noise by {gain:.1f} dB (the model's noise vs the output's frame-to-frame "
                    "noise, static scene assumed; not a PSNR: blur is not counted)")
        else:  # a lower bound below zero says nothing: motion, not noise, set the output's frame-to-frame changes
            said = ("; the noise reduction could not be measured: the output's last frames differ from each other "
                    "more than the noise model allows (motion in the scene)")
        lines.append(f"noise model: var = {nm['alpha']:.4g} x mean + {nm['beta']:.4g}{said}")
    if f.get("output_bytes") is not None:
        lines.append(f"output: {f['output_bytes'] / 2**20:.1f} MiB on disk")
    return lines


_PACE = {"reads": "reading the input (decompression)", "device": "the GPU (transfers and kernels)",
         "writers": "writing the output (compression)", "conveyor": "the conveyor thread's own work"}


def describe_time(acc: dict) -> str:
    """One line from :func:`pipeline.api.time_account`: where the time went, and what set the pace."""
    th = acc.get("threads")
    who = (f"{th['readers']} reading, {th['writers']} writing threads" if isinstance(th, dict)
           else f"{th} threads" if th else "the cluster's workers")
    d = 2 if acc.get("wall_s", 1.0) < 1.0 else 1  # a short clip's figures in hundredths, not all "0.0 s"
    setup = (f"{acc['wall_s'] - acc['blocks_s']:.{d}f} s setting up, {acc['blocks_s']:.{d}f} s on the blocks: "
             if acc.get("blocks_s") is not None else "")
    line = (f"time: {setup}reading {acc['read_s']:.{d}f} s, stages {acc['stages_s']:.{d}f} s, writing "
            f"{acc['write_s']:.{d}f} s, recording {acc['record_s']:.{d}f} s (thread-seconds over {who})")
    waits = acc.get("gpu_waits_s")
    if waits:
        line += ("; the GPU conveyor waited " + ", ".join(f"{v:.1f} s on the {k}" for k, v in waits.items())
                 + f" and worked {acc.get('gpu_busy_s', 0.0):.1f} s itself"
                 + (f": paced by {_PACE[acc['bound_by']]}" if acc.get("bound_by") else ""))
    if acc.get("prepare_s"):
        line += "; before that: " + ", ".join(f"{k} {v:.2f} s" for k, v in acc["prepare_s"].items())
    return line
