"""The binned edge-spread function of the slanted-edge MTF (:mod:`pipeline.ops.mtf`): each ROI's pixels binned
by their distance to the fitted edge (one ``bincount`` per group of ROIs), the bins' noise, and a smoothing that
adapts to it; with the small array helpers the edge fit shares. NumPy or CuPy, from the data.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from ..backend import get_xp, to_host


def _fill_empty(values, counts):
    """Fill bins with no samples by linear interpolation along the last axis (vectorised)."""
    xp = get_xp(values)
    ok = counts > 0
    if bool(ok.all()):
        return values
    v, o = to_host(values), to_host(ok)
    n = v.shape[-1]
    idx = np.arange(n)
    left = np.maximum.accumulate(np.where(o, idx, -1), axis=-1)
    right = np.minimum.accumulate(np.where(o, idx, n)[..., ::-1], axis=-1)[..., ::-1]
    lc, rc = np.clip(left, 0, n - 1), np.clip(right, 0, n - 1)
    vl = np.take_along_axis(v, lc, -1)
    vr = np.take_along_axis(v, rc, -1)
    span = np.where(right > left, right - left, 1)
    t = np.where((left >= 0) & (right < n), (idx - left) / span, 0.0)
    fill = np.where(left < 0, vr, np.where(right >= n, vl, vl + t * (vr - vl)))
    return xp.asarray(np.where(o, v, fill))


def _masked_median(v, ok, xp):
    """Median of each row of ``v`` (B, N) over the entries where ``ok``; NaN for a row with none.

    One sort of the small (B, N) array: exact (the mean of the two middle values for an even count),
    without ``nanmedian``'s per-row copies and warnings, and the same on NumPy and CuPy.
    """
    s = xp.sort(xp.where(ok, v, xp.inf), axis=1)
    n = ok.sum(axis=1)
    lo = xp.maximum((n - 1) // 2, 0)[:, None]
    hi = xp.maximum(n // 2, 0)[:, None]
    m = 0.5 * (_take(s, lo, xp) + _take(s, hi, xp))[:, 0]
    return xp.where(n > 0, m, xp.nan)


def _poly(coef, yr):
    """``c0 + c1 y + c2 y^2`` for each ROI's coefficients (B, 3) at row offsets ``yr`` (R,): (B, R)."""
    return coef[:, 0, None] + (coef[:, 1, None] + coef[:, 2, None] * yr) * yr


