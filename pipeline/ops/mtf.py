"""Slanted-edge MTF (ISO 12233 / IEC 62220-1 style), batched over ROIs, on NumPy or CuPy.

Algorithm (for each of B ROIs of the same shape, vectorised over the batch; on a CPU the pixel work runs
in groups of ROIs small enough for the CPU's cache, on a GPU in one group):

1. Orientation: the edge is treated as near-vertical (rows cross it); ROIs with a near-horizontal edge
   are transposed (one orientation for the whole batch). Polarity is normalised (dark-to-bright).
2. Edge location, coarse: the rows are averaged in 16 blocks; in each block row, the centroid of the
   derivative ``[-1/2, 0, 1/2]`` under a biweight window around the current estimate; a line (or a
   2nd-order polynomial) fitted over the blocks by least squares with outlier rejection; three passes,
   the window narrowing to the measured LSF width.
3. Edge location, fine: the same windowed centroid in every row, on a band of columns gathered around
   the coarse edge (only the columns the window reaches), and the fit over the rows with two rounds of
   outlier rejection (closed-form normal equations, solved for all ROIs at once).
4. Projection of every pixel onto the edge normal, ``p = (x - x_edge(y)) cos(theta)`` (the slant
   correction of the frequency axis: frequencies come out in cycles per pixel along the normal),
   binned at 1/oversample pixel by one ``bincount`` per group (ROI ``i``'s bins at offset ``i L``);
   each ROI keeps its own symmetric range, fully covered by all its rows; empty bins are filled by
   linear interpolation and flagged.
5. Noise-adaptive ESF smoothing (``esf_smoothing='adaptive'``, in the manner of MTF Mapper's smoothed
   ESF): the ESF bins' noise is measured from their second differences; where the ESF's local slope
   stands clear of that noise (the LSF's support) it is left as binned; beyond it, a triangular
   smoothing whose width grows with the distance from the support removes the tails' noise (a flat or
   linear ESF is unchanged by it, and a noise-free ESF is not smoothed at all).
6. ESF -> LSF by central difference; the LSF is windowed (Tukey by default, centred on the LSF
   centroid); zero-padded FFT; |.| normalised at f = 0.
7. Corrections: the central difference's transfer ``sinc(2 f d)`` and the bin average's ``sinc(f d)``
   (d = bin width) are divided out.
8. MTF50/20/10 by linear interpolation at the first crossing; no clipping at Nyquist (the curve is
   reported to ``f_max``, 1 cycle/pixel by default).

A failed fit never gives NaN curves silently: the ROI gets a flag and a message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..backend import get_xp, to_host

LEVELS = (0.5, 0.2, 0.1)


@dataclass
class MTFResult:
    """Batched slanted-edge result (host NumPy arrays); frequencies along the edge normal."""

    frequencies_cy_per_px: np.ndarray  # (F,)
    mtf: np.ndarray  # (B, F)
    esf_positions_px: np.ndarray  # (N,)
    esf: np.ndarray  # (B, N), normalised 0..1 (dark side 0)
    lsf: np.ndarray  # (B, N), unit area
    angle_deg: np.ndarray  # (B,), edge angle from the row/column axis it is closest to
    crossings_cy_per_px: dict  # {0.5: (B,), 0.2: (B,), 0.1: (B,)}, NaN where not reached
    flags: list  # per ROI: list of str
    messages: list  # per ROI: list of str
    orientation: str  # "vertical" (edge along columns) or "horizontal"
    edge_fit_rms_px: np.ndarray  # (B,)
    oversample: int = 4
    window: str = "tukey"
    extra: dict = field(default_factory=dict)

    def mtf_at(self, level: float) -> np.ndarray:
        return self.crossings_cy_per_px[level]

    def to_dict(self, pixel_pitch_mm: float | None = None, *, roi=None, index: int | None = None) -> dict:
        """JSON-ready dict; every field names its unit. ``index`` selects one ROI (lists otherwise)."""

        def sel(a):
            a = np.asarray(a)
            v = a[index] if index is not None else a
            return _clean(v)

        d = {
            "frequencies_cy_per_px": _clean(self.frequencies_cy_per_px),
            "mtf": sel(self.mtf),
            "mtf50_cy_per_px": sel(self.crossings_cy_per_px[0.5]),
            "mtf20_cy_per_px": sel(self.crossings_cy_per_px[0.2]),
            "mtf10_cy_per_px": sel(self.crossings_cy_per_px[0.1]),
            "edge_angle_deg": sel(self.angle_deg),
            "edge_orientation": self.orientation,
            "edge_fit_rms_px": sel(self.edge_fit_rms_px),
            "esf_positions_px": _clean(self.esf_positions_px),
            "esf": sel(self.esf),
            "lsf": sel(self.lsf),
            "flags": self.flags[index] if index is not None else self.flags,
            "messages": self.messages[index] if index is not None else self.messages,
            "oversample": self.oversample,
            "window": self.window,
            "roi": roi,
        }
        if pixel_pitch_mm:
            k = 1.0 / pixel_pitch_mm
            d["pixel_pitch_mm"] = pixel_pitch_mm
            d["frequencies_lp_per_mm"] = _clean(self.frequencies_cy_per_px * k)
            for lv, name in ((0.5, "mtf50"), (0.2, "mtf20"), (0.1, "mtf10")):
                d[f"{name}_lp_per_mm"] = sel(self.crossings_cy_per_px[lv] * k)
            d["nyquist_lp_per_mm"] = 0.5 * k
        return d


def _clean(a):
    """ndarray -> lists with NaN as None (valid JSON)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        v = float(a)
        return v if math.isfinite(v) else None
    return [_clean(v) for v in a]


