"""Whole groups by path: small arrays, single frames and attributes read (checked), a saved calibration, and a
plain description of any group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from ...errors import CalibrationError, DataError
from .layout import _open_group
from .reading import checked, read_checked


def read_array(path: str | Path, name: str) -> np.ndarray:
    """Read a whole (small) array of a group (checked: a lost chunk raises)."""
    g = _open_group(Path(path), "dataset")
    if name not in g:
        raise DataError(f"'{path}' has no array '{name}'")
    return read_checked(g[name], f"{path}/{name}", Path(path))


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
