"""Recordings as cameras and beamlines write them -> the Zarr data contract, streamed (never loaded whole).

Sources (by suffix, or a folder of numbered TIFFs):

* ``.tif/.tiff``: multi-page TIFF (tifffile), one frame per page.
* a folder: numbered single-frame TIFFs, in natural order (``f2.tif`` before ``f10.tif``).
* ``.h5/.hdf5/.nxs``: HDF5 / NeXus (h5py): a 3D dataset (``dataset=`` or found: NXtomo's
  ``/entry/data/data`` or the largest 3D dataset); with an NXtomo ``image_key`` next to it
  (0 projection, 1 flat, 2 dark) it is split into frames, flats and darks.
* ``.raw/.bin``: raw binary: ``raw_dtype``, ``raw_shape`` (T, H, W or H, W with T from the file
  size) and ``header`` bytes.
* ``.mp4/.avi/.mov/.mkv``: video (PyAV through imageio), converted to grey.
* ``.npy``: NumPy array (memory-mapped).

Every frame must have the same shape and dtype: the first that differs is rejected with its index. Nothing is
shortened or made up: a truncated or damaged file (a TIFF whose chain of pages breaks, or whose pages' data run past
its end), a colour (RGB) TIFF, an unknown NXtomo ``image_key``, a FIFO or device, a link out of a TIFF folder are
refused in one line that says the fix; image_key 3 (invalid) frames are left out, with a warning and
``image_key_left_out`` in the attributes. A source's ``read`` raises only DataError and gives exactly the frames asked.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import stat
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..errors import brief as _why
from .tags import as_attrs, nexus_metadata, tiff_metadata

VIDEO = (".mp4", ".avi", ".mov", ".mkv", ".webm")
HDF5 = (".h5", ".hdf5", ".nxs", ".nx5")
RAW = (".raw", ".bin", ".dat")


@dataclass
class Source:
    """A stack of frames readable in ranges."""

    label: str
    shape: tuple
    dtype: np.dtype
    read: object  # callable(t0, t1) -> ndarray (t1 - t0, H, W)
    attrs: dict = field(default_factory=dict)


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' * (n != 1)}"


def _file_kind(mode: int) -> str:
    """What a ``st_mode`` that is not a regular file or folder is, in words."""
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder")):
        if test(mode):
            return name
    return "special file"


class _ChainErrors(logging.Handler):
    """What tifffile logs (instead of raising) while it walks a file's chain of pages (IFDs): a cut file's chain ends
    at an offset past its end, and tifffile just stops there, with the pages it found."""

    def __init__(self):
        super().__init__(logging.WARNING)  # older tifffile logged these as warnings, newer as errors
        self.errors, self.thread = [], threading.get_ident()

    def emit(self, record):
        msg = record.getMessage()
        # the chain's messages (this thread's), not odd tags, metadata or ScanImage's virtual frames (tifffile falls
        # back to the real pages)
        if record.thread == self.thread and "TiffPages" in msg and "virtual" not in msg:
            self.errors.append(msg)


def _open_tiff(path: Path):
    """``(TiffFile, number of pages)``; refuses a file whose page chain breaks, or that holds fewer (or more) pages
    than its own metadata (tifffile's shape, ImageJ's ``images=``) lists."""
    import tifffile

    log, chain = logging.getLogger("tifffile"), _ChainErrors()
    level = log.level
    log.setLevel(min(log.getEffectiveLevel(), logging.WARNING))  # heard even where tifffile's log is silenced
    log.addHandler(chain)
    tif = None
    try:
        tif = tifffile.TiffFile(path)
        n = len(tif.pages)  # walks the whole chain
        claimed = None
        if tif.is_shaped or tif.is_imagej:
            claimed = sum(s.size // max(1, s.keyframe.size) for s in tif.series)
    except Exception as exc:
        if tif is not None:
            tif.close()
        raise DataError(f"'{path}': cannot read it as TIFF ({_why(exc)}); it is truncated, damaged or not a TIFF: "
                        "re-copy or re-export it") from None
    finally:
        log.removeHandler(chain)
        log.setLevel(level)
    problem = None
    if chain.errors:
        read = f"{n} of the {claimed} pages" if claimed and claimed != n else _count(n, "page")
        problem = (f"'{path}' is truncated or damaged: only {read} could be read (its chain of pages breaks there); "
                   "re-copy or re-export the file")
    elif claimed is not None and claimed != n:
        problem = (f"'{path}' holds {_count(n, 'page')} but its metadata lists {claimed}: it is truncated or damaged "
                   "(or an ImageJ stack over 4 GB); re-copy the file, or re-save it as a TIFF sequence")
    if problem:
        tif.close()
        raise DataError(problem)
    return tif, n


def _tiff_page(label: str, tif, i: int):
    """Page ``i`` of ``tif``, with all its data inside the file (checked before any pixel is read: a cut file's last
    page would read short, or as zeros)."""
    try:
        pg = tif.pages[i]
    except Exception as exc:
        raise DataError(f"{label}: page {i} cannot be read ({_why(exc)}); the file is damaged: re-copy or "
                        "re-export it") from None
    end = max((o + c for o, c in zip(pg.dataoffsets, pg.databytecounts) if c), default=0)
    if end > tif.filehandle.size:
        raise DataError(f"{label}: page {i}'s data end at byte {end}, past the end of the {tif.filehandle.size}-byte "
                        "file: it is truncated; re-copy or re-export it")
    return pg


def _single_channel(label: str, pg) -> None:
    """Refuse a colour or multi-sample page (RGB, RGBA, ...): the pipeline takes grey frames."""
    import tifffile

    if pg.samplesperpixel == 1:
        return
    photometric = getattr(pg.photometric, "name", pg.photometric)
    hint = ""
    if pg.planarconfig == tifffile.PLANARCONFIG.SEPARATE and pg.photometric == tifffile.PHOTOMETRIC.RGB:
        # how tifffile.imwrite stores a (3, H, W) stack unless told photometric='minisblack'
        hint = f" (if they are {pg.shape[0]} greyscale frames, write them with photometric='minisblack')"
    raise DataError(f"{label} holds {photometric} images {tuple(pg.shape)} ({pg.samplesperpixel} samples per pixel); "
                    f"the pipeline takes single-channel frames: convert them to greyscale first{hint}")


def _pixels(label: str, pg, i: int) -> np.ndarray:
    """Page ``i``'s pixels; a decoding failure is a DataError naming the page."""
    try:
        return pg.asarray()
    except Exception as exc:
        raise DataError(f"{label}: page {i} cannot be read ({_why(exc)}); the file is damaged: re-copy or "
                        "re-export it") from None


