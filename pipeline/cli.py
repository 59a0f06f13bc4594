"""Command line: ``xray-pipeline simulate | calibrate | run | demo | info | config``.

The only module that prints or exits. Errors the pipeline raises on purpose
become one line on stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from ._version import __version__
from .errors import AlreadyComplete, ConfigError, PipelineError, RunInterrupted


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange that also refuses nan and inf (``nan > 2`` is False: FloatRange lets them through)."""

    def convert(self, value, param, ctx):
        import math

        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{rv} is not a finite number", param, ctx)
        return rv


@contextmanager
def _progress(desc: str, total: int | None, quiet: bool, unit: str = "frame"):
    """A :class:`pipeline.progress.Progress` on stderr for the block, installed as the current reporter (so the
    library can name its set-up phases); its summary line only when the block succeeds."""
    from .progress import Progress, reporting

    p = Progress(desc, total, unit=unit, quiet=quiet)
    with reporting(p):
        try:
            yield p
        except BaseException:
            p.close(ok=False)
            raise
    p.close()


def _frames_arg(ctx, param, value):
    if value is None:
        return None
    from .io.ingest import frame_range

    frame_range(value)  # checked now: one line naming --frames
    return value


def _raw_shape_arg(ctx, param, value):
    if not value:
        return None
    try:
        return tuple(int(v) for v in value.replace("x", ",").split(","))
    except ValueError:
        raise click.BadParameter("expected T,H,W or H,W", param_hint="--raw-shape") from None


#: the options every command that reads a recording takes (ingest's), in the order --help lists them
_RECORDING_OPTIONS = (
    click.option("--darks", type=click.Path(path_type=Path), default=None,
                 help="beam-off frames (any supported format) where the recording has none"),
    click.option("--flats", type=click.Path(path_type=Path), default=None,
                 help="open-beam frames (any supported format) where the recording has none"),
    click.option("--pixel-pitch", type=FiniteFloatRange(min=0, min_open=True), default=None,
                 help="mm at the scintillator plane (over the config and the file's own tags)"),
    click.option("--frame-rate", type=FiniteFloatRange(min=0, min_open=True), default=None,
                 help="Hz (over the config and the file's own tags)"),
    click.option("--frames", "frame_range", default=None, metavar="START:STOP[:STEP]", callback=_frames_arg,
                 help="only these frames of the recording (Python slice rules; darks and flats whole)"),
    click.option("--dataset", "h5_dataset", default=None, help="HDF5 dataset path (default: NXtomo's or the largest 3D one; "
                                                 "or name it as FILE.h5::/path)"),
    click.option("--raw-dtype", default=None, help="raw files: numpy dtype, e.g. <u2"),
    click.option("--raw-shape", default=None, metavar="T,H,W|H,W", callback=_raw_shape_arg,
                 help="raw files: frame shape"),
    click.option("--header", type=click.IntRange(min=0), default=0, help="raw files: header bytes"),
)
_RECORDING_KEYS = ("darks", "flats", "pixel_pitch", "frame_rate", "frame_range", "h5_dataset", "raw_dtype",
                   "raw_shape", "header")


def _recording_options(f):
    for opt in reversed(_RECORDING_OPTIONS):
        f = opt(f)
    return f


def _source_options(kw: dict, config=None):
    """The recording options among a command's keyword arguments (removed from ``kw``)."""
    from .sources import RecordingOptions

    v = {k: kw.pop(k, None) for k in _RECORDING_KEYS}
    opts = RecordingOptions(darks=v["darks"], flats=v["flats"], pixel_pitch_mm=v["pixel_pitch"],
                            frame_rate_hz=v["frame_rate"], frames=v["frame_range"], dataset=v["h5_dataset"],
                            raw_dtype=v["raw_dtype"], raw_shape=v["raw_shape"], header=v["header"] or 0)
    return opts.with_config(config) if config is not None else opts


_NAMES = {"pixel_pitch_mm": ("pixel pitch", "mm", "--pixel-pitch MM"),
          "frame_rate_hz": ("frame rate", "Hz", "--frame-rate HZ")}


