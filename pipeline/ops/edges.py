"""Where to measure: a slanted edge found in an image (its ROI for the MTF), and bar-group contrast (the CTF of
a line-pair target, with Coltman's series from an MTF)."""

from __future__ import annotations

import math

import numpy as np

from ..backend import to_host
from .mtf import slanted_edge_mtf


def find_edge_roi(image, *, size: int | None = None, min_angle_deg: float = 1.5, max_angle_deg: float = 40.0):
    """Find a ROI around the strongest slanted straight edge of an image.

    If one slanted edge dominates the whole image, the whole image (less a
    2-pixel border) is the ROI. Otherwise structure-tensor coherence and
    gradient energy are computed in square windows: the best window whose
    dominant edge is slanted between ``min_angle_deg`` and ``max_angle_deg``
    from the nearest axis (bars and axis-aligned borders are passed over),
    coherent (one straight edge) and passing near the window centre is chosen.

    Returns
    -------
    (y0, y1, x0, x1) : tuple of int
    """
    from scipy import ndimage as ndi

    img = np.asarray(to_host(image), dtype=np.float64)
    if img.ndim != 2:
        raise ValueError("find_edge_roi needs one 2D image")
    h, w = img.shape
    sm = ndi.gaussian_filter(ndi.median_filter(img, 3), 1.0)  # the median removes hot/dead pixels first
    gx = ndi.sobel(sm, axis=1)
    gy = ndi.sobel(sm, axis=0)

    def orient(jxx, jyy, jxy):
        energy = jxx + jyy
        coh = np.clip(np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / np.maximum(energy, 1e-300), 0, 1)
        ang = np.abs(0.5 * np.degrees(np.arctan2(2 * jxy, jxx - jyy))) % 90
        return energy, coh, np.minimum(ang, 90 - ang)

    e, c, off = orient((gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum())
    if c > 0.9 and min_angle_deg <= off <= max_angle_deg and min(h, w) >= 16:
        return (2, h - 2, 2, w - 2)
    size = int(np.clip(min(h, w) // 3, 32, 160)) if size is None else int(size)
    size = min(size, h, w)
    jxx = ndi.uniform_filter(gx * gx, size)
    jyy = ndi.uniform_filter(gy * gy, size)
    jxy = ndi.uniform_filter(gx * gy, size)
    energy, coherence, off_axis = orient(jxx, jyy, jxy)
    mag = np.sqrt(gx * gx + gy * gy)
    yy, xx = np.mgrid[0:h, 0:w]
    m0 = ndi.uniform_filter(mag, size)
    cy = ndi.uniform_filter(mag * yy, size) / np.maximum(m0, 1e-300) - yy
    cx = ndi.uniform_filter(mag * xx, size) / np.maximum(m0, 1e-300) - xx
    centred = np.hypot(cy, cx) < size / 8
    half = size // 2
    inside = np.zeros((h, w), dtype=bool)
    inside[half : h - (size - half) + 1, half : w - (size - half) + 1] = True
    ok = (off_axis >= min_angle_deg) & (off_axis <= max_angle_deg) & (coherence > 0.8) & centred & inside
    if not ok.any():
        raise ValueError("no slanted straight edge found; pass the ROI explicitly (--roi Y0 Y1 X0 X1)")
    score = np.where(ok, energy * coherence**4, -1.0)
    order = np.argsort(score, axis=None)[::-1]
    tried: list[tuple[int, int]] = []
    for flat in order[:5000]:
        if score.flat[flat] <= 0 or len(tried) >= 25:
            break
        y, x = divmod(int(flat), w)
        if any(abs(y - ty) < size // 4 and abs(x - tx) < size // 4 for ty, tx in tried):
            continue
        tried.append((y, x))
        roi = _one_edge_roi(gx, gy, int(y - half), int(x - half), size, angles=(min_angle_deg, max_angle_deg))
        if roi is not None and _usable(img[roi[0] : roi[1], roi[2] : roi[3]], min_angle_deg, max_angle_deg):
            return roi
    raise ValueError("no window holds a clear slanted edge; pass the ROI explicitly (--roi Y0 Y1 X0 X1)")


def _usable(roi, min_angle_deg, max_angle_deg) -> bool:
    """A candidate ROI passes when the full edge analysis finds one straight, slanted edge in it."""
    try:
        r = slanted_edge_mtf(roi)
    except ValueError:
        return False
    bad = {"edge_fit_poor", "no_edge", "angle_below_1deg", "angle_near_45deg"}
    return not (bad & set(r.flags[0])) and min_angle_deg <= abs(float(r.angle_deg[0])) <= max_angle_deg


def _one_edge_roi(gx, gy, y0, x0, size, *, min_half: int = 12, angles=(1.5, 40.0)):
    """Centre a window on its strongest edge and narrow it across the edge so no other edge is inside."""
    h, w = gx.shape
    a, b = gx[y0 : y0 + size, x0 : x0 + size], gy[y0 : y0 + size, x0 : x0 + size]
    jxx, jyy, jxy = (a * a).sum(), (b * b).sum(), (a * b).sum()
    phi = 0.5 * np.arctan2(2 * jxy, jxx - jyy)  # direction of the gradient = edge normal
    off = abs(np.degrees(phi)) % 90
    if not angles[0] <= min(off, 90 - off) <= angles[1]:
        return None
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    p = (xx - c) * np.cos(phi) + (yy - c) * np.sin(phi)
    hist, edges = np.histogram(p, bins=np.arange(-size, size + 1) - 0.5, weights=a * a + b * b)
    k = int(np.argmax(hist))
    peak = hist[k]
    if peak <= 0:
        return None
    reach = 1
    while reach < size and max(hist[max(k - reach, 0)], hist[min(k + reach, hist.size - 1)]) > 0.02 * peak:
        reach += 1
    other = None
    for dd in range(reach + 1, size):
        vals = [hist[j] for j in (k - dd, k + dd) if 0 <= j < hist.size]
        if vals and max(vals) >= 0.10 * peak:
            other = dd
            break
    half_across = size // 2 if other is None else min(size // 2, int(0.45 * other))
    if half_across < min_half:
        return None
    pk = (edges[k] + edges[k + 1]) / 2
    ey, ex = y0 + c + pk * np.sin(phi), x0 + c + pk * np.cos(phi)
    if abs(np.cos(phi)) >= abs(np.sin(phi)):  # near-vertical edge: narrow in x
        ya, yb = y0, y0 + size
        xa, xb = int(round(ex - half_across)), int(round(ex + half_across))
    else:
        xa, xb = x0, x0 + size
        ya, yb = int(round(ey - half_across)), int(round(ey + half_across))
    xa, ya, xb, yb = max(xa, 0), max(ya, 0), min(xb, w), min(yb, h)
    if min(xb - xa, yb - ya) < 2 * min_half:
        return None
    return (ya, yb, xa, xb)


def bar_contrast(roi, *, period_px: float, levels: tuple[float, float] | None = None, axis: int | None = None):
    """Contrast transfer of a line-pair group: modulation of bars and gaps across the ROI.

    The ROI is averaged along the bars into a profile; the minima in the three
    bars and the maxima in the two gaps between them (found by matching a
    square wave of the given period) give ``M = (max - min) / (max + min)``.
    With ``levels = (open, bar_material)`` (large-area signals) the result is
    normalised by ``M0 = (open - bar) / (open + bar)``: the CTF.

    Returns
    -------
    dict with ``modulation``, ``ctf`` (None without ``levels``), ``profile``.
    """
    r = np.asarray(to_host(roi), dtype=np.float64)
    if axis is None:  # bars vary along the axis with the larger mean gradient
        axis = 1 if np.abs(np.diff(r, axis=1)).mean() >= np.abs(np.diff(r, axis=0)).mean() else 0
    prof = r.mean(axis=0) if axis == 1 else r.mean(axis=1)
    n = prof.size
    x = np.arange(n, dtype=np.float64)
    bw = period_px / 2
    best = None
    for start in np.arange(0, max(n - 5 * bw, 1), 0.1):
        inbar = np.zeros(n, bool)
        for i in range(3):
            inbar |= (x >= start + 2 * i * bw) & (x < start + 2 * i * bw + bw)
        if inbar.sum() == 0 or (~inbar).sum() == 0:
            continue
        score = prof[~inbar].mean() - prof[inbar].mean()
        if best is None or score > best[0]:
            best = (score, start)
    if best is None:
        raise ValueError("the ROI is shorter than one bar group (5 bar widths)")
    start = best[1]
    mins, maxs = [], []
    for i in range(3):
        c = start + 2 * i * bw + bw / 2
        sel = np.abs(x - c) <= max(bw / 2 - 0.5, 0.5)
        mins.append(prof[sel].min() if sel.any() else prof[int(round(np.clip(c, 0, n - 1)))])
    for i in range(2):
        c = start + (2 * i + 1) * bw + bw / 2
        sel = np.abs(x - c) <= max(bw / 2 - 0.5, 0.5)
        maxs.append(prof[sel].max() if sel.any() else prof[int(round(np.clip(c, 0, n - 1)))])
    lo, hi = float(np.mean(mins)), float(np.mean(maxs))
    mod = (hi - lo) / (hi + lo) if hi + lo != 0 else 0.0
    ctf = None
    if levels is not None:
        o, bm = levels
        m0 = (o - bm) / (o + bm)
        ctf = mod / m0 if m0 != 0 else None
    return {"modulation": mod, "ctf": ctf, "profile": prof, "bar_start_px": start}


def coltman_ctf(mtf_fn, f, n_terms: int = 50) -> float:
    """Square-wave response of an infinite bar pattern from the sine-wave MTF (Coltman 1954):
    CTF(f) = 4/pi [MTF(f) - MTF(3f)/3 + MTF(5f)/5 - MTF(7f)/7 + ...]."""
    total = 0.0
    for k in range(n_terms):
        odd = 2 * k + 1
        total += (-1) ** k * float(mtf_fn(odd * f)) / odd
    return 4.0 / math.pi * total
