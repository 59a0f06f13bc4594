"""CPU (Numba) kernels: Exact afterglow (lag) removal.

Bit-identical to the NumPy code in :mod:`pipeline.ops` they stand in for (tests/test_jit.py); each wrapper
returns False (or None) where it cannot take the arrays, and the caller runs the NumPy code instead.
"""

from __future__ import annotations

import numpy as np

from . import _nb, available

if _nb is not None:

    @_nb.njit(parallel=True, cache=True, nogil=True)
    def _remove_lag(x, state, amps, per_pixel, ratios, span):  # pragma: no cover - compiled
        # ops.afterglow.remove_lag in place on x (T, P): per frame v -= L_n for every term, then
        # L_n = (L_n + v * a_n) * r_n; pixels in spans of `span` so the frames stream through cache
        t, p = x.shape
        n = ratios.size
        for c in _nb.prange((p + span - 1) // span):
            p0 = c * span
            p1 = min(p0 + span, p)
            m = p1 - p0
            for k in range(t):
                xk = x[k, p0:p1]  # contiguous slices and plain loops: vectorised
                for j in range(n):
                    sj = state[j, p0:p1]
                    for i in range(m):
                        xk[i] = xk[i] - sj[i]
                for j in range(n):
                    sj = state[j, p0:p1]
                    rj = ratios[j]
                    if per_pixel:
                        aj = amps[j, p0:p1]
                        for i in range(m):
                            sj[i] = (sj[i] + xk[i] * aj[i]) * rj
                    else:
                        a0 = amps[j, 0]
                        for i in range(m):
                            sj[i] = (sj[i] + xk[i] * a0) * rj


def remove_lag_into(x, state, amplitudes, ratios) -> bool:
    """:func:`pipeline.ops.afterglow.remove_lag` in place on (T, H, W) float32 ``x``; ``state`` (N, H, W) updated.

    ``amplitudes``: per-term float32 scalars or (H, W) maps (as ``ops.afterglow`` prepares them);
    ``ratios``: float32 per term. Bit-identical (the same float32 operations in the same order).
    False where the kernel cannot take these arrays.
    """
    if not available() or not all(isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous
                                  for a in (x, state)):
        return False
    if x.ndim != 3 or state.shape != (len(ratios),) + x.shape[1:]:
        return False
    t, p = x.shape[0], int(np.prod(x.shape[1:]))
    per_pixel = any(np.ndim(a) > 0 for a in amplitudes)
    if per_pixel:
        amps = np.stack([np.broadcast_to(np.asarray(a, np.float32), x.shape[1:]).reshape(-1) for a in amplitudes])
    else:
        amps = np.asarray([[np.float32(a)] for a in amplitudes], np.float32).reshape(len(ratios), 1)
    r = np.asarray(ratios, np.float32)
    _remove_lag(x.reshape(t, p), state.reshape(len(r), p), np.ascontiguousarray(amps), per_pixel, r, 16384)
    return True
