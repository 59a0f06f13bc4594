"""What is stored, and how: groups opened read-only and checked, the chunk layout of an array, and whether
this project wrote a group (which decides what a missing chunk file means)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs

from ...errors import DataError, brief
from .. import outputs

#: Group attribute of every group this project writes: a missing chunk file in it is a lost chunk (every chunk
#: is stored); in other tools' arrays (Zarr's default ``write_empty_chunks=False``) it is the fill value
WRITER_ATTR = outputs.WRITER_ATTR


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
