"""Export: TIFF stacks (exact values), MP4/GIF previews (8-bit, intensity window), folders of PNG frames
(16-bit: exact, or windowed with the window written beside them) and PNG contact sheets (8-bit quick look)."""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError


def write_tiff_stack(frames, dest: Path, *, block: int = 16) -> Path:
    """Write every frame as one page of a (BigTIFF when large) multi-page TIFF, streamed."""
    import tifffile

    t = frames.shape[0]
    big = int(np.prod(frames.shape)) * np.dtype(frames.dtype).itemsize > 2**31
    tmp = dest.with_name(dest.name + ".partial")
    try:
        with tifffile.TiffWriter(tmp, bigtiff=big) as tw:
            for t0 in range(0, t, block):
                for f in np.asarray(frames[t0 : t0 + block]):
                    tw.write(f, contiguous=True, photometric="minisblack")  # one series of T pages
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)
    return dest


def _window(frames, window):
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
    else:
        t = frames.shape[0]
        idx = np.unique(np.linspace(0, t - 1, min(t, 8)).astype(int))
        sample = np.concatenate([np.asarray(frames[i], dtype=np.float64).ravel() for i in idx])
        sample = sample[np.isfinite(sample)]
        lo, hi = (np.percentile(sample, [0.5, 99.5]) if sample.size else (0.0, 1.0))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def _to8(f, lo, hi):
    g = (np.nan_to_num(np.asarray(f, dtype=np.float64), nan=lo) - lo) / (hi - lo)
    return (np.clip(g, 0, 1) * 255).round().astype(np.uint8)


def write_preview(frames, dest: Path, *, window=None, fps: float = 20.0, left=None, block: int = 16) -> Path:
    """An 8-bit preview video (``.mp4`` H.264 or ``.gif``); with ``left`` the raw input shown beside it."""
    import imageio.v3 as iio

    lo, hi = _window(frames, window)
    llo, lhi = _window(left, None) if left is not None else (0, 1)
    t = frames.shape[0]
    if left is not None and left.shape[0] != t:
        raise DataError("side-by-side needs the raw and processed videos to have the same number of frames")
    tmp = dest.with_name(dest.stem + ".partial" + dest.suffix)

    def blocks():
        for t0 in range(0, t, block):
            f = _to8(frames[t0 : t0 + block], lo, hi)
            if left is not None:
                f = np.concatenate([_to8(left[t0 : t0 + block], llo, lhi), f], axis=2)
            yield f

    if dest.suffix.lower() == ".mp4":  # streamed frame by frame
        with iio.imopen(tmp, "w", plugin="pyav") as out:
            out.init_video_stream("libx264", fps=fps)
            for f in blocks():
                h, w = f.shape[1:]
                for frame in f[:, : h - h % 2, : w - w % 2]:  # H.264 wants even sizes
                    out.write_frame(np.repeat(frame[..., None], 3, axis=-1))
    else:  # GIF: a short preview, written at once
        iio.imwrite(tmp, np.concatenate(list(blocks())), extension=".gif", duration=1000.0 / fps, loop=0)
    tmp.replace(dest)
    return dest


# ---- PNG frames, contact sheets, frame ranges -----------------------------------------------------------------

FRAMES_HINT = "--frames START:STOP[:STEP]"
#: The marker role of a folder of PNG frames written by export (the only folder ``overwrite`` replaces)
PNG_ROLE = "export-png"
#: Contact sheet: tiles per row at most, tiles shrunk (block mean, integer factor) to at most this many pixels
SHEET_COLUMNS = 4
SHEET_TILE = 512
SHEET_GAP = 2  # the separator between tiles, white


class ExportedPath(type(Path())):
    """The path an export wrote (a :class:`pathlib.Path`), with ``summary``: a dict saying what went in it
    (``format``, ``frames``: the source frame indices used, ``window``, and per format more)."""

    summary: dict | None = None


def _exported(path: Path, summary: dict) -> ExportedPath:
    p = ExportedPath(path)
    p.summary = {"path": str(path), **summary}
    return p


def parse_frames(text: str) -> slice:
    """``'START:STOP[:STEP]'`` (each part may be empty, Python slice semantics) as a slice."""
    parts = str(text).strip().split(":")
    if len(parts) not in (2, 3):
        raise DataError(f"--frames {text!r} is not a frame range; give {FRAMES_HINT} (e.g. 0:100:5, 10:, ::2)")
    try:
        vals = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise DataError(f"--frames {text!r}: START, STOP and STEP must be integers; give {FRAMES_HINT}") from None
    return slice(*vals)


