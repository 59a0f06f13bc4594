"""Options and helpers the commands share: the recording options every reading command takes, progress, config."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import click


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
    from ..progress import Progress, reporting

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
    from ..io.ingest import frame_range

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
    from ..sources import RecordingOptions

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


def _config_options(f):
    f = click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                     help="YAML config (defaults: configs/default.yaml)")(f)
    f = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="override one config key, e.g. --set flatfield.output=attenuation")(f)
    return f


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
