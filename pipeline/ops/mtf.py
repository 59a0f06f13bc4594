"""Slanted-edge MTF (ISO 12233 / IEC 62220-1 style), batched over ROIs, on NumPy or CuPy.

Algorithm (for each of B ROIs of the same shape, vectorised over the batch):

1. Orientation: the edge is treated as near-vertical (rows cross it); ROIs with
   a near-horizontal edge are transposed. Polarity is normalised (dark-to-bright).
2. Edge location per row: derivative ``[-1/2, 0, 1/2]`` along the row, a Hann
   window around the current estimate, the centroid; a straight line (or a
   2nd-order polynomial) fitted over rows by least squares with outlier
   rejection; three passes, the window narrowing to the measured LSF width.
3. Projection of every pixel onto the edge normal, ``p = (x - x_edge(y)) cos(theta)``
   (this is the slant correction of the frequency axis: frequencies come out
   in cycles per pixel along the normal), binned at 1/oversample pixel; empty
   bins are filled by linear interpolation and flagged.
4. ESF -> LSF by central difference; the LSF is windowed (Tukey by default,
   centred on the LSF centroid); zero-padded FFT; |.| normalised at f = 0.
5. Corrections: the central difference's transfer ``sinc(2 f d)`` and the bin
   average's ``sinc(f d)`` (d = bin width) are divided out.
6. MTF50/20/10 by linear interpolation at the first crossing; no clipping at
   Nyquist (the curve is reported to ``f_max``, 1 cycle/pixel by default).

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


def _nanmedian(a, axis, keepdims=False):
    """nanmedian that returns NaN for an all-NaN slice without a warning (a constant ROI has no edge rows)."""
    import warnings

    xp = get_xp(a)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return xp.nanmedian(a, axis=axis, keepdims=keepdims)


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


_CPU_GROUP_PIXELS = 1 << 19  # ROI pixels per vectorised group on a CPU (keeps temporaries in cache)


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


def slanted_edge_mtf(
    rois,
    *,
    oversample: int = 4,
    window: str = "tukey",
    poly_order: int = 1,
    f_max: float = 1.0,
    orientation: str | None = None,
    n_fft: int | None = None,
) -> MTFResult:
    """Slanted-edge MTF of one ROI (H, W) or a batch (B, H, W).

    Parameters
    ----------
    rois : array (H, W) or (B, H, W), linear detector signal
        Each ROI holds one straight edge crossing it completely (ideally 2-10 degrees
        from a pixel axis). Polarity does not matter.
    oversample : int
        Bins per pixel along the edge normal (ISO 12233: 4).
    window : {'tukey', 'hann', 'none'}
        Window on the LSF, centred on its centroid.
    poly_order : {1, 2}
        Edge model: straight line or 2nd-order polynomial (lens distortion).
    f_max : float
        Highest frequency reported, cycles/pixel (Nyquist is 0.5; not a limit).
    orientation : {'vertical', 'horizontal'}, optional
        Force the edge orientation (default: from the gradients).
    n_fft : int, optional
        FFT length (zero padding); fix it to get the same frequency grid for
        ROIs of the same size whatever their edge position.

    Returns
    -------
    MTFResult
    """
    xp = get_xp(rois)
    if xp is np and getattr(rois, "ndim", 0) == 3:
        group = max(1, _CPU_GROUP_PIXELS // int(rois.shape[1] * rois.shape[2]))
        if rois.shape[0] > group:
            if orientation is None:  # one orientation for the whole batch, as in one call
                a = np.asarray(rois, dtype=np.float64)
                gx = float(np.abs(np.diff(a, axis=2)).mean())
                gy = float(np.abs(np.diff(a, axis=1)).mean())
                orientation = "vertical" if gx >= gy else "horizontal"
            parts = [slanted_edge_mtf(rois[i : i + group], oversample=oversample, window=window, poly_order=poly_order,
                                      f_max=f_max, orientation=orientation, n_fft=n_fft)
                     for i in range(0, rois.shape[0], group)]
            return concat_results(parts)
    a, orientation = _prepared(rois, orientation, poly_order, xp)
    b, h, w = a.shape
    a, step = _dark_to_bright(a, xp)
    fit = _fit_edges(a, poly_order, xp)
    bins = _bin_esf(a, fit["coef"], oversample, xp)
    spec = _lsf_and_mtf(bins, window, n_fft if n_fft is not None else auto_n_fft(w, oversample), oversample, f_max,
                        xp)
    flags, msgs = _flags(fit, bins, spec, step, h, f_max, xp)
    return MTFResult(
        frequencies_cy_per_px=spec["f"], mtf=spec["mtf"], esf_positions_px=bins["pos"], esf=to_host(spec["esf_n"]),
        lsf=to_host(spec["lsf_n"]), angle_deg=fit["angle"], crossings_cy_per_px=spec["crossings"], flags=flags,
        messages=msgs, orientation=orientation, edge_fit_rms_px=to_host(fit["rms"]), oversample=oversample,
        window=window, extra={"n_fft": spec["n_fft"], "bins": bins["nb"], "empty_bins": bins["empty"].tolist()},
    )


def _prepared(rois, orientation, poly_order, xp):
    """The ROIs as float64 (B, H, W), checked, turned so that the edge runs along the columns ('vertical')."""
    a = xp.asarray(rois, dtype=xp.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or min(a.shape[1:]) < 8:
        raise ValueError(f"ROIs must be (H, W) or (B, H, W) with sides >= 8 pixels, got {tuple(rois.shape)}")
    if not bool(xp.all(xp.isfinite(a))):
        raise ValueError("ROI holds NaN or Inf pixels; correct or crop them before measuring the MTF")
    if poly_order not in (1, 2):
        raise ValueError("poly_order must be 1 or 2")
    if orientation is None:
        gx = float(xp.abs(xp.diff(a, axis=2)).mean())
        gy = float(xp.abs(xp.diff(a, axis=1)).mean())
        orientation = "vertical" if gx >= gy else "horizontal"
    if orientation == "horizontal":
        a = xp.swapaxes(a, 1, 2)
    return a, orientation


def _dark_to_bright(a, xp):
    """Each ROI with its dark side left (polarity does not matter), and its edge step (host)."""
    w = a.shape[2]
    left = a[:, :, : max(2, w // 8)].mean(axis=(1, 2))
    right = a[:, :, -max(2, w // 8):].mean(axis=(1, 2))
    sign = xp.where(right >= left, 1.0, -1.0)
    return a * sign[:, None, None], to_host(xp.abs(right - left))


def _fit_edges(a, poly_order: int, xp) -> dict:
    """The edge in every row (biweight-windowed centroids of the row derivative, 4 passes with outlier
    rejection) fitted by a line or parabola ``x = c0 + c1 (y - yc) + c2 (y - yc)^2``."""
    b, h, w = a.shape
    d = 0.5 * (a[:, :, 2:] - a[:, :, :-2])  # (B, H, W-2) at x = 1..W-2
    xs = xp.arange(1, w - 1, dtype=xp.float64)
    ys = xp.arange(h, dtype=xp.float64)
    yc = (h - 1) / 2.0
    # first estimate: centroid of the positive part of a smoothed row derivative
    dmed = xp.median(d, axis=2, keepdims=True)
    dpos = xp.maximum(d - dmed, 0)
    guess = (dpos * xs).sum(axis=2) / xp.maximum(dpos.sum(axis=2), 1e-300)  # (B, H)
    centre = xp.median(guess, axis=1)  # (B,)
    coef = xp.zeros((b, 3))
    coef[:, 0] = centre
    half = float(max(6.0, w / 4.0))
    half_w = xp.full((b,), half)
    vander = xp.stack([xp.ones(h), ys - yc, (ys - yc) ** 2], axis=1)[:, : poly_order + 1]  # (H, P)
    rms = xp.zeros(b)
    for it in range(4):
        pred = coef[:, 0, None] + coef[:, 1, None] * (ys - yc) + coef[:, 2, None] * (ys - yc) ** 2  # (B, H)
        # the window is zero beyond half_w of the edge: only the columns it reaches in some row of some ROI
        db, xb = _window_band(d, xs, 1.0, pred, half_w, xp)  # d's columns are x = 1..W-2
        u = (xb[None, None, :] - pred[:, :, None]) / half_w[:, None, None]
        wd = _biweight(u) * db
        s0 = wd.sum(axis=2)
        cen = (wd * xb).sum(axis=2) / xp.where(s0 > 0, s0, 1.0)
        valid = s0 > 0
        # width of the LSF (second moment) for the next window
        var = (wd * (xb[None, None, :] - cen[:, :, None]) ** 2).sum(axis=2) / xp.where(s0 > 0, s0, 1.0)
        sig = xp.sqrt(xp.maximum(_nanmedian(xp.where(valid, var, xp.nan), axis=1), 0.25))
        sig = xp.where(xp.isfinite(sig), sig, half / 4)
        # weighted least squares over valid rows, with outlier rejection after the first pass
        wts = valid.astype(xp.float64)
        if it > 0:
            resid = cen - pred
            mad = _nanmedian(xp.where(valid, xp.abs(resid), xp.nan), axis=1, keepdims=True)
            mad = xp.where(xp.isfinite(mad), mad, 1.0)
            wts = wts * (xp.abs(resid) <= xp.maximum(5 * 1.4826 * mad, 0.05))
        at = xp.swapaxes(vander[None, :, :] * wts[:, :, None], 1, 2)  # (B, P, H): the normal equations
        sol = _solve_batch(at @ vander, (at @ xp.where(valid, cen, 0.0)[:, :, None])[:, :, 0], xp)
        coef = xp.zeros((b, 3))
        coef[:, : poly_order + 1] = sol
        fit = coef[:, 0, None] + coef[:, 1, None] * (ys - yc) + coef[:, 2, None] * (ys - yc) ** 2
        used = wts > 0
        rms = xp.sqrt((xp.where(used, (cen - fit) ** 2, 0)).sum(axis=1) / xp.maximum(used.sum(axis=1), 1))
        half_w = xp.clip(4.0 * sig + 3.0, 6.0, max(6.0, w / 3.0))
    noise = to_host(xp.median(xp.abs(d - dmed), axis=(1, 2))) * 1.4826 * math.sqrt(2)
    return {"coef": coef, "rms": rms, "n_used": to_host(used.sum(axis=1)),
            "angle": to_host(xp.degrees(xp.arctan(coef[:, 1]))),  # slope dx/dy at the centre
            "noise": noise}


def _bin_esf(a, coef, oversample: int, xp) -> dict:
    """Every pixel projected onto the edge normal and binned ``oversample`` bins a pixel: the ESF of each ROI over
    its own symmetric range, fully covered by all its rows (bins beyond it are padding, so a ROI gives the same
    result alone or in any batch)."""
    b, h, w = a.shape
    ys = xp.arange(h, dtype=xp.float64)
    yc = (h - 1) / 2.0
    dlt = 1.0 / oversample
    yy = (ys - yc)[None, :, None]
    xedge = coef[:, 0, None, None] + coef[:, 1, None, None] * yy + coef[:, 2, None, None] * yy**2  # (B, H, 1)
    local_slope = coef[:, 1, None, None] + 2 * coef[:, 2, None, None] * yy
    cosl = xp.cos(xp.arctan(local_slope))
    xpix = xp.arange(w, dtype=xp.float64)[None, None, :]
    p = (xpix - xedge) * cosl  # (B, H, W)
    lo = to_host(((0 - xedge) * cosl).max(axis=(1, 2)))
    hi = to_host(((w - 1 - xedge) * cosl).min(axis=(1, 2)))
    reach = np.minimum(-lo, hi)
    own = np.floor(np.nan_to_num(reach, nan=-1.0) / dlt).astype(np.int64) - 1
    failed = own < 4 * oversample
    if failed.all():
        i = int(np.argmin(own))
        raise ValueError(f"no edge crosses the ROI with room on both sides (only {reach[i]:.1f} px on one side"
                         f"{f' in ROI {i}' if b > 1 else ''}); centre the edge in the ROI or widen the ROI")
    own = np.where(failed, 4 * oversample, own)
    n_half = int(own.max())
    nb = 2 * n_half
    own_x = xp.asarray(own)[:, None, None]
    idx = xp.floor(p / dlt).astype(xp.int64) + n_half
    inside = (idx >= n_half - own_x) & (idx < n_half + own_x)
    flat = idx + (xp.arange(b, dtype=xp.int64) * nb)[:, None, None]
    flat = xp.where(inside, flat, b * nb)  # dump bin
    sums = xp.bincount(flat.ravel(), weights=a.ravel(), minlength=b * nb + 1)[: b * nb].reshape(b, nb)
    counts = xp.bincount(flat.ravel(), minlength=b * nb + 1)[: b * nb].reshape(b, nb)
    ii = np.arange(nb)
    valid = (ii[None, :] >= n_half - own[:, None]) & (ii[None, :] < n_half + own[:, None])  # (B, nb) host
    return {"esf": _fill_empty(sums / xp.maximum(counts, 1), counts),  # padding: nearest own value
            "empty": ((to_host(counts) == 0) & valid).sum(axis=1), "pos": (np.arange(nb) - n_half + 0.5) * dlt,
            "own": own, "failed": failed, "reach": reach, "n_half": n_half, "nb": nb, "valid": valid, "ii": ii}


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
    lw = lsf * win
    if n_fft < nb:
        raise ValueError(f"n_fft={n_fft} is shorter than the {nb} ESF bins")
    spec = xp.abs(xp.fft.rfft(lw, n=n_fft, axis=1))
    dc = spec[:, :1]
    bad_dc = to_host(dc[:, 0] <= 0)
    mtf = spec / xp.where(dc > 0, dc, 1.0)
    f = np.arange(n_fft // 2 + 1) / (n_fft * dlt)  # cycles per pixel along the normal
    keep = f <= f_max + 1e-12
    f = f[keep]
    fx = xp.asarray(f)
    corr = xp.maximum(xp.sinc(fx * dlt) * xp.sinc(2 * fx * dlt), 0.1)
    mtf = mtf[:, keep] / corr[None, :]
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
    lsf_n = lsf / xp.where(lsf.sum(axis=1, keepdims=True) != 0, lsf.sum(axis=1, keepdims=True) * dlt, 1.0)
    return {"f": f, "mtf": mtf, "crossings": crossings, "bad_dc": bad_dc, "n_fft": n_fft,
            "esf_n": (esf - lo_v) / span_v, "lsf_n": lsf_n}


def _flags(fit: dict, bins: dict, spec: dict, step, h: int, f_max: float, xp) -> tuple[list, list]:
    """Per ROI: the flags and messages that say what to trust (angle, phase sampling, edge fit, contrast)."""
    angle, rms_h, n_used, noise = fit["angle"], to_host(fit["rms"]), fit["n_used"], fit["noise"]
    empty, nb, failed, reach = bins["empty"], bins["nb"], bins["failed"], bins["reach"]
    crossings, bad_dc = spec["crossings"], spec["bad_dc"]
    b = len(angle)
    flags: list[list[str]] = [[] for _ in range(b)]
    msgs: list[list[str]] = [[] for _ in range(b)]
    for i in range(b):
        ang = abs(float(angle[i]))
        if ang < 1.0:
            flags[i].append("angle_below_1deg")
            msgs[i].append(f"edge angle {angle[i]:.2f} deg is below 1 deg: phase sampling is poor; tilt the edge 2-10 deg")
        if ang > 40.0:
            flags[i].append("angle_near_45deg")
            msgs[i].append(f"edge angle {angle[i]:.1f} deg is near 45 deg; use 2-10 deg")
        if h * abs(math.tan(math.radians(ang))) < 2.0 or empty[i] > 0:
            flags[i].append("poor_phase_sampling")
            msgs[i].append(f"{int(empty[i])} of {nb} ESF bins were empty (filled by interpolation); "
                           "use more rows or a larger angle")
        if rms_h[i] > 0.5 or n_used[i] < max(4, h // 4):
            flags[i].append("edge_fit_poor")
            msgs[i].append(f"edge fit residual {rms_h[i]:.2f} px over {int(n_used[i])} rows; is there one straight edge?")
        if step[i] < 5 * noise[i]:
            flags[i].append("low_contrast")
            msgs[i].append("the edge step is below 5x the pixel noise")
        if failed[i]:
            flags[i].append("edge_not_found")
            msgs[i].append(f"no edge crosses this ROI with room on both sides ({reach[i]:.1f} px); its curve is NaN")
            continue
        if bad_dc[i]:
            flags[i].append("no_edge")
            msgs[i].append("the LSF has no positive area: no edge found")
        for lv in LEVELS:
            if not np.isfinite(crossings[lv][i]):
                flags[i].append(f"mtf{int(lv * 100)}_not_reached")
                msgs[i].append(f"MTF stays above {lv} up to {f_max} cycles/pixel")
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

