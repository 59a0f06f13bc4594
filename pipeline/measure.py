"""Measurements: the slanted-edge MTF of images and datasets (and of a run's frames), the ghost left behind a
moving object, the afterglow model fitted from a falling step."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import validate
from ._version import __version__
from .clock import utc_now as _now
from .errors import CalibrationError, DataError
from .io import models, zarr_store
from .ops import afterglow as ag
from .schedule import frame_means, frame_statistics


def _write_mtf(writer, measured, t, pitch, roi, cfg) -> dict:
    """Assemble per-block MTF results into mtf/ arrays of the output, plus a PNG of resolution over time."""

    f = None
    mtf, curves = None, {}
    flags: list = [[] for _ in range(t)]
    for t0, meas in measured:
        m = meas["mtf"]
        n = m["mtf"].shape[0]
        if mtf is None:
            f = m["frequencies_cy_per_px"]
            mtf = np.full((t, f.size), np.nan)
            curves = {k: np.full(t, np.nan) for k in ("mtf50", "mtf20", "mtf10", "angle_deg")}
        mtf[t0 : t0 + n] = m["mtf"]
        for k in curves:
            curves[k][t0 : t0 + n] = m[k]
        flags[t0 : t0 + n] = m["flags"]
    writer.write("mtf/frequencies_cy_per_px", f)
    writer.write("mtf/mtf", mtf.astype(np.float32), chunks=(min(t, 256), f.size))
    writer.write("mtf/edge_angle_deg", curves["angle_deg"])
    unit, k = ("cy_per_px", 1.0) if not pitch else ("lp_per_mm", 1.0 / float(pitch))
    if pitch:
        writer.write("mtf/frequencies_lp_per_mm", f * k)
    for lv in ("mtf50", "mtf20", "mtf10"):
        writer.write(f"mtf/{lv}_{unit}", curves[lv] * k)
        if pitch:
            writer.write(f"mtf/{lv}_cy_per_px", curves[lv])
    counts: dict = {}
    for fl in flags:
        for x in fl:
            counts[x] = counts.get(x, 0) + 1
    summary = {
        "roi": list(roi), "window": cfg.mtf.window, "oversample": cfg.mtf.oversample, "unit": unit,
        "pixel_pitch_mm": pitch,
        "mtf20_median": float(np.nanmedian(curves["mtf20"]) * k) if np.isfinite(curves["mtf20"]).any() else None,
        "mtf50_median": float(np.nanmedian(curves["mtf50"]) * k) if np.isfinite(curves["mtf50"]).any() else None,
        "flag_counts": counts,
    }
    writer.set_attrs(summary, "mtf")
    summary["plot"] = str(mtf_plot_path(writer.final))
    summary["_curves"] = (curves["mtf50"] * k, curves["mtf20"] * k, unit)
    return summary


def mtf_plot_path(output: Path) -> Path:
    """Where the resolution-over-time PNG of a run goes: beside the output group."""
    return output.with_name(output.name + ".resolution.png")


def measure_mtf(
    path: str | Path,
    *,
    roi: tuple[int, int, int, int] | None = None,
    pixel_pitch_mm: float | None = None,
    window: str = "tukey",
    oversample: int = 4,
    f_max: float = 1.0,
    block_frames: int = 64,
    progress=None,
) -> dict:
    """Slanted-edge MTF of an image (TIFF/PNG/NPY) or of every frame of a Zarr dataset (batched).

    Returns a JSON-ready dict (every field names its unit) plus ``"result"``
    (the :class:`~pipeline.ops.mtf.MTFResult`, not serialisable).
    """
    from .io.images import read_image
    from .ops.edges import find_edge_roi
    from .ops.mtf import auto_n_fft, concat_results, expand_result, slanted_edge_mtf

    if pixel_pitch_mm is not None:
        pixel_pitch_mm = validate.positive_finite(pixel_pitch_mm, "--pixel-pitch", unit="mm", upper=10,
                                                  fix="give the pixel pitch in mm at the scintillator, e.g. --pixel-pitch 0.1")
    p = Path(path)
    is_zarr = p.is_dir()
    if is_zarr:
        ds = zarr_store.open_input(p)
        frames = ds.frames
        pitch = pixel_pitch_mm or ds.attrs.get("pixel_pitch_mm")
        first = np.asarray(frames[0 : min(4, frames.shape[0])], dtype=np.float64)
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # frames skipped as NaN: the others' mean
            first = np.nanmean(first, axis=0)
    else:
        img = read_image(p)
        frames = img[None] if img.ndim == 2 else img
        pitch = pixel_pitch_mm
        first = frames[0]
    t, h, w = frames.shape
    if hasattr(progress, "set_total"):
        progress.set_total(t)
    if roi is None:
        try:
            roi = find_edge_roi(np.nan_to_num(first))
        except ValueError as exc:
            raise DataError(f"'{path}': {exc}") from None
    y0, y1, x0, x1 = (int(v) for v in roi)
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w) or min(y1 - y0, x1 - x0) < 16:
        raise DataError(f"roi {list(roi)} must lie inside the {h} x {w} image and be at least 16 px a side")
    n_fft = auto_n_fft(max(y1 - y0, x1 - x0), oversample)
    parts, pending = [], []  # pending: blocks with no finite ROI, made NaN once a frequency grid is known
    for t0 in range(0, t, block_frames):
        block = np.asarray(frames[t0 : t0 + block_frames, y0:y1, x0:x1], dtype=np.float64)
        finite = np.isfinite(block).all(axis=(1, 2))  # a frame skipped as NaN: flagged, the others measured
        if not finite.any():
            pending.append((len(parts), finite))
            parts.append(None)
            continue
        try:
            res = slanted_edge_mtf(block[finite], window=window, oversample=oversample, f_max=f_max, n_fft=n_fft)
        except ValueError as exc:
            raise DataError(f"'{path}' roi {[y0, y1, x0, x1]}: {exc}") from None
        parts.append(expand_result(res, finite))
        if progress is not None:
            progress(len(block))
    known = next((p for p in parts if p is not None), None)
    if known is None:
        raise DataError(f"'{path}': no frame has a finite edge ROI {[y0, y1, x0, x1]} (all NaN); nothing to measure")
    for i, finite in pending:
        parts[i] = _nan_result(known, finite.size)
    res = concat_results(parts)
    out = res.to_dict(pitch, roi=[y0, y1, x0, x1], index=0 if (t == 1) else None)
    out["source"] = str(p)
    out["frames"] = t
    out["units"] = {"frequencies_cy_per_px": "cycles per pixel along the edge normal",
                    "frequencies_lp_per_mm": "line pairs per mm at the scintillator plane",
                    "edge_angle_deg": "degrees from the nearest pixel axis", "roi": "pixels [y0, y1, x0, x1)"}
    if not pitch:
        out["note"] = "no pixel pitch known: frequencies in cycles/pixel only (pass --pixel-pitch MM)"
    return {**out, "result": res}


def _nan_result(like, n: int):
    """A result of ``n`` ROIs none of which could be measured, on ``like``'s frequency grid."""
    from .ops.mtf import expand_result

    none = replace(like, mtf=like.mtf[:0], esf=like.esf[:0], lsf=like.lsf[:0], angle_deg=like.angle_deg[:0],
                   edge_fit_rms_px=like.edge_fit_rms_px[:0], flags=[], messages=[],
                   crossings_cy_per_px={k: v[:0] for k, v in like.crossings_cy_per_px.items()})
    return expand_result(none, np.zeros(n, bool))


