"""Reading frames: values decoded from a packed code, :class:`FrameReader` (chunks checked as read, the
missing-chunk rules), and opening an input dataset (:func:`open_input`)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import zarr

from ...errors import DataError
from ..chunks import ChunkDecoder, ChunkError
from .layout import _open_group, _store_root, _whole_frame_layout, written_by_us

FRAME_DTYPES = (np.uint8, np.uint16, np.uint32, np.int16, np.int32, np.float32, np.float64)


class Decoded:
    """A stored frames array read back as float32 values: ``decode(array[key])`` for every read.

    For outputs stored as float16 or scaled uint16 (``output.dtype``); everything else
    (shape, chunks, path, attributes) is the array's.
    """

    def __init__(self, array, decode):
        self._a = array
        self._decode = decode
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, key):
        return self._decode(np.asarray(self._a[key]))

    def __getattr__(self, name):
        if name.startswith("_"):  # not the array's: also what pickle and copy look up before __init__ ran
            raise AttributeError(name)
        return getattr(self._a, name)

    def __reduce__(self):  # to worker processes (scheduler 'processes', dask.distributed)
        return Decoded, (self._a, self._decode)


def decoded_frames(array):
    """``array`` itself, or :class:`Decoded` where its attributes say it holds a packed code (float16, uint16)."""
    rec = dict(array.attrs).get("xray_pipeline_storage") or {}
    if rec.get("dtype") not in ("float16", "uint16") or np.dtype(array.dtype) != np.dtype(rec["dtype"]):
        return array
    from ..packing import decode

    return Decoded(array, partial(decode, scale=float(rec.get("scale", 1.0)), offset=float(rec.get("offset", 0.0))))


#: ``check_missing`` values: what a missing chunk file means
MISSING_RULES = {True: "lost (an error)", False: "the fill value (Zarr's write_empty_chunks=False)"}


class FrameReader:
    """Array-like view of a Zarr array for Dask; read errors and missing chunks name the frame range.

    ``check_missing``: a missing chunk file is a lost chunk (True) or the fill value (False);
    'auto' (default): lost where xray-pipeline wrote the group (:func:`written_by_us`), the fill
    value elsewhere. A chunk path that is not a regular file (a folder, a FIFO) is never opened:
    it is a corrupt chunk under either rule. ``root``: the store's folder (default: the array's).
    """

    def __init__(self, array, label: str, root: Path | None = None, *, check_missing="auto"):
        self._a = array
        self.shape = tuple(array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        self.label = label
        root = Path(root) if root is not None else _store_root(array)
        self._dir = (root / array.path) if root is not None else None
        self.check_missing = written_by_us(root) if check_missing == "auto" else bool(check_missing)
        self._decoder = ChunkDecoder.for_array(array, self._dir, _whole_frame_layout(array, self._dir))

    #: whether ``execution.on_error: skip`` may pass over its unreadable frames (the frames of a run, not a calibration)
    skippable = True

    @property
    def missing_rule(self) -> str:
        """What a missing chunk file of this array means (for messages and provenance)."""
        return MISSING_RULES[bool(self.check_missing)]

    def __getstate__(self):  # to worker processes: the decoder (closures) is made again there
        state = dict(self.__dict__)
        state["_decoder"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._decoder = ChunkDecoder.for_array(self._a, self._dir, _whole_frame_layout(self._a, self._dir))

    def _read(self, start: int, stop: int, out=None) -> np.ndarray:
        if self._decoder is not None and 0 <= start < stop <= self.shape[0]:
            return self._decoder.read(start, stop, out)
        data = np.asarray(self._a[start:stop])
        if out is None:
            return data
        np.copyto(out, data)
        return out

    def _where(self, key):
        t = key[0] if isinstance(key, tuple) else key
        if t is Ellipsis:
            t = slice(None)
        if isinstance(t, slice):
            start, stop, _ = t.indices(self.shape[0])
            return f"frames {start}-{stop - 1}", start, stop
        t = int(t) + (self.shape[0] if int(t) < 0 else 0)
        return f"frame {t}", t, t + 1

    def _missing(self, start, stop):
        """Chunk files that should hold frames start..stop-1 but are not regular files: ``[(i, key, why)]``.

        ``i``: the chunk index along T. Absent files count only where missing chunks are lost
        (``check_missing``); a folder, FIFO or device at a chunk path always counts (never opened).
        Checked for unsharded Zarr v3 arrays in a local folder.
        """
        if (self._dir is None or not self._dir.is_dir() or self.ndim == 0
                or self._a.metadata.zarr_format != 3 or getattr(self._a, "shards", None) is not None):
            return []
        meta = self._a.metadata
        enc = meta.chunk_key_encoding
        ct = self._a.chunks
        grid = [range(int(np.ceil(s / c))) for s, c in zip(self.shape[1:], ct[1:])]
        out = []
        for i in range(start // ct[0], (stop - 1) // ct[0] + 1):
            for rest in np.ndindex(*[len(g) for g in grid]):
                key = enc.encode_chunk_key((i, *rest))
                try:
                    mode = os.stat(self._dir / key).st_mode
                except FileNotFoundError:
                    if self.check_missing:
                        out.append((i, key, "chunk file missing"))
                    continue
                except OSError as exc:
                    out.append((i, key, f"chunk file unreadable ({type(exc).__name__})"))
                    continue
                if not stat.S_ISREG(mode):
                    out.append((i, key, "chunk path is not a regular file"))
        return out

    def __getitem__(self, key):
        where, start, stop = self._where(key)
        if start >= stop:
            return np.asarray(self._a[key])
        whole = key if not isinstance(key, tuple) else (key[0] if len(key) == 1 else None)
        if whole is Ellipsis or (isinstance(whole, slice) and whole.step in (None, 1)):
            data, bad = self.read_block(start, stop, skip=False)
            return data
        data, _ = self.read_block(start, stop, skip=False)  # checked; then the rest of the key on the frames read
        rest = key[1:] if isinstance(key, tuple) else ()
        first = key[0] if isinstance(key, tuple) else key
        if isinstance(first, slice):
            return data[(slice(None, None, first.step),) + tuple(rest)]
        return data[(0,) + tuple(rest)]

    def _bad_chunks(self, start, stop):
        """Frame ranges [a, b) of the input chunks in start..stop-1 that are missing or do not decode."""
        ct = self._a.chunks[0]
        missing = {}
        for i, _, why in self._missing(start, stop):
            missing.setdefault(i, why)
        bad = []
        for i in range(start // ct, (stop - 1) // ct + 1):
            a, b = max(i * ct, start), min((i + 1) * ct, stop)
            if i in missing:
                bad.append((a, b, missing[i]))
                continue
            try:
                self._a[a:b]
            except Exception as exc:
                bad.append((a, b, f"chunk does not decode ({type(exc).__name__})"))
        return bad

    def read_block(self, start: int, stop: int, *, skip: bool, out=None):
        """Frames start..stop-1 and the list of unreadable ranges ``[(a, b, why), ...]``.

        A corrupt or missing chunk raises :class:`ChunkError` naming its frames, or with ``skip``
        its frames come back as NaN (float32) and are listed. ``out``: a C-contiguous array of the
        block's shape and the input's dtype (the GPU engine's pinned buffers) that a readable block
        is read into and returned as; a block with unreadable frames comes back in a new array.
        """
        if out is not None and not (isinstance(out, np.ndarray) and out.flags.c_contiguous and out.dtype == self.dtype
                                    and out.shape == (stop - start,) + self.shape[1:]):
            raise ValueError(f"read_block: out must be a C-contiguous {self.dtype} array of shape "
                             f"{(stop - start,) + self.shape[1:]}")
        failed = bool(self._missing(start, stop))  # checked first: a FIFO at a chunk path would block a read
        if not failed:
            try:
                data = self._read(start, stop, out)
            except Exception:
                failed = True
        bad = self._bad_chunks(start, stop) if failed else []
        if failed and not bad:  # the block failed but every chunk alone reads through Zarr: a transient error
            data = np.asarray(self._a[start:stop])
        if not bad:
            return data, []
        if not skip:
            a, b, why = bad[0]
            what = f"frames {a}-{b - 1} of" if self.ndim == 3 else f"rows {a}-{b - 1} of"
            if self.skippable:
                fix = ("restore the chunk from a copy, re-ingest the recording, or set execution.on_error: skip to "
                       "fill them with NaN and go on")
            else:
                fix = "restore the chunk from a copy or make the array again"
            rule = f" (missing chunks here are {self.missing_rule})" if why == "chunk file missing" else ""
            raise ChunkError(f"{what} {self.label}: {why}{rule}; {fix}")
        out = np.full((stop - start,) + self.shape[1:], np.nan, dtype=np.float32)
        good = np.ones(stop - start, dtype=bool)
        for a, b, _ in bad:
            good[a - start : b - start] = False
        ct = self._a.chunks[0]
        for i in range(start // ct, (stop - 1) // ct + 1):
            a, b = max(i * ct, start), min((i + 1) * ct, stop)
            if good[a - start]:
                out[a - start : b - start] = self._a[a:b]
        return out, [(a, b - 1, why) for a, b, why in bad]


@dataclass
class InputDataset:
    """An opened input dataset (read-only)."""

    path: Path
    frames: object
    darks: object | None
    flats: object | None
    attrs: dict

    @property
    def shape(self):
        return tuple(self.frames.shape)

    def reader(self, *, check_missing="auto") -> FrameReader:
        """The frames, checked as read (:class:`FrameReader`; ``check_missing``: True, False or 'auto')."""
        return FrameReader(self.frames, f"{self.path}/frames", root=self.path, check_missing=check_missing)

    def array_reader(self, name: str, *, check_missing="auto") -> FrameReader:
        """``darks`` or ``flats``, checked as read like the frames."""
        return FrameReader(getattr(self, name), f"{self.path}/{name}", root=self.path, check_missing=check_missing)

    @property
    def has_truth(self) -> bool:
        """True for simulated data with lag-free truth frames of the same shape."""
        return self.truth_frames is not None and "open_level" in self.truth_attrs

    @property
    def truth_frames(self):
        g = zarr.open_group(str(self.path), mode="r")
        if "truth" in g and "frames" in g["truth"] and tuple(g["truth"]["frames"].shape) == self.shape:
            return g["truth"]["frames"]
        return None

    @property
    def truth_attrs(self) -> dict:
        g = zarr.open_group(str(self.path), mode="r")
        return dict(g["truth"].attrs) if "truth" in g else {}


def open_input(path: str | Path) -> InputDataset:
    """Open and validate an input dataset (read-only).

    Raises :class:`DataError` naming the problem: missing path, no ``frames``,
    wrong dimensionality or dtype, or darks/flats whose frame size differs.
    """
    p = Path(path)
    g = _open_group(p, "input")
    if "frames" not in g:
        raise DataError(f"input '{p}' has no 'frames' array; a dataset needs frames (T, H, W)")
    frames = decoded_frames(g["frames"])  # an output stored as float16 or uint16 reads back as its values
    if frames.ndim != 3:
        raise DataError(f"input '{p}/frames' has shape {tuple(frames.shape)}; expected (T, H, W)")
    if min(frames.shape[1:]) < 1:
        raise DataError(f"input '{p}/frames' has empty frames {tuple(frames.shape[1:])}; nothing to process")
    if np.dtype(frames.dtype) not in [np.dtype(d) for d in FRAME_DTYPES]:
        raise DataError(f"input '{p}/frames' has dtype {frames.dtype}; expected uint16 or float32")
    out = {}
    for name in ("darks", "flats"):
        a = g[name] if name in g else None
        if a is not None:
            if a.ndim != 3 or tuple(a.shape[1:]) != tuple(frames.shape[1:]):
                raise DataError(
                    f"input '{p}/{name}' has shape {tuple(a.shape)} but frames are {tuple(frames.shape)}; "
                    f"{name} must be (N, {frames.shape[1]}, {frames.shape[2]})"
                )
            if a.shape[0] < 1:
                raise DataError(f"input '{p}/{name}' holds no frames; record at least one or drop the array")
        out[name] = a
    from ...validate import dataset_attrs

    return InputDataset(p, frames, out["darks"], out["flats"], dataset_attrs(dict(g.attrs), str(p)))


def checked(array, label: str, root: Path | None = None) -> FrameReader:
    """``array`` read through :class:`FrameReader`: missing (in this project's groups) or corrupt chunks raise
    :class:`ChunkError` naming ``label`` and the frames, never read as zeros."""
    r = FrameReader(array, label, root=root)
    r.skippable = False
    return r


def checked_frames(array, label: str, root: Path | None = None):
    """:func:`checked`, read back as values where the array holds a packed code (:func:`decoded_frames`)."""
    r = checked(array, label, root)
    packed = decoded_frames(array)
    return Decoded(r, packed._decode) if isinstance(packed, Decoded) else r


def read_checked(array, label: str, root: Path | None = None) -> np.ndarray:
    """The whole of ``array`` (any number of dimensions), checked as :func:`checked` reads it."""
    if array.ndim == 0:
        return np.asarray(array[...])
    return checked(array, label, root)[:]