def _tiff_stack(path: Path) -> Source:
    import tifffile

    tif, n = _open_tiff(path)
    label = f"'{path}'"
    try:
        first = _tiff_page(label, tif, 0)
        shape, dtype = tuple(first.shape), np.dtype(first.dtype)
        if (n == 1 and first.samplesperpixel > 1 and first.photometric == tifffile.PHOTOMETRIC.MINISBLACK
                and first.planarconfig == tifffile.PLANARCONFIG.SEPARATE and tuple(tif.series[0].shape) == shape):
            # a short greyscale stack that TIFF stores as one page of planar samples: the planes are the frames
            # (the same planes labelled RGB are a colour picture, refused below)
            a = _pixels(label, first, 0)
            tags = as_attrs(tiff_metadata(tif))
            tif.close()
            return Source(str(path), tuple(a.shape), a.dtype, lambda t0, t1: a[t0:t1], tags)
        _single_channel(label, first)
        if len(shape) != 2:
            raise DataError(f"'{path}': page 0 has shape {shape}; expected single-channel 2D frames")
        _tiff_page(label, tif, n - 1)  # a cut file is refused now, not after most frames are written
    except Exception as exc:
        tif.close()  # refused: nothing will read it
        if isinstance(exc, DataError):
            raise
        raise DataError(f"'{path}': cannot read it as TIFF ({_why(exc)}); it is damaged: re-copy or "
                        "re-export it") from None

    def read(t0, t1):
        out = np.empty((t1 - t0,) + shape, dtype=dtype)
        for i in range(t0, t1):
            pg = _tiff_page(label, tif, i)
            if tuple(pg.shape) != shape or np.dtype(pg.dtype) != dtype:
                raise DataError(f"'{path}': page {i} is {tuple(pg.shape)} {pg.dtype}, page 0 is {shape} {dtype}; "
                                "all frames must match")
            out[i - t0] = _pixels(label, pg, i)
        return out

    return Source(str(path), (n,) + shape, dtype, read, as_attrs(tiff_metadata(tif)))


