"""Flat-field correction: dark subtraction, gain normalisation, bad pixels, saturation.

All functions take and return arrays of one backend (NumPy or CuPy, from
:func:`pipeline.backend.get_xp`) and keep detector units: uint16 counts become
float32 counts, never a silent rescale to [0, 1].

Model
-----
A raw frame is ``I = D + G * S`` with ``D`` the dark map, ``G`` the per-pixel
gain and ``S`` the signal. Flats (open beam, no object) give
``F - D = G * S0``. The normalised gain map is ``g = (F - D) / mean(F - D)``
(mean over good pixels), so

* ``counts``:        ``(I - D) / g``                 (signal in mean-pixel counts)
* ``transmission``:  ``(I - D) / (r * (F - D))``     (``r``: frame/flat exposure ratio)
* ``attenuation``:   ``-log(transmission)``

Denominators are never zero: pixels whose flat signal is not positive are
flagged dead and given gain 1 before they are replaced from their neighbours.

Saturation and bad pixels
-------------------------
A pixel known to be bad is replaced whatever its raw value (a hot pixel stuck at
full scale reads 65535 in every frame: it is not a saturated measurement), so
the saturation mask (``flatfield.saturated: nan``) is, frame by frame
(:func:`saturation_mask`):

* a pixel that is not replaced (good, or bad with ``bad_pixels.replace: false``):
  ``raw >= saturation_level``;
* a replaced bad pixel: saturated where **more than half** of the good neighbours
  its median is taken over are, i.e. ``2 * s > n`` with ``n`` its good neighbours
  whose corrected value is not NaN (those the median uses) and ``s`` those of
  them with ``raw >= saturation_level``; equivalently, the median of the
  neighbours' 0/1 saturation flags is above 1/2. Half or fewer saturated
  neighbours leave the replacement finite.

Like the mask of a good pixel, this one is applied after the afterglow stage
(``pipeline.stages.FlatFieldStage.tail``): the replacement value itself enters
the lag recursion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import get_xp
from .badpixels import (BAD_PIXEL_CLASSES, DEAD, HOT, NOISY, OVER, UNDER, _bad_pixels_saturated,  # noqa: F401
                        detect_bad_pixels, neighbour_table, replace_bad_pixels, saturation_mask)

# Bad-pixel class bits (ASTM E2597 classes); a pixel may carry several.
_TILE_PIXELS = 1 << 20  # pixels per pass of the NumPy flat-field (one 1024 x 1024 frame: stays in L3)

#: Flats with more than this fraction of pixels at the saturation level are refused (fewer are flagged DEAD):
#: flats belong at 50-80 % of full scale, so more than a few stuck pixels at the maximum means the dose was too
#: high, and a clipped region has no gain to measure (neighbour replacement reaches 4 pixels, not a region).
SATURATED_FLAT_FRACTION = 0.01

# Full-scale codes of 8- to 16-bit ADCs, right- and left-aligned in 16 bits (4095 and 65520 for 12 bits): where a
# flat map of floats comes without a saturation level, a pile-up at its maximum on one of these is clipping.
_ADC_FULL_SCALES = frozenset(float(v) for b in range(8, 17) for v in ((1 << b) - 1, ((1 << b) - 1) << (16 - b)))


@dataclass(frozen=True)
class Calibration:
    """Everything flat-field correction needs, all (H, W) maps on one backend.

    Attributes
    ----------
    dark : array, float32
        Dark (offset) map in raw counts.
    gain : array, float32
        Normalised gain map, mean 1 over good pixels; 1 where the flat signal is not positive.
    flat_level : float
        Mean open-beam signal ``mean(F - D)`` over good pixels, raw counts at flat exposure.
    exposure_ratio : float
        Exposure of the frames divided by the exposure of the flats.
    bad_pixels : array, uint8
        Bad-pixel class bits (``DEAD | HOT | NOISY | OVER | UNDER``); 0 is good.
    lag_dc_gain : float
        Afterglow DC gain the flat signal was divided by (1: none), see
        :func:`pipeline.api.calibrate`.
    response_checksum : str or None
        Checksum of the per-pixel response the flats were linearised with (None: none).
    """

    dark: object
    gain: object
    flat_level: float
    exposure_ratio: float
    bad_pixels: object
    lag_dc_gain: float = 1.0
    response_checksum: str | None = None


def compute_calibration(
    dark_map,
    flat_map,
    *,
    dark_noise=None,
    exposure_ratio: float = 1.0,
    detect: bool = True,
    dead_below: float = 0.1,
    under_below: float = 0.7,
    over_above: float = 1.3,
    hot_sigma: float = 10.0,
    noisy_factor: float = 3.0,
    window: int = 9,
    saturation_level: float | None = None,
    raw_flat_map=None,
) -> Calibration:
    """Build a :class:`Calibration` from dark and flat statistic maps.

    Parameters
    ----------
    dark_map, flat_map : array (H, W)
        Per-pixel mean (or median) of the dark and the flat frames, raw counts.
    dark_noise : array (H, W), optional
        Per-pixel temporal standard deviation of the darks; enables the ``noisy`` class.
    exposure_ratio : float
        Exposure of the frames divided by that of the flats.
    detect : bool
        Detect bad pixels (otherwise only non-positive flat pixels are flagged dead).
    dead_below, under_below, over_above, hot_sigma, noisy_factor, window
        Thresholds, see :func:`detect_bad_pixels`.
    saturation_level : float, optional
        Raw level at which a pixel saturates (``flatfield.saturation_level``, else the raw frames' integer dtype
        maximum). None: the integer dtype maximum of ``flat_map`` itself, or for floats a pile-up at an ADC's
        full scale (see :func:`saturated_flat_pixels`); :func:`saturation_level_for` gives the run's level.
    raw_flat_map : array (H, W), optional
        The flat statistic as recorded, where saturation is judged, when ``flat_map`` was transformed first
        (linearised with a response, divided by the afterglow gain); default ``flat_map``.

    Returns
    -------
    Calibration

    Raises
    ------
    ValueError
        The flats are saturated (more than :data:`SATURATED_FLAT_FRACTION` of the pixels at the saturation
        level; fewer are flagged ``DEAD``), or every pixel is bad.
    """
    xp = get_xp(flat_map)
    dark = xp.asarray(dark_map, dtype=xp.float32)
    clipped = saturated_flat_pixels(flat_map if raw_flat_map is None else raw_flat_map, saturation_level)
    signal = xp.asarray(flat_map, dtype=xp.float32) - dark
    if detect:
        bad = detect_bad_pixels(
            dark,
            signal,
            dark_noise=dark_noise,
            dead_below=dead_below,
            under_below=under_below,
            over_above=over_above,
            hot_sigma=hot_sigma,
            noisy_factor=noisy_factor,
            window=window,
        )
    else:
        bad = xp.zeros(signal.shape, dtype=xp.uint8)
    bad = bad | xp.where(signal > 0, 0, DEAD).astype(xp.uint8)
    if clipped is not None:  # a flat pixel at the maximum measures no gain
        bad = bad | xp.where(clipped, DEAD, 0).astype(xp.uint8)
    good = bad == 0
    if not bool(good.any()):
        raise ValueError("every pixel is flagged bad: check that the flats are open-beam frames above the darks")
    level = float(signal[good].mean(dtype=xp.float64))
    gain = xp.where(signal > 0, signal / np.float32(level), np.float32(1)).astype(xp.float32)
    return Calibration(dark=dark, gain=gain, flat_level=level, exposure_ratio=float(exposure_ratio), bad_pixels=bad)


def saturation_level_for(dtype, configured: float | None = None) -> float | None:
    """The raw saturation level of frames of ``dtype``: ``configured`` (``flatfield.saturation_level``) if given,
    else the integer dtype's maximum, else None (floats), as the flat-field stage uses it."""
    if configured is not None:
        return float(configured)
    dt = np.dtype(dtype)
    return float(np.iinfo(dt).max) if dt.kind in "ui" else None


