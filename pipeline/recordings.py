"""Recordings in and out: simulate one, ingest a lab's files into the data contract, export frames, describe a
dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from . import validate
from ._version import __version__
from .clock import utc_now as _now
from .errors import DataError
from .io import zarr_store


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


def simulate(
    output: str | Path,
    *,
    preset: str = "eu-gc",
    frames: int = 64,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    stability: dict | None = None,
    **spec_fields,
) -> Path:
    """Write a simulated recording in the data contract, with a ``truth/`` subgroup.

    Extra keyword arguments set fields of :class:`pipeline.simulator.SimulationSpec`
    (e.g. ``quanta_per_pixel=100``, ``truth_frames=False``). ``stability``: the keyword arguments of
    :func:`pipeline.simulator.stability_recording` (an open-beam recording under continuous exposure whose light
    output drifts as planted; its frames spread over ``hours``, per-frame ``timestamps_s`` with ``frame_times``).
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
    from .simulator import SimulationSpec, build

    try:
        spec = SimulationSpec(preset=preset, frames=frames, height=size[0], width=size[1], seed=seed, **spec_fields)
    except TypeError as exc:
        raise DataError(f"simulate: {exc}") from None
    except ValueError as exc:
        raise DataError(f"simulate: {exc}") from None
    if stability is not None:
        from .simulator_stability import stability_recording

        sim = stability_recording(spec, **stability)
        spec = sim.spec if hasattr(sim, "spec") else spec
    else:
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
        if getattr(sim, "timestamps_s", None) is not None:
            writer.write("timestamps_s", np.asarray(sim.timestamps_s, np.float64), dims=("t",))
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
    frames: str | tuple | None = None,
    chunk_frames: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    metadata: dict | None = None,
    attrs: dict | None = None,
) -> dict:
    """Convert a recording (TIFF file or folder, HDF5/NeXus, raw, video, npy, or a Zarr dataset) into the Zarr
    data contract.

    ``frames``: ``'START:STOP[:STEP]'`` or a tuple, the frames kept (darks and flats are kept whole).
    ``chunk_frames``: frames per stored chunk (default: from the frame size, :func:`recording_chunk_frames`).
    Pixel pitch and frame rate come from the arguments, else from ``metadata`` (name -> ``(value, where)``, e.g.
    a config's), else from the file's own tags (:mod:`pipeline.io.tags`), else the Zarr source's attributes; the
    ``metadata_sources`` attribute says which. ``attrs``: more attributes for the output. Frames are streamed a
    few whole chunks at a time (as many as fit in 16 frames, at least one); the source is only read. Returns a
    summary (``metadata``: name -> ``[value, where]``; ``missing``: the names found nowhere).
    """
    from .io.ingest import storage_dtype

    if chunk_frames is not None and (isinstance(chunk_frames, bool) or not isinstance(chunk_frames, (int, np.integer))
                                     or chunk_frames < 1):
        raise DataError(f"ingest: chunk_frames must be a positive integer (or None: from the frame size), "
                        f"not {chunk_frames!r}")
    given = dict(metadata or {})
    if pixel_pitch_mm is not None:
        given["pixel_pitch_mm"] = (pixel_pitch_mm, "--pixel-pitch")
    if frame_rate_hz is not None:
        given["frame_rate_hz"] = (frame_rate_hz, "--frame-rate")
    given = checked_metadata(given)
    srcs = _sources(source, darks, flats, frames, dict(dataset=dataset, raw_dtype=raw_dtype, raw_shape=raw_shape,
                                                        header=header))
    fr = srcs["frames"]
    t, h, w = fr.shape
    found = resolve_metadata(given, fr.attrs, str(source))
    if hasattr(progress, "set_total"):  # a pipeline.progress.Progress: the work is known now
        progress.set_total(t)
    writer = zarr_store.OutputWriter(output, overwrite=overwrite,
                                     inputs=[p for p in (source, darks, flats) if p is not None])
    summary = {"source": str(source), "frames": [t, h, w], "nonfinite_pixels": 0,
               "metadata": {k: [v, where] for k, (v, where) in found.items()},
               "missing": [k for k in ("pixel_pitch_mm", "frame_rate_hz") if k not in found]}
    try:
        for name in ("frames", "darks", "flats"):
            if srcs[name] is not None:
                summary["nonfinite_pixels"] += _copy_source(writer, name, srcs[name], chunk_frames,
                                                            progress if name == "frames" else None)
                summary[name] = [int(v) for v in srcs[name].shape]
                summary[f"{name}_dtype"] = str(storage_dtype(srcs[name].dtype))
        own = {k: v for k, v in fr.attrs.items() if k not in ("pixel_pitch_mm", "frame_rate_hz", "metadata_sources")}
        out = {"source": str(Path(source).resolve()), "ingested": _now(), "version": __version__,
               **{k: float(v) for k, (v, _) in found.items()},
               "metadata_sources": {k: where for k, (_, where) in found.items()},
               "nonfinite_pixels": summary["nonfinite_pixels"]}
        writer.set_attrs({**own, **out, **(attrs or {})})
    except BaseException:
        writer.abort()
        raise
    summary["output"] = writer.commit()
    return summary