def _tiff_file(path: Path, i: int) -> np.ndarray:
    """The one frame of a folder's ``i``-th TIFF, checked like a stack's pages."""
    label = f"'{path}' (frame {i})"
    tif, n = _open_tiff(path)
    with tif:
        if n != 1:
            raise DataError(f"{label} holds {n} pages; a folder takes one frame per file: split it, or ingest it alone")
        pg = _tiff_page(label, tif, 0)
        _single_channel(label, pg)
        return _pixels(label, pg, 0)


def _folder_files(path: Path) -> list:
    """The folder's .tif files in natural order: regular files only, links only to files inside the folder."""
    root = Path(os.path.realpath(path))
    files = []
    for p in path.iterdir():
        if p.suffix.lower() not in (".tif", ".tiff"):
            continue
        target = Path(os.path.realpath(p))
        if p.is_symlink() and not target.is_relative_to(root):
            raise DataError(f"'{p}' is a link to '{target}', outside the folder '{path}'; remove the link or copy the "
                            "file in")
        try:
            mode = p.stat().st_mode  # stat does not open: a FIFO would block an open forever
        except OSError as exc:
            raise DataError(f"'{p}' cannot be read as a file ({_why(exc)}); remove it from the folder") from None
        if not stat.S_ISREG(mode):
            raise DataError(f"'{p}' is a {_file_kind(mode)}, not a regular file; remove it from the folder")
        files.append(p)
    return sorted(files, key=_natural_key)


def _tiff_folder(path: Path) -> Source:
    files = _folder_files(path)
    if not files:
        raise DataError(f"folder '{path}' holds no .tif files")
    first = _tiff_file(files[0], 0)
    shape, dtype = first.shape, first.dtype
    if first.ndim != 2:
        raise DataError(f"'{files[0]}' has shape {first.shape}; expected one 2D frame per file")

    def read(t0, t1):
        out = np.empty((t1 - t0,) + shape, dtype=dtype)
        for i in range(t0, t1):
            a = _tiff_file(files[i], i)
            if a.shape != shape or a.dtype != dtype:
                raise DataError(f"'{files[i].name}' (frame {i}) is {a.shape} {a.dtype}, the first is {shape} {dtype}; "
                                "all frames must match")
            out[i - t0] = a
        return out

    tif, _ = _open_tiff(files[0])
    with tif:
        tags = as_attrs(tiff_metadata(tif))
    return Source(str(path), (len(files),) + shape, np.dtype(dtype), read, tags)


def _npy(path: Path) -> Source:
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise DataError(f"'{path}': cannot read it as a .npy array ({_why(exc)}); it is truncated, damaged or not "
                        "an array: re-save it with numpy.save") from None
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise DataError(f"'{path}' holds shape {a.shape}; expected (T, H, W)")
    return Source(str(path), a.shape, a.dtype, lambda t0, t1: np.asarray(a[t0:t1]))