def _take(a, idx, xp):
    """``a[..., idx]`` row by row (``idx`` (..., M) into the last axis of the contiguous ``a`` (..., N)): one
    gather from the flat array, several times faster than ``take_along_axis``'s broadcast index tuples."""
    n = a.shape[-1]
    off = xp.arange(a.size // n, dtype=xp.int64).reshape(a.shape[:-1]) * n
    return xp.ascontiguousarray(a).reshape(-1)[idx + off[..., None]]


_WORK = threading.local()
_WORK_MAX_BYTES = 1 << 24  # per buffer kept between calls (larger ones are allocated each time)


def _ws(xp, name: str, shape, dtype=np.float64):
    """A scratch array: on NumPy a view of this thread's buffer ``name``, kept between calls (fresh multi-MB
    temporaries cost page faults on every call once glibc hands them back to the system); on CuPy a new array
    (its memory pool keeps the blocks)."""
    if xp is not np:
        return xp.empty(shape, dtype)
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    bufs = _WORK.__dict__.setdefault("bufs", {})
    buf = bufs.get(name)
    if buf is None or buf.size < nbytes:
        buf = np.empty(nbytes, np.uint8)
        if nbytes <= _WORK_MAX_BYTES:
            bufs[name] = buf
    return buf[:nbytes].view(dtype).reshape(shape)


def _bin_geometry(coef, h: int, w: int, oversample: int, xp) -> dict:
    """Where each ROI's pixels fall along its edge normal, in bins: ``x s + t0[y]`` (s = oversample cos(theta)
    per row, t0 = -x_edge s), the lowest bin ``k_lo``, the bins L every ROI of the group is given, the most
    pixels a bin can get (``n_max``) and the reach: the range of ``p`` (px) that every row covers."""
    yr = xp.arange(h, dtype=xp.float64) - (h - 1) / 2.0
    ok = xp.isfinite(coef).all(axis=1) & (xp.abs(coef[:, 0]) < 16 * (w + h))
    coef = xp.where(ok[:, None], coef, xp.asarray([w / 2.0, 0.0, 0.0]))  # absurd fits: binned harmlessly
    s = oversample / xp.sqrt(1.0 + (coef[:, 1, None] + 2 * coef[:, 2, None] * yr) ** 2)  # os cos(theta_y)
    t0 = -_poly(coef, yr) * s  # p * oversample at x = 0
    t1 = t0 + (w - 1) * s  # ... at x = W-1
    k_lo = xp.floor(t0.min(axis=1))
    span = int(to_host((xp.floor(t1.max(axis=1)) - k_lo).max())) + 2  # a spare bin: no rounding spills over
    reach = xp.where(ok, xp.minimum(-t0.max(axis=1), t1.min(axis=1)) / oversample, -1.0)
    s = s[:, :1] if bool((coef[:, 2] == 0).all()) else s  # a straight edge: one s per ROI
    return {"s": s, "t0": t0, "k_lo": k_lo, "span": span, "n_max": h * xp.ceil(1.0 / s.min(axis=1)),
            "reach": reach}


def _binned(a, geo: dict, span: int, xp):
    """The sums and counts (B, span) of a sub-group's bins: ROI ``i``'s bin ``k`` at ``i span + k - k_lo[i]``;
    the index ``x s + t0[y] + i span - k_lo[i]`` (>= 0) truncated in one fused pass, then one bincount (on a CPU
    with Numba: both in one pass over the pixels, the same sums bit for bit)."""
    b, h, w = a.shape
    o = geo["t0"] + (xp.arange(b, dtype=xp.float64) * span - geo["k_lo"])[:, None]
    k = _bin_offsets(a, geo["n_max"], xp)
    if xp is np and k is not None:
        from ..cpu.stats import edge_bins_into

        total = np.zeros(b * span)
        if edge_bins_into(np.ascontiguousarray(a), np.ascontiguousarray(geo["s"], dtype=np.float64),
                          np.ascontiguousarray(o), k, total, span):
            sums, counts = _split_offsets(total, k, b)
            return sums.reshape(b, span), counts.reshape(b, span)
    xs = xp.arange(w, dtype=xp.float64) * geo["s"][:, :, None]  # (B, 1 or H, W)
    if xp is np:  # into the scratch (truncation = floor here)
        idx = np.add(xs, o[:, :, None], out=_ws(xp, "idx", a.shape, np.int64), casting="unsafe")
    else:
        idx = (xs + o[:, :, None]).astype(xp.int64)
    sums, counts = _sums_and_counts(a, idx.reshape(-1), k, b * span, xp)
    return sums.reshape(b, span), counts.reshape(b, span)


def _bin_offsets(a, n_max, xp):
    """K per ROI for :func:`_sums_and_counts`: the power of 2 >= 4 ``n_max`` max|a|; None for absurd ranges."""
    amax = xp.maximum(a.max(axis=(1, 2)), -a.min(axis=(1, 2))).astype(xp.float64)
    k = 2.0 ** xp.ceil(xp.log2(4.0 * n_max * amax + 1e-300))
    return k if bool((k * n_max < 1e300).all()) else None


def _split_offsets(total, k, b: int):
    """Each bin's sum and count from its total ``n K + S`` (module notes of :func:`_sums_and_counts`)."""
    xp = get_xp(total)
    total = total.reshape(b, -1)
    n = xp.rint(total / k[:, None])
    return (total - n * k[:, None]).reshape(-1), n.astype(xp.int64).reshape(-1)


def _sums_and_counts(a, idx, k, n_bins: int, xp):
    """Each bin's sum of ``a`` (B, H, W) and pixel count, from ONE bincount of ``a + K`` (K per ROI,
    :func:`_bin_offsets`).

    K is the power of 2 >= 4 ``n_max`` max|a|, so a bin of n pixels sums to ``n K + S`` with |S| <= K/4:
    ``n = rint(total / K)`` exactly and ``S = total - n K`` (a bin's mean to ~1e-11 of the largest pixel; two
    bincounts, one with the pixels as weights and one without, cost a third more). Absurd ranges (``k`` None)
    take two.
    """
    if k is None:
        w = a.reshape(-1) if xp is np else a.reshape(-1).astype(xp.float64)
        return xp.bincount(idx, weights=w, minlength=n_bins)[:n_bins], xp.bincount(idx, minlength=n_bins)[:n_bins]
    w = _ws(xp, "w", a.shape)
    w[...] = a
    w += k[:, None, None]
    total = xp.bincount(idx, weights=w.reshape(-1), minlength=n_bins)[:n_bins]
    return _split_offsets(total, k, a.shape[0])


def _esf_bins(px: dict, own, n_half: int, oversample: int, xp) -> dict:
    """The ESF of a group of ROIs (module notes, step 3) from its bin sums as a (B, 2 n_half) array: each ROI's
    own range ``[-own, own)`` about the common centre (bins beyond it repeat its end values, so a ROI gives the
    same result alone or in any batch), empty bins filled by interpolation."""
    b, span, nb = len(own), px["sums"].shape[1], 2 * n_half
    o = xp.asarray(own)[:, None]
    flat = xp.clip(xp.arange(nb, dtype=xp.int64)[None, :] - n_half, -o, o - 1)  # beyond the own range: its ends
    flat -= px["k_lo"].astype(xp.int64)[:, None]
    xp.clip(flat, 0, span - 1, out=flat)  # (a failed ROI's 4 pixels may reach beyond its bins)
    flat += (xp.arange(b, dtype=xp.int64) * span)[:, None]
    sums = xp.take(px["sums"].reshape(-1), flat, out=_ws(xp, "sums", (b, nb)))
    counts = xp.take(px["counts"].reshape(-1), flat, out=_ws(xp, "counts", (b, nb), xp.int64))
    sums *= px["sign"][:, None]
    esf = xp.divide(sums, xp.maximum(counts, 1), out=_ws(xp, "esf", sums.shape))
    ii = np.arange(nb)
    empty = np.zeros(b, np.int64)
    zero = counts == 0
    if bool(zero.any()):
        valid = (ii[None, :] >= n_half - own[:, None]) & (ii[None, :] < n_half + own[:, None])
        empty = (to_host(zero) & valid).sum(axis=1)
        esf = _fill_empty(esf, counts)
    return {"esf": esf, "counts": counts, "empty": empty, "pos": (ii - n_half + 0.5) / oversample, "own": own,
            "n_half": n_half, "nb": nb, "ii": ii, "os": oversample}


def _triangle(v, h, hmax: int, xp):
    """Triangular average of each row of ``v`` (B, N) over ``[i - h_i, i + h_i]`` (weights ``h + 1 - |k|``;
    h (B, N) ints <= hmax; h = 0 leaves the value as it is), by second-order prefix sums; beyond the row's
    ends the values are extended by the end values.

    The sums run over ``v - v[:, :1]``: the padding before a ROI's own range (equal to its first value)
    adds exact zeros, so the result does not depend on how much padding the batch gives the ROI.
    """
    b, n = v.shape
    p = hmax + 1
    ref = v[:, :1]
    u = _ws(xp, "tri_u", (b, n + 2 * p + 1))
    u[:, : p + 1] = 0.0
    xp.subtract(v, ref, out=u[:, p + 1 : p + 1 + n])
    u[:, p + 1 + n :] = u[:, p + n : p + n + 1]
    d = xp.cumsum(u, axis=1, out=_ws(xp, "tri_c1", u.shape))  # d[j] = u[0] + ... + u[j]: c1 shifted by one
    xp.cumsum(d, axis=1, out=d)  # second-order prefix sums, d[p + i] holds D[i + 1]
    i = (xp.arange(b, dtype=xp.int64) * u.shape[1] + p)[:, None] + xp.arange(n, dtype=xp.int64)
    hh = xp.add(h, 1, out=_ws(xp, "tri_h", h.shape, xp.int64))
    flat = d.reshape(-1)
    out = xp.take(flat, xp.add(i, hh, out=_ws(xp, "tri_i", h.shape, xp.int64)), out=_ws(xp, "tri_out", (b, n)))
    tmp = xp.take(flat, xp.subtract(i, hh, out=_ws(xp, "tri_i", h.shape, xp.int64)), out=_ws(xp, "tri_t", (b, n)))
    out += tmp
    tmp = xp.take(flat, i, out=tmp)
    tmp *= 2.0
    out -= tmp
    hh *= hh
    out /= hh
    out += ref
    return xp.where(h > 0, out, v)


def _bin_noise(esf, counts, own, n_half: int, xp):
    """The ESF bins' noise (B,): the robust (MAD) spread of the second differences over the 64 bins at each end
    of each ROI's own range (the flat tails), and the mean count of those bins (B,)."""
    t = 64
    j = xp.arange(t, dtype=xp.int64)[None, :]
    lo, hi = xp.asarray(n_half - own)[:, None], xp.asarray(n_half + own)[:, None]
    pos = xp.concatenate([lo + 1 + j, hi - 2 - j], axis=1)
    ok = xp.concatenate([j, j], axis=1) < xp.asarray(np.minimum(t, 2 * own - 2))[:, None]
    pos = xp.where(ok, pos, lo + 1)
    r = xp.abs(_take(esf, pos, xp) - 0.5 * (_take(esf, pos - 1, xp) + _take(esf, pos + 1, xp)))
    sigma = 1.4826 * _masked_median(r, ok, xp) / math.sqrt(1.5)
    return xp.where(xp.isfinite(sigma), sigma, 0.0), xp.where(ok, _take(counts, pos, xp), 0).sum(axis=1) / ok.sum(1)


def _smoothed_esf(bins: dict, adaptive: bool, xp) -> dict:
    """The noise-adaptive ESF (module notes, step 4), the ESF bins' noise (B,) and the pixel noise (B,) on the host.

    Support: from the LSF's peak outward, the bins where the ESF's rise over 2 px each side exceeds 3 sigmas of
    its noise. Beyond it the triangle's half-width grows by 1 bin per 2 bins of distance, up to 4 px. Bins
    beyond each ROI's own range then repeat its (smoothed) end values.
    """
    esf, own, n_half, nb, os_ = (bins[k] for k in ("esf", "own", "n_half", "nb", "os"))
    sigma, mean_count = _bin_noise(esf, bins["counts"], own, n_half, xp)
    noise_px = to_host(sigma * xp.sqrt(mean_count))
    if not adaptive:
        return {"esf": esf, "sigma": sigma, "noise_px": noise_px}
    ii = xp.arange(nb)[None, :]
    inside = (ii >= xp.asarray(n_half - own)[:, None]) & (ii < xp.asarray(n_half + own)[:, None])
    m = max(2, min(2 * os_, nb // 8))  # the slope over 2 px each side
    slope = _ws(xp, "slope", esf.shape)
    slope[:, :m] = 0.0
    slope[:, -m:] = 0.0
    xp.subtract(esf[:, 2 * m :], esf[:, : -2 * m], out=slope[:, m:-m])
    peak = xp.argmax(xp.where(inside, slope, -xp.inf), axis=1)[:, None]
    quiet = xp.abs(slope, out=slope) <= (3.0 * math.sqrt(2.0)) * sigma[:, None]
    right = xp.argmax((ii > peak) & quiet, axis=1)[:, None]  # the first quiet bin right of the peak
    right = xp.where(right > peak, right, nb)
    rev = ((ii < peak) & quiet)[:, ::-1]
    left = xp.where(rev.any(axis=1, keepdims=True), nb - 1 - xp.argmax(rev, axis=1)[:, None], -1)
    h = xp.maximum(ii - right, left - ii)  # beyond the own range h does not matter: those bins are reset below
    h = xp.clip(h, 0, 8 * os_, out=h)
    h >>= 1
    sm = _triangle(esf, h, 4 * os_, xp)
    ends = xp.clip(ii, xp.asarray(n_half - own)[:, None], xp.asarray(n_half + own - 1)[:, None])
    return {"esf": _take(sm, ends, xp), "sigma": sigma, "noise_px": noise_px}  # padding: the smoothed end values
