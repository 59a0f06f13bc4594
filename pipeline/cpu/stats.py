"""CPU (Numba) kernels: Statistics: per-pixel moments of integer frames, exact float32 median and stable argsort by radix.

Bit-identical to the NumPy code in :mod:`pipeline.ops` they stand in for (tests/test_jit.py); each wrapper
returns False (or None) where it cannot take the arrays, and the caller runs the NumPy code instead.
"""

from __future__ import annotations

import numpy as np

from . import _nb, available

if _nb is not None:

    @_nb.njit(parallel=True, cache=True, nogil=True)
    def _moments(frames, s1, s2, span):  # pragma: no cover - compiled
        # s1 += sum of the frames, s2 += sum of their squares, per pixel, in int64 (exact for integer frames)
        t, p = frames.shape
        for c in _nb.prange((p + span - 1) // span):
            p0 = c * span
            p1 = min(p0 + span, p)
            for k in range(t):
                for i in range(p0, p1):
                    v = np.int64(frames[k, i])
                    s1[i] += v
                    s2[i] += v * v

    @_nb.njit(cache=True, nogil=True)
    def _nan_bits(u):  # pragma: no cover - compiled
        # the float32 with bits u is a NaN: exponent all ones, mantissa not zero
        return (u & np.uint32(0x7F800000)) == np.uint32(0x7F800000) and (u & np.uint32(0x007FFFFF)) != 0

    @_nb.njit(cache=True, nogil=True)
    def _f32_key(u):  # pragma: no cover - compiled
        # the float32 with bits u as an unsigned key in the floats' order (-0.0 taken as +0.0); 0 for NaN,
        # which the callers have counted out (0 is also the key of a NaN-like pattern no float orders below)
        if u == np.uint32(0x80000000):
            u = np.uint32(0)
        if _nan_bits(u):
            return np.uint32(0)
        if u & np.uint32(0x80000000):
            return ~u
        return u | np.uint32(0x80000000)

    @_nb.njit(cache=True, nogil=True)
    def _middle_keys_f32(bits, out):  # pragma: no cover - compiled
        # out[0], out[1] = the keys of the ((n-1)//2)-th and (n//2)-th smallest of the n non-NaN values of bits
        # (float32 as uint32), by a radix selection on the keys' top 16 bits, then their bottom 16 bits within
        # the one or two top values that hold the two ranks: two passes over the values; returns n
        hi = np.zeros(65536, np.int64)
        n = 0
        for i in range(bits.size):
            u = bits[i]
            if _nan_bits(u):
                continue
            hi[_f32_key(u) >> np.uint32(16)] += 1
            n += 1
        if n == 0:
            return 0
        top = np.zeros(2, np.int64)
        rest = np.zeros(2, np.int64)
        for j in range(2):
            r = (n - 1) // 2 if j == 0 else n // 2
            b = 0
            while r >= hi[b]:
                r -= hi[b]
                b += 1
            top[j] = b
            rest[j] = r
        lo = np.zeros((2, 65536), np.int64)
        for i in range(bits.size):
            u = bits[i]
            if _nan_bits(u):
                continue
            k = _f32_key(u)
            t = np.int64(k >> np.uint32(16))
            if t == top[0]:
                lo[0, k & np.uint32(0xFFFF)] += 1
            elif t == top[1]:
                lo[1, k & np.uint32(0xFFFF)] += 1
        for j in range(2):
            h = 0 if top[j] == top[0] else 1
            r = rest[j]
            c = 0
            while r >= lo[h, c]:
                r -= lo[h, c]
                c += 1
            out[j] = (np.uint32(top[j]) << np.uint32(16)) | np.uint32(c)
        return n

    @_nb.njit(cache=True, nogil=True)
    def _argsort_f32(bits, order):  # pragma: no cover - compiled
        # order = the stable ascending argsort of the float32 values with bits `bits` (NaN last, -0.0 equal to
        # +0.0, as np.argsort(kind="stable")): a least-significant-digit radix sort in two 16-bit passes
        n = bits.size
        keys = np.empty(n, np.uint32)
        for i in range(n):
            u = bits[i]
            if _nan_bits(u):
                keys[i] = np.uint32(0xFFFFFFFF)  # NaN: after +inf (whose key is 0xFF800000)
            else:
                keys[i] = _f32_key(u)
        tmp = np.empty(n, np.int64)
        for i in range(n):
            tmp[i] = i
        for shift in (0, 16):
            count = np.zeros(65537, np.int64)
            for i in range(n):
                count[((keys[tmp[i]] >> np.uint32(shift)) & np.uint32(0xFFFF)) + 1] += 1
            for d in range(65536):
                count[d + 1] += count[d]
            for i in range(n):
                j = tmp[i]
                d = (keys[j] >> np.uint32(shift)) & np.uint32(0xFFFF)
                order[count[d]] = j
                count[d] += 1
            if shift == 0:
                tmp, order = order, tmp
        return order

    @_nb.njit(parallel=True, cache=True, nogil=True)
    def _edge_bins(a, s, o, k, total, span, stray):  # pragma: no cover - compiled
        # total[int(x s[i, y or 0] + o[i, y])] += a[i, y, x] + k[i], each ROI's pixels in their order (numpy.bincount's
        # sums bit for bit: ROI i's bins are [i span, (i + 1) span), so ROIs run in parallel); a pixel that falls
        # outside its ROI's bins is counted in stray[i] and left out (the caller takes the NumPy path then)
        b, h, w = a.shape
        one_s = s.shape[1] == 1
        for i in _nb.prange(b):
            ki = k[i]
            lo = i * span
            hi = lo + span
            for y in range(h):
                sy = s[i, 0] if one_s else s[i, y]
                oy = o[i, y]
                for x in range(w):
                    j = np.int64(np.float64(x) * sy + oy)
                    if j < lo or j >= hi:
                        stray[i] += 1
                    else:
                        total[j] += np.float64(a[i, y, x]) + ki

def moments_into(frames, s1, s2) -> bool:
    """Add the per-pixel sum and sum of squares of integer (T, H, W) ``frames`` to int64 ``s1``, ``s2`` (H, W).

    Exact (integer arithmetic) while the sums fit in int64; the caller checks that. False if it cannot.
    """
    if not available() or not isinstance(frames, np.ndarray) or frames.ndim != 3 or frames.dtype.kind not in "ui":
        return False
    if frames.dtype.itemsize > 2 or not frames.dtype.isnative or not frames.flags.c_contiguous:
        return False  # Numba takes native byte order only (Zarr hands big-endian chunks back as they are stored)
    if not all(isinstance(a, np.ndarray) and a.dtype == np.int64 and a.flags.c_contiguous and a.shape == frames.shape[1:]
               for a in (s1, s2)):
        return False
    t = frames.shape[0]
    _moments(frames.reshape(t, -1), s1.reshape(-1), s2.reshape(-1), 16384)
    return True


def nanmedian_f32(values) -> float | None:
    """``float(np.nanmedian(values))`` of a float32 array, by a linear-time selection; None if it cannot.

    The same value as NumPy's (a selection of the one or two middle values of the non-NaN ones, whose
    mean is taken in float32 as ``np.median`` does), without its copy and partition of the whole array:
    a short run's noise level over 8 frames of 2048² took 0.33 s that way. NaN where all are NaN; a
    median of zeros comes back as +0.0 where NumPy may give -0.0.
    """
    if not available() or not isinstance(values, np.ndarray) or values.dtype != np.float32:
        return None
    if not values.dtype.isnative or not values.flags.c_contiguous:
        return None
    keys = np.zeros(2, np.uint32)
    n = _middle_keys_f32(values.reshape(-1).view(np.uint32), keys)
    if n == 0:
        return float("nan")
    negative = keys < np.uint32(0x80000000)
    vals = np.where(negative, ~keys, keys & np.uint32(0x7FFFFFFF)).astype(np.uint32).view(np.float32)
    if n % 2:
        return float(vals[0])
    with np.errstate(over="ignore", invalid="ignore"):
        return float((vals[0] + vals[1]) / np.float32(2))  # as np.median: the mean of the two in float32


def argsort_f32(values):
    """``np.argsort(values, kind="stable")`` of a 1-D float32 array by a radix sort in linear time; None if it
    cannot. The same permutation (a stable sort's is unique: equal values keep their order; -0.0 and +0.0
    are equal, NaN go last); the noise fit's 2 M values took 0.22 s through NumPy's merge sort."""
    if not available() or not isinstance(values, np.ndarray) or values.dtype != np.float32 or values.ndim != 1:
        return None
    if not values.dtype.isnative or not values.flags.c_contiguous:
        return None
    order = np.empty(values.size, np.int64)
    return _argsort_f32(values.view(np.uint32), order)


def edge_bins_into(a, s, o, k, total, span: int) -> bool:
    """The slanted-edge MTF's bin sums (:func:`pipeline.ops.esf._binned`) in one pass over the pixels.

    ``total[int(x s[i, y] + o[i, y]) ] += a[i, y, x] + k[i]`` for every pixel of the (B, H, W) ROIs ``a``
    (``s`` (B, 1 or H), ``o`` (B, H), ``k`` (B,) float64; ``total`` (B span,) float64 zeros): what
    ``numpy.bincount`` of those indices and weights gives, bit for bit (the same additions in the same order),
    without its (B, H, W) index and weight arrays. False if it cannot (then ``total`` is to be discarded): no
    Numba, other dtypes, or a pixel outside its ROI's ``span`` bins.
    """
    if not available() or not isinstance(a, np.ndarray) or a.ndim != 3 or a.dtype not in (np.float32, np.float64):
        return False
    f64 = [isinstance(v, np.ndarray) and v.dtype == np.float64 and v.flags.c_contiguous for v in (s, o, k, total)]
    if not all(f64) or not a.dtype.isnative or not a.flags.c_contiguous or total.size != a.shape[0] * span:
        return False
    b, h, _ = a.shape
    if s.shape not in ((b, 1), (b, h)) or o.shape != (b, h) or k.shape != (b,):
        return False
    stray = np.zeros(b, np.int64)
    _edge_bins(a, s, o, k, total, int(span), stray)
    return not stray.any()
