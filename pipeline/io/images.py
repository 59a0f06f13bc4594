"""Single images for measurements: TIFF, PNG and NPY (read-only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2D image (a single-channel TIFF page, PNG or NPY) as float64.

    RGB(A) images are converted to luminance (Rec. 709 weights); a stack
    (T, H, W) is returned as is for batched measurement.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"image '{p}' does not exist; check the path")
    suffix = p.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            a = tifffile.imread(p)
        elif suffix == ".npy":
            a = np.load(p, allow_pickle=False)
        elif suffix == ".png":
            from skimage import io as skio

            a = skio.imread(p)
        else:
            raise DataError(f"'{p}' is not a TIFF, PNG or NPY image nor a Zarr dataset; convert it first")
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read image '{p}' ({type(exc).__name__}: {exc})") from None
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[-1] in (3, 4) and a.shape[0] > 4:
        a = a[..., :3].astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])
    if a.ndim not in (2, 3) or not np.issubdtype(a.dtype, np.number):
        raise DataError(f"image '{p}' has shape {a.shape} and dtype {a.dtype}; expected a 2D grey image")
    return a.astype(np.float64)
