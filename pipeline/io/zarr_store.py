"""Zarr v3 storage: the only module that imports zarr.

Data contract (a Zarr v3 group)
-------------------------------
``frames``  (T, H, W) uint16 or float32, the camera video, chunked along T.
``darks``   (Nd, H, W) beam-off frames (optional when a calibration is given).
``flats``   (Nf, H, W) open-beam frames (optional when a calibration is given).
attributes ``pixel_pitch_mm`` and ``frame_rate_hz``.

Inputs are always opened read-only. Outputs are written into ``OUT.partial``
and renamed to ``OUT`` only when complete, so an interrupted run never leaves
a half-written ``OUT`` and an existing ``OUT`` survives until the new one is whole.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs

from ..errors import CalibrationError, DataError, OutputExistsError, brief  # noqa: F401 (re-exported)
from . import outputs
from .chunks import ChunkDecoder, ChunkEncoder, ChunkError  # noqa: F401 (ChunkError re-exported)

#: Group attribute of every group this project writes: a missing chunk file in it is a lost chunk (every chunk
#: is stored); in other tools' arrays (Zarr's default ``write_empty_chunks=False``) it is the fill value
WRITER_ATTR = outputs.WRITER_ATTR

FRAME_DTYPES = (np.uint8, np.uint16, np.uint32, np.int16, np.int32, np.float32, np.float64)


def loop_thread_cpu_s() -> float | None:
    """CPU seconds Zarr's event-loop thread has used so far (Linux: /proc/self/task), or None.

    Zarr v3 runs every array access as a coroutine on that one thread (the codecs go to a thread
    pool from there): the share of a run's work that does not spread over threads.
    """
    try:
        import zarr.core.sync as zsync

        loop = zsync.iothread[0]
        if loop is None:
            return None
        fields = Path(f"/proc/self/task/{loop.native_id}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except Exception:  # not Linux, no loop yet, another Zarr layout: unknown
        return None


def _codecs(codec: str, level: int):
    if codec == "zstd":
        return [zarr.codecs.ZstdCodec(level=level)]
    if codec == "lz4":
        return [zarr.codecs.BloscCodec(cname="lz4", clevel=max(level, 1), shuffle="shuffle")]
    if codec == "bitshuffle-lz4":  # the detector-data standard (HDF5 bitshuffle/LZ4 at synchrotrons), in Blosc
        return [zarr.codecs.BloscCodec(cname="lz4", clevel=max(level, 1), shuffle="bitshuffle")]
    return None


def _whole_frame_layout(array, folder) -> tuple | None:
    """``(kind, compressor)`` for a Zarr v3 array in a local folder with chunks of whole frames, no shards,
    little-endian bytes and at most one compressor (kind None: no compressor, 'blosc', 'zstd' or 'other'), for
    :mod:`pipeline.io.chunks`; None for any other layout."""
    meta = getattr(array, "metadata", None)
    if (not isinstance(array, zarr.Array) or folder is None or not Path(folder).is_dir()
            or getattr(meta, "zarr_format", None) != 3 or getattr(array, "shards", None) is not None
            or tuple(array.chunks[1:]) != tuple(array.shape[1:])):
        return None
    dtype = np.dtype(array.dtype)
    if dtype.byteorder == ">" or (dtype.byteorder == "=" and np.little_endian is False):
        return None
    codecs = list(meta.codecs)
    first = codecs.pop(0) if codecs else None
    endian = getattr(getattr(first, "endian", None), "value", getattr(first, "endian", None))
    if not isinstance(first, zarr.codecs.BytesCodec) or endian not in (None, "little") or len(codecs) > 1:
        return None
    comp = codecs[0] if codecs else None
    kind = (None if comp is None else "blosc" if isinstance(comp, zarr.codecs.BloscCodec)
            else "zstd" if isinstance(comp, zarr.codecs.ZstdCodec) else "other")
    return kind, comp


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
    from .packing import decode

    return Decoded(array, partial(decode, scale=float(rec.get("scale", 1.0)), offset=float(rec.get("offset", 0.0))))


class FrameWriter:
    """A frames array being written (the Zarr array itself for everything but writes): blocks of
    whole chunks go through :class:`ChunkEncoder` where it takes the array, all else through Zarr."""

    def __init__(self, array, root: Path | None = None):
        self._a = array
        self._dir = (Path(root) / array.path) if root is not None else None
        self._encoder = ChunkEncoder.for_array(array, self._dir, _whole_frame_layout(array, self._dir))

    def __setitem__(self, key, value):
        if (self._encoder is not None and isinstance(key, slice) and key.step in (None, 1)
                and isinstance(value, np.ndarray)):
            start, stop, _ = key.indices(self._a.shape[0])
            c = self._encoder.chunk
            whole = (stop - start) // c * c if start % c == 0 and value.shape[:1] == (stop - start,) else 0
            if whole and self._encoder.write(start, start + whole, value[:whole]):
                if whole < stop - start:  # the rest (the array's last, partial chunk): through Zarr
                    self._a[start + whole:stop] = value[whole:]
                return
        self._a[key] = value

    def __getitem__(self, key):
        return self._a[key]

    def __getattr__(self, name):
        if name.startswith("_"):  # not the array's: also what pickle and copy look up before __init__ ran
            raise AttributeError(name)
        return getattr(self._a, name)

    def __reduce__(self):  # to worker processes: the encoder (ctypes, buffers) is made again there
        return _frame_writer, (self._a, self._dir)


def _frame_writer(array, folder):
    w = FrameWriter.__new__(FrameWriter)
    w._a, w._dir = array, folder
    w._encoder = ChunkEncoder.for_array(array, folder, _whole_frame_layout(array, folder))
    return w


def _store_root(array) -> Path | None:
    """The local folder of the store ``array`` lives in (None for other stores)."""
    root = getattr(getattr(array, "store", None), "root", None)
    return Path(root) if root is not None else None


def written_by_us(root: Path | None) -> bool:
    """Whether the Zarr group at ``root`` was written by xray-pipeline (which stores every chunk).

    Its missing chunk files are lost chunks; in other tools' arrays, written with Zarr's default
    ``write_empty_chunks=False``, a missing chunk is the fill value by the Zarr spec.
    """
    if root is None:
        return False
    if outputs.marked(root):
        return True
    try:
        import json

        attrs = json.loads((root / "zarr.json").read_text()).get("attributes") or {}
    except (OSError, ValueError, AttributeError):
        return False
    src = str(attrs.get("source", ""))
    kind = str(attrs.get("kind", ""))
    return (WRITER_ATTR in attrs or "provenance" in attrs or "ingested" in attrs or kind.startswith("xray-pipeline")
            or src.startswith("xray-pipeline"))


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


def _irregular_metadata(path: Path) -> Path | None:
    """A ``zarr.json`` of the group or of its members (two levels down) that is not a regular file (a FIFO would
    block Zarr's read forever), or None. Chunk files are checked as they are read (:class:`FrameReader`)."""
    try:
        levels = [path] + [c for c in path.iterdir() if c.is_dir() and c.name != "c"]
        levels += [g for c in levels[1:] for g in c.iterdir() if g.is_dir() and g.name != "c"]
    except OSError:
        return None
    for d in levels:
        try:
            mode = os.stat(d / "zarr.json").st_mode
        except OSError:
            continue
        if not stat.S_ISREG(mode):
            return d / "zarr.json"
    return None


def _open_group(path: Path, what: str):
    if not path.exists():
        raise DataError(f"{what} '{path}' does not exist; check the path (create one with 'xray-pipeline simulate')")
    odd = _irregular_metadata(path) if path.is_dir() else None
    if odd is not None:
        raise DataError(f"{what} '{path}': '{odd}' is not a regular file; restore the dataset's metadata from a copy")
    try:
        g = zarr.open_group(str(path), mode="r")
    except Exception as exc:
        raise DataError(f"{what} '{path}' is not a readable Zarr group ({brief(exc, 120)}); "
                        "convert the recording with 'xray-pipeline ingest' or check the path") from None
    _check_members(g, path, what)
    return g


def _check_members(g, path: Path, what: str) -> None:
    """Every member's metadata read and checked once, so that damage is one line naming it, not a traceback
    wherever it is first touched: metadata that does not parse, an unknown codec, a fill value of the wrong type,
    a shape below zero or a chunk size below one."""
    name = ""
    try:
        for name, node in g.members(max_depth=None):
            if isinstance(node, zarr.Array):
                if any(int(v) < 0 for v in node.shape) or any(int(c) < 1 for c in node.chunks):
                    raise ValueError(f"shape {tuple(node.shape)}, chunks {tuple(node.chunks)}")
                node.metadata.to_dict()  # codecs and fill value as Zarr understands them
                _ = node.compressors, node.fill_value
    except Exception as exc:
        where = f"'{path}/{name}'" if name else f"'{path}'"
        raise DataError(f"{what} {where} has damaged Zarr metadata ({brief(exc, 120)}); restore its zarr.json from a "
                        "copy or write the dataset again") from None


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
    from ..validate import dataset_attrs

    return InputDataset(p, frames, out["darks"], out["flats"], dataset_attrs(dict(g.attrs), str(p)))


def check_output_path(output: str | Path, *, overwrite: bool, inputs=(), kind: str = "zarr") -> Path:
    """Refuse an output that exists (without ``overwrite``), overlaps an input, or would delete what is not ours
    (:func:`pipeline.io.outputs.check_output_path`)."""
    return outputs.check_output_path(output, overwrite=overwrite, inputs=inputs, kind=kind)


_TEMPORARY = re.compile(r".+\.[0-9a-f]{32}\.partial")  # ChunkEncoder.write's temporary chunk files


def _sweep_temporaries(folder: Path) -> int:
    """Delete the temporary chunk files (``NAME.<uuid>.partial``) a kill left in an output being written."""
    n = 0
    for f in Path(folder).rglob("*.partial"):
        if _TEMPORARY.fullmatch(f.name) and f.is_file():
            f.unlink(missing_ok=True)
            n += 1
    return n


def default_dims(name: str, ndim: int) -> tuple:
    """Dimension names of an array the project writes, from its name and rank.

    Frames ``(t, y, x)``; other stacks of frames ``(t_<name>, y, x)`` (darks, flats, edge: their own lengths, so
    that xarray opens a group's arrays as one dataset); maps ``(y, x)``; under ``mtf/`` frequencies ``(f,)`` and
    per-frame curves ``(t,)``; ghost curves ``(t,)``; any other 1D array its own name.
    """
    parts = name.split("/")
    leaf, group = parts[-1], (parts[-2] if len(parts) > 1 else "")
    if ndim == 3:
        return ("t" if leaf == "frames" else f"t_{leaf}", "y", "x")
    if ndim == 2:
        return ("t", "f") if group == "mtf" else ("y", "x")
    if ndim == 1:
        if group == "mtf":
            return ("f",) if leaf.startswith("frequencies") else ("t",)
        return ("t",) if group == "ghost" else (leaf,)
    return tuple(f"d{i}" for i in range(ndim))


class OutputWriter:
    """A new Zarr v3 group written at ``PATH.partial`` and moved to ``PATH`` on :meth:`commit`.

    Holds the output's lock (:class:`pipeline.io.outputs.OutputLock`) from before ``PATH.partial``
    is touched until :meth:`commit` or :meth:`abort`; ``lock``: one the caller already holds (a run,
    which also keeps ``PATH.progress``), released here all the same.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False, inputs=(), resume: bool = False, lock=None):
        self.final = check_output_path(path, overwrite=overwrite, inputs=inputs)
        self.partial = outputs.sidecar(self.final, ".partial")
        own = lock is None
        self.lock = lock if lock is not None else outputs.OutputLock(self.final)
        try:
            if resume and outputs.marked(self.partial):
                self.group = zarr.open_group(str(self.partial), mode="r+")
                return
            if self.partial.exists() or self.partial.is_symlink():
                if not outputs.ours(self.partial):  # checked above too; a folder that appeared since
                    raise OutputExistsError(f"'{self.partial}' exists and was not made by xray-pipeline; move it away")
                shutil.rmtree(self.partial)
            # marked as ours from its first metadata on (a kill before leaves an empty folder, also ours)
            self.partial.mkdir(parents=True)
            self.group = zarr.create_group(str(self.partial), zarr_format=3, attributes={WRITER_ATTR: "xray-pipeline"})
        except BaseException:
            if own:
                self.lock.release()
            raise

    def create(self, name: str, shape, dtype, *, chunks=None, codec: str = "bitshuffle-lz4", level: int = 1,
               fill_value=0, dims=None):
        """Create an array in the output group (chunks default to the whole array); replaces one of that name.

        ``dims``: its dimension names (Zarr v3 ``dimension_names``, what xarray and napari go by); default
        :func:`default_dims`.
        """
        if name in self.group:
            del self.group[name]
        return self.group.create_array(
            name, shape=tuple(shape), dtype=np.dtype(dtype), chunks=tuple(chunks or shape),
            compressors=_codecs(codec, level), fill_value=fill_value,
            dimension_names=tuple(dims) if dims is not None else default_dims(name, len(tuple(shape))),
            config={"write_empty_chunks": True},  # every chunk stored: a missing file means a lost chunk
        )

    def frames_target(self, array) -> FrameWriter:
        """``array`` of this output (a video: chunks of whole frames) for writing block by block; every
        chunk is stored, empty or not (also for an array opened again to resume: Zarr does not keep that
        setting), so a missing chunk file always means a lost chunk."""
        if hasattr(array, "with_config"):
            array = array.with_config({"write_empty_chunks": True})
        return FrameWriter(array, self.partial)

    def write(self, name: str, data, **kw):
        """Create an array holding ``data`` (small arrays: calibration maps, curves)."""
        data = np.asarray(data)
        arr = self.create(name, data.shape, data.dtype, **kw)
        arr[...] = data
        return arr

    def set_attrs(self, attrs: dict, path: str = ""):
        """Update the attributes of the group, or of a subgroup or array at ``path``."""
        node = self.group if not path else (self.group[path] if path in self.group else self.group.require_group(path))
        node.attrs.update(_jsonable(attrs))

    def commit(self) -> Path:
        """Move the finished group into place (an old output is moved aside first and deleted only after); chunk
        files a killed writer left half-written under temporary names go first."""
        try:
            _sweep_temporaries(self.partial)
            return outputs.replace(self.partial, self.final)
        finally:
            self.lock.release()

    def abort(self):
        """Remove the partial output (the final path is untouched)."""
        try:
            shutil.rmtree(self.partial, ignore_errors=True)
        finally:
            self.lock.release()


def _jsonable(obj):
    """Attributes as JSON: NaN and infinities (bare ``NaN``/``Infinity`` are not JSON) as the strings 'nan', 'inf',
    '-inf', also inside NumPy scalars and arrays."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


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


def read_array(path: str | Path, name: str) -> np.ndarray:
    """Read a whole (small) array of a group (checked: a lost chunk raises)."""
    g = _open_group(Path(path), "dataset")
    if name not in g:
        raise DataError(f"'{path}' has no array '{name}'")
    return read_checked(g[name], f"{path}/{name}", Path(path))


def set_attrs_in_place(path: str | Path, attrs: dict):
    """Add attributes to an existing group the project wrote itself (never an input)."""
    zarr.open_group(str(path), mode="r+").attrs.update(_jsonable(attrs))


def open_group_readonly(path: str | Path):
    """Any Zarr group, read-only (for export and tools)."""
    return _open_group(Path(path), "dataset")


def read_frame(path: str | Path, name: str, index: int) -> np.ndarray:
    """Read one frame ``index`` of a (T, H, W) array of a group."""
    g = _open_group(Path(path), "dataset")
    return checked(g[name], f"{path}/{name}", Path(path))[index]


def read_attrs(path: str | Path, group: str = "") -> dict:
    g = _open_group(Path(path), "dataset")
    node = g[group] if group else g
    return dict(node.attrs)


CALIBRATION_ARRAYS = ("dark", "gain", "bad_pixels")


def load_calibration(path: str | Path, frame_shape) -> tuple[dict, dict]:
    """Load a saved calibration group: ``(arrays, attrs)``; checks it matches ``frame_shape``."""
    p = Path(path)
    if not p.exists():
        raise CalibrationError(f"calibration '{p}' does not exist; create it with 'xray-pipeline calibrate'")
    g = _open_group(p, "calibration")
    missing = [n for n in CALIBRATION_ARRAYS if n not in g]
    if missing or g.attrs.get("kind") != "xray-pipeline calibration":
        raise CalibrationError(f"'{p}' is not a calibration made by 'xray-pipeline calibrate' "
                               f"(missing {', '.join(missing) or 'its kind attribute'})")
    arrays = {n: read_checked(g[n], f"{p}/{n}", p) for n in CALIBRATION_ARRAYS}
    if tuple(arrays["gain"].shape) != tuple(frame_shape):
        raise CalibrationError(f"calibration '{p}' is for {tuple(arrays['gain'].shape)} frames "
                               f"but the input frames are {tuple(frame_shape)}; use a matching calibration")
    return arrays, dict(g.attrs)


def describe(path: str | Path) -> dict:
    """A plain description of any Zarr group: arrays (shape, dtype, chunks, codecs) and attributes."""
    g = _open_group(Path(path), "dataset")
    out = {"path": str(path), "attributes": dict(g.attrs), "arrays": {}, "groups": []}

    def walk(node, prefix):
        for name, child in node.members():
            full = f"{prefix}{name}"
            if isinstance(child, zarr.Array):
                out["arrays"][full] = {
                    "shape": list(child.shape), "dtype": str(child.dtype), "chunks": list(child.chunks),
                    "compressors": [type(c).__name__ for c in (child.compressors or ())],
                    "nbytes": int(np.prod(child.shape)) * np.dtype(child.dtype).itemsize,
                }
            else:
                out["groups"].append(full)
                walk(child, full + "/")

    walk(g, "")
    return out