def _say_metadata(found: dict, quiet: bool, *, needed=()) -> None:
    """One line: the recording's pixel pitch and frame rate and where each came from; a warning for a missing
    one a later figure needs."""
    if quiet:
        return
    meta = found.get("metadata") or {}
    parts = [f"{_NAMES[k][0]} {v:g} {_NAMES[k][1]} (from {where})" for k, (v, where) in meta.items() if k in _NAMES]
    if parts:
        click.echo("metadata: " + "; ".join(parts))
    for k in found.get("missing") or ():
        if k in needed:
            what, _, opt = _NAMES[k]
            click.echo(f"warning: no {what} (not given, not in the file's tags); pass {opt}, set input.{k} in the "
                       f"config, or fix the dataset with 'xray-pipeline set-attrs DATASET {k}=...'", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="xray-pipeline")
def cli():
    """Process dynamic X-ray imaging videos from scintillator detectors."""


@cli.command()
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--preset", type=click.Choice(["eu-gc", "gc", "nc-film"]), default="eu-gc", show_default=True,
              help="scintillator: MTF20 15.0 / 4.1 / 1.5 lp/mm")
@click.option("--frames", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--size", type=(click.IntRange(min=32), click.IntRange(min=32)), default=(256, 256), show_default=True,
              metavar="H W")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dose", type=FiniteFloatRange(min=0, min_open=True), default=1000.0, show_default=True,
              help="open-beam X-ray quanta per pixel per frame")
@click.option("--pixel-pitch", type=FiniteFloatRange(min=0, min_open=True), default=0.01, show_default=True,
              help="mm at the scintillator plane")
@click.option("--frame-rate", type=FiniteFloatRange(min=0, min_open=True), default=50.0, show_default=True, help="Hz")
@click.option("--no-truth-frames", is_flag=True, help="skip truth/frames (halves the disk space)")
@click.option("--scene", type=click.Choice(["default", "open"]), default="default", show_default=True,
              help="open: no object (flat field), e.g. for afterglow calibration")
@click.option("--beam-off-frame", type=click.IntRange(min=1), default=None,
              help="cut the beam off from this frame on (a falling step for 'afterglow fit')")
@click.option("--ramp-frames", type=click.IntRange(min=0), default=0, show_default=True,
              help="frames of linear beam ramp-down before --beam-off-frame")
@click.option("--characterisation", is_flag=True,
              help="write a detector characterisation dataset (flat series, edge, beam-off step) instead of a video")
@click.option("--afterglow", "afterglow_terms", default=None, metavar="A:TAU_S[,A:TAU_S...]",
              help="afterglow terms instead of the preset's, e.g. 0.01:0.015,0.003:0.12")
@click.option("--overwrite", is_flag=True, help="replace OUTPUT if it exists")
@click.option("--quiet", "-q", is_flag=True)
def simulate(output, preset, frames, size, seed, dose, pixel_pitch, frame_rate, no_truth_frames, scene,
             beam_off_frame, ramp_frames, characterisation, afterglow_terms, overwrite, quiet):
    """Write a simulated scintillator-detector video with ground truth to OUTPUT (Zarr v3)."""
    from .api import simulate as _simulate

    if characterisation:
        from .api import simulate_characterisation

        with _progress("simulate", None, quiet):
            path = simulate_characterisation(output, preset=preset, size=tuple(size), seed=seed, overwrite=overwrite)
        if not quiet:
            click.echo(f"simulated a characterisation dataset ({preset}, {size[0]} x {size[1]}) -> {path}")
        return

    extra = {}
    if afterglow_terms:
        try:
            pairs = [tuple(float(v) for v in term.split(":")) for term in afterglow_terms.split(",")]
            if any(len(p) != 2 for p in pairs):
                raise ValueError
        except ValueError:
            raise click.BadParameter("expected A:TAU_S pairs separated by commas, e.g. 0.01:0.015,0.003:0.12",
                                     param_hint="--afterglow") from None
        extra = {"afterglow_amplitudes": tuple(p[0] for p in pairs), "afterglow_tau_s": tuple(p[1] for p in pairs)}
    with _progress("simulate", frames, quiet) as bar:
        path = _simulate(output, preset=preset, frames=frames, size=tuple(size), seed=seed, overwrite=overwrite,
                         progress=bar, quanta_per_pixel=dose, pixel_pitch_mm=pixel_pitch, frame_rate_hz=frame_rate,
                         truth_frames=not no_truth_frames, scene=scene, beam_off_frame=beam_off_frame,
                         ramp_frames=ramp_frames, **extra)
    if not quiet:
        click.echo(f"simulated {frames} frames of {size[0]} x {size[1]} ({preset}) -> {path}")