def _hann(u):
    """Hann taper on |u| <= 1 (0 outside)."""
    xp = get_xp(u)
    return xp.where(xp.abs(u) < 1, 0.5 * (1 + xp.cos(np.pi * u)), 0.0)


def _biweight(u):
    """(1 - u^2)^2 on |u| < 1: a smooth, cheap (no transcendental) centroid window."""
    xp = get_xp(u)
    v = xp.maximum(1.0 - u * u, 0.0)
    return v * v


def _tukey(u, alpha=0.5):
    """Tukey window on |u| <= 1: flat for |u| < 1 - alpha, cosine taper outside."""
    xp = get_xp(u)
    a = xp.abs(u)
    taper = 0.5 * (1 + xp.cos(np.pi * (a - (1 - alpha)) / alpha))
    return xp.where(a < 1 - alpha, 1.0, xp.where(a < 1, taper, 0.0))


def auto_n_fft(width_px: int, oversample: int = 4) -> int:
    """FFT length for ROIs ``width_px`` wide across the edge: zero padding to >= 4x the longest ESF.

    It depends on the ROI size only, so every ROI of a size shares one frequency grid.
    """
    return 1 << int(math.ceil(math.log2(max(8 * width_px * oversample, 1024))))



def _first_crossing(f, m, level, xp):
    """Frequency where each row of m first falls below level (linear interpolation); NaN if never."""
    below = m < level
    has = below.any(axis=1)
    i = xp.argmax(below, axis=1)
    i = xp.maximum(i, 1)
    rows = xp.arange(m.shape[0])
    m0, m1 = m[rows, i - 1], m[rows, i]
    f0, f1 = f[i - 1], f[i]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = xp.where(m0 != m1, (m0 - level) / (m0 - m1), 0.0)
    out = f0 + t * (f1 - f0)
    return xp.where(has, out, xp.nan)


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




def _window_band(d, xs, x0: float, pred, half_w, xp):
    """The columns of ``d`` (at positions ``xs``, the first at ``x0``) within ``half_w`` of ``pred`` in some row: a view.

    Outside them the centroid window is exactly zero, so the sums over the band are the sums over
    the whole row (in another order of addition: equal to rounding); a few times fewer columns once
    the window has shrunk to the LSF's width.
    """
    reach = xp.stack([(pred - half_w[:, None]).min(), (pred + half_w[:, None]).max()])
    lo, hi = (float(v) for v in to_host(reach))
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return d, xs
    j0 = max(0, int(math.floor(lo - x0)))
    j1 = min(d.shape[-1], int(math.ceil(hi - x0)) + 1)
    if j1 - j0 < 1:
        j0, j1 = 0, d.shape[-1]
    return d[..., j0:j1], xs[j0:j1]


def _solve_batch(lhs, rhs, xp):
    """Solutions of the (B, P, P) systems ``lhs x = rhs`` in one call; a singular system gives zeros.

    One batched solve, not B small ones: on a GPU each small solve would be a handful of launches and
    a device sync. (The benchmark once taken to show that cost on an H200 had timed the NumPy path.)
    """
    ok = xp.linalg.det(lhs) != 0  # exactly singular: a zero pivot, where LAPACK's solve gives up
    eye = xp.eye(lhs.shape[-1], dtype=lhs.dtype)
    x = xp.linalg.solve(xp.where(ok[:, None, None], lhs, eye), xp.where(ok[:, None], rhs, 0.0)[:, :, None])
    return xp.where(ok[:, None], x[:, :, 0], 0.0)



_CPU_GROUP_PIXELS = 1 << 20  # ROI pixels per group on a CPU: the group's temporaries stay in the cache
_GPU_GROUP_PIXELS = 1 << 26  # on a GPU: one group for any usual batch (bounds the temporaries' memory)
_BLOCKS = 16  # row blocks of the coarse edge fit


