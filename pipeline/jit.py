"""CPU kernels compiled with Numba: the only module that imports numba.

The NumPy array code in :mod:`pipeline.ops` is the reference; these kernels do the
same float32 operations in the same order, fused into one pass over memory and
spread over the CPU's cores, so their results are bit-identical to it (tested
in tests/test_jit.py). Without Numba (or with ``XRAY_PIPELINE_NO_JIT=1``)
:func:`available` is False and the ops fall back to their NumPy code.

Kernels are compiled on first use and cached on disk (``cache=True``).
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

try:  # Numba is a dependency, but the NumPy path must keep working without it
    if os.environ.get("XRAY_PIPELINE_NO_JIT", "") not in ("", "0"):
        raise ImportError("disabled by XRAY_PIPELINE_NO_JIT")
    import numba as _nb
except Exception:  # pragma: no cover - depends on the machine
    _nb = None


_enabled = True


def available() -> bool:
    """True when the Numba kernels can be used."""
    return _nb is not None and _enabled


@contextlib.contextmanager
def disabled():
    """Within this block the ops use their NumPy code (to compare the kernels with it)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


if _nb is not None:

    @_nb.njit(parallel=True, cache=True, nogil=True)
    def _flat_field_pixels(frames, dark, inv, out):  # pragma: no cover - compiled
        # (T, P) frames, (P,) maps: a plain indexed loop over pixels vectorises (slices in the loop body do not)
        t, p = frames.shape
        for k in range(t):
            for i in _nb.prange(p):
                out[k, i] = (np.float32(frames[k, i]) - dark[i]) * inv[i]


    @_nb.njit(parallel=True, cache=True, nogil=True)
    def _replace_bad(stack, targets, neighbours):  # pragma: no cover - compiled
        # stack (T, P) float32 in place; the median of the finite good neighbours, NaN where there is none
        t = stack.shape[0]
        n, k = neighbours.shape
        for i in _nb.prange(n):
            buf = np.empty(k, np.float32)
            for f in range(t):
                m = 0
                for q in range(k):
                    idx = neighbours[i, q]
                    if idx < 0:
                        continue
                    v = stack[f, idx]
                    if v != v:
                        continue
                    j = m  # insertion sort: K is at most 80
                    while j > 0 and buf[j - 1] > v:
                        buf[j] = buf[j - 1]
                        j -= 1
                    buf[j] = v
                    m += 1
                if m == 0:
                    stack[f, targets[i]] = np.float32(np.nan)
                elif m % 2 == 1:
                    stack[f, targets[i]] = buf[m // 2]
                else:
                    stack[f, targets[i]] = (buf[m // 2 - 1] + buf[m // 2]) / np.float32(2)

    @_nb.njit(cache=True, inline="always")
    def _reflect(i, n):  # pragma: no cover - compiled
        # scipy.ndimage 'reflect' (d c b a | a b c d | d c b a)
        while i < 0 or i >= n:
            if i < 0:
                i = -i - 1
            if i >= n:
                i = 2 * n - i - 1
        return i

    @_nb.njit(parallel=True, cache=True, nogil=True)
    def _temporal(frames, out, x, kprev, d0, fin, smooth, alpha, beta, infl, gmin, lo, span, hold):  # pragma: no cover
        # the motion-adaptive recursive filter of ops.denoise.temporal_filter, frame by frame, x/kprev in place
        t, h, w = frames.shape
        one = np.float32(1)
        zero = np.float32(0)
        left = smooth // 2
        inv_area = 1.0 / (smooth * smooth)
        for k in range(t):
            for y in _nb.prange(h):
                for i in range(w):
                    d = frames[k, y, i] - x[y, i]
                    ok = np.isfinite(d)
                    fin[y, i] = ok
                    d0[y, i] = d if ok else zero
            for y in _nb.prange(h):
                col = np.zeros(w + smooth, np.float64)  # column sums of the window rows, reflected at the edges
                if smooth > 1:
                    for a in range(smooth):
                        yy = _reflect(y - left + a, h)
                        for i in range(w):
                            col[i + left] += d0[yy, i]
                    for b in range(left):
                        col[left - 1 - b] = col[left + _reflect(-1 - b, w)]
                    for b in range(smooth - left):
                        col[left + w + b] = col[left + _reflect(w + b, w)]
                for i in range(w):
                    if smooth > 1:
                        acc = 0.0
                        for b in range(smooth):
                            acc += col[i + b]
                        ds = np.float32(acc * inv_area)
                    else:
                        ds = d0[y, i]
                    xv = x[y, i]
                    xf = xv if np.isfinite(xv) else zero
                    var = alpha * xf + beta
                    if var < np.float32(1e-12):
                        var = np.float32(1e-12)
                    sig = np.sqrt(var) * infl
                    c = (abs(ds) / sig - lo) / span
                    if c < zero:
                        c = zero
                    elif c > one:
                        c = one
                    g = gmin + (one - gmin) * c
                    if hold > zero:
                        hk = hold * kprev[y, i]
                        if hk > g:
                            g = hk
                    if not fin[y, i]:
                        g = one
                    kprev[y, i] = g
                    x[y, i] = xv + g * d0[y, i] if np.isfinite(xv) else frames[k, y, i]
                    out[k, y, i] = x[y, i]


    @_nb.njit(cache=True, inline="always")
    def _mirror(i, n):  # pragma: no cover - compiled
        # numpy.pad 'reflect' (d c b | a b c d | c b a): the edge is not repeated
        if n == 1:
            return 0
        while i < 0 or i >= n:
            if i < 0:
                i = -i
            if i >= n:
                i = 2 * (n - 1) - i
        return i

    @_nb.njit(cache=True, inline="always")
    def _shifted_row(f, ys, dx, row):  # pragma: no cover - compiled
        # row[x] = f[ys, mirror(x + dx)]: a plain copy inside, mirrored indices only at the ends
        ww = f.shape[1]
        xa = max(0, -dx)
        xb = min(ww, ww - dx)
        for x in range(xa, xb):
            row[x] = f[ys, x + dx]
        for x in range(0, xa):
            row[x] = f[ys, _mirror(x + dx, ww)]
        for x in range(max(xb, xa), ww):
            row[x] = f[ys, _mirror(x + dx, ww)]

    @_nb.njit(parallel=True, cache=True, nogil=True)
    def _nl_means(f, out, r, patch, h2, sig2, tile):  # pragma: no cover - compiled
        # ops.denoise.nl_means on row tiles that stay in cache: for every offset of the search window, the squared
        # difference, its patch x patch box mean (scipy 'reflect' edges), the weight, the weighted sums
        hh, ww = f.shape
        left = patch // 2
        inv_area = 1.0 / (patch * patch)
        inv_h2 = 1.0 / h2
        n_tiles = (hh + tile - 1) // tile
        for t in _nb.prange(n_tiles):
            y0 = t * tile
            y1 = min(y0 + tile, hh)
            nr = y1 - y0
            d = np.empty((nr + patch - 1, ww), np.float64)
            v = np.empty(ww + patch, np.float64)
            q = np.empty(ww, np.float64)
            row = np.empty(ww, np.float64)
            num = np.zeros((nr, ww), np.float64)
            den = np.zeros((nr, ww), np.float64)
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    for j in range(nr + patch - 1):
                        yy = _reflect(y0 - left + j, hh)
                        _shifted_row(f, _mirror(yy + dy, hh), dx, row)
                        for x in range(ww):
                            e = row[x] - f[yy, x]
                            d[j, x] = e * e
                    for i in range(nr):
                        for x in range(ww):
                            v[x + left] = d[i, x]
                        for a in range(1, patch):
                            for x in range(ww):
                                v[x + left] += d[i + a, x]
                        for b in range(left):
                            v[left - 1 - b] = v[left + _reflect(-1 - b, ww)]
                        for b in range(patch - left):
                            v[left + ww + b] = v[left + _reflect(ww + b, ww)]
                        for x in range(ww):
                            q[x] = v[x]
                        for b in range(1, patch):
                            for x in range(ww):
                                q[x] += v[x + b]
                        for x in range(ww):  # exp(-0) = 1 exactly: the exponential only where it is not
                            z = q[x] * inv_area - sig2
                            q[x] = np.exp(-z * inv_h2) if z > 0.0 else 1.0
                        _shifted_row(f, _mirror(y0 + i + dy, hh), dx, row)
                        for x in range(ww):
                            num[i, x] += q[x] * row[x]
                            den[i, x] += q[x]
            for i in range(nr):
                for x in range(ww):
                    out[y0 + i, x] = num[i, x] / den[i, x]

def flat_field_into(frames, dark, inv, out) -> bool:
    """``out = (float32(frames) - dark) * inv`` in one parallel pass; False if the kernel cannot take these arrays.

    Parameters
    ----------
    frames : ndarray (T, H, W), integer or float dtype, C-contiguous
    dark, inv : ndarray (H, W) float32
    out : ndarray (T, H, W) float32
    """
    if not available() or frames.ndim != 3 or frames.dtype.kind not in "uif" or frames.dtype.itemsize > 4:
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


def replace_bad_into(frames, targets, neighbours) -> bool:
    """Replace ``targets`` by the median of their finite ``neighbours`` in place; False if the kernel cannot.

    Same result as :func:`pipeline.ops.flatfield.replace_bad_pixels` (NaN-ignoring median,
    the mean of the two middle values for an even count, NaN without a finite neighbour).
    """
    if not available() or not isinstance(frames, np.ndarray) or frames.dtype != np.float32 or frames.ndim not in (2, 3):
        return False
    if not frames.flags.c_contiguous or not isinstance(neighbours, np.ndarray):
        return False
    stack = frames.reshape(-1, frames.shape[-2] * frames.shape[-1])
    _replace_bad(stack, np.ascontiguousarray(targets, np.int64), np.ascontiguousarray(neighbours, np.int64))
    return True


def temporal_into(frames, out, x, kprev, *, smooth: int, alpha: float, beta: float, infl: float, gain_min: float,
                  lo: float, span: float, hold: float) -> bool:
    """The motion-adaptive recursive filter over (T, H, W) float32 frames; ``x``, ``kprev`` (H, W) updated in place.

    The same float32 operations as :func:`pipeline.ops.denoise.temporal_filter`, except the
    box mean of the difference, summed here in float64 (scipy sums a running window): the
    results agree to float32 rounding (tested). False if the kernel cannot take these arrays.
    """
    arrays = (frames, out, x, kprev)
    if not available() or not all(isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous
                              for a in arrays):
        return False
    if frames.ndim != 3 or out.shape != frames.shape or x.shape != frames.shape[1:] or kprev.shape != x.shape:
        return False
    f32 = np.float32
    d0 = np.empty(x.shape, np.float32)
    fin = np.empty(x.shape, np.bool_)
    _temporal(frames, out, x, kprev, d0, fin, int(smooth), f32(alpha), f32(beta), f32(infl), f32(gain_min), f32(lo),
              f32(span), f32(hold))
    return True


def nl_means_into(image, out, *, h: float, patch_size: int, patch_distance: int, sigma: float) -> bool:
    """Non-local means of one (H, W) image into ``out`` (float64 sums, like the array code); False if it cannot."""
    if not available() or not isinstance(image, np.ndarray) or image.ndim != 2 or not isinstance(out, np.ndarray):
        return False
    f = np.ascontiguousarray(image, dtype=np.float64)
    res = out if out.dtype == np.float64 and out.flags.c_contiguous else np.empty(f.shape, np.float64)
    _nl_means(f, res, int(patch_distance), int(patch_size), float(h) * float(h), 2.0 * float(sigma) ** 2, 32)
    if res is not out:
        out[...] = res
    return True
