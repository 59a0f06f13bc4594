"""The NNPS's radial bands (:func:`pipeline.ops.characterise.nnps`): where the 1D cuts' samples sit in a ROI's
power spectrum (full, or its ``rfft2`` half), their radial bins, and the first-order correction of the smoothing
that the taper's spectral window and the radial bins apply to a cut. Host NumPy (the bins are small).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=16)
def _window_m2(roi: int) -> float:
    """Second moment (in bins^2, per axis) of the periodic Hann taper's spectral window ``|W(nu)|^2``."""
    w = np.sin(np.pi * np.arange(roi) / roi) ** 2
    pad = 32 * roi
    power = np.abs(np.fft.fft(w, pad)) ** 2
    nu = np.fft.fftfreq(pad) * roi
    return float((nu * nu * power).sum() / power.sum())


@lru_cache(maxsize=16)
def _band_geometry(roi: int, pixel_pitch_mm: float, cut_rows: int):
    """Samples of the IEC band cuts and their radial bins.

    Returns ``rows`` (the 2 cut_rows rows v = +-1..cut_rows next to the axis), ``freq`` (radial frequency of each
    sample, lp/mm), ``bins`` (bin centres k df, k = 1.. below Nyquist), ``keep`` (samples that enter a bin: the
    Nyquist column excluded), ``member`` (kept samples x bins: the plain mean of a bin's samples, the IEC cut) and
    per bin the mean offset ``x1`` and mean squared offset ``x2`` of its samples from its centre (in bins).
    """
    fr = np.fft.fftfreq(roi, d=pixel_pitch_mm)
    rows = np.r_[1 : cut_rows + 1, -cut_rows:0]
    uu = fr[None, :]
    vv = fr[rows][:, None]
    freq = np.sqrt(uu**2 + vv**2)
    df = 1.0 / (roi * pixel_pitch_mm)
    nyq = 0.5 / pixel_pitch_mm
    bins = np.arange(df, nyq - df / 4, df)
    k = np.rint(freq / df).astype(np.int64)  # |f - k df| <= df / 2 (a tie is impossible: k^2 + k + 1/4 is no integer)
    keep = np.broadcast_to(np.abs(uu) < nyq, freq.shape) & (k >= 1) & (k <= bins.size)
    x = (freq / df - k)[keep]
    kb = k[keep] - 1
    n = np.maximum(np.bincount(kb, minlength=bins.size), 1).astype(np.float64)
    member = np.zeros((kb.size, bins.size))
    member[np.arange(kb.size), kb] = 1.0 / n[kb]
    x1 = np.bincount(kb, x, minlength=bins.size) / n
    x2 = np.bincount(kb, x * x, minlength=bins.size) / n
    return rows, freq, bins, keep, member, x1, x2


def _smoothing_correction(binned, x1, x2, m2):
    """First-order correction of the taper's and the radial bin's smoothing of an NNPS curve (bin units).

    A Welch estimate is ``E = S * |W|^2``; to first order ``E = S + (m2 / 2) lap S`` with ``m2`` the spectral
    window's second moment per axis and ``lap S = S'' + S' / f`` for a radially symmetric spectrum. A bin's mean of
    samples at offsets ``x`` from its centre adds ``x1 S' + (x2 / 2) S''``. The derivatives are central differences
    of the binned curve (pass a smoothed curve for a low-noise estimate). Returns the correction to subtract (NaN in
    the first bin, which has no neighbour below).
    """
    b = np.asarray(binned, dtype=np.float64)
    k = np.arange(1, b.shape[-1] + 1, dtype=np.float64)
    d2 = np.full_like(b, np.nan)
    d1 = np.full_like(b, np.nan)
    if b.shape[-1] >= 3:
        d2[..., 1:-1] = b[..., 2:] - 2 * b[..., 1:-1] + b[..., :-2]
        d1[..., 1:-1] = (b[..., 2:] - b[..., :-2]) / 2
        d2[..., -1] = d2[..., -2]
        d1[..., -1] = b[..., -1] - b[..., -2]
    return (m2 / 2) * (d2 + d1 / k) + x1 * d1 + (x2 / 2) * d2


def _log_smooth(curves):
    """The curves (..., bins) smoothed in log (a quadratic over 7 bins, Savitzky-Golay), from the second bin on.

    A Gaussian noise spectrum is a parabola in log, so its curvature survives; the noise of the bins does not.
    """
    from scipy.signal import savgol_filter

    c = np.asarray(curves, dtype=np.float64)
    out = c.copy()
    if c.shape[-1] >= 8:
        out[..., 1:] = np.exp(savgol_filter(np.log(np.maximum(c[..., 1:], 1e-300)), 7, 2, axis=-1, mode="interp"))
    return out


def _half_spectrum_index(roi: int, rows: np.ndarray):
    """Where the band samples of a full ``roi x roi`` power spectrum sit in its ``rfft2`` half (P(-k) = P(k)).

    Returns ``(hr, hc)`` for the horizontal cut (rows v = ``rows``, every column u) and ``(vr, vc)`` for the vertical
    cut (every row, columns u = ``rows``, transposed to rows x roi), each an index pair into ``(roi, roi // 2 + 1)``.
    """
    c = np.arange(roi)
    neg = c > roi // 2  # these columns u come from (-v, -u)
    hr = np.where(neg[None, :], (-rows[:, None]) % roi, rows[:, None] % roi)
    hc = np.where(neg[None, :], (roi - c[None, :]) % roi, c[None, :])
    # vertical cut: sample (v = c, u = r) for each r in rows; u < 0 -> (-v, -u)
    flip = rows[:, None] < 0
    vr = np.where(flip, (-c[None, :]) % roi, c[None, :])
    vc = np.where(flip, -rows[:, None], rows[:, None]) * np.ones((1, roi), dtype=np.int64)
    return hr, hc, vr, vc


def _full_from_half(half: np.ndarray, roi: int) -> np.ndarray:
    """The full ``roi x roi`` spectrum of a real signal from its ``rfft2`` half ``(roi, roi // 2 + 1)``."""
    full = np.empty((roi, roi))
    full[:, : half.shape[1]] = half
    c = np.arange(half.shape[1], roi)
    full[:, c] = half[(-np.arange(roi)) % roi][:, roi - c]
    return full
