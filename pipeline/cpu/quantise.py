"""CPU (Numba) kernels: The scaled uint16 code of stored frames.

Bit-identical to the NumPy code in :mod:`pipeline.ops` they stand in for (tests/test_jit.py); each wrapper
returns False (or None) where it cannot take the arrays, and the caller runs the NumPy code instead.
"""

from __future__ import annotations

import numpy as np

from . import _nb, available

if _nb is not None:

    @_nb.njit(parallel=True, cache=True, nogil=True)
    def _code_u16(values, scale, offset, out, span):  # pragma: no cover - compiled
        # rint(v * scale + offset) in float32 (two roundings, as NumPy's two ops), NaN -> 0, clipped to 1..65535;
        # branch-free, so the loop vectorises
        n = values.size
        chunks = (n + span - 1) // span
        ends = np.zeros(chunks, np.int64)
        lo, hi = np.float32(1), np.float32(65535)
        for c in _nb.prange(chunks):
            k = 0
            for i in range(c * span, min(n, (c + 1) * span)):
                x = values[i] * scale
                x = np.rint(x + offset)
                y = lo if x < lo else (hi if x > hi else x)
                ok = x == x
                out[i] = np.uint16(y) if ok else np.uint16(0)
                k += ok and (y == lo or y == hi)
            ends[c] = k
        return ends.sum()


def code_u16_into(values, scale: float, offset: float, out) -> int | None:
    """:func:`pipeline.io.packing.encode` to uint16 in one parallel pass into ``out``.

    Returns how many codes sit at the ends of the range (1 or 65535: clipped), or None where the
    kernel cannot take these arrays. Bit-identical to the NumPy code: ``values * scale`` and
    ``+ offset`` each rounded to float32 (no fused multiply-add), then rounded half to even.
    """
    if not available() or not all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in (values, out)):
        return None
    if values.dtype != np.float32 or out.dtype != np.uint16 or out.shape != values.shape:
        return None
    return int(_code_u16(values.reshape(-1), np.float32(scale), np.float32(offset), out.reshape(-1), 1 << 16))
