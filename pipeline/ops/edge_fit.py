"""The edge fit of the slanted-edge MTF (:mod:`pipeline.ops.mtf`, module notes, step 2), on NumPy or CuPy.

The rows of each ROI summed in up to 16 blocks; in each block the derivative across the edge, its biweight-
windowed centroid, and a line (or a 2nd-order polynomial) through the blocks' centroids by weighted least
squares, all ROIs of a batch at once (closed-form normal equations, or one batched solve), blocks more than 5
robust sigmas off rejected. The array module comes in as ``xp``; nothing here moves data to the host.
"""

from __future__ import annotations

import math

from .esf import _masked_median, _poly, _ws

_BLOCKS = 16  # row blocks of the edge fit


def _solve_batch(lhs, rhs, xp):
    """Solutions of the (B, P, P) systems ``lhs x = rhs`` in one call; a singular system gives zeros.

    One batched solve, not B small ones: on a GPU each small solve would be a handful of launches and
    a device sync. (The benchmark once taken to show that cost on an H200 had timed the NumPy path.)
    """
    ok = xp.linalg.det(lhs) != 0  # exactly singular: a zero pivot, where LAPACK's solve gives up
    eye = xp.eye(lhs.shape[-1], dtype=lhs.dtype)
    x = xp.linalg.solve(xp.where(ok[:, None, None], lhs, eye), xp.where(ok[:, None], rhs, 0.0)[:, :, None])
    return xp.where(ok[:, None], x[:, :, 0], 0.0)


def _weighted_fit(cen, wts, yr, poly_order: int, xp):
    """Weighted least-squares line or parabola ``x = c0 + c1 y + c2 y^2`` through ``cen`` (B, R) at ``yr``.

    The normal equations from the weighted moments (two small matrix products), solved in closed form for
    a line and in one batched solve for a parabola; a ROI with too few rows gets zeros (flagged later).
    """
    p = poly_order + 1
    powers = xp.stack([yr**k for k in range(2 * p - 1)], axis=1)  # (R, 2p-1)
    m = wts @ powers  # sum of w y^k, k = 0 .. 2p-2
    r = (xp.where(wts > 0, cen, 0.0) * wts) @ powers[:, :p]  # sum of w x y^k, k = 0 .. p-1
    coef = xp.zeros((cen.shape[0], 3))
    if p == 2:
        det = m[:, 0] * m[:, 2] - m[:, 1] * m[:, 1]
        ok = det != 0
        det = xp.where(ok, det, 1.0)
        coef[:, 0] = xp.where(ok, (m[:, 2] * r[:, 0] - m[:, 1] * r[:, 1]) / det, 0.0)
        coef[:, 1] = xp.where(ok, (m[:, 0] * r[:, 1] - m[:, 1] * r[:, 0]) / det, 0.0)
        return coef
    lhs = xp.stack([m[:, i : i + p] for i in range(p)], axis=1)  # Hankel: lhs[i, j] = m[i + j]
    coef[:, :p] = _solve_batch(lhs, r, xp)
    return coef


def _robust_fit(cen, valid, pred, yr, poly_order: int, xp, rounds: int = 1):
    """Fit over the valid rows, rejecting rows farther than 5 robust sigmas from the previous curve.

    The first rejection is against ``pred`` (the previous estimate), then against each new fit
    (``rounds`` more). Returns the coefficients (B, 3), the rows used (B, R) and their rms (B,).
    """
    for _ in range(rounds + 1):
        resid = xp.abs(cen - pred)
        mad = _masked_median(resid, valid, xp)[:, None]
        mad = xp.where(xp.isfinite(mad), mad, 1.0)
        wts = (valid & (resid <= xp.maximum(5 * 1.4826 * mad, 0.05))).astype(xp.float64)
        coef = _weighted_fit(cen, wts, yr, poly_order, xp)
        pred = _poly(coef, yr)
    used = wts > 0
    rms = xp.sqrt(xp.where(used, (cen - pred) ** 2, 0.0).sum(axis=1) / xp.maximum(used.sum(axis=1), 1))
    return coef, used, rms