def _range_text(start, stop, step) -> str:
    s = lambda v: "" if v is None else str(v)  # noqa: E731
    return f"{s(start)}:{s(stop)}" + ("" if step is None else f":{step}")


def frame_range(frames, t: int) -> range:
    """The source frame indices that ``frames`` (None: all; a slice; ``(start, stop[, step])``; or the text
    ``'START:STOP[:STEP]'``) selects of ``t`` frames, with Python slice semantics (negative START/STOP count
    from the end; STOP past the end is the end). Refused in one line (:class:`DataError` naming ``--frames``):
    a STEP below 1, a START outside the video, a range that selects nothing."""
    if frames is None:
        return range(t)
    if isinstance(frames, str):
        frames = parse_frames(frames)
    if isinstance(frames, slice):
        parts = (frames.start, frames.stop, frames.step)
    elif isinstance(frames, (tuple, list)) and 2 <= len(frames) <= 3:
        parts = tuple(frames) + (None,) * (3 - len(frames))
    else:
        raise DataError(f"{frames!r} is not a frame range; give {FRAMES_HINT} or (start, stop, step)")
    for v in parts:
        if v is not None and (isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))):
            raise DataError(f"--frames {_range_text(*parts)}: START, STOP and STEP must be integers, not {v!r}; "
                            f"give {FRAMES_HINT}")
    start, stop, step = (None if v is None else int(v) for v in parts)
    text = _range_text(start, stop, step)
    if step is not None and step < 1:
        raise DataError(f"--frames {text}: STEP must be a positive integer, not {step}; give {FRAMES_HINT}")
    if start is not None and not -t <= start < t:
        raise DataError(f"--frames {text}: START {start} is outside the {t} frames (0..{t - 1}, or -{t}..-1 from "
                        f"the end); give {FRAMES_HINT}")
    r = range(t)[slice(start, stop, step)]
    if len(r) == 0:
        raise DataError(f"--frames {text} selects none of the {t} frames; give {FRAMES_HINT} with STOP after START")
    return r


class Selected:
    """The frames ``indices`` (a range, step >= 1) of a frames array, indexed along T like an array of them."""

    def __init__(self, frames, indices: range):
        self._f = frames
        self.indices = indices
        self.shape = (len(indices),) + tuple(frames.shape[1:])
        self.dtype = np.dtype(frames.dtype)
        self.ndim = len(self.shape)

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return np.asarray(self._f[self.indices[int(key)]])
        if not isinstance(key, slice):
            raise TypeError(f"Selected frames take an integer or a slice, not {key!r}")
        sub = self.indices[key]
        if len(sub) == 0:
            return np.empty((0,) + self.shape[1:], self.dtype)
        lo, hi = min(sub[0], sub[-1]), max(sub[0], sub[-1]) + 1
        if abs(sub.step) == 1 or hi - lo <= 4 * len(sub):  # one read of the span, then the frames wanted
            return np.asarray(self._f[lo:hi])[np.asarray(sub) - lo]
        return np.stack([np.asarray(self._f[i]) for i in sub])


def selected(frames, indices: range):
    """``frames`` itself where ``indices`` is all of them, else a :class:`Selected` view."""
    return frames if indices == range(frames.shape[0]) else Selected(frames, indices)


def check_window(window):
    """A given intensity window as ``(lo, hi)`` floats (finite, hi > lo), or None."""
    if window is None:
        return None
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        raise DataError(f"--window {window!r}: give two numbers LO HI") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise DataError(f"--window {lo:g} {hi:g}: give finite LO < HI")
    return lo, hi


def robust_window(frames, *, max_frames: int = 64, max_values: int = 1 << 24):
    """The 0.5-99.5 % percentiles (NaN/Inf left out) of up to ``max_frames`` evenly spaced frames (all of a short
    video), their pixels subsampled evenly beyond ``max_values``; ``(0, 1)`` where nothing is finite."""
    t = frames.shape[0]
    idx = np.unique(np.linspace(0, t - 1, min(t, max_frames)).round().astype(int))
    stride = max(1, int(np.ceil(len(idx) * int(np.prod(frames.shape[1:])) / max_values)))
    sample = np.concatenate([np.asarray(frames[int(i)], dtype=np.float64).ravel()[::stride] for i in idx])
    sample = sample[np.isfinite(sample)]
    lo, hi = (float(v) for v in np.percentile(sample, [0.5, 99.5])) if sample.size else (0.0, 1.0)
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def to16(f, lo, hi):
    """Values to 16-bit codes: ``round(clip((v - lo) / (hi - lo), 0, 1) * 65535)``; NaN -> 0."""
    v = np.asarray(f, dtype=np.float64)
    code = np.rint(np.clip((v - lo) / (hi - lo), 0, 1) * 65535)
    code[np.isnan(v)] = 0
    return code.astype(np.uint16)


