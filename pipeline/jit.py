"""CPU kernels compiled with Numba: the only module that imports numba.

The NumPy array code in :mod:`pipeline.ops` is the reference; these kernels do the
same float32 operations in the same order, fused into one pass over memory and
spread over the CPU's cores, so their results are bit-identical to it (tested
in tests/test_jit.py). Without Numba (or with ``XRAY_PIPELINE_NO_JIT=1``)
:func:`available` is False and the ops fall back to their NumPy code.

Kernels are compiled on first use and cached on disk (``cache=True``).
"""

from __future__ import annotations

import os

import numpy as np

try:  # Numba is a dependency, but the NumPy path must keep working without it
    if os.environ.get("XRAY_PIPELINE_NO_JIT", "") not in ("", "0"):
        raise ImportError("disabled by XRAY_PIPELINE_NO_JIT")
    import numba as _nb
except Exception:  # pragma: no cover - depends on the machine
    _nb = None


def available() -> bool:
    """True when the Numba kernels can be used."""
    return _nb is not None


if _nb is not None:

    @_nb.njit(parallel=True, cache=True, nogil=True)
    def _flat_field_pixels(frames, dark, inv, out):  # pragma: no cover - compiled
        # (T, P) frames, (P,) maps: a plain indexed loop over pixels vectorises (slices in the loop body do not)
        t, p = frames.shape
        for k in range(t):
            for i in _nb.prange(p):
                out[k, i] = (np.float32(frames[k, i]) - dark[i]) * inv[i]


def flat_field_into(frames, dark, inv, out) -> bool:
    """``out = (float32(frames) - dark) * inv`` in one parallel pass; False if the kernel cannot take these arrays.

    Parameters
    ----------
    frames : ndarray (T, H, W), integer or float dtype, C-contiguous
    dark, inv : ndarray (H, W) float32
    out : ndarray (T, H, W) float32
    """
    if _nb is None or frames.ndim != 3 or frames.dtype.kind not in "uif" or frames.dtype.itemsize > 4:
        return False
    arrays = (frames, dark, inv, out)
    if not all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in arrays):
        return False
    if not (dark.dtype == inv.dtype == out.dtype == np.float32):
        return False
    if dark.shape != frames.shape[1:] or inv.shape != frames.shape[1:] or out.shape != frames.shape:
        return False
    t = frames.shape[0]
    _flat_field_pixels(frames.reshape(t, -1), dark.reshape(-1), inv.reshape(-1), out.reshape(t, -1))
    return True