def _config_options(f):
    f = click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                     help="YAML config (defaults: configs/default.yaml)")(f)
    f = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="override one config key, e.g. --set flatfield.output=attenuation")(f)
    return f


def _bad_pixel_classes(cal) -> str:
    """``"12 bad pixels: 3 dead, 9 hot"`` from a calibration's class mask (ASTM E2597)."""
    import numpy as np

    from .ops.badpixels import BAD_PIXEL_CLASSES

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
    from .api import calibrate as _calibrate, save_calibration
    from .config import load_config
    from .io.zarr_store import check_output_path
    from .sources import staged

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
@click.argument("input", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
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
def run(input, output, config_file, overrides, calibration, chunk_frames, device, scheduler, cluster, overwrite, resume,
        on_error, quiet, dry_run, **rec):
    """Correct the video INPUT and write OUTPUT (Zarr).

    INPUT is a Zarr dataset, or a TIFF/HDF5/raw/video/npy recording (ingested on the fly, with the options below).
    """
    from .api import run as _run
    from .config import load_config
    from .io.zarr_store import open_input

    extra = list(overrides)
    if chunk_frames:
        extra.append(f"execution.chunk_frames={chunk_frames}")
    if device:
        extra.append(f"execution.device={device}")
    if scheduler:
        extra.append(f"execution.scheduler={scheduler}")
    if cluster:
        extra.append(f"execution.cluster={cluster}")
    if on_error:
        extra.append(f"execution.on_error={on_error}")
    cfg = load_config(config_file, overrides=extra)
    opts = _source_options(rec)
    if dry_run:
        from .runner import dry_run as _dry_run

        click.echo(_dry_run(input, output, cfg, calibration=calibration).describe())
        return
    from .recordings import is_zarr_group

    total = open_input(input).shape[0] if is_zarr_group(Path(input)) and not opts.frames else None
    with _progress("run", total, quiet) as bar:
        res = _run(input, output, cfg, calibration=calibration, overwrite=overwrite, resume=resume, progress=bar,
                   source_options=opts)
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
    from .api import fit_afterglow
    from .sources import staged

    from .io.outputs import check_output_path

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


@cli.command()
@click.argument("outdir", type=click.Path(path_type=Path), default=Path("demo-output"))
@click.option("--preset", type=click.Choice(["eu-gc", "gc", "nc-film"]), default="eu-gc", show_default=True)
@click.option("--frames", type=click.IntRange(min=2), default=64, show_default=True)
@click.option("--size", type=(click.IntRange(min=64), click.IntRange(min=64)), default=(512, 512), show_default=True,
              metavar="H W")
@click.option("--overwrite", is_flag=True, help="replace the datasets of an earlier demo in OUTDIR")
@click.option("--quiet", "-q", is_flag=True)
def demo(outdir, preset, frames, size, overwrite, quiet):
    """Simulate, correct, and write PNGs and summary.txt into OUTDIR."""
    from .api import demo as _demo

    with _progress("demo", frames, quiet) as bar:
        res = _demo(outdir, preset=preset, frames=frames, size=tuple(size), overwrite=overwrite, progress=bar)
    click.echo(res["text"], nl=False)  # the demo's result: printed with -q too (which silences the progress)
    click.echo(f"written to {outdir}/")


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option("--dataset", default=None, help="HDF5 dataset path (or FILE.h5::/path)")
@click.option("--raw-dtype", default=None, help="raw files: numpy dtype, e.g. <u2")
@click.option("--raw-shape", default=None, metavar="T,H,W|H,W", callback=_raw_shape_arg, help="raw files: frame shape")
@click.option("--header", type=click.IntRange(min=0), default=0, help="raw files: header bytes")
def info(path, as_json, dataset, raw_dtype, raw_shape, header):
    """Describe a dataset or recording: arrays (shape, dtype, chunks, codecs) and attributes, or a TIFF/HDF5/raw/
    video recording's frames and the pixel pitch and frame rate its tags give (nothing is copied)."""
    from .api import info as _info

    d = _info(path, dataset=dataset, raw_dtype=raw_dtype, raw_shape=raw_shape, header=header)
    if as_json:
        click.echo(json.dumps(d, indent=2, default=str))
        return
    click.echo(f"{d['path']}")
    for name, a in sorted(d["arrays"].items()):
        shape = " x ".join(map(str, a["shape"]))
        chunks = " x ".join(map(str, a["chunks"]))
        click.echo(f"  {name:32s} {shape:>20s}  {a['dtype']:8s} chunks {chunks:16s} "
                   f"{a['nbytes'] / 2**20:9.1f} MiB  {','.join(a['compressors']) or 'raw'}")
    for k, v in d["attributes"].items():
        text = json.dumps(v, default=str)
        click.echo(f"  @{k} = {text if len(text) < 100 else text[:97] + '...'}")


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--roi", type=(int, int, int, int), default=None, metavar="Y0 Y1 X0 X1", help="edge ROI (default: found)")
@click.option("--window", type=click.Choice(["tukey", "hann", "none"]), default="tukey", show_default=True)
@click.option("--f-max", type=FiniteFloatRange(min=0, min_open=True, max=2), default=1.0, show_default=True,
              help="highest frequency, cycles/pixel")
@click.option("--json", "json_out", default=None, metavar="OUT|-", help="write the result as JSON (- for stdout)")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="PNG with ESF, LSF and MTF")
@click.option("--overwrite", is_flag=True, help="replace an existing --json or --plot file")
@click.option("--quiet", "-q", is_flag=True)
@_recording_options
def mtf(path, roi, window, f_max, json_out, plot, overwrite, quiet, **rec):
    """Slanted-edge MTF of PATH: a TIFF/PNG/NPY image, a Zarr dataset or a recording (TIFF folder, HDF5, raw,
    video): every frame, batched."""
    from .api import measure_mtf
    from .io.ingest import HDF5, RAW, VIDEO
    from .io.outputs import atomic_file, check_output_path
    from .sources import staged

    pixel_pitch = rec.get("pixel_pitch")
    opts = _source_options(rec)
    for f in (plot, json_out if json_out != "-" else None):
        if f:
            check_output_path(f, overwrite=overwrite, inputs=[path, *opts.inputs()], kind="file", sidecars=False)
    p = Path(str(path).split("::", 1)[0])
    image = p.is_file() and p.suffix.lower() not in HDF5 + RAW + VIDEO  # one image or a stack mtf reads itself
    quiet = quiet or json_out == "-"
    with _progress("mtf", None, quiet, unit="frame") as bar:
        if image and not opts.changes_content():
            d = measure_mtf(path, roi=roi, pixel_pitch_mm=pixel_pitch, window=window, f_max=f_max)
        else:
            with bar.phase("reading the recording"), staged(path, opts, near=Path(json_out if json_out not in
                                                                                  (None, "-") else plot or "x")) as z:
                d = measure_mtf(z, roi=roi, pixel_pitch_mm=pixel_pitch, window=window, f_max=f_max, progress=bar)
            d["source"] = str(path)
    res = d.pop("result")
    if plot:
        from . import report

        with atomic_file(plot, overwrite=overwrite, inputs=[path]) as tmp:
            report.mtf_curves(res, tmp, pixel_pitch_mm=d.get("pixel_pitch_mm"), title=str(path))
    if json_out == "-":
        click.echo(json.dumps(d, indent=1))
        return
    if json_out:
        with atomic_file(json_out, overwrite=overwrite, inputs=[path]) as tmp:
            tmp.write_text(json.dumps(d, indent=1) + "\n")
    unit = "lp/mm" if d.get("pixel_pitch_mm") else "cycles/pixel"
    key = "lp_per_mm" if d.get("pixel_pitch_mm") else "cy_per_px"

    def fmt(v):
        if isinstance(v, list):
            vals = [x for x in v if x is not None]
            return f"median {np.median(vals):.4g} over {len(v)} frames" if vals else "not reached"
        return f"{v:.4g}" if v is not None else "not reached"

    import numpy as np

    click.echo(f"roi {d['roi']}, edge angle {fmt(d['edge_angle_deg'])} deg ({d['edge_orientation']} edge)")
    click.echo(f"MTF50 {fmt(d['mtf50_' + key])}, MTF20 {fmt(d['mtf20_' + key])}, MTF10 {fmt(d['mtf10_' + key])} {unit}")
    flags = d["flags"] if isinstance(d["flags"][0] if d["flags"] else [], str) or not d["flags"] else sorted({f for fl in d["flags"] for f in fl})
    if flags:
        click.echo("flags: " + ", ".join(flags))
        for m in (d["messages"] if d["messages"] and isinstance(d["messages"][0], str) else []):
            click.echo(f"  {m}")


@cli.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@_recording_options
@click.option("--chunk-frames", type=click.IntRange(min=1), default=None,
              help="frames per stored chunk (default: from the frame size: up to 16, within 32 MiB, at least 1)")
@click.option("--characterisation", is_flag=True,
              help="SOURCE is a characterisation manifest (YAML): write the Zarr dataset 'characterise' reads")
@click.option("--overwrite", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
def ingest(source, output, chunk_frames, characterisation, overwrite, quiet, **rec):
    """Convert SOURCE (TIFF file or folder, HDF5/NeXus, raw, mp4/avi, npy; or a characterisation manifest) into
    a Zarr dataset OUTPUT."""
    from .api import ingest as _ingest

    if characterisation:
        from .manifest import frame_count, ingest_manifest, read_manifest

        m = read_manifest(source)
        with _progress("ingest", frame_count(m), quiet) as bar:
            path = ingest_manifest(m, output, overwrite=overwrite, progress=bar)
        if not quiet:
            click.echo(f"ingested the characterisation manifest {source} ({len(m.flats)} kerma levels) -> {path}")
        return
    opts = _source_options(rec)
    with _progress("ingest", None, quiet) as bar:
        d = _ingest(source, output, darks=opts.darks, flats=opts.flats, pixel_pitch_mm=opts.pixel_pitch_mm,
                    frame_rate_hz=opts.frame_rate_hz, dataset=opts.dataset, raw_dtype=opts.raw_dtype,
                    raw_shape=opts.raw_shape, header=opts.header, frames=opts.frames, chunk_frames=chunk_frames,
                    overwrite=overwrite, progress=bar)
    if quiet:
        return
    parts = [f"frames {' x '.join(map(str, d['frames']))} {d['frames_dtype']}"]
    parts += [f"{n} {' x '.join(map(str, d[n]))}" for n in ("darks", "flats") if n in d]
    click.echo(f"ingested {', '.join(parts)} -> {d['output']}")
    _say_metadata(d, quiet, needed=("pixel_pitch_mm", "frame_rate_hz"))
    if d["nonfinite_pixels"]:
        click.echo(f"{d['nonfinite_pixels']} NaN/Inf pixels in the source (kept as they are)", err=True)


@cli.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--array", default="frames", show_default=True, help="which array of the group")
@click.option("--format", "fmt", type=click.Choice(["png"]), default=None,
              help="png: DEST is a new folder of PNG frames (uint16 exact; floats scaled, the window in window.json)")
@click.option("--window", type=(float, float), default=None, metavar="LO HI", help="preview intensity window")
@click.option("--fps", type=FiniteFloatRange(min=0, min_open=True), default=20.0, show_default=True)
@click.option("--side-by-side", is_flag=True, help="preview: raw input | processed")
@click.option("--sheet-frames", type=click.IntRange(1, 1000), default=8, show_default=True,
              help="a .png DEST: frames on the contact sheet (raw above corrected where the raw input is found)")
@_recording_options
@click.option("--overwrite", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
def export(dataset, dest, array, fmt, window, fps, side_by_side, sheet_frames, overwrite, quiet, **rec):
    """Export DATASET to DEST: a .tif stack (exact values), an .mp4/.gif preview, a .png contact sheet (a quick
    look: raw above corrected), or PNG frames (--format png). DATASET may also be a recording (TIFF, HDF5, ...)."""
    from .api import export as _export
    from .sources import staged

    frames = rec.pop("frame_range", None)
    opts = _source_options(rec)
    with _progress("export", None, quiet) as bar:
        with bar.phase("reading the recording"), staged(dataset, opts, near=dest) as z:
            with bar.phase("writing"):
                path = _export(z, dest, array=array, window=window, fps=fps, side_by_side=side_by_side,
                               overwrite=overwrite, format=fmt, frames=frames, sheet_frames=sheet_frames)
    if quiet:
        return
    summary = getattr(path, "summary", {}) or {}
    used = summary.get("frames")
    which = f" (frames {used[0]}..{used[-1]}, {len(used)} of them)" if used else ""
    click.echo(f"exported {dataset}/{array}{which} -> {path}")


@cli.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("outdir", type=click.Path(path_type=Path))
@click.option("--compare", type=click.Path(path_type=Path), default=None, help="another report.json to overlay")
@click.option("--q", "q_value", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="photons per uGy per mm^2 of a lab beam (default: from the beam quality)")
@click.option("--overwrite", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
def characterise(dataset, outdir, compare, q_value, overwrite, quiet):
    """Characterise a detector: linearity, gain, bad pixels, MTF, NNPS, DQE, afterglow -> report.json/.html.

    DATASET is a characterisation dataset (Zarr) or a manifest (YAML) naming the lab's files: pixel_pitch_mm,
    frame_rate_hz, beam_quality or q_per_uGy_mm2, reference_kerma_uGy, darks, flats (air kerma in uGy -> files),
    edge, afterglow_step (optional); paths relative to the manifest's folder.
    """
    from .api import characterise as _characterise
    from .manifest import frame_count, ingest_manifest, is_manifest, read_manifest
    from .sources import discard, scratch_path

    with _progress("characterise", None, quiet) as bar:
        if is_manifest(dataset):
            from .io.outputs import ROLE_ATTR

            m = read_manifest(dataset)
            bar.set_total(frame_count(m))
            where = scratch_path(Path(outdir) / "x")
            try:
                with bar.phase("reading the manifest's files"):
                    z = ingest_manifest(m, where, overwrite=True, progress=bar, marker={ROLE_ATTR: "staged-ingest"})
                with bar.phase("figures (linearity, MTF, NNPS, DQE, lag)"):
                    rep = _characterise(z, outdir, compare=compare, q_per_ugy_mm2=q_value, overwrite=overwrite,
                                        inputs=[dataset])
            finally:
                discard(where)
        else:
            with bar.phase("figures (linearity, MTF, NNPS, DQE, lag)"):
                rep = _characterise(dataset, outdir, compare=compare, q_per_ugy_mm2=q_value, overwrite=overwrite)
    if quiet:
        return
    width = max(len(k) for k in rep["summary"])
    for k, v in rep["summary"].items():
        click.echo(f"{k.ljust(width)} : {v:.4g}" if isinstance(v, float) else f"{k.ljust(width)} : {v}")
    click.echo(f"report -> {Path(outdir) / 'report.html'}")


@cli.command("set-attrs")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("assignments", nargs=-1, required=True, metavar="NAME=VALUE...")
def set_attrs(dataset, assignments):
    """Set a Zarr dataset's recording attributes in place: pixel_pitch_mm, frame_rate_hz, beam_quality,
    q_per_uGy_mm2, reference_kerma_uGy, acquired_at (e.g. set-attrs rec.zarr pixel_pitch_mm=0.05 frame_rate_hz=100).
    Only the group's attributes change; its frames are untouched."""
    from .api import set_dataset_attrs

    done = set_dataset_attrs(dataset, dict(_assignment(a) for a in assignments))
    click.echo(f"{dataset}: " + ", ".join(f"{k} = {v}" for k, v in done.items()))


def _assignment(text: str):
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise click.BadParameter(f"'{text}' is not NAME=VALUE, e.g. pixel_pitch_mm=0.05", param_hint="NAME=VALUE")
    return name.strip(), value.strip()


def _int_list(ctx, param, value):
    if value is None:
        return None
    try:
        out = tuple(int(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a comma-separated list of integers, e.g. 512,1024") from None
    if any(v < 1 for v in out):
        raise click.BadParameter("every value must be >= 1")
    return out


@cli.command()
@click.option("--device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True)
@click.option("--sizes", default="512,1024", show_default=True, callback=_int_list,
              help="square frame sizes, comma-separated")
@click.option("--frames", type=click.IntRange(min=4), default=128, show_default=True,
              help="frames of the simulated video per size")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--scaling-frames", default="256,1024,4096", show_default=True, callback=_int_list,
              help="video lengths for the scaling run at --scaling-size ('' skips it)")
@click.option("--scaling-size", type=click.IntRange(min=32), default=1024, show_default=True)
@click.option("--workers", default=None, callback=_int_list, help="worker threads to try (default 1, 2, 4 .. cores)")
@click.option("--full-frames", type=click.IntRange(min=1), default=8, show_default=True,
              help="frames for the full default pipeline (its spatial denoiser is slow on a CPU)")
@click.option("--no-peers", is_flag=True, help="skip scikit-image / algotom / textbook peers")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
@_config_options
def bench(device, sizes, frames, repeats, scaling_frames, scaling_size, workers, full_frames, no_peers, out,
          config_file, overrides):
    """Throughput of every stage and whole pipelines against rooflines and peers; JSON, tables and plots to --out."""
    import sys

    from .bench import run_benchmarks
    from .config import load_config

    cfg = load_config(config_file, overrides=list(overrides))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; bench writes a folder of results: pass a folder path")
    cmd = "xray-pipeline " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("xray-pipeline") else ""
    _, paths = run_benchmarks(device=device, sizes=sizes, frames=frames, repeats=repeats, out=out, config=cfg,
                              scaling_frames=scaling_frames, scaling_size=scaling_size, workers=workers,
                              full_frames=full_frames, peers=not no_peers, command=cmd or "xray-pipeline bench",
                              log=click.echo)
    for p in paths:
        click.echo(f"wrote {p}")


@cli.command("config")
@_config_options
def config_cmd(config_file, overrides):
    """Print the fully resolved config as YAML (defaults, then --config, then --set)."""
    from .config import dump_yaml, load_config

    click.echo(dump_yaml(load_config(config_file, overrides=list(overrides))), nl=False)


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
        lines.append(f"noise model: var = {nm['alpha']:.4g} x mean + {nm['beta']:.4g}"
                     + (f"; denoising gained {gain:.1f} dB (the model's noise vs the output's temporal noise, first "
                        "frames, static scene assumed)" if gain is not None else ""))
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
    setup = (f"{acc['wall_s'] - acc['blocks_s']:.1f} s setting up, {acc['blocks_s']:.1f} s on the blocks: "
             if acc.get("blocks_s") is not None else "")
    line = (f"time: {setup}reading {acc['read_s']:.1f} s, stages {acc['stages_s']:.1f} s, writing {acc['write_s']:.1f} s, "
            f"recording {acc['record_s']:.1f} s (thread-seconds over {who})")
    waits = acc.get("gpu_waits_s")
    if waits:
        line += ("; the GPU conveyor waited " + ", ".join(f"{v:.1f} s on the {k}" for k, v in waits.items())
                 + f" and worked {acc.get('gpu_busy_s', 0.0):.1f} s itself"
                 + (f": paced by {_PACE[acc['bound_by']]}" if acc.get("bound_by") else ""))
    return line


def main(argv=None) -> int:
    """Entry point of the ``xray-pipeline`` console script."""
    import warnings

    warnings.filterwarnings("ignore", message=".*NaN/Inf pixels in the input.*")  # the CLI says it itself
    warnings.filterwarnings("ignore", category=RuntimeWarning, module="numpy.*")  # NumPy's own (all-NaN slices): noise

    def one_line(message, category, filename, lineno, file=None, line=None):  # no source path, no code line
        click.echo(f"warning: {str(message).splitlines()[0] if str(message) else category.__name__}", err=True)

    warnings.showwarning = one_line
    try:
        cli.main(args=argv, prog_name="xray-pipeline", standalone_mode=False)
    except RunInterrupted:
        import shlex

        args = list(sys.argv[1:] if argv is None else argv)
        again = shlex.join(["xray-pipeline", *args, *([] if "--resume" in args else ["--resume"])])
        click.echo(f"error: interrupted; the finished blocks are kept: resume with '{again}'", err=True)
        return 130
    except AlreadyComplete as exc:
        click.echo(str(exc))
        return 0
    except PipelineError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted: no output path was replaced (an interrupted 'run' keeps its finished blocks for "
                   "--resume)", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except OSError as exc:
        click.echo(f"error: {exc.strerror or exc} ({exc.filename or ''}); check the path and free space", err=True)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
