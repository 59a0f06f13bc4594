"""CPU (Numba) kernels: The motion-adaptive temporal filter, non-local means and the guided filter (in the GAT).

Bit-identical to the NumPy code in :mod:`pipeline.ops` they stand in for (tests/test_jit.py; the guided filter
to float32 rounding, tests/ops/test_denoise.py); each wrapper
returns False (or None) where it cannot take the arrays, and the caller runs the NumPy code instead.
"""

from __future__ import annotations

import numpy as np

from . import _nb, available

if _nb is not None:

    @_nb.njit(cache=True, inline="always")
    def _reflect(i, n):  # pragma: no cover - compiled
        # scipy.ndimage 'reflect' (d c b a | a b c d | d c b a)
        while i < 0 or i >= n:
            if i < 0:
                i = -i - 1
            if i >= n:
                i = 2 * n - i - 1
        return i

    @_nb.njit(cache=True, nogil=True, inline="always")
    def _window_sum_row(col, out, left, size, w):  # pragma: no cover - compiled
        # col[left:left + w] holds a row; reflect it into the pads at both ends (scipy 'reflect'), then
        # out[i] = sum of col[i:i + size] in that order: the horizontal pass of a size x size box filter
        for b in range(left):
            col[left - 1 - b] = col[left + _reflect(-1 - b, w)]
        for b in range(size - left):
            col[left + w + b] = col[left + _reflect(w + b, w)]
        for i in range(w):
            out[i] = col[i]
        for b in range(1, size):
            for i in range(w):
                out[i] += col[i + b]

    @_nb.njit(parallel=True, cache=True, nogil=True)
    def _temporal(frames, out, x, kprev, d0, smooth, alpha, beta, infl, gmin, lo, span, hold):  # pragma: no cover
        # the motion-adaptive recursive filter of ops.denoise.temporal_filter, frame by frame, x/kprev in place
        t, h, w = frames.shape
        one = np.float32(1)
        zero = np.float32(0)
        tiny = np.float32(1e-12)
        left = smooth // 2
        inv_area = 1.0 / (smooth * smooth)
        rows = 16
        n_bands = (h + rows - 1) // rows
        cols = np.zeros((n_bands, w + smooth), np.float64)
        accs = np.empty((n_bands, w), np.float64)
        hss = np.empty((n_bands, w), np.float32)
        ress = np.empty((n_bands, w), np.float32)
        for k in range(t):
            fk = frames[k]
            for y in _nb.prange(h):
                for i in range(w):
                    d = fk[y, i] - x[y, i]
                    d0[y, i] = d if np.isfinite(d) else zero
            for band in _nb.prange(n_bands):
                col = cols[band]  # per-band buffers, allocated once: an allocation per row costs more than the row
                acc = accs[band]
                hs = hss[band]
                res = ress[band]
                for y in range(band * rows, min(h, (band + 1) * rows)):
                    # the box mean of d0 around row y: column sums of the window rows (float64), reflected at the ends,
                    # then the horizontal sum; plain loops over a row, so they vectorise
                    if smooth > 1:
                        col[:] = 0.0
                        for a in range(smooth):
                            dr = d0[_reflect(y - left + a, h)]
                            for i in range(w):
                                col[i + left] += dr[i]
                        _window_sum_row(col, acc, left, smooth, w)
                        for i in range(w):
                            hs[i] = np.float32(acc[i] * inv_area)
                    else:
                        for i in range(w):
                            hs[i] = d0[y, i]
                    xr = x[y]
                    kr = kprev[y]
                    fr = fk[y]
                    orow = out[k, y]
                    for i in range(w):  # branch-free: selects, min and max
                        xv = xr[i]
                        yv = fr[i]
                        d = yv - xv
                        fin = np.isfinite(d)
                        dz = d if fin else zero
                        okx = np.isfinite(xv)
                        xf = xv if okx else zero
                        sig = np.sqrt(max(alpha * xf + beta, tiny)) * infl
                        c = min(max((abs(hs[i]) / sig - lo) / span, zero), one)
                        g = gmin + (one - gmin) * c
                        g = max(g, hold * kr[i])  # hold 0: g itself (g >= gain_min >= 0)
                        g = g if fin else one
                        kr[i] = g
                        nx = xv + g * dz if okx else yv
                        xr[i] = nx
                        res[i] = nx
                    for i in range(w):  # out may be frames itself: writing it in the loop above stops vectorising
                        orow[i] = res[i]

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
        xa = min(ww, max(0, -dx))
        xb = max(xa, min(ww, ww - dx))
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
                        _window_sum_row(v, q, left, patch, ww)
                        for x in range(ww):  # exp(-0) = 1 exactly: the exponential only where it is not
                            z = q[x] * inv_area - sig2
                            q[x] = 1.0 if z <= 0.0 else np.exp(-z * inv_h2)  # NaN stays NaN, as the array code
                        _shifted_row(f, _mirror(y0 + i + dy, hh), dx, row)
                        for x in range(ww):
                            num[i, x] += q[x] * row[x]
                            den[i, x] += q[x]
            for i in range(nr):
                for x in range(ww):
                    out[y0 + i, x] = num[i, x] / den[i, x]

    @_nb.njit(cache=True, nogil=True, inline="always")
    def _pad_row(col, ext, r, w):  # pragma: no cover - compiled
        # ext = col with r values reflected at both ends (scipy 'reflect')
        for j in range(r):
            ext[j] = col[_reflect(j - r, w)]
            ext[r + w + j] = col[_reflect(w + j, w)]
        for i in range(w):
            ext[r + i] = col[i]

    @_nb.njit(cache=True, nogil=True)
    def _box_rows(c1, c2, e1, e2, o1, o2, r, w, scale):  # pragma: no cover - compiled
        # o[i] = scale * sum of c[reflect(i - r .. i + r)] for two rows at once, each as running sums from both
        # halves of the row: four independent chains of additions (one chain waits on every add's latency)
        _pad_row(c1, e1, r, w)
        _pad_row(c2, e2, r, w)
        n = 2 * r + 1
        hf = w // 2
        s1a = s2a = s1b = s2b = 0.0
        for j in range(n):
            s1a += e1[j]
            s2a += e2[j]
            s1b += e1[hf + j]
            s2b += e2[hf + j]
        o1[0], o2[0], o1[hf], o2[hf] = s1a * scale, s2a * scale, s1b * scale, s2b * scale
        for i in range(1, hf):
            k = hf + i
            s1a += e1[i + n - 1] - e1[i - 1]
            s2a += e2[i + n - 1] - e2[i - 1]
            s1b += e1[k + n - 1] - e1[k - 1]
            s2b += e2[k + n - 1] - e2[k - 1]
            o1[i], o2[i], o1[k], o2[k] = s1a * scale, s2a * scale, s1b * scale, s2b * scale
        if w - hf > hf and hf > 0:  # odd width: the second half is one longer
            k = 2 * hf
            o1[k] = (s1b + e1[k + n - 1] - e1[k - 1]) * scale
            o2[k] = (s2b + e2[k + n - 1] - e2[k - 1]) * scale

    @_nb.njit(cache=True, nogil=True)
    def _guided_stats(t, a, b, r, eps, y0, y1):  # pragma: no cover - compiled
        # rows y0..y1 of a = v / (v + eps) and b = m (1 - a), m and v the box mean and variance of t: the column
        # sums (float64) slide down the band, a row's box sum is the running sum across them
        h, w = t.shape
        c1 = np.zeros(w, np.float64)
        c2 = np.zeros(w, np.float64)
        e1 = np.empty(w + 2 * r, np.float64)
        e2 = np.empty(w + 2 * r, np.float64)
        m = np.empty(w, np.float64)
        m2 = np.empty(w, np.float64)
        for j in range(-r, r + 1):
            row = t[_reflect(y0 + j, h)]
            for i in range(w):
                v = np.float64(row[i])
                c1[i] += v
                c2[i] += v * v
        scale = 1.0 / ((2 * r + 1) * (2 * r + 1))
        for y in range(y0, y1):
            _box_rows(c1, c2, e1, e2, m, m2, r, w, scale)
            for i in range(w):
                v = max(m2[i] - m[i] * m[i], 0.0)
                ai = np.float32(v / (v + eps))
                a[y, i] = ai
                b[y, i] = np.float32(m[i] * (1.0 - np.float64(ai)))
            if y + 1 < y1:
                add = t[_reflect(y + 1 + r, h)]
                sub = t[_reflect(y - r, h)]
                for i in range(w):
                    va = np.float64(add[i])
                    vs = np.float64(sub[i])
                    c1[i] += va - vs
                    c2[i] += va * va - vs * vs

    @_nb.njit(cache=True, nogil=True)
    def _guided_apply(t, a, b, out, r, y0, y1, mode, alpha, ib):  # pragma: no cover - compiled
        # rows y0..y1 of q = box(a) t + box(b), then the inverse GAT: mode 1 the closed form of
        # ops.denoise.gat_inverse in its float32 operations (ib = beta / alpha^2), 2 q * alpha (alpha = sqrt(beta)), 0 q
        h, w = t.shape
        c1 = np.zeros(w, np.float64)
        c2 = np.zeros(w, np.float64)
        e1 = np.empty(w + 2 * r, np.float64)
        e2 = np.empty(w + 2 * r, np.float64)
        ma = np.empty(w, np.float64)
        mb = np.empty(w, np.float64)
        for j in range(-r, r + 1):
            yy = _reflect(y0 + j, h)
            for i in range(w):
                c1[i] += a[yy, i]
                c2[i] += b[yy, i]
        scale = 1.0 / ((2 * r + 1) * (2 * r + 1))
        s15 = np.float32(np.sqrt(1.5))
        for y in range(y0, y1):
            _box_rows(c1, c2, e1, e2, ma, mb, r, w, scale)
            for i in range(w):
                q = np.float32(ma[i]) * t[y, i] + np.float32(mb[i])
                if mode == 1:
                    dd = max(q, np.float32(0.8))
                    q = alpha * (np.float32(0.25) * dd * dd + np.float32(0.25) * s15 / dd
                                 - np.float32(11.0 / 8.0) / (dd * dd) + np.float32(5.0 / 8.0) * s15 / (dd * dd * dd)
                                 - np.float32(0.125) - ib)
                elif mode == 2:
                    q = q * alpha
                out[y, i] = q
            if y + 1 < y1:
                ya = _reflect(y + 1 + r, h)
                ys = _reflect(y - r, h)
                for i in range(w):
                    c1[i] += np.float64(a[ya, i]) - np.float64(a[ys, i])
                    c2[i] += np.float64(b[ya, i]) - np.float64(b[ys, i])

    @_nb.njit(parallel=True, cache=True, nogil=True)
    def _guided(frames, out, r, eps, mode, k, c, alpha, ib, band):  # pragma: no cover - compiled
        # frame by frame: the forward GAT (mode 1: k sqrt(max(alpha x + c, 0)); 2: x / k; 0: x), the box statistics,
        # their box means and the inverse GAT, each pass over bands of rows on all cores
        nt, h, w = frames.shape
        t = np.empty((h, w), np.float32)
        a = np.empty((h, w), np.float32)
        b = np.empty((h, w), np.float32)
        n_bands = (h + band - 1) // band
        zero = np.float32(0)
        for f in range(nt):
            fr = frames[f]
            for y in _nb.prange(h):
                for i in range(w):
                    x = fr[y, i]
                    if mode == 1:
                        x = k * np.sqrt(max(alpha * x + c, zero))
                    elif mode == 2:
                        x = x / k
                    t[y, i] = x
            for j in _nb.prange(n_bands):
                _guided_stats(t, a, b, r, eps, j * band, min(h, (j + 1) * band))
            for j in _nb.prange(n_bands):
                _guided_apply(t, a, b, out[f], r, j * band, min(h, (j + 1) * band), mode, alpha, ib)


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
    if not hold >= 0 or not gain_min >= 0:
        return False  # the kernel's max(g, hold * k) equals the reference's "if hold > 0" only for these
    d0 = np.empty(x.shape, np.float32)
    _temporal(frames, out, x, kprev, d0, max(int(smooth), 1), f32(alpha), f32(beta), f32(infl), f32(gain_min), f32(lo),
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


def guided_into(frames, out, *, radius: int, eps: float, gat: tuple = (0, 1.0, 0.0, 1.0, 0.0)) -> bool:
    """Self-guided filter of each (H, W) frame of (T, H, W) float32 ``frames`` into ``out``, optionally in the GAT.

    Parameters
    ----------
    frames, out : ndarray (T, H, W) float32, C-contiguous
        Input frames (finite) and the result (may not be ``frames``).
    radius : int
        Box radius: the box is ``2 radius + 1`` pixels square (scipy 'reflect' edges).
    eps : float
        Regularisation, in the squared units of the filtered data.
    gat : tuple
        ``(mode, k, c, alpha, ib)`` of the transform around the filter, as
        :func:`pipeline.ops.denoise.gat_codes` gives them (the default: none).

    Returns
    -------
    bool
        False if the kernel cannot take these arrays (the caller runs the NumPy code). The same
        float32 operations as :func:`pipeline.ops.denoise.guided_denoise`'s array code with float64
        box sums (running sums here, scipy's separable ones there): they agree to float32 rounding (tested).
    """
    if not available() or not all(isinstance(v, np.ndarray) and v.dtype == np.float32 and v.flags.c_contiguous
                                  and v.ndim == 3 for v in (frames, out)):
        return False
    if out.shape != frames.shape or out is frames or min(frames.shape) < 1 or radius < 0:
        return False
    mode, k, c, a, ib = gat
    f32 = np.float32
    _guided(frames, out, int(radius), float(eps), int(mode), f32(k), f32(c), f32(a), f32(ib), 64)
    return True
