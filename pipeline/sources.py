"""One way to name a recording in every command: a Zarr dataset, or a lab's files, with options.

A command that reads a recording (``run``, ``calibrate``, ``afterglow fit``, ``mtf``, ``characterise``,
``export``) takes a Zarr dataset or a TIFF file or folder, HDF5 (``file.h5``, NXtomo), raw, npy or video, with the
options of ``ingest`` (:class:`RecordingOptions`: darks, flats, pixel pitch, frame rate, raw layout, a frame range).
:func:`staged` gives the command a Zarr dataset to read:

* a Zarr dataset with no option that changes it: the dataset itself;
* a Zarr dataset with only a pixel pitch or frame rate given: a small group beside the output whose attributes
  say so and whose arrays link to the dataset's (nothing copied, nothing of the dataset changed);
* anything else: the recording ingested beside the output (the frame range only), removed afterwards.

Metadata precedence: the command line, then the config, then the file's own tags, then a Zarr dataset's
attributes; the staged dataset's ``metadata_sources`` attribute says where each value came from.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import PipelineError
from .io import outputs, zarr_store
from .recordings import checked_metadata, ingest, is_zarr_group, resolve_metadata

#: options that change what a Zarr dataset holds (anything but metadata): the recording is then copied
_CONTENT = ("darks", "flats", "frames")


@dataclass(frozen=True)
class RecordingOptions:
    """How to read a recording: ``ingest``'s options, a frame range, and metadata from a config."""

    darks: Path | None = None
    flats: Path | None = None
    pixel_pitch_mm: float | None = None
    frame_rate_hz: float | None = None
    dataset: str | None = None
    raw_dtype: str | None = None
    raw_shape: tuple | None = None
    header: int = 0
    frames: str | tuple | None = None
    #: name -> value from a config (below the command line, above the file's tags)
    config_metadata: dict = field(default_factory=dict)

    def metadata(self) -> dict:
        """The given pixel pitch and frame rate, name -> ``(value, where)``, the command line over the config."""
        out = {k: (v, "config input.%s" % k) for k, v in self.config_metadata.items() if v is not None}
        if self.pixel_pitch_mm is not None:
            out["pixel_pitch_mm"] = (self.pixel_pitch_mm, "--pixel-pitch")
        if self.frame_rate_hz is not None:
            out["frame_rate_hz"] = (self.frame_rate_hz, "--frame-rate")
        return checked_metadata(out)

    def changes_content(self) -> bool:
        return any(getattr(self, k) is not None for k in _CONTENT)

    def inputs(self) -> list:
        """The files these options read (outputs must never be one of them)."""
        return [p for p in (self.darks, self.flats) if p is not None]

    def stamp(self) -> dict:
        """What identifies these options in a resumable run's fingerprint."""
        return {"darks": str(self.darks) if self.darks else None, "flats": str(self.flats) if self.flats else None,
                "frames": list(self.frames) if isinstance(self.frames, tuple) else self.frames,
                "metadata": {k: v for k, (v, _) in self.metadata().items()}, "dataset": self.dataset,
                "raw": [self.raw_dtype, list(self.raw_shape or ()), self.header]}

    def with_config(self, config) -> "RecordingOptions":
        """These options with a run config's ``input`` section as the config layer of the metadata."""
        sec = getattr(config, "input", None)
        if sec is None:
            return self
        return replace(self, config_metadata={"pixel_pitch_mm": sec.pixel_pitch_mm, "frame_rate_hz": sec.frame_rate_hz})


NONE = RecordingOptions()


def file_of(path) -> Path:
    """The file part of a recording's name (``scan.h5::/entry/data/data`` -> ``scan.h5``)."""
    return Path(str(path).split("::", 1)[0])


def needs_staging(path: Path, opts: RecordingOptions) -> bool:
    """Whether ``path`` with ``opts`` must be staged (:func:`staged`) before a command reads it."""
    return not is_zarr_group(Path(path)) or opts.changes_content() or bool(opts.metadata())


