"""Numbers checked where they enter: dataset attributes, command-line/API arguments, calibration attributes, and
config sizes against the frame size.

Every check raises a one-line error that names the thing and says the fix: :class:`~pipeline.errors.DataError`
for dataset attributes and arguments, :class:`~pipeline.errors.CalibrationError` for calibration data and
:class:`~pipeline.errors.ConfigError` for config keys. The config's own ranges live in :mod:`pipeline.config`;
what it cannot know (the frame size) is :func:`check_sizes`.
"""

from __future__ import annotations

import math
import numbers

from .errors import CalibrationError, ConfigError, DataError

__all__ = ["positive_finite", "dataset_attrs", "calibration_attrs", "check_sizes", "DATASET_ATTRS"]


def _show(value) -> str:
    """A value for a one-line message: short, control characters escaped."""
    text = repr(value) if isinstance(value, str) else str(value)
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= 40 else text[:37] + "..."


def _label(label) -> str:
    """A path or name for a one-line message (whole, control characters escaped)."""
    return str(label).encode("unicode_escape").decode("ascii")


def _what(value) -> str:
    """Why a value is not a usable number ('' when it is a finite real)."""
    if isinstance(value, bool):
        return " (a boolean, not a number)"
    if not isinstance(value, numbers.Real):
        kind = {"str": "string", "dict": "mapping", "NoneType": "null"}.get(type(value).__name__, type(value).__name__)
        return f" (a {kind}, not a number)"
    return ""


