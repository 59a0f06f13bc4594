"""Command line: ``xray-pipeline simulate | calibrate | run | demo | info | config``.

The only module that prints or exits. Errors the pipeline raises on purpose
become one line on stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import json
import sys
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


class _Bar:
    """A progress bar on stderr, created at the first update (so errors come first), only on a terminal.

    Updates come from the calling thread (every engine counts finished blocks there); the lock is a safety net.
    """

    def __init__(self, total: int | None, desc: str, quiet: bool):
        import threading

        self.total, self.desc = total, desc
        self.enabled = not quiet and sys.stderr.isatty()
        self.bar = None
        self.lock = threading.Lock()

    def update(self, n: int):
        if not self.enabled:
            return
        with self.lock:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, desc=self.desc, unit="frame", file=sys.stderr, leave=False,
                                dynamic_ncols=True)
            self.bar.update(n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _bar(total: int, desc: str, quiet: bool):
    b = _Bar(total, desc, quiet)
    return b, b.update


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

        path = simulate_characterisation(output, preset=preset, size=tuple(size), seed=seed, overwrite=overwrite)
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
    bar, update = _bar(frames, "simulate", quiet)
    path = _simulate(output, preset=preset, frames=frames, size=tuple(size), seed=seed, overwrite=overwrite,
                     progress=update, quanta_per_pixel=dose, pixel_pitch_mm=pixel_pitch, frame_rate_hz=frame_rate,
                     truth_frames=not no_truth_frames, scene=scene, beam_off_frame=beam_off_frame,
                     ramp_frames=ramp_frames, **extra)
    bar.close()
    click.echo(f"simulated {frames} frames of {size[0]} x {size[1]} ({preset}) -> {path}")


def _config_options(f):
    f = click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                     help="YAML config (defaults: configs/default.yaml)")(f)
    f = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="override one config key, e.g. --set flatfield.output=attenuation")(f)
    return f


@cli.command()
@click.argument("input", type=click.Path(path_type=Path))
@click.argument("output", type=click.Path(path_type=Path))
@_config_options
@click.option("--overwrite", is_flag=True)
def calibrate(input, output, config_file, overrides, overwrite):
    """Compute dark, gain and bad-pixel maps from INPUT's darks/flats; save to OUTPUT."""
    from .api import calibrate as _calibrate, save_calibration
    from .config import load_config
    from .io.zarr_store import check_output_path

    cfg = load_config(config_file, overrides=list(overrides))
    inputs = [input, cfg.afterglow.model, cfg.flatfield.response]
    check_output_path(output, overwrite=overwrite, inputs=inputs)
    cal = _calibrate(input, cfg)
    path = save_calibration(cal, output, overwrite=overwrite, source=str(input), inputs=inputs)
    import numpy as np

    click.echo(f"calibration -> {path} (flat level {cal.flat_level:.1f} counts, "
               f"{int(np.count_nonzero(cal.bad_pixels))} bad pixels)")


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
def run(input, output, config_file, overrides, calibration, chunk_frames, device, scheduler, cluster, overwrite, resume,
        on_error, quiet, dry_run):
    """Correct the video INPUT and write OUTPUT (Zarr).

    INPUT is a Zarr dataset, or a TIFF/HDF5/raw/video/npy recording (ingested on the fly).
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
    if dry_run:
        from .runner import dry_run as _dry_run

        click.echo(_dry_run(input, output, cfg, calibration=calibration).describe())
        return
    is_zarr = Path(input).is_dir() and (Path(input) / "zarr.json").is_file()
    total = open_input(input).shape[0] if is_zarr else None  # a field-format recording: counted when ingested
    bar, update = _bar(total, "run", quiet)
    try:
        res = _run(input, output, cfg, calibration=calibration, overwrite=overwrite, resume=resume, progress=update)
    finally:
        bar.close()
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
@click.option("--frame-rate", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="Hz, when the recording lacks frame_rate_hz")
@click.option("--overwrite", is_flag=True)
def afterglow_fit(calibration, output, plot, per_pixel, max_terms, skip, roi, frame_rate, overwrite):
    """Fit the multi-exponential lag model from CALIBRATION (beam on to steady state, then off)."""
    from .api import fit_afterglow

    doc = fit_afterglow(calibration, output, plot=plot, per_pixel=per_pixel, max_terms=max_terms, skip=skip,
                        roi=roi, frame_rate_hz=frame_rate, overwrite=overwrite)
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

    bar, update = _bar(frames, "run", quiet)
    res = _demo(outdir, preset=preset, frames=frames, size=tuple(size), overwrite=overwrite, progress=update)
    bar.close()
    click.echo(res["text"], nl=False)
    click.echo(f"written to {outdir}/")


@cli.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def info(path, as_json):
    """Describe a dataset: arrays (shape, dtype, chunks, codecs) and attributes."""
    from .api import info as _info

    d = _info(path)
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
@click.option("--pixel-pitch", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="mm at the scintillator plane (default: the dataset's pixel_pitch_mm)")
@click.option("--roi", type=(int, int, int, int), default=None, metavar="Y0 Y1 X0 X1", help="edge ROI (default: found)")
@click.option("--window", type=click.Choice(["tukey", "hann", "none"]), default="tukey", show_default=True)
@click.option("--f-max", type=FiniteFloatRange(min=0, min_open=True, max=2), default=1.0, show_default=True,
              help="highest frequency, cycles/pixel")
@click.option("--json", "json_out", default=None, metavar="OUT|-", help="write the result as JSON (- for stdout)")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="PNG with ESF, LSF and MTF")
@click.option("--overwrite", is_flag=True, help="replace an existing --json or --plot file")
def mtf(path, pixel_pitch, roi, window, f_max, json_out, plot, overwrite):
    """Slanted-edge MTF of PATH: a TIFF/PNG/NPY image or a Zarr dataset (every frame, batched)."""
    from .api import measure_mtf
    from .io.outputs import atomic_file, check_output_path

    for f in (plot, json_out if json_out != "-" else None):
        if f:
            check_output_path(f, overwrite=overwrite, inputs=[path], kind="file", sidecars=False)
    d = measure_mtf(path, roi=roi, pixel_pitch_mm=pixel_pitch, window=window, f_max=f_max)
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
@click.option("--darks", type=click.Path(path_type=Path), default=None, help="beam-off frames (any supported format)")
@click.option("--flats", type=click.Path(path_type=Path), default=None, help="open-beam frames (any supported format)")
@click.option("--pixel-pitch", type=FiniteFloatRange(min=0, min_open=True), default=None, help="mm at the scintillator")
@click.option("--frame-rate", type=FiniteFloatRange(min=0, min_open=True), default=None, help="Hz")
@click.option("--dataset", default=None, help="HDF5 dataset path (default: NXtomo's or the largest 3D one)")
@click.option("--raw-dtype", default=None, help="raw files: numpy dtype, e.g. <u2")
@click.option("--raw-shape", default=None, metavar="T,H,W|H,W", help="raw files: frame shape")
@click.option("--header", type=click.IntRange(min=0), default=0, help="raw files: header bytes")
@click.option("--chunk-frames", type=click.IntRange(min=1), default=None,
              help="frames per stored chunk (default: from the frame size: up to 16, within 32 MiB, at least 1)")
@click.option("--overwrite", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
def ingest(source, output, darks, flats, pixel_pitch, frame_rate, dataset, raw_dtype, raw_shape, header, chunk_frames,
           overwrite, quiet):
    """Convert SOURCE (TIFF file or folder, HDF5/NeXus, raw, mp4/avi, npy) into a Zarr dataset OUTPUT."""
    from .api import ingest as _ingest

    shape = None
    if raw_shape:
        try:
            shape = tuple(int(v) for v in raw_shape.replace("x", ",").split(","))
        except ValueError:
            raise click.BadParameter("expected T,H,W or H,W", param_hint="--raw-shape") from None
    bar, update = _bar(0, "ingest", quiet)
    d = _ingest(source, output, darks=darks, flats=flats, pixel_pitch_mm=pixel_pitch, frame_rate_hz=frame_rate,
                dataset=dataset, raw_dtype=raw_dtype, raw_shape=shape, header=header, chunk_frames=chunk_frames,
                overwrite=overwrite, progress=update)
    bar.close()
    parts = [f"frames {' x '.join(map(str, d['frames']))} {d['frames_dtype']}"]
    parts += [f"{n} {' x '.join(map(str, d[n]))}" for n in ("darks", "flats") if n in d]
    click.echo(f"ingested {', '.join(parts)} -> {d['output']}")
    if d["nonfinite_pixels"]:
        click.echo(f"{d['nonfinite_pixels']} NaN/Inf pixels in the source (kept as they are)", err=True)


@cli.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--array", default="frames", show_default=True, help="which array of the group")
@click.option("--window", type=(float, float), default=None, metavar="LO HI", help="preview intensity window")
@click.option("--fps", type=FiniteFloatRange(min=0, min_open=True), default=20.0, show_default=True)
@click.option("--side-by-side", is_flag=True, help="preview: raw input | processed")
@click.option("--overwrite", is_flag=True)
def export(dataset, dest, array, window, fps, side_by_side, overwrite):
    """Export DATASET to DEST: a .tif stack (exact values) or an .mp4/.gif preview."""
    from .api import export as _export

    path = _export(dataset, dest, array=array, window=window, fps=fps, side_by_side=side_by_side, overwrite=overwrite)
    click.echo(f"exported {dataset}/{array} -> {path}")


@cli.command()
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("outdir", type=click.Path(path_type=Path))
@click.option("--compare", type=click.Path(path_type=Path), default=None, help="another report.json to overlay")
@click.option("--q", "q_value", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="photons per uGy per mm^2 of a lab beam (default: from the beam quality)")
@click.option("--overwrite", is_flag=True)
def characterise(dataset, outdir, compare, q_value, overwrite):
    """Characterise a detector: linearity, gain, bad pixels, MTF, NNPS, DQE, afterglow -> report.json/.html."""
    from .api import characterise as _characterise

    rep = _characterise(dataset, outdir, compare=compare, q_per_ugy_mm2=q_value, overwrite=overwrite)
    width = max(len(k) for k in rep["summary"])
    for k, v in rep["summary"].items():
        click.echo(f"{k.ljust(width)} : {v:.4g}" if isinstance(v, float) else f"{k.ljust(width)} : {v}")
    click.echo(f"report -> {Path(outdir) / 'report.html'}")


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
