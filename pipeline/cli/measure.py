"""Commands that measure: mtf, characterise, bench, config."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import ConfigError
from .app import cli
from .options import (FiniteFloatRange, _config_options, _int_list, _progress, _recording_options,
                      _source_options)


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
    from ..measure import measure_mtf
    from ..io.ingest import HDF5, RAW, VIDEO
    from ..io.outputs import atomic_file, check_output_path
    from ..sources import staged

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
        from .. import report

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
    from ..characterisation import characterise as _characterise
    from ..manifest import frame_count, ingest_manifest, is_manifest, read_manifest
    from ..sources import discard, scratch_path

    with _progress("characterise", None, quiet) as bar:
        if is_manifest(dataset):
            from ..io.outputs import ROLE_ATTR

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
@click.option("--full-frames", type=click.IntRange(min=1), default=None,
              help="frames for the full default pipeline (default: --frames, as every other pipeline)")
@click.option("--no-peers", is_flag=True, help="skip scikit-image / algotom / textbook peers")
@click.option("--no-denoise-methods", is_flag=True,
              help="skip the denoising methods' quality and speed (PSNR gain, trail, frames/s of each method)")
@click.option("--no-startup", is_flag=True, help="skip the start-up of command-line calls (fresh processes)")
@click.option("--mtf-rois", type=click.IntRange(min=1), default=256, show_default=True,
              help="slanted-edge ROIs per call in the MTF timing (each of 128² and 256²)")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
@_config_options
def bench(device, sizes, frames, repeats, scaling_frames, scaling_size, workers, full_frames, no_peers,
          no_denoise_methods, no_startup, mtf_rois, out, config_file, overrides):
    """Throughput of every stage and whole pipelines against rooflines and peers, the slanted-edge MTF, the denoising
    methods' quality and speed, and command start-up; JSON, tables and plots to --out."""
    import sys

    from ..bench import run_benchmarks
    from ..config import load_config

    cfg = load_config(config_file, overrides=list(overrides))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file; bench writes a folder of results: pass a folder path")
    cmd = "xray-pipeline " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("xray-pipeline") else ""
    _, paths = run_benchmarks(device=device, sizes=sizes, frames=frames, repeats=repeats, out=out, config=cfg,
                              scaling_frames=scaling_frames, scaling_size=scaling_size, workers=workers,
                              full_frames=full_frames, peers=not no_peers, denoise_methods=not no_denoise_methods,
                              startup=not no_startup, mtf_rois=mtf_rois, command=cmd or "xray-pipeline bench", log=click.echo)
    for p in paths:
        click.echo(f"wrote {p}")


@cli.command("config")
@_config_options
def config_cmd(config_file, overrides):
    """Print the fully resolved config as YAML (defaults, then --config, then --set)."""
    from ..config import dump_yaml, load_config

    click.echo(dump_yaml(load_config(config_file, overrides=list(overrides))), nl=False)


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RECORDING OUTDIR | SESSION...")
@click.option("--out", "outdir", type=click.Path(path_type=Path), default=None,
              help="sessions mode: the output folder (every argument is then a session)")
@click.option("--roi", type=(int, int, int, int), default=None, metavar="Y0 Y1 X0 X1",
              help="recording mode: the region to follow (default: the open-beam area)")
@click.option("--limits", "limits_file", type=click.Path(path_type=Path), default=None,
              help="YAML of tolerances (light_yield_pct, mtf20_pct, dqe_pct, lag_pct, new_bad_pixels_pct_of_area, ...)")
@click.option("--frequencies", default="0.5,1,2", show_default=True, metavar="F,F,...",
              help="sessions mode: lp/mm at which NNPS and DQE are followed")
@_recording_options
@click.option("--overwrite", is_flag=True)
@click.option("--quiet", "-q", is_flag=True)
def stability(inputs, outdir, roi, limits_file, frequencies, overwrite, quiet, **rec):
    """Stability over a screen's life: 'stability RECORDING OUTDIR' follows the light output of one recording under
    continuous exposure (drift %/h, exponential decay, flicker, MTF per frame); 'stability SESSION... --out OUTDIR'
    trends characterisation sessions (report.json, manifest, dataset or recording; times from acquired_at, else the
    file's time, else the order given). Limits give pass/warn/fail; the exit status is 3 when a limit fails."""
    from ..stability import load_limits, recording_stability, sessions_stability

    limits = load_limits(limits_file)
    try:
        freqs = tuple(float(v) for v in frequencies.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"'{frequencies}' is not a comma-separated list of lp/mm", param_hint="--frequencies")
    if outdir is None:
        if len(inputs) != 2:
            raise click.UsageError("give RECORDING OUTDIR (one recording), or SESSION... --out OUTDIR (sessions)")
        opts = _source_options(rec)
        with _progress("stability", None, quiet) as bar:
            doc = recording_stability(inputs[0], inputs[1], roi=roi, source_options=opts, limits=limits,
                                      overwrite=overwrite, progress=bar)
        out = Path(inputs[1])
        if not doc["light_output"]["dark_subtracted"]:
            click.echo("warning: no darks: the light output includes the camera's dark level (the drift in % reads "
                       "low by its share); pass --darks", err=True)
        if not quiet:
            lo = doc["light_output"]
            click.echo(f"light output over {doc['duration_h']:.3g} h ({doc['frames']} frames): drift "
                       f"{lo['drift_pct_per_h']:.4g} ± {lo['drift_pct_per_h_err']:.2g} %/h (linear); model "
                       f"{lo['fit'].get('chosen')}; flicker {lo['flicker'].get('flicker_rms_pct', float('nan')):.3g} % rms")
    else:
        with _progress("stability", None, quiet, unit="session") as bar:
            doc = sessions_stability(inputs, outdir, limits=limits, frequencies=freqs, overwrite=overwrite,
                                     progress=bar)
        out = Path(outdir)
        if not quiet:
            for r in doc["sessions"]:
                ly = r.get("light_yield_counts_per_uGy") or r.get("light_output_counts")
                click.echo(f"{r['time_h']:8.1f} h  {Path(r['path']).name:24s} light {ly if ly is None else f'{ly:.4g}'}"
                           f"  MTF20 {r.get('mtf20_lp_per_mm') or float('nan'):.4g}  new bad pixels "
                           f"{r.get('new_bad_pixels')}  {r['verdict']}")
    if not quiet:
        click.echo(f"verdict {doc['verdict']} -> {out / 'stability.html'}")
    return 3 if doc["verdict"] == "fail" else 0
