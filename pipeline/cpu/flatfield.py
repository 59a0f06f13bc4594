"""CPU (Numba) kernels: Flat field, bad-pixel replacement (and its saturation flags) and the bad-pixel detection's median filter.

Bit-identical to the NumPy code in :mod:`pipeline.ops` they stand in for (tests/test_jit.py); each wrapper
returns False (or None) where it cannot take the arrays, and the caller runs the NumPy code instead.
"""

from __future__ import annotations

import numpy as np

from . import _nb, available

if _nb is not None:

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
