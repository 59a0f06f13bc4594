"""Commands on recordings: simulate, ingest, export, info, set-attrs, demo."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .app import cli
from .options import (FiniteFloatRange, _progress, _raw_shape_arg, _recording_options, _say_metadata,
                      _source_options)


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
@click.option("--stability", type=click.Choice(["sessions", "recording"]), default=None,
              help="a screen that drifts as planted: characterisation sessions over --hours (OUTPUT: a folder of "
                   "session_<h>h.zarr) or one open-beam recording under continuous exposure over --hours")
@click.option("--hours", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="--stability: the span (default 200 h for sessions, 2 h for a recording)")
@click.option("--sessions", "n_sessions", type=click.IntRange(min=2), default=5, show_default=True,
              help="--stability sessions: how many, evenly spaced from 0 to --hours")
@click.option("--drift", type=FiniteFloatRange(min=-50, max=50), default=None,
              help="--stability: light-yield drift, %% per hour (default -0.05 sessions, -1 recording)")
@click.option("--light-model", type=click.Choice(["linear", "exp"]), default="linear", show_default=True)
@click.option("--tau-h", type=FiniteFloatRange(min=0, min_open=True), default=None,
              help="--light-model exp: the decay time in hours")
@click.option("--new-bad", type=click.IntRange(min=0), default=5, show_default=True,
              help="--stability sessions: new bad pixels in each later session")
@click.option("--blur-growth", type=FiniteFloatRange(min=0, max=10), default=0.0, show_default=True,
              help="--stability sessions: LSF width growth, %% per hour")
@click.option("--lag-growth", type=FiniteFloatRange(min=0, max=100), default=0.0, show_default=True,
              help="--stability sessions: afterglow amplitude growth, %% per hour")
@click.option("--flicker", type=FiniteFloatRange(min=0, max=50), default=0.0, show_default=True,
              help="--stability recording: frame-to-frame light flicker, %% rms")
@click.option("--frame-times", is_flag=True, help="--stability recording: store per-frame timestamps_s")
@click.option("--overwrite", is_flag=True, help="replace OUTPUT if it exists")
@click.option("--quiet", "-q", is_flag=True)
def simulate(output, preset, frames, size, seed, dose, pixel_pitch, frame_rate, no_truth_frames, scene,
             beam_off_frame, ramp_frames, characterisation, afterglow_terms, stability, hours, n_sessions, drift,
             light_model, tau_h, new_bad, blur_growth, lag_growth, flicker, frame_times, overwrite, quiet):
    """Write a simulated scintillator-detector video with ground truth to OUTPUT (Zarr v3)."""
    from ..recordings import simulate as _simulate

    if stability == "sessions":
        import numpy as np

        from ..characterisation import simulate_stability_sessions

        span = 200.0 if hours is None else float(hours)
        times = tuple(float(v) for v in np.linspace(0.0, span, n_sessions))
        with _progress("simulate", n_sessions, quiet, unit="session") as bar:
            paths = simulate_stability_sessions(output, preset=preset, size=tuple(size), seed=seed,
                                                overwrite=overwrite, progress=bar, hours=times,
                                                light_drift_pct_per_h=-0.05 if drift is None else drift,
                                                light_model=light_model, exp_tau_h=tau_h, new_bad_per_session=new_bad,
                                                blur_growth_pct_per_h=blur_growth, lag_growth_pct_per_h=lag_growth)
        if not quiet:
            click.echo(f"simulated {len(paths)} characterisation sessions over {span:g} h -> {output}/")
        return
    if stability == "recording":
        plan = {"hours": 2.0 if hours is None else float(hours), "light_drift_pct_per_h": -1.0 if drift is None
                else drift, "light_model": light_model, "exp_tau_h": tau_h, "flicker_pct": flicker,
                "frame_times": frame_times}
        with _progress("simulate", frames, quiet) as bar:
            path = _simulate(output, preset=preset, frames=frames, size=tuple(size), seed=seed, overwrite=overwrite,
                             progress=bar, quanta_per_pixel=dose, pixel_pitch_mm=pixel_pitch,
                             truth_frames=not no_truth_frames, stability=plan)
        if not quiet:
            click.echo(f"simulated {frames} frames over {plan['hours']:g} h of continuous exposure -> {path}")
        return
    if characterisation:
        from ..characterisation import simulate_characterisation

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
    from ..demo import demo as _demo

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
    from ..recordings import info as _info

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
    from ..recordings import ingest as _ingest

    if characterisation:
        from ..manifest import frame_count, ingest_manifest, read_manifest

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
    from ..recordings import export as _export
    from ..sources import staged

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


@cli.command("set-attrs")
@click.argument("dataset", type=click.Path(path_type=Path))
@click.argument("assignments", nargs=-1, required=True, metavar="NAME=VALUE...")
def set_attrs(dataset, assignments):
    """Set a Zarr dataset's recording attributes in place: pixel_pitch_mm, frame_rate_hz, beam_quality,
    q_per_uGy_mm2, reference_kerma_uGy, acquired_at (e.g. set-attrs rec.zarr pixel_pitch_mm=0.05 frame_rate_hz=100).
    Only the group's attributes change; its frames are untouched."""
    from ..recordings import set_dataset_attrs

    done = set_dataset_attrs(dataset, dict(_assignment(a) for a in assignments))
    click.echo(f"{dataset}: " + ", ".join(f"{k} = {v}" for k, v in done.items()))


def _assignment(text: str):
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise click.BadParameter(f"'{text}' is not NAME=VALUE, e.g. pixel_pitch_mm=0.05", param_hint="NAME=VALUE")
    return name.strip(), value.strip()