def saturated_flat_pixels(flat_map, saturation_level: float | None = None):
    """Pixels of a flat statistic map at the saturation level; refuses flats that are saturated.

    A pixel clipped in every flat frame has a mean (or median) equal to the level; one clipped in most frames sits
    just below it, hence the tolerance of 1e-4 of the level.

    Parameters
    ----------
    flat_map : array (H, W)
        Mean or median of the flat frames, raw counts.
    saturation_level : float, optional
        None: the maximum of ``flat_map``'s integer dtype (floats: no level). Whatever the level, flats piled up
        at an ADC full scale (their maximum is 2^n - 1, n = 8..16, or that code left-aligned in 16 bits, and more
        than :data:`SATURATED_FLAT_FRACTION` of the pixels sit there) are refused too.

    Returns
    -------
    array (H, W) bool, or None
        Where the flat is at the level (None: no level known).

    Raises
    ------
    ValueError
        ``the flats are saturated (100 % of pixels at the maximum, 65535); record them at a lower dose``, when
        more than :data:`SATURATED_FLAT_FRACTION` of the pixels are.
    """
    xp = get_xp(flat_map)
    raw = xp.asarray(flat_map)
    level = saturation_level
    if level is None and raw.dtype.kind in "ui":
        level = float(np.iinfo(raw.dtype).max)
    flat = raw.astype(xp.float32, copy=False)
    if not flat.size:
        return None

    def refuse_above(mask, at):
        frac = float(xp.count_nonzero(mask)) / flat.size
        if frac > SATURATED_FLAT_FRACTION:
            raise ValueError(f"the flats are saturated ({frac * 100:.3g} % of pixels at the maximum, {at:g}); "
                             "record them at a lower dose")

    sat = None
    if level is not None:
        sat = flat >= np.float32(float(level) - 1e-4 * abs(float(level)))
        refuse_above(sat, float(level))
    # whatever the level: a pile-up at an ADC's full scale is clipping too (a 12-bit camera stored as uint16 clips at
    # 4095, far below the dtype maximum). It only refuses: a few pixels there are left to the bad-pixel classes
    top = float(xp.max(flat))  # NaN if any is: then no pile-up to see
    if top in _ADC_FULL_SCALES and (level is None or top < float(level)):
        refuse_above(flat >= np.float32(top), top)
    return sat