def _raw(path: Path, dtype, shape, header: int) -> Source:
    if dtype is None or shape is None:
        raise DataError(f"raw file '{path}' needs --raw-dtype and --raw-shape (T H W or H W)")
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        raise DataError(f"--raw-dtype '{dtype}' is not a NumPy dtype; use e.g. <u2 (little-endian uint16)") from None
    if dt.kind not in "uif" or dt.itemsize == 0:
        raise DataError(f"--raw-dtype '{dtype}' is not a number type of camera pixels; use e.g. <u2 (uint16), <f4")
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise DataError(f"--raw-shape {tuple(shape)} must be T,H,W or H,W with every size >= 1")
    if header < 0 or header > path.stat().st_size:
        raise DataError(f"--header {header} lies outside the {path.stat().st_size}-byte file '{path}'")
    size = path.stat().st_size - header
    if len(shape) == 2:
        per = dt.itemsize * shape[0] * shape[1]
        if size % per:
            raise DataError(f"raw file '{path}': {size} bytes after the header are not a whole number of "
                            f"{shape[0]} x {shape[1]} {dt} frames; check --raw-shape, --raw-dtype and --header")
        shape = (size // per,) + tuple(shape)
    if shape[0] < 1 or size == 0:
        raise DataError(f"raw file '{path}' holds no frames ({size} bytes after the header); check the file and "
                        "--header")
    need = int(np.prod(shape)) * dt.itemsize
    if need > size:
        raise DataError(f"raw file '{path}' holds {size} bytes after the header, {tuple(shape)} {dt} needs {need}")
    mm = np.memmap(path, dtype=dt, mode="r", offset=header, shape=tuple(shape))
    return Source(str(path), tuple(shape), dt, lambda t0, t1: np.asarray(mm[t0:t1]))


def _video(path: Path) -> Source:
    import imageio.v3 as iio

    n = 0
    try:
        for frame in iio.imiter(path, plugin="pyav"):
            n += 1
            shape = frame.shape[:2]
    except Exception as exc:
        raise DataError(f"cannot decode video '{path}' at frame {n} ({_why(exc)}); re-encode it "
                        "(e.g. ffmpeg -i in.mp4 out.mp4)") from None
    if n == 0:
        raise DataError(f"video '{path}' has no frames")

    def grey(f):
        if f.ndim == 3:
            return (f[..., :3].astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32)).round().astype(np.uint8) \
                if f.shape[-1] >= 3 else f[..., 0]
        return f

    state = {"it": None, "pos": 0}

    def frame(i):
        """The next decoded frame, ``i``; a decoder error, an early end or another size is a DataError naming it."""
        try:
            f = grey(next(state["it"]))
        except StopIteration:
            why = f"the video ends after {i} frames, {n} were counted"
        except Exception as exc:
            why = _why(exc)
        else:
            if f.shape == tuple(shape):
                return f
            why = f"it is {f.shape[:2]}, frame 0 is {tuple(shape)}"
        state["it"] = None  # start afresh on the next read
        raise DataError(f"video '{path}': frame {i} cannot be decoded ({why}); re-encode it "
                        "(e.g. ffmpeg -i in.mp4 out.mp4)")

    def read(t0, t1):
        if state["it"] is None or state["pos"] != t0:  # sequential decoding; restart if asked to go back
            state["it"], state["pos"] = iio.imiter(path, plugin="pyav"), 0
            for i in range(t0):
                frame(i)
            state["pos"] = t0
        out = np.empty((t1 - t0,) + tuple(shape), dtype=np.uint8)
        for i in range(t1 - t0):
            out[i] = frame(t0 + i)
        state["pos"] = t1
        return out

    return Source(str(path), (n,) + tuple(shape), np.dtype(np.uint8), read)


def _hdf5(path: Path, dataset: str | None) -> dict:
    import h5py

    try:
        f = h5py.File(path, "r")
    except Exception as exc:
        raise DataError(f"'{path}': cannot open it as HDF5 ({_why(exc)}); it is truncated, damaged or not HDF5: "
                        "re-copy it") from None
    try:
        return _hdf5_sources(f, path, dataset)
    except DataError:
        raise
    except Exception as exc:  # h5py's errors on a damaged file (OSError, KeyError, ...)
        raise DataError(f"'{path}': cannot read it ({_why(exc)}); the HDF5 file is damaged: re-copy it") from None


