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
from .simulator import SimulationSpec, build


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
    **spec_fields,
) -> Path:
    """Write a simulated recording in the data contract, with a ``truth/`` subgroup.

    Extra keyword arguments set fields of :class:`pipeline.simulator.SimulationSpec`
    (e.g. ``quanta_per_pixel=100``, ``truth_frames=False``).
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
    try:
        spec = SimulationSpec(preset=preset, frames=frames, height=size[0], width=size[1], seed=seed, **spec_fields)
    except TypeError as exc:
        raise DataError(f"simulate: {exc}") from None
    except ValueError as exc:
        raise DataError(f"simulate: {exc}") from None
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
    chunk_frames: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Convert a recording (TIFF file or folder, HDF5/NeXus, raw, video, npy) into the Zarr data contract.

    ``chunk_frames``: frames per stored chunk (default: from the frame size, :func:`recording_chunk_frames`).
    Frames are streamed a few whole chunks at a time (as many as fit in 16 frames, at least one); the
    source is only read. Returns a summary.
    """
    from .io.ingest import open_sources, storage_dtype

    if chunk_frames is not None and (isinstance(chunk_frames, bool) or not isinstance(chunk_frames, (int, np.integer))
                                     or chunk_frames < 1):
        raise DataError(f"ingest: chunk_frames must be a positive integer (or None: from the frame size), "
                        f"not {chunk_frames!r}")
    if pixel_pitch_mm is not None:
        pixel_pitch_mm = validate.positive_finite(pixel_pitch_mm, "--pixel-pitch", unit="mm", upper=10,
                                                  fix="give the pixel pitch in mm at the scintillator, e.g. --pixel-pitch 0.1")
    if frame_rate_hz is not None:
        frame_rate_hz = validate.positive_finite(frame_rate_hz, "--frame-rate", unit="Hz", upper=1e7,
                                                 fix="give the recording's frame rate in Hz, e.g. --frame-rate 50")
    kw = dict(dataset=dataset, raw_dtype=raw_dtype, raw_shape=raw_shape, header=header)
    srcs = open_sources(source, **kw)
    if srcs["frames"] is None:
        raise DataError(f"'{source}' holds no projection frames (image_key 0)")
    for name, extra in (("darks", darks), ("flats", flats)):
        if extra is not None:
            srcs[name] = open_sources(extra, **kw)["frames"]
    fr = srcs["frames"]
    t, h, w = fr.shape
    for name in ("darks", "flats"):
        s_ = srcs[name]
        if s_ is not None and tuple(s_.shape[1:]) != (h, w):
            raise DataError(f"{name} '{s_.label}' are {tuple(s_.shape[1:])} frames but the recording is {(h, w)}; "
                            "they must match")
    writer = zarr_store.OutputWriter(output, overwrite=overwrite,
                                     inputs=[p for p in (source, darks, flats) if p is not None])
    summary = {"source": str(source), "frames": [t, h, w], "nonfinite_pixels": 0}
    try:
        for name in ("frames", "darks", "flats"):
            if srcs[name] is not None:
                summary["nonfinite_pixels"] += _copy_source(writer, name, srcs[name], chunk_frames,
                                                            progress if name == "frames" else None)
                summary[name] = [int(v) for v in srcs[name].shape]
                summary[f"{name}_dtype"] = str(storage_dtype(srcs[name].dtype))
        attrs = {"source": str(Path(source).resolve()), "ingested": _now(), "version": __version__}
        if pixel_pitch_mm is not None:
            attrs["pixel_pitch_mm"] = float(pixel_pitch_mm)
        if frame_rate_hz is not None:
            attrs["frame_rate_hz"] = float(frame_rate_hz)
        attrs["nonfinite_pixels"] = summary["nonfinite_pixels"]
        writer.set_attrs({**srcs["frames"].attrs, **attrs})
    except BaseException:
        writer.abort()
        raise
    summary["output"] = writer.commit()
    return summary


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
) -> Path:
    """Export a dataset's frames: ``.tif`` stack (values exact) or ``.mp4``/``.gif`` preview (8-bit, windowed).

    ``window``: intensity range mapped to black..white (default: the 0.5-99.5 % percentiles of a sample).
    ``side_by_side``: the preview shows the run's raw input next to the processed frames.
    """
    from .io import outputs
    from .io.export import write_preview, write_tiff_stack

    d = Path(dest)
    outputs.check_output_path(d, overwrite=overwrite, inputs=[dataset], kind="file", sidecars=False)
    g = zarr_store.open_group_readonly(dataset)
    if array not in g:
        raise DataError(f"'{dataset}' has no array '{array}'")
    frames = g[array]
    if not hasattr(frames, "dtype") or len(frames.shape) not in (2, 3):
        raise DataError(f"'{dataset}/{array}' is not an array of frames (a group, or not 2D/3D); "
                        "pick a (T, H, W) or (H, W) array with --array")
    label = f"{dataset}/{array}"
    if len(frames.shape) == 2:
        frames = zarr_store.read_checked(frames, label)[None]
    else:  # checked as read (a lost chunk is an error, never black frames); float16/uint16 outputs: their values
        frames = zarr_store.checked_frames(frames, label)
    suf = d.suffix.lower()
    if frames.shape[0] < 1:
        raise DataError(f"'{dataset}/{array}' holds no frames; nothing to export")
    if suf in (".tif", ".tiff"):
        return write_tiff_stack(frames, d)
    if suf not in (".mp4", ".gif"):
        raise DataError(f"'{d}': export writes .tif/.tiff (exact) or .mp4/.gif (preview)")
    if not 0.01 <= float(fps) <= 1000:
        raise DataError(f"--fps {fps:g} is outside 0.01..1000 frames per second; choose a playable rate")
    if min(frames.shape[1:]) < 2:
        raise DataError(f"'{dataset}/{array}' has {frames.shape[1]} x {frames.shape[2]} frames; a {suf} preview "
                        "needs at least 2 x 2 pixels: export them as .tif")
    left = None
    if side_by_side:
        src = (dict(g.attrs).get("provenance") or {}).get("input")
        if not src or not Path(src).exists():
            raise DataError(f"'{dataset}' does not name an existing input in its provenance; drop --side-by-side")
        left = zarr_store.checked_frames(zarr_store.open_group_readonly(src)["frames"], f"{src}/frames")
    return write_preview(frames, d, window=window, fps=fps, left=left)


def info(path: str | Path) -> dict:
    """Describe a dataset: arrays (shape, dtype, chunks, codecs) and attributes."""
    return zarr_store.describe(path)