def inverse_gain(gain, scale: float = 1.0):
    """``1 / (gain * scale)`` as float32: one division per pixel of the map, not per pixel of every frame."""
    xp = get_xp(gain)
    return (np.float32(1) / (gain if scale == 1.0 else gain * np.float32(scale))).astype(xp.float32)


def flat_field(frames, dark, gain, *, scale: float = 1.0, out=None, inv=None):
    """Dark-subtract and gain-normalise frames: ``(frames - dark) * (1 / (gain * scale))``.

    Parameters
    ----------
    frames : array (T, H, W) or (H, W), any real dtype
        Raw frames in counts.
    dark : array (H, W) float32
        Dark map.
    gain : array (H, W) float32
        Normalised gain map (strictly positive; see :func:`compute_calibration`).
    scale : float
        Extra divisor (e.g. ``exposure_ratio * flat_level`` for transmission).
    out : array float32, optional
    inv : array float32, optional
        ``inverse_gain(gain, scale)`` computed once for many blocks (``gain`` and ``scale`` are then unused).

    Returns
    -------
    array float32
    """
    xp = get_xp(frames)
    # multiplying by the inverse is within 1 ulp of dividing
    if inv is None:
        inv = inverse_gain(gain, scale)
    if out is None:
        out = xp.empty(frames.shape, dtype=xp.float32)
    if xp is np:
        from ..jit import flat_field_into  # one fused pass over all cores; bit-identical to the code below

        if flat_field_into(frames, dark, inv, out):  # False where it cannot take these arrays
            return out
    if xp is not np or frames.ndim != 3:
        xp.subtract(frames, dark, out=out, dtype=xp.float32)
        xp.multiply(out, inv, out=out)
        return out
    # NumPy: cast, subtract and scale tile by tile so each tile stays in cache between the three passes
    # (a mixed-dtype subtract and a float division per pixel are slow: this is 2x faster at 1024 x 1024)
    rows = max(1, _TILE_PIXELS // max(1, frames.shape[2]))
    for k in range(frames.shape[0]):
        for r0 in range(0, frames.shape[1], rows):
            o = out[k, r0 : r0 + rows]
            o[...] = frames[k, r0 : r0 + rows]
            o -= dark[r0 : r0 + rows]
            o *= inv[r0 : r0 + rows]
    return out


def flat_field_and_bad_pixels(frames, dark, inv, table=None, *, saturation: float | None = None, out=None,
                              saturated_bad=None):
    """``(frames - dark) * inv`` with bad pixels replaced, and the count of raw values >= ``saturation``.

    The NumPy path of :func:`correct_frames`' linear part for a run: with Numba, one pass per
    frame over all cores (bad pixels while the frame is in cache, the saturation count in the
    same pass), bit-identical to :func:`flat_field` then :func:`replace_bad_pixels`.

    Parameters
    ----------
    frames : array (T, H, W)
    dark, inv : array (H, W) float32
        Dark map and :func:`inverse_gain`.
    table : tuple, optional
        ``(targets, neighbours)`` from :func:`neighbour_table`; None replaces nothing.
    saturation : float, optional
        Raw level counted as saturated (None: count nothing, return 0).
    out : array (T, H, W) float32, optional
    saturated_bad : array (T, N) bool, optional
        Set to the bad pixels' saturation by their neighbours (:func:`saturation_mask`'s rule; N the
        table's targets), from the same pass with Numba. ``out`` must then not be ``frames``.

    Returns
    -------
    (array float32, int)
    """
    xp = get_xp(frames)
    if out is None:
        out = xp.empty(frames.shape, dtype=xp.float32)
    if xp is np:
        from ..jit import correct_into

        targets, neighbours = table if table is not None else (None, None)
        n = correct_into(frames, dark, inv, out, targets, neighbours, saturation, saturated_bad)
        if n is not None:
            return out, n
    if saturated_bad is not None and xp.may_share_memory(frames, out):
        raise ValueError("saturated_bad needs the raw frames: out must not be frames")
    flat_field(frames, dark, None, inv=inv, out=out)
    if table is not None:
        replace_bad_pixels(out, *table, out=out)
    n = 0 if saturation is None else int(xp.count_nonzero(frames >= saturation))
    if saturated_bad is not None:
        flags = None
        if table is not None and saturation is not None and table[0].size:
            p = frames.shape[-2] * frames.shape[-1]
            flags = _bad_pixels_saturated(frames.reshape(-1, p), saturation, table[1], out.reshape(-1, p))
        saturated_bad[...] = False if flags is None else flags
    return out, n


def to_attenuation(transmission, *, floor: float = 1e-6, out=None):
    """``-log(max(transmission, floor))``: line integral of attenuation (float32)."""
    xp = get_xp(transmission)
    if out is None:
        out = xp.empty(transmission.shape, dtype=xp.float32)
    xp.maximum(transmission, np.float32(floor), out=out)
    xp.log(out, out=out)
    xp.negative(out, out=out)
    return out


def correct_frames(
    frames,
    calibration: Calibration,
    *,
    output: str = "counts",
    replace: bool = True,
    table=None,
    saturation_level: float | None = None,
    mark_saturated: bool = True,
    attenuation_floor: float = 1e-6,
    response=None,
    inv_gain=None,
):
    """The whole flat-field correction of a block of raw frames.

    Steps: dark subtraction and gain division; bad pixels replaced by the
    median of good neighbours; saturated pixels set to NaN (raw value at or above
    ``saturation_level``; a replaced bad pixel where most of its neighbours are,
    see :func:`saturation_mask`); optional conversion to transmission or
    attenuation.

    Parameters
    ----------
    frames : array (T, H, W)
        Raw frames.
    calibration : Calibration
    output : {'counts', 'transmission', 'attenuation'}
    replace : bool
        Replace bad pixels (needs ``table``; built here if ``None``).
    table : tuple, optional
        ``(targets, neighbours)`` from :func:`neighbour_table`, to reuse across blocks.
    saturation_level : float, optional
        Raw level that marks saturation; ``None`` disables the check.
    mark_saturated : bool
        Set saturated pixels to NaN (:func:`saturation_mask`: a replaced bad pixel by its neighbours,
        never by its own raw value).
    attenuation_floor : float
        Smallest transmission taken before the logarithm.
    response : array (degree, H, W), optional
        Per-pixel log-log quadratic response (``pipeline.ops.characterise.fit_pixel_response``): the
        dark-subtracted signal is linearised with it before the gain (multi-point gain calibration).
        The calibration's gain must then come from linearised flats.
    inv_gain : array (H, W) float32, optional
        ``inverse_gain(calibration.gain, scale)`` for this ``output``, computed once by the caller.

    Returns
    -------
    array (T, H, W) float32
    """
    xp = get_xp(frames)
    scale = 1.0 if output == "counts" else calibration.exposure_ratio * calibration.flat_level
    if response is None:
        out = flat_field(frames, calibration.dark, calibration.gain, scale=scale, inv=inv_gain)
    else:  # a non-linear screen: dark-subtract, linearise pixel by pixel, then the gain
        from .characterise import linearize

        ones = xp.ones_like(calibration.gain)
        out = linearize(flat_field(frames, calibration.dark, ones), response)
        out *= (np.float32(1) / (calibration.gain * np.float32(scale))).astype(xp.float32)
    if replace:
        if table is None:
            table = neighbour_table(calibration.bad_pixels)
        replace_bad_pixels(out, *table, out=out)
    if mark_saturated and saturation_level is not None:
        sat = saturation_mask(frames, saturation_level, table if replace else None, out)
        if sat is not None:
            out[sat] = xp.nan
    if output == "attenuation":
        to_attenuation(out, floor=attenuation_floor, out=out)
    return out


def estimate_memory(frame_shape, n_frames: int, in_itemsize: int = 2) -> int:
    """Peak bytes :func:`correct_frames` needs for a block, beyond its input.

    The float32 output, the saturation mask (1 byte per pixel) and the gathered
    neighbour values (small) dominate.
    """
    pixels = int(np.prod(frame_shape)) * int(n_frames)
    return pixels * (4 + 1)