def ghost_report(ds: "zarr_store.InputDataset", corrected, model, chunk: int) -> dict:
    """Ghost behind the moving object, before and after afterglow removal, against the simulator's truth.

    "Before" is the flat-field-only result, rebuilt exactly from the corrected
    frames by the forward model (the correction is linear and invertible).
    Per frame: mean of (result - truth) over pixels uncovered by the object in
    the last few frames, as a fraction of the object's contrast.
    """
    tr = ds.truth_attrs
    open_level = float(tr["open_level"])
    contrast = float(tr.get("board", {}).get("absorbance", 0.3)) * open_level
    window = int(min(50, max(5, 5 * max(model.tau_s) * model.frame_rate_hz)))
    t = ds.shape[0]
    before, after = np.full(t, np.nan), np.full(t, np.nan)
    state = since = None
    truth = ds.truth_frames
    for t0 in range(0, t, chunk):
        t1 = min(t0 + chunk, t)
        x = np.nan_to_num(np.asarray(corrected[t0:t1], dtype=np.float32))
        ref = np.asarray(truth[t0:t1], dtype=np.float32)
        if state is None:
            state = ag.steady_state(x[0] * np.float32(np.mean(ag.dc_gain(model.amplitudes, model.ratios))),
                                    model.amplitudes, model.ratios)
        lagged, state = ag.add_lag(x, model.amplitudes, model.ratios, state)
        mask, since = ag.trail_mask(ref, since, background=0.999 * open_level,
                                    threshold=open_level - 0.5 * contrast, window=window)
        with np.errstate(invalid="ignore"):
            after[t0:t1] = ag.ghost_residual(x, ref, mask, contrast=contrast)
            before[t0:t1] = ag.ghost_residual(lagged, ref, mask, contrast=contrast)
    ok = np.isfinite(before) & np.isfinite(after)
    e_before = float(np.sum(before[ok] ** 2))
    e_after = float(np.sum(after[ok] ** 2))
    return {
        "before": before, "after": after,
        "frames_with_trail": int(ok.sum()),
        "mean_abs_before": float(np.mean(np.abs(before[ok]))) if ok.any() else None,
        "mean_abs_after": float(np.mean(np.abs(after[ok]))) if ok.any() else None,
        "energy_reduction": (e_before / e_after) if e_after > 0 else None,
        "unit": "fraction of the object's contrast",
    }