def _band(d, pred, half_w, xp):
    """The columns of each row of ``d`` (B, R, N; column j at x = j + 1) that a window of ``half_w`` about
    ``pred`` (B, R) can reach, as values (B, R, K) and positions relative to ``pred``: a band of K columns
    starting at the window's left end (kept inside the row; beyond its reach the window is zero)."""
    b, r, n = d.shape
    kh = int(math.ceil(float(half_w.max()))) + 1
    k = 2 * kh + 2
    if k >= n:
        return d, xp.subtract(xp.arange(1, n + 1, dtype=xp.float64), pred[:, :, None], out=_ws(xp, "t", d.shape))
    start = xp.clip(xp.floor(xp.clip(pred, 0.0, float(n))).astype(xp.int64) - 1 - kh, 0, n - k)
    ar = xp.arange(k)
    rows = xp.arange(b * r, dtype=xp.int64).reshape(b, r) * n
    idx = xp.add((start + rows)[:, :, None], ar, out=_ws(xp, "band_idx", (b, r, k), xp.int64))
    vals = xp.take(d.reshape(-1), idx, out=_ws(xp, "band", (b, r, k)))
    return vals, xp.add((start + 1 - pred)[:, :, None], ar, out=_ws(xp, "t", (b, r, k)))


def _centroids(d, t, half_w, xp, second_moment: bool = False):
    """Biweight-windowed centroid of each row of ``d`` (B, R, K) at offsets ``t`` from the window's centre.

    Returns the centroids' offsets, the rows with positive windowed mass and (optionally) the variances.
    """
    q = xp.multiply(t, t, out=_ws(xp, "q", t.shape))
    q *= (-1.0 / half_w**2)[:, None, None]
    q += 1.0
    xp.maximum(q, 0.0, out=q)
    q *= q
    q *= d  # the windowed derivative
    s0 = q.sum(axis=2)
    valid = s0 > 0
    s0 = xp.where(valid, s0, 1.0)
    q *= t
    m1 = q.sum(axis=2) / s0
    if not second_moment:
        return m1, valid, None
    q *= t
    return m1, valid, q.sum(axis=2) / s0 - m1 * m1


def _block_profiles(a, xp):
    """The rows summed in up to 16 blocks (B, G, W) float64 (added in the ROIs' own precision), the blocks'
    centre rows and the rows a block holds; raises if a pixel is not finite (seen in the block sums and the
    rows left over; checked exactly only when a sum is not finite)."""
    b, h, w = a.shape
    hb = max(1, h // _BLOCKS)
    g = h // hb
    prof = _ws(xp, "prof", (b, g, w))
    if a.dtype == xp.float64:
        a[:, : g * hb].reshape(b, g, hb, w).sum(axis=2, out=prof)
    else:
        prof[...] = a[:, : g * hb].reshape(b, g, hb, w).sum(axis=2, out=_ws(xp, "prof_in", (b, g, w), a.dtype))
    finite = xp.isfinite(prof.sum(axis=(1, 2)))
    if g * hb < h:
        finite = finite & xp.isfinite(a[:, g * hb :].sum(axis=(1, 2), dtype=xp.float64))
    if not bool(finite.all()) and not bool(xp.isfinite(a).all()):
        raise ValueError("ROI holds NaN or Inf pixels; correct or crop them before measuring the MTF")
    return prof, xp.arange(g, dtype=xp.float64) * hb + (hb - 1) / 2.0, hb


def _block_fit(d, yr, poly_order: int, w: int, xp, passes: int = 2):
    """The edge through the block profiles: windowed centroids of their derivative ``d`` (B, G, W-2) and a fit.

    Starts from a line through each block's steepest rise (outliers rejected); the first window reaches
    a fifth of the ROI each side (up to 24 px), the next ones 4 LSF sigmas + 3 px; outliers rejected at
    every pass. Returns the coefficients, the blocks used (B, G) and the rms of their centroids (px).
    """
    peak = xp.argmax(d, axis=2) + 1.0
    start = xp.zeros((d.shape[0], 3))
    start[:, 0] = xp.median(peak, axis=1)
    coef = _robust_fit(peak, xp.ones(peak.shape, bool), _poly(start, yr), yr, 1, xp, rounds=1)[0]
    half = float(max(6.0, min(w / 5.0, 24.0)))
    half_w = xp.full((d.shape[0],), half)
    for it in range(passes):
        pred = _poly(coef, yr)
        db, t = _band(d, pred, half_w, xp)
        m1, valid, var = _centroids(db, t, half_w, xp, second_moment=it < passes - 1)
        coef, used, rms = _robust_fit(pred + m1, valid, pred, yr, poly_order, xp, rounds=int(it == passes - 1))
        if var is not None:
            sig = xp.sqrt(xp.maximum(_masked_median(var, valid, xp), 0.25))
            half_w = xp.clip(4.0 * xp.where(xp.isfinite(sig), sig, half / 4) + 3.0, 6.0, max(6.0, w / 3.0))
    return coef, used, rms