#: how each recording attribute is checked, and the option that sets it
_METADATA = {"pixel_pitch_mm": ("--pixel-pitch", "mm", 10, "give the pixel pitch in mm at the scintillator, "
                                                           "e.g. --pixel-pitch 0.1"),
             "frame_rate_hz": ("--frame-rate", "Hz", 1e7, "give the recording's frame rate in Hz, e.g. --frame-rate 50")}


def checked_metadata(found: dict) -> dict:
    """``found`` (name -> ``(value, where)``) with each value checked positive and finite (one line naming it)."""
    out = {}
    for k, (v, where) in found.items():
        if v is None:
            continue
        opt, unit, upper, fix = _METADATA[k]
        out[k] = (validate.positive_finite(v, opt if where.startswith("--") else f"{k} ({where})",
                                           unit=unit, upper=upper, fix=fix), where)
    return out


def resolve_metadata(given: dict, own_attrs: dict, label: str = "the source") -> dict:
    """Pixel pitch and frame rate by precedence: ``given`` (command line, then config: name -> ``(value, where)``),
    then the source's own (its file tags, or a Zarr source's attributes; checked: one line naming ``label``)."""
    out = dict(given)
    where = own_attrs.get("metadata_sources") or {}
    own = validate.dataset_attrs({k: own_attrs.get(k) for k in _METADATA if k not in out}, label)
    for k in _METADATA:
        if k not in out and own.get(k) is not None:
            out[k] = (float(own[k]), where.get(k, "the dataset's attribute") if isinstance(where, dict)
                      else "the dataset's attribute")
    return out


def is_zarr_group(path: Path) -> bool:
    """A folder holding a Zarr group (v3 ``zarr.json``, or v2 ``.zgroup``); anything else is a recording to ingest."""
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file())


def _sources(source, darks, flats, frames, kw: dict) -> dict:
    """The recording's frames (the range given), darks and flats (its own, or the files given) as sources of
    one frame size."""
    from .io.ingest import open_sources, select_frames

    srcs = _zarr_sources(source) if is_zarr_group(Path(source)) else open_sources(source, **kw)
    if srcs["frames"] is None:
        raise DataError(f"'{source}' holds no projection frames (image_key 0)")
    for name, extra in (("darks", darks), ("flats", flats)):
        if extra is not None:
            srcs[name] = (_zarr_sources(extra) if is_zarr_group(Path(extra)) else open_sources(extra, **kw))["frames"]
    if frames is not None:
        srcs["frames"] = select_frames(srcs["frames"], frames)
    h, w = srcs["frames"].shape[1:]
    for name in ("darks", "flats"):
        s_ = srcs[name]
        if s_ is not None and tuple(s_.shape[1:]) != (h, w):
            raise DataError(f"{name} '{s_.label}' are {tuple(s_.shape[1:])} frames but the recording is {(h, w)}; "
                            "they must match")
    return srcs


def _zarr_sources(path) -> dict:
    """A Zarr dataset's frames, darks and flats as ingest sources (checked as read)."""
    from .io.ingest import Source

    ds = zarr_store.open_input(path)
    out = {}
    for name in ("frames", "darks", "flats"):
        arr = getattr(ds, name)
        if arr is None:
            out[name] = None
            continue
        r = ds.reader() if name == "frames" else ds.array_reader(name)
        out[name] = Source(f"{path}/{name}", tuple(arr.shape), np.dtype(arr.dtype),
                           lambda t0, t1, r=r: np.asarray(r[t0:t1]), dict(ds.attrs) if name == "frames" else {})
    return out