def png_digits(t: int) -> int:
    """Digits of the frame numbers in PNG file names: the frame count's width, at least 5."""
    return max(5, len(str(max(t - 1, 0))))


def check_png_dest(dest: Path, *, overwrite: bool, inputs=()) -> Path:
    """Refuse a PNG frames folder that would lose what it must not: an input (or inside one, or holding one), an
    existing path without ``overwrite``, or with it anything but a folder of PNG frames this export wrote."""
    from ..errors import OutputExistsError
    from . import outputs

    out = Path(dest).resolve()
    for ip in outputs.input_paths(*inputs):
        if out == ip or out in ip.parents or ip in out.parents:
            raise OutputExistsError(f"output '{dest}' overlaps the input '{ip}'; choose another output path")
    here = Path(os.path.abspath(dest))
    if here.exists() or here.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"output '{dest}' already exists; pass --overwrite to replace it or choose "
                                    "another path")
        if here.is_symlink() or not outputs.marked(here, PNG_ROLE):
            raise OutputExistsError(f"output '{dest}' is not a folder of PNG frames written by xray-pipeline export; "
                                    "--overwrite replaces only those: move it away or choose another path")
    return out


def write_png_frames(frames, dest: Path, *, indices: range, digits: int, window=None, overwrite: bool = False,
                     inputs=(), block: int = 16, **about) -> dict:
    """One PNG per frame, ``frame_<source index>.png``, in a new folder ``dest`` built beside it and renamed into
    place when whole. uint8/uint16 frames: their values exactly (8-/16-bit greyscale); anything else: 16-bit codes
    of :func:`to16` over ``window`` (given, or :func:`robust_window`), written to ``window.json`` with them.
    ``frames``: the selected frames (``len(indices)`` of them). Returns the summary."""
    import imageio.v3 as iio

    from . import outputs

    exact = np.dtype(frames.dtype) in (np.dtype(np.uint8), np.dtype(np.uint16))
    lo_hi = None if exact else (window if window is not None else robust_window(frames))
    final = Path(dest).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = outputs.OutputLock(final)
    try:
        check_png_dest(dest, overwrite=overwrite, inputs=inputs)  # again, under the lock
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}.partial")
        rng = [indices.start, indices.stop, indices.step]
        outputs.make_marked(tmp, PNG_ROLE, frames=rng, **about)
        try:
            if lo_hi is not None:
                (tmp / "window.json").write_text(json.dumps({
                    "window": [lo_hi[0], lo_hi[1]], "source_dtype": str(np.dtype(frames.dtype)), "png_bits": 16,
                    "value": "lo + code / 65535 * (hi - lo)", "code": "round(clip((v - lo) / (hi - lo), 0, 1) * 65535)",
                    "nan_code": 0, "frames": rng, **about}, indent=1) + "\n")
            t = frames.shape[0]
            for t0 in range(0, t, block):
                for k, f in enumerate(np.asarray(frames[t0 : t0 + block])):
                    img = f if exact else to16(f, *lo_hi)
                    iio.imwrite(tmp / f"frame_{indices[t0 + k]:0{digits}d}.png", np.ascontiguousarray(img),
                                extension=".png")
            outputs.replace(tmp, final)
        except BaseException:
            outputs.remove(tmp)
            raise
    finally:
        lock.release()
    return {"format": "png", "files": len(indices), "bits": 8 if np.dtype(frames.dtype) == np.uint8 else 16,
            "exact": exact, "window": None if lo_hi is None else [lo_hi[0], lo_hi[1]],
            "window_file": None if lo_hi is None else str(Path(dest) / "window.json")}


def raw_input(group, dataset, *, required: bool):
    """The raw input a processed output names in its provenance, as checked frames: ``(frames, src, why)``; frames
    None (and ``why`` saying why) where there is none to read. ``required``: that is an error (``--side-by-side``)."""
    from ..errors import PipelineError
    from . import zarr_store

    src = (dict(group.attrs).get("provenance") or {}).get("input")
    if not src or not Path(src).exists():
        if required:
            raise DataError(f"'{dataset}' does not name an existing input in its provenance; drop --side-by-side")
        return None, src, "no existing input named in its provenance"
    if required:
        return zarr_store.checked_frames(zarr_store.open_group_readonly(src)["frames"], f"{src}/frames"), src, None
    try:
        if not (Path(src) / "zarr.json").is_file():  # a recording run straight from the lab's files
            return _SourceFrames(src), src, None
        g = zarr_store.open_group_readonly(src)
        return zarr_store.checked_frames(g["frames"], f"{src}/frames"), src, None
    except (PipelineError, KeyError, OSError, ValueError, TypeError) as exc:
        return None, src, f"its input is not a Zarr group with frames ({type(exc).__name__})"