def fit_afterglow(
    calibration: str | Path,
    output: str | Path,
    *,
    plot: str | Path | None = None,
    per_pixel: bool = False,
    max_terms: int = 4,
    skip: int | None = None,
    roi: tuple[int, int, int, int] | None = None,
    frame_rate_hz: float | None = None,
    overwrite: bool = False,
    inputs: list | None = None,
) -> dict:
    """Fit the afterglow model from a falling-step recording and save MODEL.json.

    The recording's ``frames`` hold the beam on at steady state, then off;
    ``darks`` are subtracted when present (otherwise an offset is fitted).

    ``inputs``: what the recording was read from when ``calibration`` is a staged copy (the first is the model's
    ``source``; none of them may be an output). Returns the saved document (plus the
    :class:`~pipeline.ops.afterglow.StepFit` under ``"fit"``).
    """
    from .io import outputs

    out = Path(output)
    for f in (out, out.with_suffix(".amplitudes.npy") if per_pixel else None, plot):
        if f is not None:
            outputs.check_output_path(f, overwrite=overwrite, inputs=[calibration, *(inputs or [])], kind="file",
                                      sidecars=False)
    if frame_rate_hz is not None:
        frame_rate_hz = validate.positive_finite(frame_rate_hz, "--frame-rate", unit="Hz", upper=1e7,
                                                 fix="give the recording's frame rate in Hz, e.g. --frame-rate 50")
    ds = zarr_store.open_input(calibration)
    fr = frame_rate_hz if frame_rate_hz is not None else ds.attrs.get("frame_rate_hz")
    if fr is None:
        raise DataError(f"'{calibration}' has no frame_rate_hz attribute; pass --frame-rate HZ")
    t, h, w = ds.shape
    if roi is not None:
        y0, y1, x0, x1 = roi
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise DataError(f"roi {roi} lies outside the {h} x {w} frames")
    reader = ds.reader()
    means = frame_means(reader, roi=roi)
    dark_map = None
    if ds.darks is not None:
        dark_map, _ = frame_statistics(ds.array_reader("darks"))
        region = dark_map if roi is None else dark_map[roi[0]:roi[1], roi[2]:roi[3]]
        means = means - float(region.mean(dtype=np.float64))
    try:
        fit = ag.fit_falling_step(means, float(fr), max_terms=max_terms, skip=skip, fit_offset=dark_map is None)
    except ValueError as exc:
        raise CalibrationError(f"afterglow fit of '{calibration}': {exc}") from None
    amap = None
    if per_pixel:
        if dark_map is None:
            raise CalibrationError(f"per-pixel afterglow maps need darks in '{calibration}'")
        kc = fit.cutoff_frame
        on = np.asarray(reader[max(kc // 2, 0): max(kc - 1, 1)], dtype=np.float32).mean(axis=0) - dark_map
        n_after = int(min(t - kc, max(8, 5 * max(fit.tau_s) * float(fr))))
        after = np.asarray(reader[kc: kc + n_after], dtype=np.float32) - dark_map
        amap = ag.fit_amplitude_maps(after, on, fit.tau_s, float(fr), first_frame=fit.skipped_frames)
    doc = _model_document(fit, (inputs or [calibration])[0], float(fr), roi, darks_subtracted=dark_map is not None)
    path = models.save_model(out, doc, amplitude_map=amap, overwrite=overwrite, inputs=[calibration, *(inputs or [])])
    if plot:
        from . import report

        with outputs.atomic_file(plot, overwrite=overwrite, inputs=[calibration, *(inputs or [])]) as tmp:
            report.afterglow_fit(fit, tmp)
    return {**doc, "path": path, "fit_result": fit}


def _model_document(fit, calibration, frame_rate_hz: float, roi, *, darks_subtracted: bool) -> dict:
    """MODEL.json's content: the model, its parameters, the conventional figures and how the fit went."""
    resid = (fit.data - fit.model) if fit.data is not None else np.zeros(1)
    doc = {
        "version": __version__,
        "source": str(Path(calibration).resolve()),
        "created": _now(),
        "model": "y_k = x_k + sum_n L_n,k ; L_n,k+1 = r_n (L_n,k + a_n x_k) ; r_n = exp(-1 / (frame_rate_hz tau_n))",
        "frame_rate_hz": frame_rate_hz,
        "tau_s": [float(v) for v in fit.tau_s],
        "amplitudes": [float(v) for v in fit.amplitudes],
        "step_amplitudes": [float(v) for v in fit.step_amplitudes],
        "dc_gain": fit.dc_gain,
        "figures": {**fit.figures(), "unit": "fraction of the steady signal in a frame starting that long after cut-off"},
        "fit": {
            "criterion": "NNLS spectrum over 80 log-spaced time constants, bounded least-squares refinement of 1-4 terms, "
                         "number of terms by minimum BIC (chi-square with the noise measured on the beam-on frames + p ln n)",
            "cutoff_frame": fit.cutoff_frame, "skipped_frames": fit.skipped_frames, "points": fit.n_points,
            "residual_rms": float(np.sqrt(np.mean(resid**2))), "noise_rms": fit.noise / fit.steady_level,
            "steady_level_counts": fit.steady_level, "offset_counts": fit.offset, "bic": fit.bic,
            "roi": list(roi) if roi else None, "darks_subtracted": darks_subtracted,
        },
    }
    return doc
