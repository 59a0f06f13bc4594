"""Bad pixels: the ASTM E2597 classes found against a local median, the table of good neighbours that replace
them, their replacement (the median of those neighbours) and the saturation of a replaced pixel (judged by its
neighbours, never by its own raw value: a pixel stuck at full scale is replaced like any other).

Pure functions on NumPy or CuPy arrays (the backend comes from the data, :func:`pipeline.backend.get_xp`).
"""

from __future__ import annotations

import numpy as np

from ..backend import get_xp
from .filters import median_filter

DEAD = 1
HOT = 2
NOISY = 4
OVER = 8
UNDER = 16
BAD_PIXEL_CLASSES = {"dead": DEAD, "hot": HOT, "noisy": NOISY, "over": OVER, "under": UNDER}
# Robust sigma from the median absolute deviation of a normal distribution.
_MAD_TO_SIGMA = 1.4826


def detect_bad_pixels(
    dark_map,
    flat_signal,
    *,
    dark_noise=None,
    dead_below: float = 0.1,
    under_below: float = 0.7,
    over_above: float = 1.3,
    hot_sigma: float = 10.0,
    noisy_factor: float = 3.0,
    window: int = 9,
):
    """Classify bad pixels into the ASTM E2597 classes.

    Responses are compared with a local median (``window`` x ``window``) so
    smooth shading and vignetting are not mistaken for defects.

    Parameters
    ----------
    dark_map : array (H, W)
        Mean dark level.
    flat_signal : array (H, W)
        Mean flat minus mean dark.
    dark_noise : array (H, W), optional
        Temporal standard deviation of the darks.
    dead_below, under_below, over_above : float
        Thresholds on ``flat_signal / local_median(flat_signal)``: dead below
        ``dead_below``, under-responding below ``under_below``, over-responding
        above ``over_above``.
    hot_sigma : float
        Hot: dark level above its local median by more than this many robust
        (MAD) sigmas of the dark map.
    noisy_factor : float
        Noisy: temporal dark noise above this multiple of its median.
    window : int
        Odd side length of the local median window.

    Returns
    -------
    array (H, W) uint8
        Class bits, 0 for good pixels.
    """
    xp = get_xp(flat_signal)
    sig = xp.asarray(flat_signal, dtype=xp.float32)
    local = median_filter(sig, size=window)
    ratio = sig / xp.where(local > 0, local, np.float32(np.inf))
    bad = xp.zeros(sig.shape, dtype=xp.uint8)
    bad |= xp.where(ratio < dead_below, DEAD, 0).astype(xp.uint8)
    bad |= xp.where((ratio >= dead_below) & (ratio < under_below), UNDER, 0).astype(xp.uint8)
    bad |= xp.where(ratio > over_above, OVER, 0).astype(xp.uint8)

    dark = xp.asarray(dark_map, dtype=xp.float32)
    excess = dark - median_filter(dark, size=window)
    sigma = _MAD_TO_SIGMA * float(xp.median(xp.abs(excess - xp.median(excess))))
    sigma = max(sigma, 1e-3)
    bad |= xp.where(excess > hot_sigma * sigma, HOT, 0).astype(xp.uint8)

    if dark_noise is not None:
        noise = xp.asarray(dark_noise, dtype=xp.float32)
        typical = max(float(xp.median(noise)), 1e-6)
        bad |= xp.where(noise > noisy_factor * typical, NOISY, 0).astype(xp.uint8)
    return bad


def neighbour_table(bad_pixels, *, radius: int = 1, max_radius: int = 4):
    """Index table for replacing bad pixels by the median of good neighbours.

    For each bad pixel, the good pixels in the (2r+1)^2 square around it are
    used, growing ``r`` from ``radius`` until at least one good neighbour is
    found (up to ``max_radius``).

    Parameters
    ----------
    bad_pixels : array (H, W)
        Non-zero where a pixel is bad.

    Returns
    -------
    targets : array (N,) int64
        Flat indices of the bad pixels.
    neighbours : array (N, K) int64
        Flat indices of their good neighbours, ``-1`` where unused.
    """
    xp = get_xp(bad_pixels)
    bad = np.asarray(_host(bad_pixels)) != 0
    h, w = bad.shape
    ys, xs = np.nonzero(bad)
    k_max = (2 * max_radius + 1) ** 2
    table = np.full((ys.size, k_max), -1, dtype=np.int64)
    width = np.zeros(ys.size, dtype=np.int64)
    pending = np.ones(ys.size, dtype=bool)
    for r in range(radius, max_radius + 1):
        if not pending.any():
            break
        dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
        keep = (dy != 0) | (dx != 0)
        dy, dx = dy[keep], dx[keep]
        idx = np.nonzero(pending)[0]
        ny = ys[idx, None] + dy[None, :]
        nx = xs[idx, None] + dx[None, :]
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        nyc, nxc = np.clip(ny, 0, h - 1), np.clip(nx, 0, w - 1)
        ok = inside & ~bad[nyc, nxc]
        flat = np.where(ok, nyc * w + nxc, -1)
        # Compact the good neighbours to the left of each row.
        order = np.argsort(~ok, axis=1, kind="stable")
        flat = np.take_along_axis(flat, order, axis=1)
        table[idx, : flat.shape[1]] = flat
        width[idx] = ok.sum(axis=1)
        pending[idx] = width[idx] == 0
    k = max(int(width.max(initial=0)), 1)
    targets = ys.astype(np.int64) * w + xs
    return xp.asarray(targets), xp.asarray(table[:, :k])


def replace_bad_pixels(frames, targets, neighbours, *, out=None):
    """Replace bad pixels by the median of their good neighbours, frame by frame.

    Parameters
    ----------
    frames : array (T, H, W) or (H, W), float
    targets, neighbours : arrays from :func:`neighbour_table`
    out : array, optional
        Where to write; may be ``frames`` itself.

    Returns
    -------
    array like ``frames``
    """
    xp = get_xp(frames)
    if out is None:
        out = frames.copy()
    elif out is not frames:
        out[...] = frames
    if targets.size == 0:
        return out
    if xp is np:
        from ..jit import replace_bad_into  # one parallel pass, same result as the code below

        if replace_bad_into(out, targets, neighbours):
            return out
    stack = out.reshape((-1, out.shape[-2] * out.shape[-1]))
    vals = stack[:, xp.maximum(neighbours, 0)]  # (T, N, K)
    vals = xp.where(neighbours[None] >= 0, vals, xp.nan)
    if neighbours.shape[1] == 1:
        med = vals[..., 0]
    else:
        med = xp.nanmedian(vals, axis=-1)
    stack[:, targets] = med.astype(out.dtype)  # a pixel with no good neighbour within reach stays NaN
    return out


def saturation_mask(raw, saturation, table=None, values=None, *, count: int | None = None, bad_saturated=None):
    """Where corrected frames are saturated, with bad pixels judged by their neighbours; None where nowhere.

    The rule (see the module's docstring): a pixel that is not replaced is saturated where
    ``raw >= saturation``; a replaced bad pixel (a target of ``table``) never by its own raw value,
    but where more than half of the good neighbours its median is taken over are: ``2 * s > n``,
    ``n`` the neighbours whose value in ``values`` is not NaN, ``s`` those of them with
    ``raw >= saturation``.

    Parameters
    ----------
    raw : array (T, H, W) or (H, W)
        Raw frames, as recorded (NaN compares False: never saturated).
    saturation : float or None
        Raw saturation level; None: nothing is saturated (returns None).
    table : tuple, optional
        ``(targets, neighbours)`` of the replaced bad pixels (:func:`neighbour_table`); None: every
        pixel is judged by its raw value.
    values : array like ``raw``, optional
        The corrected frames the medians were taken from (a NaN neighbour is left out of the median,
        and so out of ``n``); None: every neighbour in the table counts.
    count : int, optional
        How many raw values are ``>= saturation``, where already known (0: returns None at once).
    bad_saturated : array (T, N) bool, optional
        The targets' flags by this rule where already known (:func:`flat_field_and_bad_pixels` gives
        them from the same pass); otherwise computed here.

    Returns
    -------
    array of bool like ``raw``, or None
    """
    xp = get_xp(raw)
    if saturation is None or raw.size == 0 or count == 0:
        return None
    if count is None and raw.dtype.kind in "ui" and not bool(raw.max() >= saturation):
        return None  # integers: one cheap max first (floats may hold NaN, whose max is NaN)
    targets, neighbours = table if table is not None else (None, None)
    if targets is None or targets.size == 0:
        mask = raw >= saturation
        return mask if bool(mask.any()) else None
    p = raw.shape[-2] * raw.shape[-1]
    stack = raw.reshape(-1, p)
    own = int(xp.count_nonzero(stack[:, targets] >= saturation))  # the bad pixels' own values: not counted
    mask = None
    if count is None:
        mask = raw >= saturation
        count = int(xp.count_nonzero(mask))
    good_saturated = count > own
    flags = bad_saturated
    if flags is None:
        flags = _bad_pixels_saturated(stack, saturation, neighbours, None if values is None else values.reshape(-1, p))
    if flags is not None and not bool(flags.any()):
        flags = None
    if not good_saturated and flags is None:
        return None
    if mask is None:
        mask = raw >= saturation if good_saturated else xp.zeros(raw.shape, dtype=bool)
    mask.reshape(-1, p)[:, targets] = flags if flags is not None else False
    return mask


def _bad_pixels_saturated(stack, saturation, neighbours, values=None):
    """(T, N) bool: more than half of the neighbours of each bad pixel's median saturated (None: none is).

    ``stack`` (T, P) raw frames, ``neighbours`` (N, K) flat indices (-1: none), ``values`` (T, P) the
    corrected frames (their NaN neighbours are not in the median, so not counted) or None.
    """
    xp = get_xp(stack)
    used = neighbours >= 0  # (N, K)
    index = xp.maximum(neighbours, 0)
    hit = (xp.take(stack, index, axis=1) >= saturation) & used  # (T, N, K): saturated neighbours
    if not bool(hit.any()):
        return None
    if values is not None:
        used = used & ~xp.isnan(xp.take(values, index, axis=1))  # (T, N, K): the ones the median takes
        hit &= used
    return 2 * xp.count_nonzero(hit, axis=-1) > xp.count_nonzero(used, axis=-1)


def _host(a):
    from ..backend import to_host

    return to_host(a)