class _SourceFrames:
    """A recording's frames (TIFF, HDF5, raw, npy, video: :func:`pipeline.io.ingest.open_sources`) indexed like an
    array along time (an index, a slice, or a list of indices)."""

    def __init__(self, path):
        from .ingest import open_sources

        self._src = open_sources(path)["frames"]
        if self._src is None:
            raise ValueError("no frames")
        self.shape, self.dtype = tuple(self._src.shape), np.dtype(self._src.dtype)
        self.ndim = 3

    def __getitem__(self, key):
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
            return self[key][(slice(None),) + rest] if not isinstance(key, (int, np.integer)) else self[key][rest]
        if isinstance(key, (int, np.integer)):
            return self._src.read(int(key), int(key) + 1)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step == 1:
                return self._src.read(start, stop) if stop > start else np.empty((0,) + self.shape[1:], self.dtype)
            key = range(start, stop, step)
        return np.stack([self._src.read(int(i), int(i) + 1)[0] for i in key])


def _shrink(stack, f: int):
    """Block means of ``f`` x ``f`` pixels (NaN left out; the edge beyond a whole block dropped)."""
    stack = np.asarray(stack, dtype=np.float64)
    if f == 1:
        return stack
    k, h, w = stack.shape
    b = stack[:, : h // f * f, : w // f * f].reshape(k, h // f, f, w // f, f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN block: NaN
        return np.nanmean(b, axis=(2, 4))


def _label(tile, text):
    """Draw ``text`` in the tile's top-left corner (white on black) where Pillow can and the tile is large enough."""
    if tile.shape[0] < 24 or tile.shape[1] < 48:
        return tile
    try:
        from PIL import Image, ImageDraw

        im = Image.fromarray(tile)
        d = ImageDraw.Draw(im)
        box = d.textbbox((3, 2), text)
        d.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=0)
        d.text((3, 2), text, fill=255)
        return np.asarray(im)
    except Exception:  # annotation is a nicety: the indices are in the summary too
        return tile


def sheet_positions(t: int, n: int) -> np.ndarray:
    """Up to ``n`` positions evenly spaced over ``t`` frames, first and last included."""
    return np.unique(np.linspace(0, t - 1, min(t, n)).round().astype(int))


def write_contact_sheet(frames, dest: Path, *, labels, window=None, left=None) -> dict:
    """One 8-bit PNG: ``frames`` (a small stack) tiled row-major, :data:`SHEET_COLUMNS` to a row, a white
    :data:`SHEET_GAP`-pixel separator between tiles; with ``left`` (the raw frames, same shape) each row of tiles
    is two: raw above, processed below. Each video windowed on its own (processed: ``window`` or the robust
    percentiles of its tiles; raw: its tiles' robust percentiles). Written to a temporary name, then renamed."""
    import imageio.v3 as iio

    from . import outputs

    k, h, w = frames.shape
    f = max(1, int(np.ceil(max(h, w) / SHEET_TILE)))
    th, tw = h // f, w // f
    stacks = ([_shrink(left, f)] if left is not None else []) + [_shrink(frames, f)]
    wins = [robust_window(stacks[0])] if left is not None else []
    wins.append(window if window is not None else robust_window(stacks[-1]))
    band = len(stacks)
    cols = min(k, SHEET_COLUMNS)
    rows = int(np.ceil(k / cols))
    g = SHEET_GAP
    sheet = np.full((rows * band * th + (rows * band - 1) * g, cols * tw + (cols - 1) * g), 255, np.uint8)
    for j in range(k):
        r, c = divmod(j, cols)
        for b, (s, (lo, hi)) in enumerate(zip(stacks, wins)):
            y, x = (r * band + b) * (th + g), c * (tw + g)
            text = (f"raw #{labels[j]}" if b == 0 else f"#{labels[j]}") if band == 2 else f"#{labels[j]}"
            sheet[y : y + th, x : x + tw] = _label(_to8(s[j], lo, hi), text)
    for j in range(k, rows * cols):  # empty cells of the last row
        r, c = divmod(j, cols)
        sheet[r * band * (th + g) : r * band * (th + g) + band * th + (band - 1) * g, c * (tw + g) : c * (tw + g) + tw] = 0
    tmp = outputs.temporary(dest)
    try:
        iio.imwrite(tmp, sheet, extension=".png")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"format": "sheet", "grid": [rows * band, cols], "tile": [th, tw], "shrink": f,
            "size": list(sheet.shape), "window": list(wins[-1]), "raw_window": list(wins[0]) if band == 2 else None}
