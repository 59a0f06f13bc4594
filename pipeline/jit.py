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
_layer_ok: bool | None = None  # None: not probed yet

if _nb is not None:
    # Dask calls the kernels from several threads at once: only the OpenMP and TBB layers allow that
    # (Numba's own 'workqueue' layer aborts the process). Without either, the NumPy code runs instead.
    _nb.config.THREADING_LAYER = "threadsafe"


def _threading_layer_ok() -> bool:
    global _layer_ok
    if _layer_ok is None:
        try:
            _probe(np.zeros(4, np.float32))
            _layer_ok = _nb.threading_layer() in ("omp", "tbb")
        except Exception as exc:  # pragma: no cover - a machine without OpenMP and TBB
            import warnings

            warnings.warn(f"Numba kernels off (NumPy code instead): no thread-safe threading layer ({exc}); "
                          "pip install tbb, or install the OpenMP runtime (libgomp)", RuntimeWarning, stacklevel=3)
            _layer_ok = False
    return _layer_ok


def available() -> bool:
    """True when the Numba kernels can be used."""
    return _nb is not None and _enabled and _threading_layer_ok()


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
    def _probe(a):  # pragma: no cover - compiled
        for i in _nb.prange(a.size):
            a[i] += 1

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

    @_nb.njit(parallel=True, cache=True, nogil=True)
    def _flat_field_pixels(frames, dark, inv, out):  # pragma: no cover - compiled
        # (T, P) frames, (P,) maps: a plain indexed loop over pixels vectorises (slices in the loop body do not)
        t, p = frames.shape
        for k in range(t):
            for i in _nb.prange(p):
                out[k, i] = (np.float32(frames[k, i]) - dark[i]) * inv[i]


    @_nb.njit(cache=True, nogil=True, inline="always")
    def _median_of(vals, n, buf):  # pragma: no cover - compiled
        # median of the n finite vals[:n], sorted by insertion into buf, as numpy.nanmedian; NaN where n == 0
        for m in range(n):
            v = vals[m]
            j = m
            while j > 0 and buf[j - 1] > v:
                buf[j] = buf[j - 1]
                j -= 1
            buf[j] = v
        if n == 0:
            return np.float32(np.nan)
        if n % 2 == 1:
            return buf[n // 2]
        return (buf[n // 2 - 1] + buf[n // 2]) / np.float32(2)

    @_nb.njit(cache=True, nogil=True, inline="always")
    def _median_into(row, target, nbrs, buf):  # pragma: no cover - compiled
        # row[target] = median of the finite row[nbrs >= 0] (NaN where none); buf holds 2 * nbrs.size values
        k = nbrs.size
        vals = buf[k:]
        n = 0
        for q in range(k):
            idx = nbrs[q]
            if idx < 0:
                continue
            v = row[idx]
            if v != v:
                continue
            vals[n] = v
            n += 1
        row[target] = _median_of(vals, n, buf)

    @_nb.njit(cache=True, nogil=True, inline="always")
    def _median8(v):  # pragma: no cover - compiled
        # mean of the two middle values of 8 finite values: a branch-free 19-comparator sorting network
        a0, a1, a2, a3, a4, a5, a6, a7 = v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
        a0, a2 = min(a0, a2), max(a0, a2)
        a1, a3 = min(a1, a3), max(a1, a3)
        a4, a6 = min(a4, a6), max(a4, a6)
        a5, a7 = min(a5, a7), max(a5, a7)
        a0, a4 = min(a0, a4), max(a0, a4)
        a1, a5 = min(a1, a5), max(a1, a5)
        a2, a6 = min(a2, a6), max(a2, a6)
        a3, a7 = min(a3, a7), max(a3, a7)
        a0, a1 = min(a0, a1), max(a0, a1)
        a2, a3 = min(a2, a3), max(a2, a3)
        a4, a5 = min(a4, a5), max(a4, a5)
        a6, a7 = min(a6, a7), max(a6, a7)
        a2, a4 = min(a2, a4), max(a2, a4)
        a3, a5 = min(a3, a5), max(a3, a5)
        a1, a4 = min(a1, a4), max(a1, a4)
        a3, a6 = min(a3, a6), max(a3, a6)
        a1, a2 = min(a1, a2), max(a1, a2)
        a3, a4 = min(a3, a4), max(a3, a4)
        a5, a6 = min(a5, a6), max(a5, a6)
        return (a3 + a4) / np.float32(2)

    @_nb.njit(parallel=True, cache=True, nogil=True)
    def _correct_fused(frames, dark, inv, out, trow, tcol, nrow, ncol, band_start, band, sat, flags,
                       order):  # pragma: no cover
        # bands of `band` rows of every frame: the flat field of the band, then its bad pixels while the band is
        # in cache (a neighbour outside the band is corrected again from its raw value: the same float32 result);
        # returns how many raw values are >= sat. flags[k, order[j]]: more than half of the neighbours of bad
        # pixel j's median are >= sat in frame k (ops.flatfield.saturation_mask's rule for bad pixels)
        t, h, w = frames.shape
        kk = nrow.shape[1]
        n_bands = (h + band - 1) // band
        nsat = 0
        bufs = np.empty((t * n_bands, 2 * kk), np.float32)  # once: an allocation per job costs more than the job
        for job in _nb.prange(t * n_bands):
            # consecutive jobs (one thread's share) are the frames of one band: its dark and gain rows stay in cache
            bi = job // t
            k = job - bi * t
            r0 = bi * band
            r1 = min(r0 + band, h)
            fr = frames[k]
            o = out[k]
            for y in range(r0, r1):
                for x in range(w):
                    v = np.float32(fr[y, x])
                    o[y, x] = (v - dark[y, x]) * inv[y, x]
                    nsat += 1 if v >= sat else 0
            lo = band_start[bi]
            hi = band_start[bi + 1]
            if hi > lo:
                buf = bufs[job]
                vals = bufs[job, kk:]
                for j in range(lo, hi):
                    n_ok = 0
                    n_hit = 0
                    for q in range(kk):
                        ny = nrow[j, q]
                        if ny < 0:
                            continue
                        nx = ncol[j, q]
                        rv = np.float32(fr[ny, nx])
                        if r0 <= ny < r1:
                            v = o[ny, nx]
                        else:
                            v = (rv - dark[ny, nx]) * inv[ny, nx]
                        if v != v:
                            continue
                        vals[n_ok] = v
                        n_ok += 1
                        n_hit += 1 if rv >= sat else 0
                    flags[k, order[j]] = 2 * n_hit > n_ok
                    ty = trow[j]
                    tx = tcol[j]
                    if n_ok == 8:  # the common case, eight good neighbours: no data-dependent branches
                        o[ty, tx] = _median8(vals)
                    else:
                        o[ty, tx] = _median_of(vals, n_ok, buf)
        return nsat

    @_nb.njit(parallel=True, cache=True, nogil=True)
    def _replace_bad(stack, targets, neighbours):  # pragma: no cover - compiled
        # stack (T, P) float32 in place; the median of the finite good neighbours, NaN where there is none
        t = stack.shape[0]
        n, k = neighbours.shape
        for i in _nb.prange(n):
            buf = np.empty(2 * k, np.float32)
            for f in range(t):
                _median_into(stack[f], targets[i], neighbours[i], buf)

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

    @_nb.njit(parallel=True, cache=True, nogil=True)
    def _median_rows(padded, out, size, band):  # pragma: no cover - compiled
        # out[y, x] = the (size * size // 2)-th smallest value of padded[y:y + size, x:x + size] (finite values):
        # along each row the window is kept sorted; a step right drops the values of the column that leaves
        # and merges in the sorted column that enters (one pass, O(size^2)), instead of selecting anew
        h, w = out.shape
        n = size * size
        k = n // 2
        for b in _nb.prange((h + band - 1) // band):
            win = np.empty(n, np.float32)
            col = np.empty(n, np.int32)
            nwin = np.empty(n, np.float32)
            ncol = np.empty(n, np.int32)
            inc = np.empty(size, np.float32)
            for y in range(b * band, min(h, (b + 1) * band)):
                m = 0
                for c in range(size):  # the first window: insertion sort
                    for a in range(size):
                        v = padded[y + a, c]
                        j = m
                        while j > 0 and win[j - 1] > v:
                            win[j] = win[j - 1]
                            col[j] = col[j - 1]
                            j -= 1
                        win[j] = v
                        col[j] = c
                        m += 1
                out[y, 0] = win[k]
                for x in range(1, w):
                    leave, enter = x - 1, x + size - 1
                    for a in range(size):  # the entering column, sorted
                        v = padded[y + a, enter]
                        j = a
                        while j > 0 and inc[j - 1] > v:
                            inc[j] = inc[j - 1]
                            j -= 1
                        inc[j] = v
                    o = 0
                    j = 0
                    for i in range(n):
                        if col[i] == leave:
                            continue
                        v = win[i]
                        while j < size and inc[j] < v:
                            nwin[o] = inc[j]
                            ncol[o] = enter
                            o += 1
                            j += 1
                        nwin[o] = v
                        ncol[o] = col[i]
                        o += 1
                    while j < size:
                        nwin[o] = inc[j]
                        ncol[o] = enter
                        o += 1
                        j += 1
                    win, nwin = nwin, win
                    col, ncol = ncol, col
                    out[y, x] = win[k]

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
    if frames.dtype == np.float16:  # Numba has no float16 arithmetic
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


def median_filter_into(image, out, *, size: int) -> bool:
    """``scipy.ndimage.median_filter(image, size=size, mode="reflect")`` into ``out``; False if it cannot.

    For a 2D float32 image of finite values and an odd ``size``; the result is the value scipy
    selects (a median is a selection, no arithmetic), tested against it, except that where a
    window holds both -0.0 and +0.0 either may come out (they compare equal), and that for windows
    over about 4x the image's side scipy's own result departs from the definition (the image
    mirrored again and again) where this kernel keeps to it.
    """
    if not available() or not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.float32:
        return False
    if size < 1 or size % 2 == 0 or not isinstance(out, np.ndarray) or out.shape != image.shape:
        return False
    if out.dtype != np.float32 or not out.flags.c_contiguous or not np.isfinite(image).all():
        return False  # NaN has no place in a sorted window (scipy's selection with NaN is its own)
    r = size // 2
    padded = np.pad(image, r, mode="symmetric")  # scipy's "reflect": d c b a | a b c d | d c b a
    _median_rows(padded, out, int(size), 8)
    return True


def correct_into(frames, dark, inv, out, targets, neighbours, saturation, saturated_bad=None) -> int | None:
    """Flat field and bad pixels in one pass over each frame; returns the count of raw values >= ``saturation``.

    ``out = (float32(frames) - dark) * inv``, then every target replaced by the median of its
    finite neighbours (as :func:`replace_bad_into`) while the frame is in cache. ``saturation``
    None counts nothing. None where the kernel cannot take these arrays. ``saturated_bad``
    (T, len(targets)) bool, optional: set to the targets' saturation by their neighbours (more
    than half of the neighbours of the median at or above ``saturation``; see
    :func:`pipeline.ops.flatfield.saturation_mask`), in the same pass.
    """
    if not available() or not isinstance(frames, np.ndarray) or frames.ndim != 3:
        return None
    if frames.dtype not in (np.dtype(np.uint16), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.float32)):
        return None  # float32 holds these exactly: the saturation test on it equals the test on the raw values
    arrays = (frames, dark, inv, out)
    if not all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in arrays):
        return None
    if not (dark.dtype == inv.dtype == out.dtype == np.float32) or out.shape != frames.shape:
        return None
    if np.may_share_memory(frames, out):
        return None  # neighbours outside a band are corrected again from their raw values: they must stay raw
    if dark.shape != frames.shape[1:] or inv.shape != frames.shape[1:]:
        return None
    if targets is None or len(targets) == 0:
        targets, neighbours = _NO_TARGETS, _NO_NEIGHBOURS
    if not isinstance(neighbours, np.ndarray):
        return None
    if saturated_bad is None:
        saturated_bad = np.empty((frames.shape[0], len(targets)), np.bool_)
    elif (not isinstance(saturated_bad, np.ndarray) or saturated_bad.dtype != np.bool_
          or saturated_bad.shape != (frames.shape[0], len(targets))):
        return None
    sat = np.float32(np.nan) if saturation is None else np.float32(saturation)  # v >= NaN: never
    if saturation is not None and float(sat) != float(saturation):
        return None  # not exact in float32: leave it to NumPy
    h, w = frames.shape[1:]
    key = (id(targets), id(neighbours), h, w)
    prepared = _tables.get(key)
    if prepared is None or prepared[0] is not targets or prepared[1] is not neighbours:
        prepared = (targets, neighbours, _band_table(targets, neighbours, h, w))
        if len(_tables) > 16:
            _tables.clear()
        _tables[key] = prepared
    trow, tcol, nrow, ncol, band_start, band, order = prepared[2]
    return int(_correct_fused(frames, dark, inv, out, trow, tcol, nrow, ncol, band_start, band, sat, saturated_bad,
                              order))


_NO_TARGETS, _NO_NEIGHBOURS = np.zeros(0, np.int64), np.zeros((0, 1), np.int64)  # no bad pixels: one cached table
_tables: dict = {}  # bad-pixel tables in band order, per (targets, neighbours) of a run: prepared once


def _band_table(targets, neighbours, h: int, w: int):
    t = np.ascontiguousarray(targets, np.int64)
    order = np.argsort(t, kind="stable")
    t, nb = t[order], np.ascontiguousarray(np.asarray(neighbours, np.int64)[order])
    band = max(1, min(h, (64 * 1024) // (4 * max(w, 1))))  # about 64 KiB of output per band: stays in L2
    trow, tcol = np.divmod(t, max(w, 1))
    nrow, ncol = np.divmod(nb, max(w, 1))
    nrow[nb < 0] = -1  # unused slots
    band_start = np.searchsorted(trow, np.arange(0, h + band, band)[: (h + band - 1) // band + 1]).astype(np.int64)
    return trow, tcol, nrow, ncol, band_start, band, order.astype(np.int64)


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


def code_u16_into(values, scale: float, offset: float, out) -> int | None:
    """:func:`pipeline.ops.quantise.encode` to uint16 in one parallel pass into ``out``.

    Returns how many codes sit at the ends of the range (1 or 65535: clipped), or None where the
    kernel cannot take these arrays. Bit-identical to the NumPy code: ``values * scale`` and
    ``+ offset`` each rounded to float32 (no fused multiply-add), then rounded half to even.
    """
    if not available() or not all(isinstance(a, np.ndarray) and a.flags.c_contiguous for a in (values, out)):
        return None
    if values.dtype != np.float32 or out.dtype != np.uint16 or out.shape != values.shape:
        return None
    return int(_code_u16(values.reshape(-1), np.float32(scale), np.float32(offset), out.reshape(-1), 1 << 16))
