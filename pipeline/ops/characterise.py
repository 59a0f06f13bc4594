"""Detector figures of merit (IEC 62220-1-1 style): linearity, NNPS, DQE.

* Linearity: mean signal vs air kerma, with linear, power-law (``S = c K^p``) and quadratic fits;
  per-pixel polynomial response for a multi-point gain calibration.
* NNPS (:func:`nnps`): 256 x 256 ROIs overlapping by 128 pixels over the analysed region,
  ``NPS(u, v) = dx dy / (M sum w^2) sum_m |FFT(w ROI_m)|^2``; 1D cuts from the 7 rows (columns) on each
  side of the axis, the axis itself excluded, each sample at its radial frequency, binned at the FFT
  spacing; ``NNPS = NPS / mean^2`` in mm^2. Two methods: 'welch' (default: the frames' mean subtracted,
  Hann taper w, the taper's and the bins' smoothing corrected, untrustworthy bins flagged) and 'iec'
  (IEC 62220-1-1: the region detrended by a 2D second-order polynomial, square ROIs, w = 1). The bands,
  their bins and the smoothing corrections: :mod:`pipeline.ops.nnps_bands`.
* Lag: :func:`lag_correction_factor`, the factor a lagged detector's single-frame NNPS is low by.
* DQE: ``DQE(f) = MTF(f)^2 / (K_a q NNPS(f))`` with ``q`` the photons per mm^2 per uGy of the beam.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_xp, to_host
from .nnps_bands import (_band_geometry, _full_from_half, _half_spectrum_index, _log_smooth, _smoothing_correction,
                         _window_m2)

# IEC 62220-1-1:2015, photon fluence per air kerma (1 / (mm^2 uGy))
Q_PER_UGY_MM2 = {"RQA3": 20673.0, "RQA5": 29653.0, "RQA7": 32490.0, "RQA9": 31077.0}


# --------------------------------------------------------------------------- linearity
def fit_linearity(kerma_ugy, signal) -> dict:
    """Linear (``a K + b``), power-law (``c K^p``, log-log least squares) and quadratic fits of S(K).

    Returns the coefficients, the relative residuals of each fit, and ``p`` (p > 1: super-linear).
    """
    k = np.asarray(kerma_ugy, dtype=np.float64)
    s = np.asarray(signal, dtype=np.float64)
    if k.size < 2 or np.any(k <= 0) or np.any(s <= 0):
        raise ValueError("linearity needs at least two positive air-kerma levels with positive signal")
    a, b = np.polyfit(k, s, 1)
    lin = a * k + b
    if k.size >= 3:
        p, logc = np.polyfit(np.log(k), np.log(s), 1)
    else:
        p, logc = np.polyfit(np.log(k), np.log(s), 1)
    pw = math.exp(logc) * k**p
    quad = np.polyfit(k, s, 2) if k.size >= 3 else np.array([0.0, a, b])
    qf = np.polyval(quad, k)
    rel = lambda f: ((s - f) / s).tolist()  # noqa: E731
    return {
        "kerma_uGy": k.tolist(), "signal": s.tolist(),
        "linear": {"slope_per_uGy": float(a), "intercept": float(b), "relative_residuals": rel(lin),
                   "r2": float(1 - np.sum((s - lin) ** 2) / max(np.sum((s - s.mean()) ** 2), 1e-300))},
        "power_law": {"c": float(math.exp(logc)), "exponent_p": float(p), "relative_residuals": rel(pw)},
        "quadratic": {"coefficients_high_first": quad.tolist(), "relative_residuals": rel(qf)},
    }


def fit_pixel_response(kerma_ugy, stacks, *, reference_ugy: float | None = None):
    """Per-pixel response as a quadratic in log-log space: ``ln S = a + b ln K + c (ln K)^2``.

    Exact for a power law (``c = 0``, ``b = p``) and follows mild curvature; three levels or more
    (two: ``c = 0``). ``ln K`` is taken relative to ``reference_ugy`` (default: the geometric mean).

    Parameters
    ----------
    kerma_ugy : (L,) air kerma of each flat level
    stacks : (L, H, W) mean dark-subtracted flat of each level

    Returns
    -------
    (4, H, W) float32: ``a, b, c`` per pixel and, in plane 3, ``ln`` of the reference kerma (constant)
    """
    xp = get_xp(stacks)
    k = np.asarray(kerma_ugy, dtype=np.float64)
    if k.size < 2:
        raise ValueError("a per-pixel response needs at least two air-kerma levels")
    ref = float(np.exp(np.mean(np.log(k)))) if reference_ugy is None else float(reference_ugy)
    x = np.log(k / ref)
    basis = np.stack([np.ones_like(x), x, x * x], axis=1) if k.size >= 3 else np.stack([np.ones_like(x), x], axis=1)
    pinv = xp.asarray(np.linalg.pinv(basis))
    logs = xp.log(xp.maximum(xp.asarray(stacks, dtype=xp.float64), 1e-6))
    coef = xp.tensordot(pinv, logs, axes=(1, 0))
    out = xp.zeros((4,) + tuple(coef.shape[1:]), dtype=xp.float32)
    out[: coef.shape[0]] = coef
    out[3] = math.log(ref)
    return out


def linearize(frames, coeffs, *, reference_slope=None):
    """Invert :func:`fit_pixel_response`: dark-subtracted signal -> ``slope x K`` (a linear detector's counts).

    ``slope`` (counts per uGy) defaults to the median response at the reference kerma, so at that
    dose the linearised signal equals the measured one. Non-positive signal maps to 0.
    """
    xp = get_xp(frames)
    a, b, c = coeffs[0], coeffs[1], coeffs[2]
    ln_ref = float(to_host(coeffs[3]).ravel()[0])
    if reference_slope is None:
        reference_slope = float(xp.median(xp.exp(a))) / math.exp(ln_ref)
    s = xp.maximum(frames, 1e-6)
    d = xp.log(s) - a
    # c x^2 + b x - d = 0 -> x = 2 d / (b + sqrt(b^2 + 4 c d))  (the root that tends to d / b as c -> 0)
    disc = xp.sqrt(xp.maximum(b * b + 4 * c * d, 0))
    x = 2 * d / xp.where(b + disc > 0, b + disc, 1)
    k = xp.exp(x + ln_ref)
    return xp.where(frames > 0, k * np.float32(reference_slope), 0).astype(xp.float32)


# --------------------------------------------------------------------------- NNPS
def detrend_quadratic(region):
    """Subtract the least-squares 2D second-order polynomial surface (keeps the mean)."""
    xp = get_xp(region)
    h, w = region.shape[-2:]
    y, x = np.mgrid[0:h, 0:w]
    y = (y - h / 2) / h
    x = (x - w / 2) / w
    A = np.stack([np.ones(h * w), x.ravel(), y.ravel(), (x * x).ravel(), (x * y).ravel(), (y * y).ravel()], axis=1)
    Ax = xp.asarray(A)
    flat = region.reshape(-1, h * w).T.astype(xp.float64)  # (HW, n)
    coef = xp.asarray(np.linalg.lstsq(A, to_host(flat), rcond=None)[0])
    fit = (Ax @ coef).T.reshape(region.shape)
    return region - fit + xp.mean(region, axis=(-2, -1), keepdims=True)


NNPS_METHODS = ("welch", "iec")
# Welch: a bin is not trusted where its smoothing correction from the log-smoothed curve and from the raw curve differ
# by more than this (significantly): measured on the exact expectation, it keeps the trusted bins within 3 % for
# Gaussian spreads up to 20 px at 10 um pixels and 256-pixel ROIs (within 1.6 % up to 10 px)
_MAX_CORRECTION_DISAGREEMENT = 0.02
DETRENDS = ("auto", "frames", "quadratic", "none")


def _taper_1d(window: str, roi: int, method: str) -> np.ndarray | None:
    if window == "none":
        return None
    if window != "hann":
        raise ValueError(f"unknown NNPS window '{window}'; choose none (square ROIs, IEC) or hann")
    if method == "iec":  # the Hann taper of the IEC option as it always was (kept for identical numbers)
        return np.hanning(roi + 2)[1:-1]
    # periodic Hann: its spectrum is zero beyond +-1 bin, so the DC term only reaches the first bin
    return np.sin(np.pi * np.arange(roi) / roi) ** 2


def _default_region(h: int, w: int, roi: int, overlap: int) -> tuple[int, int, int, int]:
    """The central square that fits (its side a multiple of ``overlap`` where it holds one ROI or more)."""
    side = min(h, w)
    side -= side % overlap if side >= roi else 0
    y0, x0 = (h - side) // 2, (w - side) // 2
    return (y0, y0 + side, x0, x0 + side)


def _detrend_used(method: str, detrend: str, n: int) -> str:
    """The detrending :func:`nnps` applies: 'quadratic' for 'iec', 'auto' resolved by the number of frames."""
    if method == "iec":
        detrend_used = "quadratic"
    elif detrend == "auto":
        detrend_used = "frames" if n >= 2 else "quadratic"
    else:
        detrend_used = detrend
    if detrend_used == "frames" and n < 2:
        raise ValueError("detrend='frames' needs two frames or more")
    return detrend_used


def _nnps_inputs(flats, method, detrend, window, roi, overlap, region):
    """Checked inputs of :func:`nnps`: ``(xp, frames (N, H, W), window, region, detrend used)``."""
    if method not in NNPS_METHODS:
        raise ValueError(f"unknown NNPS method '{method}'; choose welch (default) or iec (IEC 62220-1-1)")
    if detrend not in DETRENDS:
        raise ValueError(f"unknown NNPS detrend '{detrend}'; choose auto, frames, quadratic or none")
    window = ("none" if method == "iec" else "hann") if window is None else window
    xp = get_xp(flats)
    f = xp.asarray(flats)
    if f.ndim == 2:
        f = f[None]
    n, h, w = f.shape
    if region is None:
        region = _default_region(h, w, roi, overlap)
    y0, y1, x0, x1 = region
    if y1 - y0 < roi or x1 - x0 < roi:
        raise ValueError(f"the analysed region {y1 - y0} x {x1 - x0} is smaller than one {roi} x {roi} ROI")
    return xp, f, window, region, _detrend_used(method, detrend, n)


def _remove_trend(xp, f, region, method: str, detrend_used: str):
    """The analysed region with its trend removed (or the offset to remove per ROI).

    Returns ``(reg, offset, scale, mean_signal)``: ``offset`` (None, a float or the mean frame) is subtracted from each
    ROI's tiles when the region is not detrended as a whole; ``scale`` corrects the power for the frames' mean removed.
    """
    y0, y1, x0, x1 = region
    n = f.shape[0]
    sub = f[:, y0:y1, x0:x1]
    scale = 1.0
    offset = None  # subtracted from each ROI's tiles (float64), when the region is not detrended as a whole
    if method == "iec":
        sub = sub.astype(xp.float64)
        mean_signal = float(xp.mean(sub))
        reg = detrend_quadratic(sub)  # keeps the mean; each ROI's own mean is removed below
    else:
        mean_frame = xp.mean(sub, axis=0, dtype=xp.float64)
        mean_signal = float(xp.mean(mean_frame))
        if detrend_used == "quadratic":
            reg = detrend_quadratic(sub.astype(xp.float64))
            reg -= xp.mean(reg, axis=(-2, -1), keepdims=True)
        else:  # frames or none: per ROI from the input (no float64 copy of the whole stack)
            reg = sub
            offset = mean_frame if detrend_used == "frames" else mean_signal
            scale = n / (n - 1.0) if detrend_used == "frames" else 1.0
    return reg, offset, scale, mean_signal


def _roi_layout(shape, roi: int, overlap: int):
    """The ROIs over a (N, H, W) region and the units the standard errors come from.

    Returns ``(corners, by_roi, units)``: the ROIs' top-left corners (``roi - overlap`` apart), whether the units are
    the ROI positions (fewer than 3 frames) rather than the frames, and their number.
    """
    step = roi - overlap
    corners = [(yy, xx) for yy in range(0, shape[1] - roi + 1, step)
               for xx in range(0, shape[2] - roi + 1, step)]
    # the spread between independent parts gives the standard errors: frames, or with fewer than 3 frames each ROI
    by_roi = shape[0] < 3  # (then the frames of a position together: two frames less their mean are one realisation)
    units = len(corners) if by_roi else shape[0]
    return corners, by_roi, units


def _model_std_error(member, m: int):
    """Relative standard error of a bin from ``m`` ROIs when there is no spread to measure it by."""
    # with a single unit no spread: the standard error of a mean of independent periodogram samples instead (half
    # of a bin's band samples are independent, P(-k) = P(k)), per ROI
    return 1 / np.sqrt(np.maximum((member > 0).sum(axis=0) / 2, 1) * m)


def _beyond_first_bin(bins, roi: int, pixel_pitch_mm: float):
    """Bins at 2 / ROI or above (the detrending, the ROI mean and the taper's main lobe reach the first bin)."""
    df = 1.0 / (roi * pixel_pitch_mm)
    return bins >= 2 * df - df / 4


def _add_band(band, at, p, index, by_roi: bool) -> None:
    """Add the two cuts' samples of the periodograms ``p`` (frames, rfft2 half) to ``band[:, at]`` (summed if by
    ROI)."""
    hr, hc, vr, vc = index
    band[0, at] += p[:, hr, hc].sum(axis=0, keepdims=True) if by_roi else p[:, hr, hc]
    band[1, at] += p[:, vr, vc].sum(axis=0, keepdims=True) if by_roi else p[:, vr, vc]


def _roi_power(xp, reg, offset, corners, roi: int, method: str, t1, ref1, rows, by_roi: bool, units: int):
    """The ROIs' periodograms: their sum (rfft2 half) and, per unit, the band samples of the two cuts.

    Returns ``(acc, band, ref_band)``; ``ref_band`` holds the band samples with the taper ``ref1`` (the IEC method's
    leakage-free reference), None without it.
    """
    n = reg.shape[0]
    taper = xp.asarray(np.outer(t1, t1)) if t1 is not None else None
    ref_taper = xp.asarray(np.outer(ref1, ref1)) if ref1 is not None else None
    index = tuple(xp.asarray(a) for a in _half_spectrum_index(int(roi), rows))
    acc = xp.zeros((roi, roi // 2 + 1), dtype=xp.float64)
    band = xp.zeros((2, units, rows.size, roi), dtype=xp.float64)  # per unit: the two cuts' samples
    ref_band = xp.zeros_like(band) if ref_taper is not None else None
    chunk = max(1, (1 << 22) // (roi * roi))  # frames per batched FFT (bounded memory for long series)
    for i, (yy, xx) in enumerate(corners):
        for c0 in range(0, n, chunk):
            fr = slice(c0, min(c0 + chunk, n))
            tiles = reg[fr, yy : yy + roi, xx : xx + roi].astype(xp.float64)  # (frames, roi, roi)
            if offset is not None:
                tiles -= offset if isinstance(offset, float) else offset[yy : yy + roi, xx : xx + roi]
            if method == "iec":
                tiles = tiles - tiles.mean(axis=(1, 2), keepdims=True)
            p = xp.abs(xp.fft.rfft2(tiles if taper is None else tiles * taper)) ** 2
            acc += p.sum(axis=0)
            at = slice(i, i + 1) if by_roi else fr
            _add_band(band, at, p, index, by_roi)
            if ref_taper is not None:
                _add_band(ref_band, at, xp.abs(xp.fft.rfft2(tiles * ref_taper)) ** 2, index, by_roi)
    return acc, band, ref_band


def _unit_cuts(band, units: int, keep, factor: float, member):
    """The 1D cuts of each unit, ``(cut, unit, bin)``: its band samples times ``factor``, each bin their mean."""
    return (to_host(band).reshape(2, units, -1)[:, :, keep.ravel()] * factor) @ member


def _iec_bin_means(vals, half, freq, bins, df: float):
    """The IEC cut as it always was: the mean of the samples within +-df/2 of each bin."""
    out = np.full(bins.size, np.nan)
    for i, b in enumerate(bins):
        msk = half & (np.abs(freq - b) <= df / 2)
        if msk.any():
            out[i] = vals[msk].mean()
    return out


def _iec_trusted(nh, nv, frames_cut, ref_frames, model_se, above):
    """IEC bins to trust: above 2 / ROI, and within 5 % (and 3 standard errors) of the leakage-free reference.

    Returns ``(trusted, leak)`` with ``leak`` = |IEC value / reference - 1| (NaN in the first bin).
    """
    units = frames_cut.shape[1]
    ref = ref_frames.mean(axis=1)
    leak = np.abs(np.stack([nh, nv]) / ref - 1).max(axis=0)  # NaN in the first bin (no reference there)
    if units >= 2:
        diff = (frames_cut - ref_frames) / ref[:, None, :]
        tol = np.maximum(0.05, 3 * diff.std(axis=1, ddof=1).max(axis=0) / math.sqrt(units))
    else:  # the two estimates of one ROI differ by about 0.7 of one's error
        tol = np.maximum(0.05, 3 * 0.7 * model_se)
    return above & (leak <= tol), leak


def _iec_cuts(nps2, mean_signal, geometry, pixel_pitch_mm, roi, ref1, ref_band, unit, frames_cut, model_se, above):
    """The IEC method's cuts from the 2D NPS and their trust (against a leakage-free Welch estimate).

    Returns ``(frames_cut, nh, nv, trusted, extra)``.
    """
    rows, freq, bins, keep, member, x1, x2 = geometry
    units = frames_cut.shape[1]
    df = 1.0 / (roi * pixel_pitch_mm)
    nyq = 0.5 / pixel_pitch_mm
    half = np.broadcast_to(np.abs(np.fft.fftfreq(roi, d=pixel_pitch_mm)[None, :]) < nyq, freq.shape)
    nh = _iec_bin_means(nps2[rows, :], half, freq, bins, df) / mean_signal**2
    nv = _iec_bin_means(nps2[:, rows].T, half, freq, bins, df) / mean_signal**2
    ref_norm = float((np.outer(ref1, ref1) ** 2).sum())
    ref_frames = _unit_cuts(ref_band, units, keep, unit / ref_norm, member)
    ref_frames = ref_frames - _smoothing_correction(ref_frames, x1, x2, _window_m2(roi))
    trusted, leak = _iec_trusted(nh, nv, frames_cut, ref_frames, model_se, above)
    return frames_cut, nh, nv, trusted, {"leakage_rel": leak.tolist()}


_IEC_NOTE = ("IEC 62220-1-1 method (region detrended by a 2D quadratic, square ROIs). Not trusted: bins below 2/ROI "
             "(the polynomial and the ROI mean remove noise power there) and bins where leakage or smoothing of "
             "the square ROIs moves the value by more than 5 % (and 3 standard errors) from a leakage-free Welch "
             "estimate of the same ROIs (leakage_rel).")


def _welch_corrections(frames_cut, x1, x2, m2, model_se):
    """The Welch cuts' relative smoothing corrections and their standard errors.

    Returns ``(relc, relr, rel_se, dis_se)``: the correction from the curve smoothed in log (applied) and from the
    raw curve, the standard error of the first and of their difference (from the units' own curves).
    """
    units = frames_cut.shape[1]
    # the correction from the curve smoothed in log (a steep spectrum's curvature survives, the bins' noise does
    # not), applied as a factor; judged by what it significantly is (2 standard errors, from the units' own
    # curves), so that noise alone does not untrust a bin
    raw = frames_cut.mean(axis=1)  # (cut, bin)
    sm = _log_smooth(raw)
    relc = _smoothing_correction(sm, x1, x2, m2) / sm  # NaN in the first bin
    # the same correction from the unsmoothed curve: where the two disagree, the spectrum bends too sharply
    # for the ROI's resolution (a fall into the noise floor within a few bins) and no first-order correction
    # is reliable
    relr = _smoothing_correction(raw, x1, x2, m2) / raw
    rel_se = dis_se = np.broadcast_to(0.5 * model_se, relc.shape)  # a second difference's share of the noise
    if units >= 2:
        smu = _log_smooth(frames_cut)
        unit_s = _smoothing_correction(smu, x1, x2, m2) / smu
        unit_r = _smoothing_correction(frames_cut, x1, x2, m2) / raw[:, None, :]
        rel_se = unit_s.std(axis=1, ddof=1) / math.sqrt(units)
        dis_se = (unit_s - unit_r).std(axis=1, ddof=1) / math.sqrt(units)
    return relc, relr, rel_se, dis_se


def _welch_cuts(frames_cut, geometry, roi, tapered: bool, model_se, above, max_window_correction):
    """The Welch cuts with the taper's and the bins' smoothing corrected, and their trust.

    Returns ``(frames_cut, nh, nv, trusted, extra)``, ``frames_cut`` corrected.
    """
    x1, x2 = geometry[5], geometry[6]
    m2 = _window_m2(roi) if tapered else 0.0
    relc, relr, rel_se, dis_se = _welch_corrections(frames_cut, x1, x2, m2, model_se)
    frames_cut = frames_cut * (1 - np.where(np.isfinite(relc), relc, 0.0))[:, None, :]
    nh, nv = frames_cut.mean(axis=1)
    ok = ((np.abs(relc) - 2 * rel_se <= max_window_correction)
          & (np.abs(relc - relr) - 2 * dis_se <= _MAX_CORRECTION_DISAGREEMENT))
    trusted = above & np.all(ok, axis=0) & np.isfinite(nh) & np.isfinite(nv)
    rel = np.abs(relc).max(axis=0)
    return frames_cut, nh, nv, trusted, {"window_correction_rel": rel.tolist()}


def _welch_note(detrend_used: str, window: str, max_window_correction: float) -> str:
    """The Welch method's ``trust_note``."""
    how = {"frames": "subtracting the mean of the frames", "quadratic": "a 2D quadratic fit over the region",
           "none": "subtracting the mean level only"}[detrend_used]
    return (f"Welch method (fixed pattern removed by {how}, {window} taper, the taper's and the bins' smoothing "
            f"corrected to first order). Not trusted: bins below 2/ROI, and bins whose smoothing correction "
            f"(window_correction_rel) exceeds {100 * max_window_correction:g} % or whose correction from the raw "
            f"and the smoothed curve differ by more than {100 * _MAX_CORRECTION_DISAGREEMENT:g} % (the spectrum "
            f"bends too sharply for the ROI's frequency resolution).")


def _profile_entries(bins, frames_cut, nh, nv, trusted, note, model_se, by_roi: bool) -> dict:
    """The 1D part of :func:`nnps`'s result: the cuts, their trust and standard errors (from the units' spread)."""
    units = frames_cut.shape[1]
    mean_cut = frames_cut.mean(axis=0)  # (unit, bin): the two cuts' mean, unit by unit
    se = mean_cut.std(axis=0, ddof=1) / math.sqrt(units) / np.abs((nh + nv) / 2) if units >= 2 else model_se
    return {
        "frequencies_lp_per_mm": bins.tolist(),
        "nnps_horizontal_mm2": nh.tolist(),
        "nnps_vertical_mm2": nv.tolist(),
        "nnps_mm2": ((nh + nv) / 2).tolist(),
        "trusted": [bool(t) for t in trusted],
        "lowest_trusted_lp_per_mm": float(bins[trusted][0]) if trusted.any() else None,
        "trust_note": note,
        "nnps_rel_std_error": se.tolist(),
        "std_error_from": ("frames" if not by_roi else "ROIs (overlapping: an underestimate)" if units >= 2
                           else "model: independent periodogram samples"),
    }


def nnps(flats, pixel_pitch_mm: float, *, method: str = "welch", roi: int = 256, overlap: int = 128, region=None,
         cut_rows: int = 7, window: str | None = None, detrend: str = "auto", max_window_correction: float = 0.08):
    """NNPS of flat frames: the Welch method (default; unbiased for steep noise spectra) or IEC 62220-1-1's.

    Parameters
    ----------
    flats : (N, H, W) linearised, dark-subtracted flat frames at one air kerma
    pixel_pitch_mm : float
    method : {'welch', 'iec'}
        'iec': the IEC 62220-1-1 method as before (same numbers): the region detrended by a 2D second-order
        polynomial, square ROIs less their mean, each radial bin the mean of its samples. Against an exact model of
        a blurred screen (``tests/ops/test_nnps_exact.py``) it is biased where the noise spectrum is steep: the
        square ROIs' leakage lifts the high frequencies (+16 % at 11 lp/mm for a Gaussian spread sigma = 3.5 px,
        +25 % at 3.5 lp/mm for sigma = 10 px, 10 um pixels, exact expectation), the square window's main lobe and the
        polynomial lower the first bins (-3 % to -11 %; the polynomial alone -3 % to -7 % in the first bin), and a
        bin's mean of a steep curve is off by up to 8 %.
        'welch': the fixed pattern removed without a polynomial (``detrend``), periodic-Hann-tapered ROIs (no
        leakage; power normalised by the taper's), and the smoothing of the taper's main lobe and of the radial bins
        corrected to first order (:func:`_smoothing_correction`, from the curve smoothed in log). On the exact
        expectation its trusted bins are within 0.5 % for Gaussian spreads up to 7 px and 1.6 % at 10 px (10 um
        pixels); measured on 128 simulated frames, within 3.1 % at errors consistent with the reported standard
        errors.
    roi, overlap : ROI side and overlap in pixels (256 and 128 in the standard)
    region : (y0, y1, x0, x1), optional; default: the central square that fits
    cut_rows : rows/columns each side of an axis averaged into the 1D cuts (the axis itself excluded)
    window : {'none', 'hann'}, optional
        default: 'none' for 'iec', 'hann' for 'welch'. ``method='iec', window='hann'`` is the former
        ``window='hann'`` option (the IEC detrending and bins with a Hann taper), numbers unchanged.
    detrend : {'auto', 'frames', 'quadratic', 'none'}
        'welch' only ('iec' always fits the polynomial). 'frames': subtract the mean of the frames (removes any fixed
        pattern exactly; the power is scaled by N / (N - 1)). 'quadratic': the region's 2D second-order polynomial
        per frame (it removes real noise power from the first bins). 'none': subtract the mean level only (data
        already free of fixed pattern, e.g. differences of frame pairs). 'auto': 'frames' for two frames or more,
        else 'quadratic'.
    max_window_correction : 'welch': a bin whose smoothing correction exceeds this fraction of its value (by more
        than 2 standard errors) is not trusted: the spectrum is too steep there for the ROI's resolution.

    Returns
    -------
    dict: ``frequencies_lp_per_mm``, ``nnps_horizontal_mm2``, ``nnps_vertical_mm2``, ``nnps_mm2`` (their mean),
    ``trusted`` (per bin), ``lowest_trusted_lp_per_mm``, ``trust_note``, ``nnps_rel_std_error`` (per bin, from the
    spread between frames; with fewer than 3 frames between ROI positions, which overlap: an underestimate; for a
    single ROI ``1 / sqrt(independent samples)``), ``std_error_from``, ``window_correction_rel`` ('welch': the
    correction's size) or ``leakage_rel`` ('iec': |IEC value / leakage-free Welch value of the same ROIs - 1|),
    ``nps_2d`` (roi x roi, fftshifted, counts^2 mm^2, uncorrected), ``mean_signal``, ``rois``, ``frames``,
    ``method``, ``window``, ``detrend``, ``region``.

    Trust: never below 2 / ROI (``2 / (roi * pitch)`` lp/mm: the detrending, the ROI mean and the taper's main lobe
    reach the first bin, and its correction would need a bin below it); 'welch': not where the smoothing correction
    exceeds ``max_window_correction`` or its two estimates (smoothed, raw curve) differ by more than 2 % (both beyond
    2 standard errors); 'iec': not where the IEC value is more than 5 % (and 3 standard errors of the difference) from
    the leakage-free estimate.
    """
    xp, f, window, region, detrend_used = _nnps_inputs(flats, method, detrend, window, roi, overlap, region)
    n = f.shape[0]
    reg, offset, scale, mean_signal = _remove_trend(xp, f, region, method, detrend_used)
    t1 = _taper_1d(window, roi, method)
    norm = float((np.outer(t1, t1) ** 2).sum()) if t1 is not None else float(roi * roi)
    # IEC: a leakage-free reference from the same ROIs (periodic Hann) says which IEC bins leakage has moved
    ref1 = _taper_1d("hann", roi, "welch") if method == "iec" else None
    geometry = rows, freq, bins, keep, member, x1, x2 = _band_geometry(int(roi), float(pixel_pitch_mm), int(cut_rows))
    corners, by_roi, units = _roi_layout(reg.shape, roi, overlap)
    acc, band, ref_band = _roi_power(xp, reg, offset, corners, roi, method, t1, ref1, rows, by_roi, units)
    positions = len(corners)
    m = positions * n
    nps2 = _full_from_half(to_host(acc), roi) * (scale * pixel_pitch_mm * pixel_pitch_mm / (m * norm))
    unit = scale * pixel_pitch_mm * pixel_pitch_mm / ((n if by_roi else positions) * mean_signal**2)
    frames_cut = _unit_cuts(band, units, keep, unit / norm, member)  # (cut, unit, bin): NNPS per unit
    model_se = _model_std_error(member, m)
    above = _beyond_first_bin(bins, roi, pixel_pitch_mm)
    if method == "iec":
        frames_cut, nh, nv, trusted, extra = _iec_cuts(nps2, mean_signal, geometry, pixel_pitch_mm, roi, ref1,
                                                       ref_band, unit, frames_cut, model_se, above)
    else:
        frames_cut, nh, nv, trusted, extra = _welch_cuts(frames_cut, geometry, roi, t1 is not None, model_se, above,
                                                         max_window_correction)
    note = _IEC_NOTE if method == "iec" else _welch_note(detrend_used, window, max_window_correction)
    return {**_profile_entries(bins, frames_cut, nh, nv, trusted, note, model_se, by_roi), **extra,
            "nps_2d": np.fft.fftshift(nps2), "mean_signal": mean_signal, "rois": int(m), "frames": int(n),
            "method": method, "window": window, "detrend": detrend_used, "region": [int(v) for v in region]}


def lag_correction_factor(amplitudes, ratios) -> float:
    """Lag correction factor ``G^2 / sum_j h_j^2`` of the multi-exponential lag model (IEC 62220-1-3's idea).

    With lag (``y_k = sum_j h_j x_{k-j}``, ``h_0 = 1``, ``h_j = sum_n a_n r_n^j``, see :mod:`.afterglow`) a frame's
    mean carries the DC gain ``G = sum_j h_j`` but its quantum noise variance only ``sum_j h_j^2``: a single frame's
    NNPS is low by ``sum h^2 / G^2`` and its DQE high by the inverse, e.g. 1.067 for the simulator's gc preset at
    50 Hz (DQE 0.64 for an absorption of 0.6). The temporal-DC (lag-corrected) NNPS of the lagged noise is the
    measured one times this factor.
    """
    a = np.asarray(amplitudes, dtype=np.float64).ravel()
    r = np.asarray(ratios, dtype=np.float64).ravel()
    g = 1.0 + float(np.sum(a * r / (1.0 - r)))
    rr = np.outer(r, r)
    h2 = 1.0 + float(np.sum(np.outer(a, a) * rr / (1.0 - rr)))
    return g * g / h2


def dqe(mtf_at_f, nnps_mm2, kerma_ugy: float, q_per_ugy_mm2: float):
    """``DQE(f) = MTF(f)^2 / (K_a q NNPS(f))``."""
    m = np.asarray(mtf_at_f, dtype=np.float64)
    nn = np.asarray(nnps_mm2, dtype=np.float64)
    return m * m / (kerma_ugy * q_per_ugy_mm2 * nn)
