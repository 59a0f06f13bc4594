"""Beam-intensity normalisation: a flickering or drifting source scales every frame; an open-beam region seen in
every frame measures the scale and divides it out.

With ``m_k`` the mean of frame ``k`` over the region (dark-subtracted, linear) and ``r`` the reference level, the
frame becomes ``I_k * r / m_k``: its region mean is ``r`` in every frame, and an object's transmission no longer
follows the source. Pure functions on NumPy or CuPy arrays (``xp``).
"""

from __future__ import annotations

import numpy as np


def _xp(a):
    try:
        import cupy as cp  # noqa: F401  (only to recognise its arrays)

        return cp.get_array_module(a)
    except ImportError:
        return np


def region_means(frames, *, region) -> "np.ndarray":
    """Mean of each frame over ``region`` ``(y0, y1, x0, x1)``, NaN pixels left out (float64, one per frame).

    Parameters
    ----------
    frames : (T, H, W) array
    region : tuple of 4 int
    """
    xp = _xp(frames)
    y0, y1, x0, x1 = (int(v) for v in region)
    roi = frames[:, y0:y1, x0:x1].astype(xp.float64)
    ok = xp.isfinite(roi)
    n = ok.sum(axis=(1, 2))
    s = xp.where(ok, roi, 0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return xp.where(n > 0, s / xp.maximum(n, 1), xp.nan)


def normalise_beam(frames, *, region, reference: float, out=None):
    """Frames scaled so that each one's mean over ``region`` is ``reference``.

    Parameters
    ----------
    frames : (T, H, W) float32 array, dark-subtracted and linear (counts or transmission)
    region : tuple of 4 int
        ``(y0, y1, x0, x1)`` of an area the beam reaches unobstructed in every frame.
    reference : float
        The level every frame's region mean is brought to (> 0).
    out : array, optional
        Where to write (may be ``frames``).

    Returns
    -------
    (out, factors)
        ``factors``: the per-frame scale ``reference / m_k`` (float64); a frame whose region mean is not a
        positive finite number (beam off, region covered) comes out NaN, with factor NaN.
    """
    xp = _xp(frames)
    m = region_means(frames, region=region)
    with np.errstate(invalid="ignore", divide="ignore"):
        factors = xp.where((m > 0) & xp.isfinite(m), float(reference) / m, xp.nan)
    scale = factors.astype(xp.float32)[:, None, None]
    if out is None:
        out = xp.empty_like(frames, dtype=xp.float32)
    xp.multiply(frames, scale, out=out)
    return out, factors
