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

Every frame must have the same shape and dtype: the first that differs is rejected with its index.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError

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


def _tiff_stack(path: Path) -> Source:
    import tifffile

    tif = tifffile.TiffFile(path)
    pages = tif.pages
    n = len(pages)
    first = pages[0]
    shape, dtype = tuple(first.shape), np.dtype(first.dtype)
    if len(shape) == 3 and n == 1 and len(tif.series[0].shape) == 3:
        # a short stack that TIFF stores as one multi-sample page (e.g. 3 or 4 frames written as planar
        # samples): the series is the stack
        a = tif.series[0].asarray()
        return Source(str(path), tuple(a.shape), a.dtype, lambda t0, t1: a[t0:t1])
    if len(shape) != 2:
        raise DataError(f"'{path}': page 0 has shape {shape}; expected single-channel 2D frames")

    def read(t0, t1):
        out = np.empty((t1 - t0,) + shape, dtype=dtype)
        for i in range(t0, t1):
            pg = pages[i]
            if tuple(pg.shape) != shape or np.dtype(pg.dtype) != dtype:
                raise DataError(f"'{path}': page {i} is {tuple(pg.shape)} {pg.dtype}, page 0 is {shape} {dtype}; "
                                "all frames must match")
            out[i - t0] = pg.asarray()
        return out

    return Source(str(path), (n,) + shape, dtype, read)


def _tiff_folder(path: Path) -> Source:
    import tifffile

    files = sorted([p for p in path.iterdir() if p.suffix.lower() in (".tif", ".tiff")], key=_natural_key)
    if not files:
        raise DataError(f"folder '{path}' holds no .tif files")
    first = tifffile.imread(files[0])
    shape, dtype = first.shape, first.dtype
    if first.ndim != 2:
        raise DataError(f"'{files[0]}' has shape {first.shape}; expected one 2D frame per file")

    def read(t0, t1):
        out = np.empty((t1 - t0,) + shape, dtype=dtype)
        for i in range(t0, t1):
            a = tifffile.imread(files[i])
            if a.shape != shape or a.dtype != dtype:
                raise DataError(f"'{files[i].name}' (frame {i}) is {a.shape} {a.dtype}, the first is {shape} {dtype}; "
                                "all frames must match")
            out[i - t0] = a
        return out

    return Source(str(path), (len(files),) + shape, np.dtype(dtype), read)


def _npy(path: Path) -> Source:
    a = np.load(path, mmap_mode="r", allow_pickle=False)
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
    except TypeError:
        raise DataError(f"--raw-dtype '{dtype}' is not a NumPy dtype; use e.g. <u2 (little-endian uint16)") from None
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
    need = int(np.prod(shape)) * dt.itemsize
    if need > size:
        raise DataError(f"raw file '{path}' holds {size} bytes after the header, {tuple(shape)} {dt} needs {need}")
    mm = np.memmap(path, dtype=dt, mode="r", offset=header, shape=tuple(shape))
    return Source(str(path), tuple(shape), dt, lambda t0, t1: np.asarray(mm[t0:t1]))


def _video(path: Path) -> Source:
    import imageio.v3 as iio

    try:
        n = 0
        for frame in iio.imiter(path, plugin="pyav"):
            n += 1
            shape = frame.shape[:2]
    except Exception as exc:
        raise DataError(f"cannot decode video '{path}' ({type(exc).__name__}: {exc})") from None
    if n == 0:
        raise DataError(f"video '{path}' has no frames")

    def grey(f):
        if f.ndim == 3:
            return (f[..., :3].astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32)).round().astype(np.uint8) \
                if f.shape[-1] >= 3 else f[..., 0]
        return f

    state = {"it": None, "pos": 0}

    def read(t0, t1):
        if state["it"] is None or state["pos"] != t0:  # sequential decoding; restart if asked to go back
            state["it"], state["pos"] = iio.imiter(path, plugin="pyav"), 0
            for _ in range(t0):
                next(state["it"])
            state["pos"] = t0
        out = np.empty((t1 - t0,) + tuple(shape), dtype=np.uint8)
        for i in range(t1 - t0):
            out[i] = grey(next(state["it"]))
        state["pos"] = t1
        return out

    return Source(str(path), (n,) + tuple(shape), np.dtype(np.uint8), read)


def _hdf5(path: Path, dataset: str | None) -> dict:
    import h5py

    f = h5py.File(path, "r")
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
    key = None
    for cand in (dataset.rsplit("/", 1)[0] + "/image_key", "/entry/instrument/detector/image_key",
                 "/entry/data/image_key"):
        if cand in f and f[cand].shape == (d.shape[0],):
            key = np.asarray(f[cand][...])
            break
    attrs = {}
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
    """``{'frames': Source, 'darks': Source|None, 'flats': Source|None}`` for any supported recording."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"'{p}' does not exist; check the path")
    if p.is_dir():
        if (p / "zarr.json").is_file():
            raise DataError(f"'{p}' is already a Zarr dataset; use it directly")
        return {"frames": _tiff_folder(p), "darks": None, "flats": None}
    suf = p.suffix.lower()
    if suf in HDF5:
        return _hdf5(p, dataset)
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
    return {"frames": src, "darks": None, "flats": None}


def storage_dtype(dtype) -> np.dtype:
    """The data contract's dtype for a camera dtype: unsigned <= 16 bit -> uint16 (lossless), else float32."""
    dt = np.dtype(dtype)
    if dt.kind == "u" and dt.itemsize <= 2:
        return np.dtype(np.uint16)
    if dt.kind == "b":
        return np.dtype(np.uint16)
    return np.dtype(np.float32)