def stage(path: Path, opts: RecordingOptions, where: Path, *, progress=None) -> dict:
    """Write the Zarr dataset a command reads for ``path`` with ``opts`` at ``where`` (see the module docstring);
    returns ``{'path', 'metadata': name -> [value, where], 'missing': [...], 'linked': bool}``."""
    if not file_of(path).exists():
        raise PipelineError(f"input '{file_of(path)}' does not exist; check the path")
    if is_zarr_group(Path(path)) and not opts.changes_content():
        return _linked(path, opts, where)
    d = ingest(path, where, darks=opts.darks, flats=opts.flats, dataset=opts.dataset, raw_dtype=opts.raw_dtype,
               raw_shape=opts.raw_shape, header=opts.header, frames=opts.frames, overwrite=True, progress=progress,
               metadata=opts.metadata(), attrs={outputs.ROLE_ATTR: "staged-ingest"})
    return {"path": Path(d["output"]), "metadata": d["metadata"], "missing": d["missing"], "linked": False}


def _linked(path: Path, opts: RecordingOptions, where: Path) -> dict:
    """A group at ``where`` with ``path``'s attributes, the given metadata over them, and links to its arrays."""
    own = zarr_store.read_attrs(path)
    found = resolve_metadata(opts.metadata(), own, str(path))
    attrs = {**own, **{k: float(v) for k, (v, _) in found.items()},
             "metadata_sources": {k: w for k, (_, w) in found.items()}, outputs.ROLE_ATTR: "staged-ingest",
             "source": own.get("source", str(path.resolve()))}
    writer = zarr_store.OutputWriter(where, overwrite=True, inputs=[path])
    try:
        writer.set_attrs(attrs)
    except BaseException:
        writer.abort()
        raise
    final = writer.commit()
    for child in Path(path).iterdir():  # links made after the commit: nothing of ours walks into the dataset
        if child.is_dir() and ((child / "zarr.json").is_file() or (child / ".zarray").is_file()
                               or (child / ".zgroup").is_file()):
            os.symlink(child.resolve(), final / child.name, target_is_directory=True)
    return {"path": final, "metadata": {k: [v, w] for k, (v, w) in found.items()},
            "missing": [k for k in ("pixel_pitch_mm", "frame_rate_hz") if k not in found], "linked": True}


def discard(staged: Path) -> None:
    """Remove a staged dataset: its links first (never what they point to), then the folder."""
    staged = Path(staged)
    if not staged.exists():
        return
    if not outputs.marked(staged, "staged-ingest"):
        return  # not ours to delete
    for child in staged.iterdir():
        if child.is_symlink():
            child.unlink()
    outputs.remove(staged)


def scratch_path(near: Path | None) -> Path:
    """Where a command without an output folder of its own stages a recording: a hidden name beside ``near``
    (its output), else in the working folder."""
    base = Path(near).resolve().parent if near is not None else Path.cwd()
    return base / f".xray-pipeline-staged-{os.getpid()}-{uuid.uuid4().hex[:8]}.zarr"


@contextmanager
def staged(path, opts: RecordingOptions | None = None, *, near: Path | None = None, progress=None, report=None):
    """``with staged(recording, opts, near=OUTPUT) as zarr_path:`` the Zarr dataset to read (see the module
    docstring); a staged copy is removed on exit, and errors name ``recording`` rather than the staged copy.
    ``report``: called with :func:`stage`'s summary (for the metadata and where it came from)."""
    opts = opts or NONE
    path = Path(path)
    if not needs_staging(path, opts):
        if report is not None:
            own = zarr_store.read_attrs(path) if path.exists() else {}
            found = resolve_metadata({}, own, str(path))
            report({"path": path, "metadata": {k: [v, w] for k, (v, w) in found.items()},
                    "missing": [k for k in ("pixel_pitch_mm", "frame_rate_hz") if k not in found], "linked": False})
        yield path
        return
    where = scratch_path(near)
    try:
        d = stage(path, opts, where, progress=progress)
        if report is not None:
            report(d)
        yield d["path"]
    except PipelineError as exc:
        raise type(exc)(str(exc).replace(str(where), str(path))) from None
    finally:
        discard(where)