def _check(value, *, upper=None, upper_open=False):
    """The value as a float if it is a finite real > 0 (and <= upper), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(v) or v <= 0:
        return None
    if upper is not None and (v >= upper if upper_open else v > upper):
        return None
    return v


def _num(v: float) -> str:
    return f"{v:g}".replace("e+0", "e").replace("e+", "e")


def _range(unit: str, upper) -> str:
    short = unit if unit and len(unit) <= 6 else ""  # "mm", "Hz", "uGy"; not "photons per mm^2 per uGy"
    tail = f" (at most {_num(upper)}{' ' + short if short else ''})" if upper is not None else ""
    return f"a positive number{' of ' + unit if unit else ''}{tail}"


def positive_finite(value, name: str, *, fix: str, error: type[Exception] = DataError, upper: float | None = None,
                    unit: str = "") -> float:
    """``value`` as a float if it is a finite number > 0 (and <= ``upper``); else ``error`` in one line.

    For command-line and API arguments, e.g. ``positive_finite(pixel_pitch_mm, "--pixel-pitch", fix="give it in
    mm, e.g. --pixel-pitch 0.1", upper=10)``. A bool is refused (it is an int in Python: True would read as 1).

    Raises
    ------
    error
        ``"--pixel-pitch is nan; it must be a positive number of mm (at most 10 mm): give it in mm, ..."``.
    """
    v = _check(value, upper=upper)
    if v is None:
        raise error(f"{name} is {_show(value)}{_what(value)}; it must be {_range(unit, upper)}: {fix}")
    return v


# name: (unit, upper bound, fix). Physical ranges with a wide margin: a pixel pitch of 10 mm and a frame rate of
# 10 MHz are beyond any scintillator camera; q (photons per mm^2 per uGy) is ~2e4-3.5e4 for the IEC RQA beams (a
# few thousand for mammography); air kerma of one flat (uGy) of 1e9 is a kGy.
_PITCH_FIX = "set it with 'xray-pipeline ingest --pixel-pitch MM' or pass --pixel-pitch"
_RATE_FIX = "set it with 'xray-pipeline ingest --frame-rate HZ' or pass --frame-rate"
DATASET_ATTRS: dict[str, tuple[str, float, str]] = {
    "pixel_pitch_mm": ("mm", 10.0, _PITCH_FIX),
    "frame_rate_hz": ("Hz", 1e7, _RATE_FIX),
    "q_per_uGy_mm2": ("photons per mm^2 per uGy", 1e6,
                      "correct the attribute or pass --q PHOTONS_PER_UGY_MM2 (IEC 62220-1-1: RQA5 is 29653)"),
    "reference_kerma_uGy": ("uGy", 1e9, "set it to the air kerma of one of the flat levels, or delete it"),
    "air_kerma_uGy": ("uGy", 1e9, "set it to the air kerma the flats were recorded at (uGy)"),
}


def dataset_attrs(attrs: dict, label: str, *, fixes: dict[str, str] | None = None) -> dict:
    """Check the physical attributes a dataset (or one of its arrays) carries, where present.

    ``pixel_pitch_mm`` (0 < x <= 10 mm), ``frame_rate_hz`` (0 < x <= 1e7 Hz), ``q_per_uGy_mm2``,
    ``reference_kerma_uGy`` and ``air_kerma_uGy`` (finite, > 0): a number, never a bool or a string. A null
    (None) counts as absent. Other attributes pass unchanged.

    Parameters
    ----------
    attrs : dict
        The attributes as read (not changed).
    label : str
        What carries them, for the message: a path such as ``rec.zarr`` or ``cal.zarr/flats/level2``.
    fixes : dict, optional
        Attribute name -> the fix to print instead of the default (for a command without ``--pixel-pitch``).

    Returns
    -------
    dict
        A copy of ``attrs`` with the checked values as Python floats.

    Raises
    ------
    DataError
        ``dataset 'rec.zarr' attribute pixel_pitch_mm is -0.01; it must be a positive number of mm (at most
        10 mm): set it with 'xray-pipeline ingest --pixel-pitch MM' or pass --pixel-pitch``.
    """
    out = dict(attrs)
    for key, (unit, upper, fix) in DATASET_ATTRS.items():
        if key not in out:
            continue
        fix = (fixes or {}).get(key, fix)
        value = out[key]
        if value is None:  # JSON null: unknown, as if absent (the callers say what is missing where they need it)
            continue
        v = _check(value, upper=upper)
        if v is None:
            raise DataError(f"dataset '{_label(label)}' attribute {key} is {_show(value)}{_what(value)}; "
                            f"it must be {_range(unit, upper)}: {fix}")
        out[key] = v
    return out


# saved by api.save_calibration: flat level (raw counts, > 0), exposure ratio (> 0), the afterglow DC gain the
# flat signal was divided by (>= 1 physically: the lag only adds signal; > 0 is what the arithmetic needs)
_CALIBRATION_ATTRS = {"flat_level": "counts", "exposure_ratio": "", "lag_dc_gain_removed": ""}


def calibration_attrs(attrs: dict, label: str) -> dict:
    """Check a saved calibration's numbers (``flat_level``, ``exposure_ratio``, ``lag_dc_gain_removed``).

    Returns a copy with them as floats; raises :class:`CalibrationError` (``calibration 'cal.zarr' attribute
    flat_level is nan; ...: recompute it with 'xray-pipeline calibrate'``).
    """
    out = dict(attrs)
    for key, unit in _CALIBRATION_ATTRS.items():
        if key not in out:
            continue
        v = _check(out[key])
        if v is None:
            raise CalibrationError(f"calibration '{_label(label)}' attribute {key} is {_show(out[key])}"
                                   f"{_what(out[key])}; it must be {_range(unit, None)}: recompute it with 'xray-pipeline calibrate'")
        out[key] = v
    return out


def _largest_odd(n: int) -> int:
    return n if n % 2 else n - 1


def check_sizes(cfg, frame_shape) -> None:
    """Refuse config sizes that exceed the frames (they only cost time: a 100000-pixel NLM search on 64 x 64 frames
    ran for more than 15 minutes), for the stages the config turns on.

    * windows, boxes and patches (``flatfield.bad_pixels.window``, ``denoise.median_size``, ``denoise.nlm_patch``,
      ``denoise.temporal_smooth``) at most ``min(H, W)`` (odd windows: the largest odd number that fits);
    * search radii (``denoise.nlm_search``; the bilateral filter's ``2 sigma``) below ``max(H, W)``: every offset
      beyond is a reflection of one already searched;
    * ``denoise.gaussian_sigma`` at most ``min(H, W)`` (beyond, the filter returns about the frame's mean).

    Parameters
    ----------
    cfg : RunConfig
    frame_shape : (H, W)
        Of the input's frames. Call once the input is open, before anything is written.

    Raises
    ------
    ConfigError
        ``config key 'denoise.nlm_search' is 100000 pixels but the frames are 64 x 64; use at most 63``.
    """
    h, w = (int(v) for v in tuple(frame_shape)[-2:])
    small, large = min(h, w), max(h, w)
    frames = f"the frames are {h} x {w}"

    def refuse(key, value, most, *, alt=""):
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        most_s = f"{most:g}" if isinstance(most, float) else str(most)
        raise ConfigError(f"config key '{key}' is {shown} pixels but {frames}; use at most {most_s}{alt}")

    ff = cfg.flatfield
    if ff.enabled and ff.bad_pixels.detect and ff.bad_pixels.window > small:
        most = _largest_odd(small)
        alt = " or set flatfield.bad_pixels.detect=false" if most >= 3 else ""
        if most < 3:  # no window of 3 fits: only turning detection off helps
            raise ConfigError(f"config key 'flatfield.bad_pixels.window' is {ff.bad_pixels.window} pixels but "
                              f"{frames}; no local-median window fits: set flatfield.bad_pixels.detect=false")
        refuse("flatfield.bad_pixels.window", ff.bad_pixels.window, most, alt=alt)
    dn = cfg.denoise
    if not dn.enabled:
        return
    if dn.temporal and dn.temporal_smooth > small:
        refuse("denoise.temporal_smooth", dn.temporal_smooth, small)
    m = dn.method
    if m == "median" and dn.median_size > small:
        most = _largest_odd(small)
        if most < 3:
            raise ConfigError(f"config key 'denoise.median_size' is {dn.median_size} pixels but {frames}; no median "
                              "window fits: choose another denoise.method")
        refuse("denoise.median_size", dn.median_size, most)
    elif m == "gaussian" and dn.gaussian_sigma > small:
        refuse("denoise.gaussian_sigma", dn.gaussian_sigma, float(small))
    elif m == "bilateral" and math.ceil(2 * dn.bilateral_sigma_spatial) >= large:
        refuse("denoise.bilateral_sigma_spatial", dn.bilateral_sigma_spatial, (large - 1) / 2.0)
    elif m == "nlm":
        if dn.nlm_patch > small:
            refuse("denoise.nlm_patch", dn.nlm_patch, small)
        if dn.nlm_search >= large:
            refuse("denoise.nlm_search", dn.nlm_search, large - 1)