def _copy_source(writer, name: str, src, chunk_frames: int | None, progress) -> int:
    """``src`` streamed into the array ``name`` of the dataset being written, a few whole chunks a read; returns
    its count of NaN/Inf pixels."""
    from .io.ingest import storage_dtype

    n, h, w = src.shape
    dt = storage_dtype(src.dtype)
    chunk = chunk_frames or recording_chunk_frames((h, w), dt)
    arr = writer.frames_target(writer.create(name, src.shape, dt, chunks=(min(chunk, n), h, w)))
    step = chunk * max(1, 16 // chunk)  # whole chunks a read
    nonfinite = 0
    for t0 in range(0, n, step):
        t1 = min(t0 + step, n)
        block = np.asarray(src.read(t0, t1))
        if block.shape[1:] != (h, w):
            raise DataError(f"{src.label}: frame {t0} is {block.shape[1:]}, expected {(h, w)}")
        if dt.kind == "f":
            nonfinite += int(block.size - np.count_nonzero(np.isfinite(block)))
        arr[t0:t1] = block.astype(dt, copy=False)
        if progress is not None:
            progress(t1 - t0)
    return nonfinite


def export(
    dataset: str | Path,
    dest: str | Path,
    *,
    array: str = "frames",
    window: tuple[float, float] | None = None,
    fps: float = 20.0,
    side_by_side: bool = False,
    overwrite: bool = False,
    format: str | None = None,
    frames: tuple[int, int, int] | slice | str | None = None,
    sheet_frames: int = 8,
) -> Path:
    """Export a dataset's frames: ``.tif`` stack (values exact), ``.mp4``/``.gif`` preview (8-bit, windowed),
    ``.png`` contact sheet (8-bit quick look) or, with ``format='png'``, a folder of PNG frames.

    ``format``: None (what ``dest``'s suffix says: .tif/.tiff, .mp4, .gif, .png = contact sheet) or ``'png'``:
    ``dest`` is a new folder of ``frame_<index>.png`` (the source frame index, zero-padded to the frame count's
    width, at least 5 digits); uint8/uint16 frames hold their values exactly, others 16-bit codes over the window,
    which ``window.json`` beside them records. ``overwrite`` replaces only such a folder written by export.
    ``frames``: the frames exported, ``(start, stop[, step])``, a slice or ``'START:STOP[:STEP]'`` (Python slice
    semantics, step >= 1); default all.
    ``sheet_frames``: a contact sheet shows up to this many frames evenly spaced over the selected ones, four to a
    row; where the dataset's provenance names a readable raw input of the same shape, raw tiles above processed.
    ``window``: intensity range mapped to black..white (default: the 0.5-99.5 % percentiles of a sample).
    ``side_by_side``: the preview shows the run's raw input next to the processed frames (a contact sheet: the raw
    row is then required).

    Returns the path written, a :class:`pipeline.io.export.ExportedPath` whose ``summary`` dict says which source
    frames were used (``frames``), the ``format`` and ``window``, and per format more.
    """
    from .io import outputs
    from .io.export import (
        _exported, _window, check_png_dest, check_window, frame_range, png_digits, selected, sheet_positions,
        write_contact_sheet, write_png_frames, write_preview, write_tiff_stack,
    )

    d = Path(dest)
    kind = _export_kind(d, format, side_by_side, sheet_frames)
    window = check_window(window) if kind != "tiff" else None
    if kind == "png":
        check_png_dest(d, overwrite=overwrite, inputs=[dataset])
    else:
        outputs.check_output_path(d, overwrite=overwrite, inputs=[dataset], kind="file", sidecars=False)
    g, data, label = _export_source(dataset, array)
    t = data.shape[0]
    r = frame_range(frames, t)
    used = {"range": [r.start, r.stop, r.step], "frames": list(r)}
    if kind == "tiff":
        return _exported(write_tiff_stack(selected(data, r), d), {"format": "tiff", **used, "window": None})
    if kind == "png":
        out = write_png_frames(selected(data, r), d, indices=r, digits=png_digits(t), window=window,
                               overwrite=overwrite, inputs=[dataset], dataset=str(dataset), array=array)
        return _exported(d, {**out, **used})
    left = src = why = None
    if side_by_side or kind == "sheet":
        left, src, why = _raw_beside(g, dataset, data, label, d, side_by_side=side_by_side, overwrite=overwrite)
    if kind == "sheet":
        pos = [r[i] for i in sheet_positions(len(r), int(sheet_frames))]
        stack = np.stack([np.asarray(data[i]) for i in pos])
        raw = np.stack([np.asarray(left[i]) for i in pos]) if left is not None else None
        out = write_contact_sheet(stack, d, labels=pos, window=window, left=raw)
        return _exported(d, {**out, **used, "frames": pos, "raw": src if left is not None else None,
                             "raw_skipped": None if left is not None else why})
    if not 0.01 <= float(fps) <= 1000:
        raise DataError(f"--fps {fps:g} is outside 0.01..1000 frames per second; choose a playable rate")
    if min(data.shape[1:]) < 2:
        raise DataError(f"'{dataset}/{array}' has {data.shape[1]} x {data.shape[2]} frames; a {d.suffix.lower()} "
                        "preview needs at least 2 x 2 pixels: export them as .tif")
    sel = selected(data, r)
    win = _window(sel, window)
    path = write_preview(sel, d, window=win, fps=fps, left=selected(left, r) if left is not None else None)
    return _exported(path, {"format": kind, **used, "window": [float(v) for v in win], "raw": src})


def _export_kind(d: Path, format, side_by_side: bool, sheet_frames) -> str:
    """What export writes to ``d``: 'tiff', 'mp4', 'gif', 'sheet' (a .png contact sheet) or 'png' (frames);
    the options checked against it (one line each)."""
    suf = d.suffix.lower()
    if format is not None and str(format).lower() != "png":
        raise DataError(f"--format {format}: export knows 'png' (a folder of PNG frames); other formats follow "
                        "DEST's suffix (.tif/.tiff, .mp4, .gif, .png contact sheet)")
    kind = "png" if format is not None else {".tif": "tiff", ".tiff": "tiff", ".mp4": "mp4", ".gif": "gif",
                                              ".png": "sheet"}.get(suf)
    if kind is None:
        raise DataError(f"'{d}': export writes .tif/.tiff (exact), .mp4/.gif (preview), .png (contact sheet) or, "
                        "with --format png, a folder of PNG frames")
    if kind == "png" and suf in (".png", ".tif", ".tiff", ".mp4", ".gif"):
        raise DataError(f"'{d}': --format png writes a folder of PNG frames; give a folder path without a file "
                        "suffix (a .png DEST without --format is a contact sheet)")
    if kind == "png" and side_by_side:
        raise DataError("--side-by-side is for previews (.mp4/.gif) and contact sheets (.png); drop it for --format "
                        "png")
    if kind == "sheet" and (isinstance(sheet_frames, bool) or not isinstance(sheet_frames, (int, np.integer))
                            or not 1 <= sheet_frames <= 1000):
        raise DataError(f"--sheet-frames {sheet_frames!r}: give a whole number of frames, 1..1000")
    return kind


def _export_source(dataset, array: str):
    """The group, its array of frames checked as read (T, H, W) and its label."""
    g = zarr_store.open_group_readonly(dataset)
    if array not in g:
        raise DataError(f"'{dataset}' has no array '{array}'")
    data = g[array]
    if not hasattr(data, "dtype") or len(data.shape) not in (2, 3):
        raise DataError(f"'{dataset}/{array}' is not an array of frames (a group, or not 2D/3D); "
                        "pick a (T, H, W) or (H, W) array with --array")
    label = f"{dataset}/{array}"
    if len(data.shape) == 2:
        data = zarr_store.read_checked(data, label)[None]
    else:  # checked as read (a lost chunk is an error, never black frames); float16/uint16 outputs: their values
        data = zarr_store.checked_frames(data, label)
    if data.shape[0] < 1:
        raise DataError(f"'{dataset}/{array}' holds no frames; nothing to export")
    return g, data, label


def _raw_beside(g, dataset, data, label: str, d: Path, *, side_by_side: bool, overwrite: bool):
    """The raw input a processed output names (``(frames, path, why-not)``), where it matches the frames; never
    an output path either."""
    from .io import outputs
    from .io.export import raw_input

    left, src, why = raw_input(g, dataset, required=side_by_side)
    if left is not None and tuple(left.shape) != tuple(data.shape):
        if side_by_side:
            raise DataError(f"side-by-side needs the raw '{src}' ({' x '.join(map(str, left.shape))}) and "
                            f"'{label}' ({' x '.join(map(str, data.shape))}) to have the same frames and size")
        left, why = None, "its input's frames differ in number or size"
    if left is not None:  # never written over the raw input either
        outputs.check_output_path(d, overwrite=overwrite, inputs=[dataset, src], kind="file", sidecars=False)
    return left, src, why


def info(path: str | Path, *, dataset: str | None = None, raw_dtype: str | None = None, raw_shape: tuple | None = None,
         header: int = 0) -> dict:
    """Describe a dataset (arrays: shape, dtype, chunks, codecs; attributes), or a recording in any format ingest
    reads: its frames (and darks and flats), and the attributes its files give (pixel pitch and frame rate from
    their tags, with ``metadata_sources``). Nothing is copied."""
    from .io.ingest import open_sources

    p = Path(str(path).split("::", 1)[0])
    if is_zarr_group(p) or (p.is_dir() and (p / ".zarray").is_file()):
        return zarr_store.describe(path)
    srcs = open_sources(path, dataset=dataset, raw_dtype=raw_dtype, raw_shape=raw_shape, header=header)
    arrays = {name: {"shape": list(src.shape), "dtype": str(src.dtype), "chunks": [1, *src.shape[1:]],
                     "nbytes": int(np.prod(src.shape)) * np.dtype(src.dtype).itemsize,
                     "compressors": [f"a recording: {src.label}"]}
              for name, src in srcs.items() if src is not None}
    attrs = dict(srcs["frames"].attrs) if srcs["frames"] is not None else {}
    for k in ("pixel_pitch_mm", "frame_rate_hz"):
        if k not in attrs:
            attrs.setdefault("missing", []).append(k)
    return {"path": str(path), "arrays": arrays, "attributes": attrs}




#: attributes ``set-attrs`` may set: name -> parser of the text value
SETTABLE_ATTRS = {"pixel_pitch_mm": float, "frame_rate_hz": float, "q_per_uGy_mm2": float,
                  "reference_kerma_uGy": float, "beam_quality": str, "acquired_at": str}


def set_dataset_attrs(dataset: str | Path, values: dict) -> dict:
    """Set recording attributes of the Zarr dataset ``dataset`` in place (only its group attributes change).

    ``values``: name -> value (text from the command line, or numbers), names from :data:`SETTABLE_ATTRS`;
    each is checked like an ingested one. ``metadata_sources`` records that they were set by hand, and
    ``attrs_history`` keeps each old value. Returns the values set.
    """
    from .io.outputs import OutputLock

    p = Path(dataset)
    if not is_zarr_group(p):
        raise DataError(f"'{p}' is not a Zarr dataset; set-attrs changes a dataset's attributes in place (a "
                        "recording's files take --pixel-pitch/--frame-rate on each command, or ingest them first)")
    if not values:
        raise DataError("set-attrs: give at least one NAME=VALUE, e.g. pixel_pitch_mm=0.05")
    new = {}
    for name, value in values.items():
        if name not in SETTABLE_ATTRS:
            raise DataError(f"set-attrs: '{name}' is not a recording attribute it sets; the names are "
                            f"{', '.join(SETTABLE_ATTRS)}")
        try:
            new[name] = SETTABLE_ATTRS[name](value)
        except (TypeError, ValueError):
            raise DataError(f"set-attrs: {name}={value!r} is not a number") from None
    checked = validate.dataset_attrs(new, str(p), fixes={k: f"give {k} a positive number" for k in new})
    lock = OutputLock(p)  # no other writer while the attributes change
    try:
        old = zarr_store.read_attrs(p)
        stamp = _now()
        sources = dict(old.get("metadata_sources") or {})
        sources.update({k: f"set by hand (set-attrs, {stamp})" for k in checked if k in _METADATA})
        history = list(old.get("attrs_history") or [])
        history += [{"name": k, "old": old.get(k), "new": v, "at": stamp} for k, v in checked.items()]
        zarr_store.set_attrs_in_place(p, {**checked, "metadata_sources": sources, "attrs_history": history})
    finally:
        lock.release()
    return checked