def _hdf5_sources(f, path: Path, dataset: str | None) -> dict:
    import h5py

    if dataset is None:
        for cand in ("/entry/data/data", "/entry/instrument/detector/data", "/entry1/data/data"):
            if cand in f and f[cand].ndim == 3:
                dataset = cand
                break
    if dataset is None:
        found = []
        f.visititems(lambda name, obj: found.append((obj.size, name)) if isinstance(obj, h5py.Dataset) and obj.ndim == 3 else None)
        if not found:
            raise DataError(f"'{path}' has no 3D dataset; name one with --dataset")
        dataset = "/" + max(found)[1]
    if dataset not in f:
        raise DataError(f"'{path}' has no dataset '{dataset}'")
    d = f[dataset]
    if d.ndim != 3:
        raise DataError(f"'{path}:{dataset}' has shape {d.shape}; expected (T, H, W)")
    own = dataset.rsplit("/", 1)[0] + "/image_key"
    if own in f and isinstance(f[own], h5py.Dataset) and f[own].shape != (d.shape[0],):
        # ignoring it would pass its darks and flats off as projections
        raise DataError(f"'{path}:{own}' has {f[own].size} entries but '{dataset}' has {d.shape[0]} frames; "
                        "fix the image_key (one entry a frame)")
    key = None
    for cand in (own, "/entry/instrument/detector/image_key", "/entry/data/image_key"):
        if cand in f and f[cand].shape == (d.shape[0],):
            key = np.asarray(f[cand][...])
            break
    attrs = {}
    if key is not None:
        values, counts = np.unique(key, return_counts=True)
        unknown = [(v, c) for v, c in zip(values.tolist(), counts.tolist()) if v not in (0, 1, 2, 3)]
        if unknown:
            listed = ", ".join(f"{v} ({_count(c, 'frame')})" for v, c in unknown)
            raise DataError(f"'{path}:{cand}' holds image_key values {listed}; NXtomo's are 0 projection, 1 flat, "
                            "2 dark, 3 invalid: fix the key")
        left = int(np.count_nonzero(key == 3))
        if left:  # NXtomo's "invalid" frames are left out, but said: a warning, and in the output's attributes
            attrs["image_key_left_out"] = {"3": left}
            warnings.warn(f"'{path}': {_count(left, 'frame')} with image_key 3 (invalid) are left out", stacklevel=2)
    attrs.update(as_attrs(nexus_metadata(f, dataset)))
    label = f"{path}:{dataset}"

    def subset(idx, name):
        idx = np.asarray(idx)
        if idx.size == 0:
            return None
        contiguous = np.all(np.diff(idx) == 1)

        def read(t0, t1):
            if contiguous:
                return np.asarray(d[idx[0] + t0 : idx[0] + t1])
            return np.asarray(d[np.asarray(idx[t0:t1])])

        return Source(f"{label} ({name})", (idx.size,) + d.shape[1:], np.dtype(d.dtype), read, attrs)

    if key is None:
        return {"frames": subset(np.arange(d.shape[0]), "frames"), "darks": None, "flats": None}
    return {"frames": subset(np.nonzero(key == 0)[0], "image_key 0"),
            "flats": subset(np.nonzero(key == 1)[0], "image_key 1"),
            "darks": subset(np.nonzero(key == 2)[0], "image_key 2")}


def open_sources(path: str | Path, *, dataset=None, raw_dtype=None, raw_shape=None, header: int = 0) -> dict:
    """``{'frames': Source, 'darks': Source|None, 'flats': Source|None}`` for any supported recording
    (``file.h5::/entry/data/data`` names an HDF5 file's dataset)."""
    if "::" in str(path) and dataset is None:
        path, dataset = str(path).split("::", 1)
    p = Path(path)
    if not p.exists():
        raise DataError(f"'{p}' does not exist; check the path")
    mode = p.stat().st_mode  # stat, not open: opening a FIFO blocks until something writes to it
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise DataError(f"'{p}' is a {_file_kind(mode)}, not a regular file; copy the recording into a file first")
    if p.is_dir():
        if (p / "zarr.json").is_file() or (p / ".zgroup").is_file() or (p / ".zarray").is_file():
            raise DataError(f"'{p}' is already a Zarr dataset; use it directly")
        return {"frames": _guarded(_tiff_folder(p)), "darks": None, "flats": None}
    suf = p.suffix.lower()
    if suf in HDF5:
        return {k: _guarded(v) for k, v in _hdf5(p, dataset).items()}
    if suf in (".tif", ".tiff"):
        src = _tiff_stack(p)
    elif suf == ".npy":
        src = _npy(p)
    elif suf in RAW:
        src = _raw(p, raw_dtype, raw_shape, header)
    elif suf in VIDEO:
        src = _video(p)
    else:
        raise DataError(f"'{p}': unknown format '{suf}'; supported: TIFF (file or folder), HDF5/NeXus, raw, "
                        "mp4/avi video, npy")
    return {"frames": _guarded(src), "darks": None, "flats": None}