def _masked_median(v, ok, xp):
    """Median of each row of ``v`` (B, N) over the entries where ``ok``; NaN for a row with none.

    One sort of the small (B, N) array: exact (the mean of the two middle values for an even count),
    without ``nanmedian``'s per-row copies and warnings, and the same on NumPy and CuPy.
    """
    s = xp.sort(xp.where(ok, v, xp.inf), axis=1)
    n = ok.sum(axis=1)
    lo = xp.maximum((n - 1) // 2, 0)[:, None]
    hi = xp.maximum(n // 2, 0)[:, None]
    m = 0.5 * (xp.take_along_axis(s, lo, axis=1) + xp.take_along_axis(s, hi, axis=1))[:, 0]
    return xp.where(n > 0, m, xp.nan)


def _poly(coef, yr):
    """``c0 + c1 y + c2 y^2`` for each ROI's coefficients (B, 3) at row offsets ``yr`` (R,): (B, R)."""
    return coef[:, 0, None] + (coef[:, 1, None] + coef[:, 2, None] * yr) * yr


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


def _robust_fit(cen, valid, pred, yr, poly_order: int, xp, rounds: int = 2):
    """Fit over the valid rows, rejecting rows farther than 5 robust sigmas from the previous curve.

    The first rejection is against ``pred`` (the previous estimate), then against each new fit.
    Returns the coefficients (B, 3), the rows used (B, R) and the fit's rms over them (B,).
    """
    wts = valid.astype(xp.float64)
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


def _centroids(d, xb, pred, half_w, xp, second_moment: bool = False):
    """Biweight-windowed centroid of each row of ``d`` (B, R, K) at columns ``xb`` around ``pred`` (B, R).

    Returns the centroids, the rows with positive windowed mass and (optionally) the second moments.
    """
    wd = _biweight((xb - pred[:, :, None]) / half_w[:, None, None]) * d
    s0 = wd.sum(axis=2)
    valid = s0 > 0
    s0 = xp.where(valid, s0, 1.0)
    cen = (wd * xb).sum(axis=2) / s0
    if not second_moment:
        return cen, valid, None
    return cen, valid, (wd * (xb - cen[:, :, None]) ** 2).sum(axis=2) / s0


def slanted_edge_mtf(
    rois,
    *,
    oversample: int = 4,
    window: str = "tukey",
    poly_order: int = 1,
    f_max: float = 1.0,
    orientation: str | None = None,
    n_fft: int | None = None,
    esf_smoothing: str = "adaptive",
) -> MTFResult:
    """Slanted-edge MTF of one ROI (H, W) or a batch (B, H, W), on NumPy or (ROIs on the GPU) CuPy.

    Parameters
    ----------
    rois : array (H, W) or (B, H, W), linear detector signal
        Each ROI holds one straight edge crossing it completely (ideally 2-10 degrees
        from a pixel axis). Polarity does not matter. float32 is read as is (sums in float64).
    oversample : int
        Bins per pixel along the edge normal (ISO 12233: 4).
    window : {'tukey', 'hann', 'none'}
        Window on the LSF, centred on its centroid.
    poly_order : {1, 2}
        Edge model: straight line or 2nd-order polynomial (lens distortion).
    f_max : float
        Highest frequency reported, cycles/pixel (Nyquist is 0.5; not a limit).
    orientation : {'vertical', 'horizontal'}, optional
        Force the edge orientation (default: from the gradients, one for the batch).
    n_fft : int, optional
        FFT length (zero padding); fix it to get the same frequency grid for
        ROIs of the same size whatever their edge position.
    esf_smoothing : {'adaptive', 'none'}
        'adaptive' smooths the ESF's tails where they are lost in noise (see the module notes);
        'none' keeps the binned ESF as it is.

    Returns
    -------
    MTFResult
    """
    xp = get_xp(rois)
    if esf_smoothing not in ("adaptive", "none"):
        raise ValueError(f"unknown esf_smoothing '{esf_smoothing}'; choose adaptive or none")
    a, orientation = _prepared(rois, orientation, poly_order, xp)
    b, h, w = a.shape
    per = (_CPU_GROUP_PIXELS if xp is np else _GPU_GROUP_PIXELS) // (h * w)
    step = max(1, per)
    parts = [_measure_group(a[i : i + step], poly_order, oversample, xp) for i in range(0, b, step)]
    fit, bins = _assembled(parts, oversample, xp)
    smooth = _smoothed_esf(bins, esf_smoothing == "adaptive", xp)
    fit["noise"] = smooth["noise_px"]
    bins["esf"] = smooth["esf"]
    spec = _lsf_and_mtf(bins, window, n_fft if n_fft is not None else auto_n_fft(w, oversample), oversample, f_max,
                        xp)
    flags, msgs = _flags(fit, bins, spec, fit["step"], h, f_max, xp)
    return MTFResult(
        frequencies_cy_per_px=spec["f"], mtf=spec["mtf"], esf_positions_px=bins["pos"], esf=to_host(spec["esf_n"]),
        lsf=to_host(spec["lsf_n"]), angle_deg=fit["angle"], crossings_cy_per_px=spec["crossings"], flags=flags,
        messages=msgs, orientation=orientation, edge_fit_rms_px=fit["rms"], oversample=oversample,
        window=window, extra={"n_fft": spec["n_fft"], "bins": bins["nb"], "empty_bins": bins["empty"].tolist(),
                              "groups": len(parts), "esf_smoothing": esf_smoothing,
                              "esf_noise": to_host(smooth["sigma"])},
    )


def _prepared(rois, orientation, poly_order, xp):
    """The ROIs (B, H, W), checked, turned so that the edge runs along the columns ('vertical').

    float32 and float64 ROIs are used as they are (no copy); other types become float64. The batch's
    orientation comes from the mean absolute gradients on a sample of rows and columns of <= 32 ROIs.
    """
    a = rois if getattr(rois, "dtype", None) in (xp.float32, xp.float64) else xp.asarray(rois, dtype=xp.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or min(a.shape[1:]) < 8:
        raise ValueError(f"ROIs must be (H, W) or (B, H, W) with sides >= 8 pixels, got {tuple(getattr(rois, 'shape', a.shape))}")
    if poly_order not in (1, 2):
        raise ValueError("poly_order must be 1 or 2")
    if orientation is None:
        s, sub = max(1, min(a.shape[1:]) // 32), a[:: max(1, a.shape[0] // 16)]  # <= 32 ROIs
        gx = xp.abs(xp.diff(sub[:, ::s, :], axis=2)).mean(dtype=xp.float64)
        gy = xp.abs(xp.diff(sub[:, :, ::s], axis=1)).mean(dtype=xp.float64)
        orientation = "vertical" if bool(gx >= gy) or not bool(xp.isfinite(gy)) else "horizontal"
    if orientation == "horizontal":
        a = xp.swapaxes(a, 1, 2)
    return a, orientation


def _block_profiles(a, xp):
    """The rows averaged in up to 16 blocks (B, G, W) float64, the blocks' centre rows, and whether every
    pixel is finite (checked on the block sums and the rows left over; exactly only if a sum is not)."""
    b, h, w = a.shape
    hb = max(1, h // _BLOCKS)
    g = h // hb
    prof = a[:, : g * hb].reshape(b, g, hb, w).sum(axis=2, dtype=xp.float64) / hb
    finite = xp.isfinite(prof.sum(axis=(1, 2)))
    if g * hb < h:
        finite = finite & xp.isfinite(a[:, g * hb :].sum(axis=(1, 2), dtype=xp.float64))
    if not bool(finite.all()) and not bool(xp.isfinite(a).all()):
        raise ValueError("ROI holds NaN or Inf pixels; correct or crop them before measuring the MTF")
    return prof, xp.arange(g, dtype=xp.float64) * hb + (hb - 1) / 2.0


def _measure_group(a, poly_order: int, oversample: int, xp) -> dict:
    """Edge fit and ESF bins of one group of ROIs (B, H, W): every pass over its pixels happens here."""
    b, h, w = a.shape
    a = xp.ascontiguousarray(a)
    prof, yb = _block_profiles(a, xp)
    k = max(2, w // 8)
    left, right = prof[:, :, :k].mean(axis=(1, 2)), prof[:, :, -k:].mean(axis=(1, 2))
    sign = xp.where(right >= left, 1.0, -1.0)
    yc = (h - 1) / 2.0
    coef, half_w = _coarse_fit(prof * sign[:, None, None], yb - yc, poly_order, w, xp)
    coef, used, rms = _fine_fit(a, coef, half_w, sign, poly_order, xp)
    out = _binned(a, coef, oversample, xp)
    out["sums"] = out["sums"] * sign[:, None]
    out.update(coef=coef, rms=rms, n_used=used.sum(axis=1), step=xp.abs(right - left))
    return out


def _coarse_fit(prof, yr, poly_order: int, w: int, xp):
    """The edge from the block profiles (B, G, W): windowed centroids and a fit, three passes.

    Starts at the median over the blocks of each block's steepest rise; the first window is a quarter
    of the ROI wide each side, the next ones 4 LSF sigmas + 3 px. Returns the coefficients and the
    window half-width for the fine fit (B,).
    """
    b = prof.shape[0]
    d = 0.5 * (prof[:, :, 2:] - prof[:, :, :-2])  # at x = 1 .. W-2
    xs = xp.arange(1, w - 1, dtype=xp.float64)
    coef = xp.zeros((b, 3))
    coef[:, 0] = xp.median(xp.argmax(d, axis=2), axis=1) + 1.0
    half = float(max(6.0, w / 4.0))
    half_w = xp.full((b,), half)
    for it in range(3):
        pred = _poly(coef, yr)
        db, xb = _window_band(d, xs, 1.0, pred, half_w, xp)
        cen, valid, var = _centroids(db, xb[None, None, :], pred, half_w, xp, second_moment=True)
        sig = xp.sqrt(xp.maximum(_masked_median(var, valid, xp), 0.25))
        sig = xp.where(xp.isfinite(sig), sig, half / 4)
        if it == 0:
            coef = _weighted_fit(cen, valid.astype(xp.float64), yr, poly_order, xp)
        else:
            coef = _robust_fit(cen, valid, pred, yr, poly_order, xp, rounds=0)[0]
        half_w = xp.clip(4.0 * sig + 3.0, 6.0, max(6.0, w / 3.0))
    return coef, half_w


def _fine_fit(a, coef, half_w, sign, poly_order: int, xp):
    """The edge in every row: windowed centroids on a band of columns gathered around the coarse edge.

    The band holds the ``2 ceil(max half_w) + 4`` columns around the edge in each row (the window is zero
    beyond), so the fine pass reads a fraction of the pixels. Returns coefficients, rows used, rms.
    """
    b, h, w = a.shape
    yr = xp.arange(h, dtype=xp.float64) - (h - 1) / 2.0
    pred = _poly(coef, yr)
    kh = int(math.ceil(float(half_w.max()))) + 1
    base = xp.floor(xp.clip(pred, -w, 2 * w)).astype(xp.int64)
    cols = base[:, :, None] + xp.arange(-kh - 1, kh + 3, dtype=xp.int64)  # (B, H, K + 2)
    rows = (xp.arange(b, dtype=xp.int64)[:, None] * h + xp.arange(h, dtype=xp.int64)[None, :]) * w
    vals = a.reshape(-1)[xp.clip(cols, 0, w - 1) + rows[:, :, None]].astype(xp.float64, copy=False)
    xb = cols[:, :, 1:-1]
    inside = (xb >= 1) & (xb <= w - 2)
    d = xp.where(inside, 0.5 * (vals[:, :, 2:] - vals[:, :, :-2]), 0.0) * sign[:, None, None]
    cen, valid, _ = _centroids(d, xb.astype(xp.float64), pred, half_w, xp)
    return _robust_fit(cen, valid, pred, yr, poly_order, xp, rounds=2)


def _binned(a, coef, oversample: int, xp) -> dict:
    """Every pixel's bin along the edge normal, ``floor(p * oversample)``, summed by one bincount per group.

    ROI ``i``'s bins lie at ``i L - k_lo[i] + k`` (``k_lo`` its lowest bin): the index is
    ``x s + o[y]`` truncated (s = oversample cos(theta) per row, ``o`` >= 0 folds in the row's edge and
    the ROI's offset), one fused pass. Also each ROI's reach: the range of ``p`` every row covers.
    """
    b, h, w = a.shape
    yr = xp.arange(h, dtype=xp.float64) - (h - 1) / 2.0
    ok = xp.isfinite(coef).all(axis=1) & (xp.abs(coef[:, 0]) < 16 * (w + h))
    coef = xp.where(ok[:, None], coef, xp.asarray([w / 2.0, 0.0, 0.0]))  # absurd fits: binned harmlessly
    xedge = _poly(coef, yr)
    s = oversample / xp.sqrt(1.0 + (coef[:, 1, None] + 2 * coef[:, 2, None] * yr) ** 2)  # os cos(theta_y)
    t0 = -xedge * s  # p * oversample at x = 0
    t1 = t0 + (w - 1) * s  # ... at x = W-1
    k_lo = xp.floor(t0.min(axis=1))
    span = int(to_host((xp.floor(t1.max(axis=1)) - k_lo).max())) + 2  # a spare bin: no rounding spills over
    o = t0 + (xp.arange(b, dtype=xp.float64) * span - k_lo)[:, None]
    xpix = xp.arange(w, dtype=xp.float64)
    xs = xpix * (s[:, :1, None] if bool((coef[:, 2] == 0).all()) else s[:, :, None])  # (B, 1 or H, W)
    if xp is np:
        idx = np.empty((b, h, w), dtype=np.int64)
        np.add(xs, o[:, :, None], out=idx, casting="unsafe")  # truncation = floor here (o >= k_lo)
    else:
        idx = (xs + o[:, :, None]).astype(xp.int64)
    idx = idx.reshape(-1)
    weights = a.reshape(-1) if xp is np else a.reshape(-1).astype(xp.float64)
    sums = xp.bincount(idx, weights=weights, minlength=b * span)[: b * span].reshape(b, span)
    counts = xp.bincount(idx, minlength=b * span)[: b * span].reshape(b, span)
    reach = xp.minimum(-t0.max(axis=1), t1.min(axis=1)) / oversample
    return {"sums": sums, "counts": counts, "k_lo": k_lo.astype(xp.int64), "reach": xp.where(ok, reach, -1.0)}


def _assembled(parts: list, oversample: int, xp) -> tuple[dict, dict]:
    """The groups' fits and bins as one batch: each ROI's own range ``[-own, own)`` of bins placed about a
    common centre (bins beyond it repeat its end values, so a ROI gives the same result alone or in a batch)."""
    cat = lambda key: xp.concatenate([p[key] for p in parts])  # noqa: E731
    coef, reach = cat("coef"), to_host(cat("reach"))
    own = np.floor(np.nan_to_num(reach, nan=-1.0) * oversample).astype(np.int64) - 1
    failed = own < 4 * oversample
    if failed.all():
        i = int(np.argmin(own))
        raise ValueError(f"no edge crosses the ROI with room on both sides (only {reach[i]:.1f} px on one side"
                         f"{f' in ROI {i}' if len(own) > 1 else ''}); centre the edge in the ROI or widen the ROI")
    own = np.where(failed, 4 * oversample, own)
    n_half = int(own.max())
    nb = 2 * n_half
    ii = np.arange(nb)
    valid = (ii[None, :] >= n_half - own[:, None]) & (ii[None, :] < n_half + own[:, None])  # (B, nb) host
    own_x, k = xp.asarray(own), xp.arange(nb, dtype=xp.int64) - n_half
    sums, counts, j = [], [], 0
    for p in parts:
        g, span = p["sums"].shape
        kk = xp.clip(k[None, :], -own_x[j : j + g, None], own_x[j : j + g, None] - 1)  # padding: the end bins
        seg = xp.clip(kk - p["k_lo"][:, None], 0, span - 1)
        sums.append(xp.take_along_axis(p["sums"], seg, axis=1))
        counts.append(xp.take_along_axis(p["counts"], seg, axis=1))
        j += g
    sums, counts = xp.concatenate(sums), xp.concatenate(counts)
    bins = {"esf": _fill_empty(sums / xp.maximum(counts, 1), counts), "counts": counts,
            "empty": ((to_host(counts) == 0) & valid).sum(axis=1), "pos": (ii - n_half + 0.5) / oversample,
            "own": own, "failed": failed, "reach": reach, "n_half": n_half, "nb": nb, "valid": valid, "ii": ii,
            "os": oversample}
    fit = {"coef": coef, "rms": to_host(cat("rms")), "n_used": to_host(cat("n_used")), "step": to_host(cat("step")),
           "angle": to_host(xp.degrees(xp.arctan(coef[:, 1])))}  # slope dx/dy at the centre
    return fit, bins


def _box(v, h, xp):
    """Box average of each row of ``v`` (B, N) over ``[i - h_i, i + h_i]`` (h (B, N) ints, kept in range).

    Prefix sums of ``v - v[:, :1]``: the padding before a ROI's own range (equal to its first value)
    adds exact zeros, so the result does not depend on how much padding the batch gives the ROI.
    """
    ref = v[:, :1]
    c = xp.concatenate([xp.zeros_like(ref), xp.cumsum(v - ref, axis=1)], axis=1)
    i = xp.arange(v.shape[1])[None, :]
    out = (xp.take_along_axis(c, i + h + 1, axis=1) - xp.take_along_axis(c, i - h, axis=1)) / (2 * h + 1)
    return xp.where(h > 0, out + ref, v)


def _smoothed_esf(bins: dict, adaptive: bool, xp) -> dict:
    """The noise-adaptive ESF (module notes, step 5), the ESF bins' noise (B,) and the pixel noise (B,).

    Bin noise: the robust (MAD) spread of the second differences over each ROI's own range. Support:
    from the LSF's peak outward, the bins whose slope averaged over 2 px exceeds 3 sigmas of its noise.
    Beyond it the triangular smoothing's half-width grows by 1 bin per 2 bins of distance (up to 4 px).
    """
    esf, own, n_half, nb, valid = (bins[k] for k in ("esf", "own", "n_half", "nb", "valid"))
    ii = xp.arange(nb)[None, :]
    lo, hi = xp.asarray(n_half - own)[:, None], xp.asarray(n_half + own)[:, None]  # own range [lo, hi)
    r = esf[:, 1:-1] - 0.5 * (esf[:, :-2] + esf[:, 2:])
    sigma = 1.4826 * _masked_median(xp.abs(r), (ii[:, 1:-1] > lo) & (ii[:, 1:-1] < hi - 1), xp) / math.sqrt(1.5)
    sigma = xp.where(xp.isfinite(sigma), sigma, 0.0)
    noise_px = to_host(sigma * xp.sqrt(_masked_median(bins["counts"] * 1.0, xp.asarray(valid), xp)))
    if not adaptive:
        return {"esf": esf, "sigma": sigma, "noise_px": noise_px}
    m = max(2, min(2 * bins["os"], nb // 8))  # the slope over 2 px each side
    slope = xp.zeros_like(esf)
    slope[:, m:-m] = (esf[:, 2 * m :] - esf[:, : -2 * m]) / (2 * m)
    sig = xp.abs(slope) > 3.0 * sigma[:, None] / (math.sqrt(2.0) * m)
    peak = xp.argmax(xp.where((ii >= lo) & (ii < hi), slope, -xp.inf), axis=1)[:, None]
    right = xp.argmax((ii > peak) & ~sig, axis=1)[:, None]  # first quiet bin right of the peak
    right = xp.where(right > peak, right, hi)
    rev = (ii < peak) & ~sig
    left = nb - 1 - xp.argmax(rev[:, ::-1], axis=1)[:, None]  # last quiet bin left of the peak
    left = xp.where(rev.any(axis=1, keepdims=True), left, lo - 1)
    dist = xp.maximum(xp.maximum(ii - right, left - ii), 0)
    h = xp.minimum(xp.minimum(dist // 2, 16), xp.maximum(xp.minimum(ii - lo, hi - 1 - ii), 0))
    h1 = h // 2
    return {"esf": _box(_box(esf, h1, xp), h - h1, xp), "sigma": sigma, "noise_px": noise_px}


def _lsf_and_mtf(bins: dict, window: str, n_fft: int, oversample: int, f_max: float, xp) -> dict:
    """The LSF (central difference of the ESF), windowed about its centroid, its FFT's modulus normalised at zero
    frequency and corrected for the binning and the derivative, and where it crosses 0.5, 0.2 and 0.1."""
    esf, own, n_half, nb, valid, ii = (bins[k] for k in ("esf", "own", "n_half", "nb", "valid", "ii"))
    dlt = 1.0 / oversample
    lsf = xp.zeros_like(esf)
    lsf[:, 1:-1] = 0.5 * (esf[:, 2:] - esf[:, :-2])
    inner = (ii[None, :] > n_half - own[:, None]) & (ii[None, :] < n_half + own[:, None] - 1)
    lsf = lsf * xp.asarray(inner)  # the end bins of each ROI's own range are zero, as at an array end
    posx = xp.asarray(bins["pos"])
    wpk = xp.maximum(lsf, 0)
    cent = (wpk * posx).sum(axis=1) / xp.maximum(wpk.sum(axis=1), 1e-300)
    lo_pos = xp.asarray(-(own.astype(np.float64) - 0.5) * dlt)
    hi_pos = xp.asarray((own.astype(np.float64) - 0.5) * dlt)
    span = xp.minimum(cent - lo_pos, hi_pos - cent)[:, None]
    u = (posx[None, :] - cent[:, None]) / xp.maximum(span, dlt)
    if window == "tukey":
        win = _tukey(u)
    elif window == "hann":
        win = _hann(u)
    elif window == "none":
        win = xp.asarray(valid, dtype=xp.float64)
    else:
        raise ValueError(f"unknown window '{window}'; choose tukey, hann or none")
    if n_fft < nb:
        raise ValueError(f"n_fft={n_fft} is shorter than the {nb} ESF bins")
    spec = xp.abs(xp.fft.rfft(lsf * win, n=n_fft, axis=1))
    dc = spec[:, :1]
    bad_dc = to_host(dc[:, 0] <= 0)
    f = np.arange(n_fft // 2 + 1) / (n_fft * dlt)  # cycles per pixel along the normal
    keep = int((f <= f_max + 1e-12).sum())
    f, fx = f[:keep], xp.asarray(f[:keep])
    corr = xp.maximum(xp.sinc(fx * dlt) * xp.sinc(2 * fx * dlt), 0.1)
    mtf = spec[:, :keep] / (xp.where(dc > 0, dc, 1.0) * corr[None, :])
    crossings = {lv: to_host(_first_crossing(fx, mtf, lv, xp)) for lv in LEVELS}
    mtf = to_host(mtf)
    failed = bins["failed"]
    if failed.any():
        mtf[failed] = np.nan
        for lv in LEVELS:
            crossings[lv][failed] = np.nan
    # normalised ESF / LSF for reporting
    lo_v = esf[:, : max(1, nb // 10)].mean(axis=1, keepdims=True)
    hi_v = esf[:, -max(1, nb // 10):].mean(axis=1, keepdims=True)
    span_v = xp.where(hi_v - lo_v != 0, hi_v - lo_v, 1.0)
    area = lsf.sum(axis=1, keepdims=True)
    lsf_n = lsf / xp.where(area != 0, area * dlt, 1.0)
    return {"f": f, "mtf": mtf, "crossings": crossings, "bad_dc": bad_dc, "n_fft": n_fft,
            "esf_n": (esf - lo_v) / span_v, "lsf_n": lsf_n}


def _flags(fit: dict, bins: dict, spec: dict, step, h: int, f_max: float, xp) -> tuple[list, list]:
    """Per ROI: the flags and messages that say what to trust (angle, phase sampling, edge fit, contrast)."""
    angle, rms_h, n_used, noise = fit["angle"], fit["rms"], fit["n_used"], fit["noise"]
    empty, nb, failed, reach = bins["empty"], bins["nb"], bins["failed"], bins["reach"]
    crossings, bad_dc = spec["crossings"], spec["bad_dc"]
    ang = np.abs(angle)
    reached = np.stack([np.isfinite(crossings[lv]) for lv in LEVELS], axis=1)
    poor_phase = (h * np.abs(np.tan(np.radians(ang))) < 2.0) | (empty > 0)
    any_flag = ((ang < 1.0) | (ang > 40.0) | poor_phase | (rms_h > 0.5) | (n_used < max(4, h // 4))
                | (step < 5 * noise) | failed | bad_dc | ~reached.all(axis=1))
    b = len(angle)
    flags: list[list[str]] = [[] for _ in range(b)]
    msgs: list[list[str]] = [[] for _ in range(b)]
    for i in np.nonzero(any_flag)[0]:
        def add(flag, msg, i=i):
            flags[i].append(flag)
            msgs[i].append(msg)

        if ang[i] < 1.0:
            add("angle_below_1deg", f"edge angle {angle[i]:.2f} deg is below 1 deg: phase sampling is poor; "
                "tilt the edge 2-10 deg")
        if ang[i] > 40.0:
            add("angle_near_45deg", f"edge angle {angle[i]:.1f} deg is near 45 deg; use 2-10 deg")
        if poor_phase[i]:
            add("poor_phase_sampling", f"{int(empty[i])} of {nb} ESF bins were empty (filled by interpolation); "
                "use more rows or a larger angle")
        if rms_h[i] > 0.5 or n_used[i] < max(4, h // 4):
            add("edge_fit_poor", f"edge fit residual {rms_h[i]:.2f} px over {int(n_used[i])} rows; "
                "is there one straight edge?")
        if step[i] < 5 * noise[i]:
            add("low_contrast", "the edge step is below 5x the pixel noise")
        if failed[i]:
            add("edge_not_found", f"no edge crosses this ROI with room on both sides ({reach[i]:.1f} px); "
                "its curve is NaN")
            continue
        if bad_dc[i]:
            add("no_edge", "the LSF has no positive area: no edge found")
        for j, lv in enumerate(LEVELS):
            if not reached[i, j]:
                add(f"mtf{int(lv * 100)}_not_reached", f"MTF stays above {lv} up to {f_max} cycles/pixel")
    return flags, msgs


def _pad_bins(a, n, mode):
    """Centre-pad (B, m) ESF ('edge' values) or LSF ('constant' zeros) arrays to n bins (positions centred on 0)."""
    k = (n - a.shape[1]) // 2
    return np.pad(a, ((0, 0), (k, n - a.shape[1] - k)), mode=mode)


def expand_result(res: MTFResult, keep, *, flag: str = "nonfinite_roi") -> MTFResult:
    """``res`` (of the ROIs where ``keep`` is True) as a result for every ROI: the others NaN, flagged ``flag``.

    Parameters
    ----------
    res : MTFResult
        Measured on ``keep.sum()`` ROIs, in order.
    keep : (B,) bool array
    flag : str
        The flag of the ROIs not measured (e.g. a frame skipped as NaN).
    """
    keep = np.asarray(keep, bool)
    idx = np.nonzero(keep)[0]
    if idx.size == keep.size:
        return res
    b = keep.size

    def full(a, fill=np.nan):
        a = np.asarray(a)
        out = np.full((b,) + a.shape[1:], fill, dtype=np.result_type(a.dtype, np.float64))
        out[idx] = a
        return out

    flags, messages = [[flag] for _ in range(b)], [[] for _ in range(b)]
    for j, i in enumerate(idx):
        flags[i], messages[i] = res.flags[j], res.messages[j]
    return MTFResult(frequencies_cy_per_px=res.frequencies_cy_per_px, mtf=full(res.mtf),
                     esf_positions_px=res.esf_positions_px, esf=full(res.esf), lsf=full(res.lsf),
                     angle_deg=full(res.angle_deg),
                     crossings_cy_per_px={lv: full(v) for lv, v in res.crossings_cy_per_px.items()},
                     flags=flags, messages=messages, orientation=res.orientation,
                     edge_fit_rms_px=full(res.edge_fit_rms_px), oversample=res.oversample, window=res.window,
                     extra=dict(res.extra))


def concat_results(parts: list) -> MTFResult:
    """Concatenate results of ROI groups of the same size (same frequency grid)."""
    first = parts[0]
    if len(parts) == 1:
        return first
    nb = max(p.esf.shape[1] for p in parts)
    longest = max(parts, key=lambda p: p.esf.shape[1])
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return MTFResult(
        frequencies_cy_per_px=first.frequencies_cy_per_px, mtf=cat("mtf"),
        esf_positions_px=longest.esf_positions_px,
        esf=np.concatenate([_pad_bins(p.esf, nb, "edge") for p in parts]),
        lsf=np.concatenate([_pad_bins(p.lsf, nb, "constant") for p in parts]),
        angle_deg=cat("angle_deg"),
        crossings_cy_per_px={lv: np.concatenate([p.crossings_cy_per_px[lv] for p in parts]) for lv in LEVELS},
        flags=sum((p.flags for p in parts), []), messages=sum((p.messages for p in parts), []),
        orientation=first.orientation, edge_fit_rms_px=cat("edge_fit_rms_px"), oversample=first.oversample,
        window=first.window, extra={"groups": len(parts)},
    )

