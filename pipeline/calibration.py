"""Calibration: darks and flats into dark, gain and bad-pixel maps; saved calibrations; the per-pixel response and
the afterglow model a run's config names, each checked against the data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from . import validate
from ._version import __version__
from .clock import utc_now as _now
from .config import RunConfig, load_config
from .errors import CalibrationError, DataError
from .io import models, zarr_store
from .ops import afterglow as ag
from .ops.flatfield import Calibration, compute_calibration, saturation_level_for
from .schedule import frame_statistics


def calibrate(dataset: "str | Path | zarr_store.InputDataset", config: RunConfig | dict | None = None,
              *, afterglow_model: "models.AfterglowModel | None" = None) -> Calibration:
    """Compute the flat-field calibration from a dataset's darks and flats.

    With an afterglow model, the flat signal is divided by the model's DC lag
    gain ``G`` first: flats are recorded at steady state and hold ``G`` times
    the prompt signal, while the afterglow stage restores the prompt signal.
    Transmission is then the same with or without the stage.

    Raises :class:`CalibrationError` when darks or flats are missing.
    """
    cfg = load_config(config)
    ds = dataset if isinstance(dataset, zarr_store.InputDataset) else zarr_store.open_input(dataset)
    validate.check_sizes(cfg, ds.shape[1:])
    ff = cfg.flatfield
    missing = [n for n in ("darks", "flats") if getattr(ds, n) is None]
    if missing:
        raise CalibrationError(
            f"input '{ds.path}' has no {' and no '.join(missing)}; add them to the dataset or pass "
            "--calibration CAL.zarr (from 'xray-pipeline calibrate')"
        )
    if afterglow_model is None and cfg.afterglow.model:
        afterglow_model = load_afterglow(cfg, ds)
    sched = cfg.execution.scheduler if cfg.execution.scheduler != "processes" else "threads"
    dark, dark_std = frame_statistics(ds.array_reader("darks"), statistic=ff.dark_statistic, with_std=True,
                                      scheduler=sched)
    flat, _ = frame_statistics(ds.array_reader("flats"), statistic=ff.flat_statistic, scheduler=sched)
    raw_flat = flat  # saturation is judged on the flats as recorded (before linearisation or the lag gain)
    from .io.checkpoint import checksum

    response = load_response(cfg, dark.shape)
    if response is not None:
        from .ops.characterise import linearize

        flat = dark + linearize((flat - dark).astype(np.float32), response)
    lag_gain = 1.0
    if afterglow_model is not None:
        g = np.asarray(ag.dc_gain(afterglow_model.amplitudes, afterglow_model.ratios), dtype=np.float32)
        flat = dark + (flat - dark) / g
        lag_gain = float(np.mean(g))
    bp = ff.bad_pixels
    try:
        cal = compute_calibration(
            dark, flat, dark_noise=dark_std, exposure_ratio=ff.flat_exposure_ratio, detect=bp.detect,
            dead_below=bp.dead_below, under_below=bp.under_below, over_above=bp.over_above,
            hot_sigma=bp.hot_sigma, noisy_factor=bp.noisy_factor, window=bp.window,
            saturation_level=saturation_level_for(ds.flats.dtype, ff.saturation_level), raw_flat_map=raw_flat,
        )
        return replace(cal, lag_dc_gain=lag_gain,
                       response_checksum=checksum(response) if response is not None else None)
    except ValueError as exc:
        raise CalibrationError(f"calibration from '{ds.path}' failed: {exc}") from None


def save_calibration(cal: Calibration, path: str | Path, *, overwrite: bool = False, source: str = "",
                     inputs=()) -> Path:
    """Write a calibration as its own Zarr group (reuse with ``run --calibration``); ``inputs``: what it was made
    from besides ``source`` (never written over)."""
    w = zarr_store.OutputWriter(path, overwrite=overwrite, inputs=[source or None, *inputs])
    try:
        w.write("dark", np.asarray(cal.dark, np.float32))
        w.write("gain", np.asarray(cal.gain, np.float32))
        w.write("bad_pixels", np.asarray(cal.bad_pixels, np.uint8))
        w.set_attrs({"kind": "xray-pipeline calibration", "flat_level": cal.flat_level,
                     "exposure_ratio": cal.exposure_ratio, "source": str(source), "created": _now(),
                     "lag_dc_gain_removed": float(cal.lag_dc_gain),
                     "response_checksum": cal.response_checksum,
                     "version": __version__,
                     "bad_pixel_bits": {"dead": 1, "hot": 2, "noisy": 4, "over": 8, "under": 16}})
    except BaseException:
        w.abort()
        raise
    return w.commit()


def load_calibration(path: str | Path, frame_shape) -> Calibration:
    arrays, attrs = zarr_store.load_calibration(path, frame_shape)
    attrs = validate.calibration_attrs(attrs, str(path))
    gain = arrays["gain"].astype(np.float32)
    if not np.all(np.isfinite(gain)) or np.any(gain <= 0):
        raise CalibrationError(f"calibration '{path}' has non-positive or non-finite gain values; recompute it")
    return Calibration(dark=arrays["dark"].astype(np.float32), gain=gain, flat_level=float(attrs["flat_level"]),
                       exposure_ratio=float(attrs.get("exposure_ratio", 1.0)), bad_pixels=arrays["bad_pixels"],
                       lag_dc_gain=float(attrs.get("lag_dc_gain_removed", 1.0)),
                       response_checksum=attrs.get("response_checksum"))


def _response_checksum(cfg: RunConfig, frame_shape):
    from .io.checkpoint import checksum

    r = load_response(cfg, frame_shape)
    return checksum(r) if r is not None else None


def _check_response(calibration, cfg: RunConfig, frame_shape):
    """A saved calibration must have been made with the same flatfield.response as the run."""
    had = zarr_store.read_attrs(calibration).get("response_checksum")  # None: made without one
    want = _response_checksum(cfg, frame_shape)
    if had is not None and want is not None and had != want and "-" not in had:  # saved before the CRC-32
        from .io.checkpoint import legacy_checksum

        want = legacy_checksum(load_response(cfg, frame_shape))
    if had != want:
        raise CalibrationError(f"calibration '{calibration}' was made {'without' if had is None else 'with another'} "
                               "flatfield.response; recompute it with 'xray-pipeline calibrate' and the same --set "
                               "flatfield.response=... (or run without --calibration)")


def load_response(cfg: RunConfig, frame_shape):
    """The per-pixel response (multi-point gain) the config names, checked against the frames (or None)."""
    path = cfg.flatfield.response
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"flatfield.response '{p}' does not exist; make it with 'xray-pipeline characterise'")
    try:
        coeffs = np.load(p, allow_pickle=False).astype(np.float32)
    except Exception as exc:
        raise CalibrationError(f"flatfield.response '{p}' is not a NumPy array file ({type(exc).__name__})") from None
    if coeffs.ndim != 3 or coeffs.shape[0] != 4 or tuple(coeffs.shape[1:]) != tuple(frame_shape):
        raise CalibrationError(f"flatfield.response '{p}' has shape {coeffs.shape}; expected (4, "
                               f"{frame_shape[0]}, {frame_shape[1]}) for these frames (from 'characterise')")
    ok = np.all(np.isfinite(coeffs), axis=0) & (coeffs[1] > 0)
    if ok.mean() < 0.5:
        raise CalibrationError(f"flatfield.response '{p}': most pixels have no positive linear response; refit it")
    # dead or broken pixels (replaced later as bad pixels) get the typical response, so nothing divides by zero
    for j in range(coeffs.shape[0]):
        coeffs[j][~ok] = np.median(coeffs[j][ok])
    return coeffs


def _match_lag_gain(cal: Calibration, model, path) -> Calibration:
    """Make a saved calibration's flat level agree with the afterglow model's DC gain (uniform amplitudes)."""
    had = float(cal.lag_dc_gain)
    if model is None:
        want = 1.0
    elif np.ndim(model.amplitudes) > 1:
        if abs(had - 1.0) < 1e-12:
            raise CalibrationError(f"calibration '{path}' was made without the per-pixel afterglow model; "
                                   "recompute it with 'xray-pipeline calibrate --set afterglow.model=MODEL.json'")
        return cal
    else:
        want = float(ag.dc_gain(model.amplitudes, model.ratios))
    if abs(had - want) < 1e-9:
        return cal
    return replace(cal, flat_level=cal.flat_level * had / want, lag_dc_gain=want)


def load_afterglow(config: RunConfig, ds: "zarr_store.InputDataset"):
    """The afterglow model the config names, checked against the data (or None)."""
    if not config.afterglow.model:
        return None
    model = models.load_model(config.afterglow.model, ds.shape[1:])
    if config.afterglow.check_frame_rate:
        fr = ds.attrs.get("frame_rate_hz")
        if fr is None:
            raise DataError(f"input '{ds.path}' has no frame rate to check the afterglow model against; pass "
                            "--frame-rate HZ (or set input.frame_rate_hz in the config, or 'xray-pipeline set-attrs "
                            "DATASET frame_rate_hz=HZ'), or set afterglow.check_frame_rate: false")
        if abs(float(fr) - model.frame_rate_hz) > 1e-6 * model.frame_rate_hz:
            raise CalibrationError(f"afterglow model '{model.path}' was fitted at {model.frame_rate_hz:g} Hz but "
                                   f"'{ds.path}' was recorded at {float(fr):g} Hz; refit the model at the data's frame rate")
    return model