def _guarded(src: Source | None) -> Source | None:
    """``src`` whose ``read(t0, t1)`` raises nothing but DataError (a damaged file found late, mid-way) and delivers
    exactly ``t1 - t0`` frames: ``shape[0]`` is what will be read, never silently fewer."""
    if src is None:
        return None
    inner = src.read

    def read(t0, t1):
        try:
            a = inner(t0, t1)
        except (DataError, MemoryError):
            raise
        except Exception as exc:
            raise DataError(f"'{src.label}': frames {t0}-{t1 - 1} cannot be read ({_why(exc)}); the file is damaged "
                            "or truncated: re-copy it") from None
        if len(a) != t1 - t0:
            raise DataError(f"'{src.label}': frames {t0}-{t1 - 1} gave {len(a)} frames, not {t1 - t0}; the file is "
                            "truncated or damaged: re-copy it")
        return a

    return dataclasses.replace(src, read=read)


def storage_dtype(dtype) -> np.dtype:
    """The data contract's dtype for a camera dtype: unsigned <= 16 bit -> uint16 (lossless), else float32."""
    dt = np.dtype(dtype)
    if dt.kind == "u" and dt.itemsize <= 2:
        return np.dtype(np.uint16)
    if dt.kind == "b":
        return np.dtype(np.uint16)
    return np.dtype(np.float32)


def frame_range(text: str | tuple | None, n: int | None = None) -> tuple[int, int, int] | None:
    """``'START:STOP[:STEP]'`` (Python slice rules; empty parts are the defaults) as ``(start, stop, step)`` within
    ``n`` frames (when given); one-line errors name ``--frames``."""
    if text is None:
        return None
    if isinstance(text, str):
        parts = text.split(":")
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            vals = [int(p) if p.strip() else None for p in parts]
        except ValueError:
            raise DataError(f"--frames '{text}': expected START:STOP[:STEP], e.g. 0:100 or 100:200:2") from None
    else:
        vals = list(text)
    start, stop, step = (vals + [None])[:3]
    if step is not None and step < 1:
        raise DataError(f"--frames: the step must be a positive integer, not {step}")
    if any(v is not None and v < 0 for v in (start, stop)):
        raise DataError("--frames: START and STOP count from frame 0 (no negative indices)")
    if n is None:
        return (start or 0, stop, step or 1)
    start, stop, step = slice(start, stop, step).indices(n)
    if start >= stop:
        raise DataError(f"--frames {text if isinstance(text, str) else ':'.join(map(str, text))} selects no frame "
                        f"of the {n}; START must be below STOP and below {n}")
    return start, stop, step


def select_frames(src: Source, rng: tuple[int, int | None, int]) -> Source:
    """The frames ``range(*rng)`` of ``src`` (clipped to its length) as a Source of their own."""
    start, stop, step = frame_range(rng, src.shape[0])
    idx = np.arange(start, stop, step)
    inner = src.read

    def read(t0, t1):
        want = idx[t0:t1]
        if step == 1:
            return inner(int(want[0]), int(want[-1]) + 1)
        return np.stack([inner(int(i), int(i) + 1)[0] for i in want])

    attrs = {**src.attrs, "frames_selected": [int(start), int(stop), int(step)]}
    return Source(f"{src.label} [frames {start}:{stop}:{step}]", (idx.size,) + tuple(src.shape[1:]), src.dtype,
                  read, attrs)
