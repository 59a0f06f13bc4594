"""Detector figures of merit (IEC 62220-1-1 style): linearity, NNPS, DQE.

* Linearity: mean signal vs air kerma, with linear, power-law (``S = c K^p``) and quadratic fits;
  per-pixel polynomial response for a multi-point gain calibration.
* NNPS: 256 x 256 ROIs overlapping by 128 pixels over the analysed region, the region detrended by
  a 2D second-order polynomial, ``NPS(u, v) = dx dy / (M 256^2) sum_m |FFT(ROI_m)|^2``; 1D cuts from
  the 7 rows (columns) on each side of the axis, the axis itself excluded, each sample at its radial
  frequency, binned at the FFT spacing; ``NNPS = NPS / mean^2`` in mm^2.
* DQE: ``DQE(f) = MTF(f)^2 / (K_a q NNPS(f))`` with ``q`` the photons per mm^2 per uGy of the beam.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_xp, to_host

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


def nnps(flats, pixel_pitch_mm: float, *, roi: int = 256, overlap: int = 128, region=None, cut_rows: int = 7,
         window: str = "none"):
    """NNPS of flat frames (IEC 62220-1-1 method).

    Parameters
    ----------
    flats : (N, H, W) linearised, dark-subtracted flat frames at one air kerma
    pixel_pitch_mm : float
    roi, overlap : ROI side and overlap in pixels (256 and 128 in the standard)
    region : (y0, y1, x0, x1), optional; default: the central square that fits
    cut_rows : rows/columns each side of an axis averaged into the 1D cuts
    window : {'none', 'hann'}
        'none' is the IEC method (square ROIs). Their spectral leakage carries low-frequency power to
        high frequencies, which matters for heavily blurred screens (measured +14 % NNPS at 0.8 Nyquist
        for a Gaussian LSF with MTF(Nyquist) = 0.06); 'hann' tapers each ROI (Welch), normalised by the
        window's power, and removes that bias.

    Returns
    -------
    dict: ``frequencies_lp_per_mm``, ``nnps_horizontal_mm2``, ``nnps_vertical_mm2``, ``nnps_mm2`` (their mean),
    ``nps_2d`` (roi x roi, fftshifted, counts^2 mm^2), ``mean_signal``, ``rois``.
    """
    xp = get_xp(flats)
    f = xp.asarray(flats, dtype=xp.float64)
    if f.ndim == 2:
        f = f[None]
    n, h, w = f.shape
    if region is None:
        side = min(h, w)
        side -= side % overlap if side >= roi else 0
        y0, x0 = (h - side) // 2, (w - side) // 2
        region = (y0, y0 + side, x0, x0 + side)
    y0, y1, x0, x1 = region
    if y1 - y0 < roi or x1 - x0 < roi:
        raise ValueError(f"the analysed region {y1 - y0} x {x1 - x0} is smaller than one {roi} x {roi} ROI")
    reg = detrend_quadratic(f[:, y0:y1, x0:x1])
    mean_signal = float(xp.mean(f[:, y0:y1, x0:x1]))
    step = roi - overlap
    if window == "hann":
        w1 = np.hanning(roi + 2)[1:-1]
        taper = xp.asarray(np.outer(w1, w1))
    elif window == "none":
        taper = None
    else:
        raise ValueError(f"unknown NNPS window '{window}'; choose none (IEC) or hann")
    norm = float((to_host(taper) ** 2).sum()) if taper is not None else float(roi * roi)
    acc = xp.zeros((roi, roi), dtype=xp.float64)
    m = 0
    for yy in range(0, reg.shape[1] - roi + 1, step):
        for xx in range(0, reg.shape[2] - roi + 1, step):
            tiles = reg[:, yy : yy + roi, xx : xx + roi]  # (N, roi, roi): one batched FFT per ROI position
            tiles = tiles - tiles.mean(axis=(1, 2), keepdims=True)
            if taper is not None:
                tiles = tiles * taper
            acc += (xp.abs(xp.fft.fft2(tiles)) ** 2).sum(axis=0)
            m += tiles.shape[0]
    nps2 = to_host((pixel_pitch_mm * pixel_pitch_mm) / (m * norm) * acc)
    fr = np.fft.fftfreq(roi, d=pixel_pitch_mm)  # lp/mm
    rows = np.r_[1 : cut_rows + 1, -cut_rows:0]
    # horizontal cut: frequencies u along x, rows v = +-1..7 (v = 0 excluded)
    uu = fr[None, :]
    vv = fr[rows][:, None]
    h_vals = nps2[rows, :]
    h_freq = np.sqrt(uu**2 + vv**2)
    v_vals = nps2[:, rows].T
    v_freq = h_freq
    df = 1.0 / (roi * pixel_pitch_mm)
    nyq = 0.5 / pixel_pitch_mm
    bins = np.arange(df, nyq - df / 4, df)  # up to the last bin below Nyquist
    half = np.broadcast_to(np.abs(uu) < nyq, h_freq.shape)  # both signs of u, Nyquist column excluded

    def binned(vals, freq):
        out = np.full(bins.size, np.nan)
        for i, b in enumerate(bins):
            msk = half & (np.abs(freq - b) <= df / 2)
            if msk.any():
                out[i] = vals[msk].mean()
        return out

    nh = binned(h_vals, h_freq) / mean_signal**2
    nv = binned(v_vals, v_freq) / mean_signal**2
    return {
        "frequencies_lp_per_mm": bins.tolist(),
        "nnps_horizontal_mm2": nh.tolist(),
        "nnps_vertical_mm2": nv.tolist(),
        "nnps_mm2": ((nh + nv) / 2).tolist(),
        "nps_2d": np.fft.fftshift(nps2),
        "mean_signal": mean_signal,
        "rois": int(m),
        "window": window,
        "region": [int(v) for v in region],
    }


def dqe(mtf_at_f, nnps_mm2, kerma_ugy: float, q_per_ugy_mm2: float):
    """``DQE(f) = MTF(f)^2 / (K_a q NNPS(f))``."""
    m = np.asarray(mtf_at_f, dtype=np.float64)
    nn = np.asarray(nnps_mm2, dtype=np.float64)
    return m * m / (kerma_ugy * q_per_ugy_mm2 * nn)
