"""Detector characterisation: simulate a characterisation dataset, compute the figures, write the report.

``characterise`` reads a characterisation dataset (see the README), computes linearity, gain and
bad pixels, MTF, NNPS (IEC 62220-1-1), DQE and afterglow, and writes ``report.json``,
``report.html`` and ``pixel_response.npy``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import validate
from ._version import __version__
from .clock import utc_now as _now
from .errors import CalibrationError, DataError, PipelineError
from .io import zarr_store
from .ops import afterglow as ag
from .ops.flatfield import compute_calibration, saturated_flat_pixels, saturation_level_for
from .simulator import SimulationSpec


def simulate_characterisation(output: str | Path, *, preset: str = "eu-gc", size=(512, 512), seed: int = 0,
                              overwrite: bool = False, **kw) -> Path:
    """Write a simulated characterisation dataset (see the README) with its truth."""
    from .simulator import characterisation

    spec = SimulationSpec(preset=preset, height=size[0], width=size[1], seed=seed)
    return write_characterisation(characterisation(spec, **kw), output, overwrite=overwrite)


def write_characterisation(d: dict, output, *, overwrite: bool = False, progress=None) -> Path:
    """A characterisation dict (:func:`pipeline.simulator.characterisation`'s layout) as a Zarr dataset."""
    writer = zarr_store.OutputWriter(output, overwrite=overwrite)
    try:
        h, w = np.shape(d["darks"])[1:]
        writer.write("darks", d["darks"], chunks=(8, h, w))
        for i, (k, stack) in enumerate(d["flats"]):
            writer.write(f"flats/level{i}", stack, chunks=(8, h, w))
            writer.set_attrs({"air_kerma_uGy": k}, f"flats/level{i}")
        writer.write("edge", d["edge"], chunks=(8, h, w))
        writer.write("afterglow_step", d["afterglow_step"], chunks=(16, h, w))
        truth = dict(d["truth"])
        for name in ("mtf_frequencies_cy_per_px", "mtf_lsf", "mtf_edge", "bad_pixels"):
            writer.write(f"truth/{name}", truth.pop(name))
        writer.set_attrs(truth, "truth")
        writer.set_attrs(d["attrs"])
    except BaseException:
        writer.abort()
        raise
    if progress is not None:
        progress(1)
    return writer.commit()


def simulate_stability_sessions(folder, *, preset: str = "eu-gc", size=(256, 256), seed: int = 0,
                                overwrite: bool = False, progress=None, **kw) -> list[Path]:
    """A series of simulated characterisation sessions with known drift (:func:`pipeline.simulator.
    stability_sessions`), one Zarr dataset each, ``session_<hours>h.zarr`` in ``folder``."""
    from .simulator_stability import stability_sessions

    spec = SimulationSpec(preset=preset, height=size[0], width=size[1], seed=seed)
    sessions = stability_sessions(spec, **kw)
    if hasattr(progress, "set_total"):
        progress.set_total(len(sessions))
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    return [write_characterisation(d, out / f"session_{float(d['truth']['time_h']):05.0f}h.zarr",
                                   overwrite=overwrite, progress=progress) for d in sessions]


def characterise(dataset: str | Path, outdir: str | Path, *, compare: str | Path | None = None,
                 q_per_ugy_mm2: float | None = None, overwrite: bool = False, inputs=()) -> dict:
    """Linearity, gain and bad pixels, MTF, NNPS, DQE and afterglow of a detector; report.json and report.html.

    See the README for the dataset layout (or :mod:`pipeline.manifest` for the lab's files). ``inputs``: what
    ``dataset`` was made from (never an output). Returns the report (also written as ``report.json``).
    """
    return characterise_with_maps(dataset, outdir, compare=compare, q_per_ugy_mm2=q_per_ugy_mm2,
                                  overwrite=overwrite, inputs=inputs)[0]


def characterise_with_maps(dataset, outdir, *, compare=None, q_per_ugy_mm2=None, overwrite=False, inputs=()):
    """:func:`characterise`, also returning the maps behind the report: ``{'gain', 'bad_pixels', 'edge_mean'}``
    (what a stability trend compares between sessions)."""
    try:
        return _characterise(dataset, outdir, compare=compare, q_per_ugy_mm2=q_per_ugy_mm2, overwrite=overwrite,
                             inputs=list(inputs))
    except ValueError as exc:
        if isinstance(exc, PipelineError):
            raise
        raise DataError(f"characterise '{dataset}': {exc}") from None


def _characterise(dataset, outdir, *, compare, q_per_ugy_mm2, overwrite, inputs) -> dict:
    from . import report
    from .io.outputs import FileSet

    # the three files are written together or not at all, never into the dataset, never over a folder
    files = FileSet(Path(outdir), ("report.json", "report.html", "pixel_response.npy"), overwrite=overwrite,
                    inputs=[dataset, compare, *inputs])
    if q_per_ugy_mm2 is not None:  # before the dataset: an argument error needs no data to show
        q_per_ugy_mm2 = validate.positive_finite(
            q_per_ugy_mm2, "--q", unit="photons per mm^2 per uGy", upper=validate.DATASET_ATTRS["q_per_uGy_mm2"][1],
            fix="give the beam's photon fluence per air kerma, e.g. --q 29653 for RQA5 (IEC 62220-1-1)")
    other = _compared_report(compare)
    d = _open_characterisation(dataset, q_per_ugy_mm2)
    lin, response, cal, kref, means, iref, ref, p = _linearity_and_gain(d)
    linearise = _conversion(p, means[iref])
    nn, good, mean_lin, lr = _reference_nnps(d, cal, linearise, ref)
    edge, mres, roi = _edge_mtf(d, cal, linearise)
    ag_fig, fit = _step_afterglow(d, linearise)
    dqe = _dqe(d, cal, nn, mres, fit if ag_fig else None, p, good, mean_lin, kref)
    rep = _report_document(inputs[0] if inputs else dataset, d, lin, cal, kref, nn, edge, mres, roi, ag_fig, dqe)
    html = report.characterisation_html(rep, np.asarray(cal.gain), np.asarray(cal.bad_pixels), nn["nps_2d"],
                                        other=other)
    _write_report(files, rep, response, html)
    return rep, {"gain": np.asarray(cal.gain), "bad_pixels": np.asarray(cal.bad_pixels),
                 "edge_mean": edge.mean(axis=0)}


def _compared_report(compare) -> dict | None:
    """``--compare``'s report.json, checked (one line each: missing, not JSON, not a report)."""
    import json as _json

    if not compare:
        return None
    cp = Path(compare)
    if not cp.is_file():
        raise DataError(f"--compare '{cp}' does not exist; give another report.json")
    try:
        other = _json.loads(cp.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"--compare '{cp}' is not readable JSON ({type(exc).__name__}); give a report.json "
                        "from 'xray-pipeline characterise'") from None
    if not isinstance(other, dict) or not isinstance(other.get("summary"), dict):
        raise DataError(f"--compare '{cp}' is not a report of 'xray-pipeline characterise' (no summary); give "
                        "its report.json")
    return other


def _open_characterisation(dataset, q_per_ugy_mm2) -> dict:
    """The dataset's group, a checked reader, its checked attributes, pitch, beam, q, kerma levels and darks."""
    from .ops import characterise as ch

    g = zarr_store.open_group_readonly(dataset)
    root = Path(dataset)

    def read(name):  # checked: a lost chunk is an error, never zeros
        return np.asarray(zarr_store.read_checked(g[name], f"{dataset}/{name}", root), np.float64)

    # every number the figures use is checked here, before any is computed (a pitch of -0.01 mm gave an MTF20 of
    # -14.8 lp/mm, a q of -5 a DQE of -5217, a NaN frame rate silently dropped the afterglow)
    attrs = validate.dataset_attrs(dict(g.attrs), str(dataset), fixes={
        "pixel_pitch_mm": "correct the dataset's pixel_pitch_mm attribute (mm at the scintillator plane, e.g. 0.1)",
        "frame_rate_hz": "correct the dataset's frame_rate_hz attribute (Hz), or delete it to skip the afterglow",
    })
    for need in ("darks", "flats", "edge"):
        if need not in g:
            raise DataError(f"characterisation dataset '{dataset}' has no '{need}'; see the README for its layout")
    pitch = attrs.get("pixel_pitch_mm")
    if pitch is None:
        raise DataError(f"'{dataset}' has no pixel_pitch_mm attribute; add it (ingest --pixel-pitch)")
    beam = attrs.get("beam_quality")
    q = q_per_ugy_mm2 or attrs.get("q_per_uGy_mm2") or ch.Q_PER_UGY_MM2.get(str(beam))
    if not q:
        raise DataError(f"beam quality {beam!r} has no standard fluence; pass --q PHOTONS_PER_UGY_MM2")
    levels = []
    for name, arr in g["flats"].arrays():
        k = validate.dataset_attrs(dict(arr.attrs), f"{dataset}/flats/{name}").get("air_kerma_uGy")
        if k is None:
            raise DataError(f"'{dataset}/flats/{name}' has no air_kerma_uGy attribute")
        levels.append((float(k), name))
    levels.sort()
    if len(levels) < 2:
        raise DataError(f"'{dataset}/flats' needs at least two air-kerma levels for linearity")
    darks = read("darks")
    return {"dataset": dataset, "g": g, "read": read, "attrs": attrs, "pitch": pitch, "beam": beam, "q": q,
            "levels": levels, "darks": darks, "dark": darks.mean(axis=0)}


def _linearity_and_gain(d: dict):
    """The flats' means per kerma level: the linearity fits, the per-pixel response, the calibration at the
    reference level (refusing a clipped level, naming it)."""
    from .ops import characterise as ch

    dataset, g, read, levels, dark, darks = d["dataset"], d["g"], d["read"], d["levels"], d["dark"], d["darks"]
    h, w = dark.shape
    cy, cx = h // 2, w // 2
    c = max(8, min(h, w) // 8)
    central = (slice(cy - c, cy + c), slice(cx - c, cx + c))
    means, stacks = [], []
    for k, name in levels:
        raw = g["flats"][name]
        st = read(f"flats/{name}")
        try:  # a clipped level would bend the linearity fit and the response: refuse it, naming the level
            saturated_flat_pixels(st.mean(axis=0), saturation_level_for(raw.dtype))
        except ValueError as exc:
            raise CalibrationError(f"characterisation dataset '{dataset}/flats/{name}' ({k:g} uGy): {exc}") from None
        st -= dark
        stacks.append(st.mean(axis=0))
        means.append(float(st.mean(axis=0)[central].mean()))
    lin = ch.fit_linearity([k for k, _ in levels], means)
    kref = d["attrs"].get("reference_kerma_uGy")  # checked finite > 0 above; absent or null: the middle level
    kref = float(kref if kref is not None else levels[len(levels) // 2][0])
    response = np.asarray(ch.fit_pixel_response([k for k, _ in levels], np.stack(stacks), reference_ugy=kref))
    iref = int(np.argmin([abs(k - kref) for k, _ in levels]))
    kref, ref_name = levels[iref]
    ref = read(f"flats/{ref_name}") - dark
    cal = compute_calibration(dark.astype(np.float32), (ref.mean(axis=0) + dark).astype(np.float32),
                              dark_noise=darks.std(axis=0, ddof=1).astype(np.float32),
                              saturation_level=saturation_level_for(g["flats"][ref_name].dtype))
    p = lin["power_law"]["exponent_p"]
    return lin, response, cal, kref, means, iref, ref, p


def _conversion(p: float, s_ref: float):
    """The global conversion function: signal -> signal of a linear detector (the same at K_ref)."""

    def linearise(x):
        if abs(p - 1) < 0.01:
            return x
        return s_ref * np.sign(x) * (np.abs(x) / s_ref) ** (1.0 / p)

    return linearise


def _reference_nnps(d: dict, cal, linearise, ref):
    """NNPS of the gain-corrected reference flats (shading no longer weights the noise against the mean).

    Welch method (ops.characterise.nnps): the fixed pattern removed by subtracting the frames' mean (N - 1 degrees
    of freedom, no polynomial), Hann-tapered ROIs, bins it cannot trust flagged. nnps_method = "iec" gives the
    former numbers: the IEC 62220-1-1 method on differences of frame pairs (/ sqrt 2, so the fixed pattern cancels).
    """
    from .ops import characterise as ch

    pitch = d["pitch"]
    h, w = d["dark"].shape
    nnps_method = "welch"
    lr = linearise(ref) / np.asarray(cal.gain, np.float64)
    good = np.asarray(cal.bad_pixels) == 0
    mean_lin = float(lr.mean(axis=0)[good].mean())
    nn_roi = min(256, (min(h, w) // 128) * 128 or 128)
    nn_overlap = min(128, (min(h, w) // 256) * 128 or 64)
    if nnps_method == "iec":
        pairs = (lr[0 : len(lr) - 1 : 2] - lr[1 : len(lr) : 2]) / np.sqrt(2.0)
        pairs[:, ~good] = 0.0  # defects would dominate the NPS; they are replaced in normal use
        nn = ch.nnps(pairs + mean_lin, float(pitch), method="iec", roi=nn_roi, overlap=nn_overlap)
    else:
        lr[:, ~good] = mean_lin  # defects would dominate the NPS (they are replaced in normal use): constant, no noise
        nn = ch.nnps(lr, float(pitch), method="welch", roi=nn_roi, overlap=nn_overlap)
    return nn, good, mean_lin, lr


def _edge_mtf(d: dict, cal, linearise):
    """The slanted-edge MTF of the frames' mean edge (noise down by sqrt(frames) before the derivative)."""
    from .ops.edges import find_edge_roi
    from .ops.mtf import slanted_edge_mtf

    edge = linearise(d["read"]("edge") - d["dark"]) / np.asarray(cal.gain, np.float64)
    edge_mean = edge.mean(axis=0)
    roi = find_edge_roi(edge_mean)
    y0, y1, x0, x1 = roi
    return edge, slanted_edge_mtf(edge_mean[y0:y1, x0:x1]), roi


def _step_afterglow(d: dict, linearise):
    """The afterglow figures from the beam-off step, where the dataset has one and a frame rate."""
    if "afterglow_step" not in d["g"]:
        return None, None
    step = linearise(d["read"]("afterglow_step") - d["dark"])
    fr = float(d["attrs"].get("frame_rate_hz") or 0)
    if fr <= 0:
        return None, None
    fit = ag.fit_falling_step(step.mean(axis=(1, 2)), fr)
    return ({"tau_s": fit.tau_s.tolist(), "amplitudes": fit.amplitudes.tolist(), **fit.figures(),
             "decay_t_ms": ((np.arange(fit.data.size) + fit.skipped_frames) / fr * 1e3).tolist(),
             "decay_fraction": fit.data.tolist(), "decay_model": fit.model.tolist()}, fit)


def _dqe(d: dict, cal, nn, mres, fit, p, good, mean_lin, kref) -> dict:
    """DQE from the lag-corrected NNPS (IEC 62220-1-3), cut along the MTF direction.

    A lagged frame's mean carries the lag's DC gain G, its quantum noise only sum h^2, so single frames' NNPS is low
    and the DQE high by G^2 / sum h^2 (1.067 for the simulated gc screen: DQE 0.64 for an absorption of 0.6). The
    factor applies to the lagged (quantum) noise, not to the camera noise added after the screen (white, from the
    darks' temporal variance). Beyond the first MTF = 0.1 crossing the MTF estimate is mostly noise: DQE not
    reported there.
    """
    from .ops import characterise as ch

    pitch = d["pitch"]
    f_cy = mres.frequencies_cy_per_px
    f_nn = np.asarray(nn["frequencies_lp_per_mm"])
    mtf_at = np.interp(f_nn * float(pitch), f_cy, mres.mtf[0])
    cut = nn["nnps_horizontal_mm2"] if mres.orientation == "vertical" else nn["nnps_vertical_mm2"]
    lag_factor = ch.lag_correction_factor(fit.amplitudes, fit.ratios) if fit is not None else 1.0
    dark_var = d["darks"].var(axis=0, ddof=1)
    slope = 1.0 if abs(p - 1) < 0.01 else (1.0 / p)  # the conversion function's slope at the reference level
    cam = float(np.mean((dark_var * slope**2 / np.asarray(cal.gain, np.float64) ** 2)[good])) * float(pitch) ** 2
    cam_nnps = cam / mean_lin**2
    cut_arr = np.asarray(cut, np.float64)
    cut_lag = lag_factor * np.maximum(cut_arr - cam_nnps, 0.0) + np.minimum(cut_arr, cam_nnps)
    dqe = ch.dqe(mtf_at, cut_lag, kref, float(d["q"]))
    f10 = float(np.nanmedian(mres.crossings_cy_per_px[0.1])) / float(pitch)
    dqe = np.where(f_nn <= f10, dqe, np.nan)
    return {"f_nn": f_nn, "dqe": dqe, "trusted": np.asarray(nn["trusted"], bool) & np.isfinite(dqe), "cut": cut,
            "lag_factor": lag_factor, "cam_nnps": cam_nnps}


def _report_document(dataset, d, lin, cal, kref, nn, edge, mres, roi, ag_fig, dq) -> dict:
    """report.json's content: every figure with its unit, and the summary table."""
    pitch, beam = d["pitch"], d["beam"]
    f_nn, dqe, dqe_trusted = dq["f_nn"], dq["dqe"], dq["trusted"]
    k_mm = 1.0 / float(pitch)

    def at(freq):
        return float(np.interp(freq, f_nn, dqe)) if f_nn.size else None

    def trusted_at(freq):  # both bins the interpolation uses are trusted
        if not f_nn.size or not f_nn[0] <= freq <= f_nn[-1]:
            return False
        i = int(np.searchsorted(f_nn, freq))
        return bool(dqe_trusted[max(i - 1, 0)] and dqe_trusted[min(i, f_nn.size - 1)])

    crossings = {lv: float(np.nanmedian(mres.crossings_cy_per_px[lv]) * k_mm) for lv in (0.5, 0.2, 0.1)}
    rep = {
        "dataset": str(Path(dataset).resolve()), "created": _now(), "version": __version__,
        "acquired_at": d["attrs"].get("acquired_at"),
        "pixel_pitch_mm": float(pitch), "beam_quality": beam, "q_per_uGy_mm2": float(d["q"]),
        "reference_kerma_uGy": kref,
        "linearity": lin,
        "gain": {"flat_level_counts": cal.flat_level, "bad_pixels": int(np.count_nonzero(cal.bad_pixels)),
                 "bad_pixel_positions": np.argwhere(np.asarray(cal.bad_pixels) != 0)[:100000].tolist(),
                 "gain_map_std_pct": float(np.std(np.asarray(cal.gain)[np.asarray(cal.bad_pixels) == 0]) * 100)},
        "mtf": {"frequencies_lp_per_mm": (mres.frequencies_cy_per_px * k_mm).tolist(), "mtf": mres.mtf[0].tolist(),
                "roi": list(roi), "edge_angle_deg": float(np.nanmedian(mres.angle_deg)),
                "mtf50_lp_per_mm": crossings[0.5], "mtf20_lp_per_mm": crossings[0.2],
                "mtf10_lp_per_mm": crossings[0.1], "frames": int(edge.shape[0])},
        "nnps": {k: v for k, v in nn.items() if k != "nps_2d"},
        "dqe": {"frequencies_lp_per_mm": f_nn.tolist(), "dqe": dqe.tolist(), "trusted": dqe_trusted.tolist(),
                "dqe_at_0p5_lp_per_mm": at(0.5), "dqe_at_1_lp_per_mm": at(1.0), "dqe_at_2_lp_per_mm": at(2.0),
                "trusted_at_0p5_1_2_lp_per_mm": [trusted_at(0.5), trusted_at(1.0), trusted_at(2.0)],
                "lag_correction_factor": dq["lag_factor"], "camera_nnps_mm2": dq["cam_nnps"],
                "nnps_method": nn["method"],
                "note": "DQE(f) = MTF^2 / (K_a q NNPS_lag), NNPS cut along the MTF direction, its lagged (quantum) "
                        "part times the lag correction factor G^2 / sum h^2 of the afterglow fit (1 without one), the "
                        "camera noise (darks) not; null beyond the MTF10 frequency; trusted: the NNPS bin is trusted "
                        "(see nnps.trust_note) and the DQE reported"},
        "afterglow": ag_fig,
        "units": {"kerma": "uGy", "nnps": "mm^2", "frequencies": "lp/mm at the scintillator plane",
                  "afterglow": "fraction of the steady signal"},
    }
    rep["summary"] = {
        "Pixel pitch (mm)": rep["pixel_pitch_mm"], "Beam quality": beam, "Reference air kerma (uGy)": kref,
        "Response exponent p (S ~ K^p)": lin["power_law"]["exponent_p"], "Linear fit R^2": lin["linear"]["r2"],
        "MTF50 (lp/mm)": crossings[0.5], "MTF20 (lp/mm)": crossings[0.2],
        "NNPS at 1 lp/mm (mm^2)": float(np.interp(1.0, f_nn, dq["cut"])),
        "DQE at 0.5 lp/mm": at(0.5), "DQE at 2 lp/mm": at(2.0),
        "First-frame lag (%)": (ag_fig["lag_first_frame"] * 100) if ag_fig else None,
        "Afterglow at 10 ms (%)": (ag_fig["afterglow_10ms"] * 100) if ag_fig else None,
        "Afterglow at 100 ms (%)": (ag_fig["afterglow_100ms"] * 100) if ag_fig else None,
        "Bad pixels": rep["gain"]["bad_pixels"],
    }
    return rep


def _write_report(files, rep: dict, response, html: str) -> None:
    """pixel_response.npy, report.json (NaN as null) and report.html, all or none."""
    import json as _json

    from .io.checkpoint import _jsonable

    with files:
        np.save(files.path("pixel_response.npy"), response)
        files.path("report.json").write_text(
            _json.dumps(rep, indent=1, default=_jsonable, allow_nan=False) if _finite(rep)
            else _json.dumps(_nan_to_none(rep), indent=1, default=_jsonable))
        files.path("report.html").write_text(html)


def _finite(obj) -> bool:
    if isinstance(obj, float):
        return np.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_finite(v) for v in obj)
    return True


def _nan_to_none(obj):
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj
