"""Stability of a detector over its life (the paper's 200-hour test): light output under continuous exposure,
trends across sessions, same-object sharpness, checked against limits.

* :func:`recording_stability`: one recording under continuous exposure: per-frame dark-subtracted light output over
  the open-beam area (or a ROI), in counts and in % of the first minute; its drift (linear %/h, or an exponential
  decay where that fits better, with the fraction retained at the end), flicker separated from drift, and per-frame
  MTF where an edge is in view.
* :func:`sessions_stability`: characterisation sessions over time (report.json files, manifests, characterisation
  datasets, or plain recordings): light yield, MTF50/MTF20, NNPS and DQE at chosen frequencies, first-frame lag, bad
  pixels (and which are new since the baseline), gain-map change, the same edge registered and compared; trends per
  hour and a verdict per figure and session against :data:`DEFAULT_LIMITS`.

Both write ``stability.json``, ``stability.html`` (self-contained) and PNGs into an output folder, all or none.
The analysis is :mod:`pipeline.ops.stability`; this module reads the sessions and writes the report.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ._version import __version__
from .clock import utc_now
from .errors import DataError

#: tolerances (per cent of the baseline; new bad pixels: per cent of the area); a figure beyond ``warn_fraction``
#: of its limit warns
DEFAULT_LIMITS = {"light_yield_pct": 10.0, "mtf20_pct": 5.0, "mtf50_pct": 5.0, "dqe_pct": 10.0, "lag_pct": 50.0,
                  "new_bad_pixels_pct_of_area": 0.01, "gain_change_rms_pct": 5.0, "warn_fraction": 0.8}
#: which way a change counts against a limit
_DIRECTION = {"light_yield_pct": "both", "mtf20_pct": "both", "mtf50_pct": "both", "dqe_pct": "both",
              "lag_pct": "up", "new_bad_pixels_pct_of_area": "up", "gain_change_rms_pct": "up"}


def load_limits(path=None) -> dict:
    """:data:`DEFAULT_LIMITS` updated from a YAML file (unknown keys and non-positive numbers refused, one line)."""
    limits = dict(DEFAULT_LIMITS)
    if path is None:
        return limits
    from .config import read_yaml
    from .errors import ConfigError

    try:
        data = read_yaml(path)
    except ConfigError as exc:
        raise DataError(str(exc).replace("config file", "limits file")) from None
    for k, v in data.items():
        if k not in limits:
            raise DataError(f"limits file '{path}': unknown key '{k}'; the keys are {', '.join(limits)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v <= 0:
            raise DataError(f"limits file '{path}': {k} must be a positive number, not {v!r}")
        limits[k] = float(v)
    return limits


def _worst(verdicts) -> str:
    order = ["fail", "warn", "pass", "unknown"]
    found = [v for v in verdicts if v in order]
    return min(found, key=order.index) if found else "unknown"


# ----- sessions ---------------------------------------------------------------------------------------------------

@dataclass
class Session:
    """One session: what was given, when it was taken and how that is known, its report and maps."""

    path: Path
    kind: str
    time: datetime | None = None
    time_source: str = "order given"
    report: dict | None = None
    maps: dict | None = None
    light_output_counts: float | None = None
    extra: dict = field(default_factory=dict)


def _parse_time(value) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _file_time(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(os.stat(path).st_mtime, tz=timezone.utc)
    except OSError:
        return None


def _read_report(path: Path) -> dict:
    try:
        rep = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"session '{path}' is not readable JSON ({type(exc).__name__}); give a report.json of "
                        "'xray-pipeline characterise'") from None
    if not isinstance(rep, dict) or not isinstance(rep.get("summary"), dict) or "pixel_pitch_mm" not in rep:
        raise DataError(f"session '{path}' is not a report of 'xray-pipeline characterise' (no summary or pixel "
                        "pitch); give its report.json")
    return rep


def _open_session(path: Path, index: int, outdir: Path, progress=None) -> Session:
    """Read (or characterise) one session; its time from ``acquired_at``, else the file's time."""
    from .manifest import is_manifest
    from .recordings import is_zarr_group

    p = Path(path)
    if not p.exists():
        raise DataError(f"session '{p}' does not exist; check the path")
    if p.suffix.lower() == ".json":
        rep = _read_report(p)
        s = Session(p, "report", report=rep)
        when, src = _parse_time(rep.get("acquired_at")), "acquired_at (report)"
        if when is None and rep.get("dataset") and Path(rep["dataset"]).exists():
            when, src = _file_time(Path(rep["dataset"])), "file time (the report's dataset)"
        s.time, s.time_source = (when, src) if when else (_file_time(p), "file time (report.json)")
        return s
    if is_manifest(p) or (is_zarr_group(p) and (p / "edge").is_dir()):  # a characterisation: flats, edge
        return _characterised(p, index, outdir, progress)
    s = Session(p, "recording")
    s.light_output_counts, attrs = _mean_light_output(p)
    when = _parse_time(attrs.get("acquired_at"))
    s.time, s.time_source = (when, "acquired_at (attribute)") if when else (_file_time(p), "file time")
    return s


def _characterised(p: Path, index: int, outdir: Path, progress) -> Session:
    """A manifest or characterisation dataset, characterised into ``outdir/sessions/NN-name``."""
    from .characterisation import characterise_with_maps
    from .io import zarr_store
    from .io.outputs import ROLE_ATTR
    from .manifest import ingest_manifest, is_manifest, read_manifest
    from .sources import discard, scratch_path

    where = outdir / "sessions" / f"{index:02d}-{p.stem}"
    if is_manifest(p):
        m = read_manifest(p)
        z = scratch_path(outdir / "x")
        try:
            ingest_manifest(m, z, overwrite=True, marker={ROLE_ATTR: "staged-ingest"})
            rep, maps = characterise_with_maps(z, where, overwrite=True, inputs=[p])
        finally:
            discard(z)
        when = _parse_time(m.attrs.get("acquired_at"))
        src = "acquired_at (manifest)"
    else:
        rep, maps = characterise_with_maps(p, where, overwrite=True)
        when = _parse_time(zarr_store.read_attrs(p).get("acquired_at"))
        src = "acquired_at (attribute)"
    if progress is not None:
        progress(1)
    s = Session(p, "manifest" if is_manifest(p) else "dataset", report=rep, maps=maps)
    s.time, s.time_source = (when, src) if when else (_file_time(p), "file time")
    return s


def _mean_light_output(path: Path) -> tuple[float, dict]:
    """A recording's mean dark-subtracted signal over its open-beam area (a session that is only a recording)."""
    from .sources import staged

    with staged(path, near=None) as z:
        series = light_output_series(z)
    return float(np.nanmean(series["counts"])), series["attrs"]


def _figures(s: Session, frequencies) -> dict:
    """The figures a session gives (None where it has none)."""
    rep = s.report
    if rep is None:
        return {"light_output_counts": s.light_output_counts}
    lin, kref = rep["linearity"], float(rep["reference_kerma_uGy"])
    k, sig = np.asarray(lin["kerma_uGy"], float), np.asarray(lin["signal"], float)
    i = int(np.argmin(np.abs(k - kref)))
    nn = rep.get("nnps") or {}
    f_nn = np.asarray(nn.get("frequencies_lp_per_mm") or [], float)
    cuts = [np.asarray(nn[c], float) for c in ("nnps_horizontal_mm2", "nnps_vertical_mm2") if nn.get(c)]
    nnps = np.mean(cuts, axis=0) if cuts else None
    dq = rep.get("dqe") or {}
    f_dq = np.asarray(dq.get("frequencies_lp_per_mm") or [], float)
    dqe = np.asarray([np.nan if v is None else v for v in (dq.get("dqe") or [])], float)

    def at(f, x, y):
        if y is None or not len(x) or not x[0] <= f <= x[-1]:
            return None
        v = float(np.interp(f, x, y))
        return v if np.isfinite(v) else None

    ag = rep.get("afterglow") or {}
    return {
        "light_yield_counts_per_uGy": float(sig[i] / k[i]),
        "mtf50_lp_per_mm": _num(rep["mtf"].get("mtf50_lp_per_mm")),
        "mtf20_lp_per_mm": _num(rep["mtf"].get("mtf20_lp_per_mm")),
        "nnps_mm2": {str(f): at(f, f_nn, nnps) for f in frequencies},
        "dqe": {str(f): at(f, f_dq, dqe) for f in frequencies},
        "lag_first_frame": _num(ag.get("lag_first_frame")),
        "bad_pixels": int(rep["gain"]["bad_pixels"]),
    }


def _num(v):
    return float(v) if v is not None and np.isfinite(v) else None


def _bad_positions(s: Session) -> set | None:
    if s.maps is not None:
        return {tuple(map(int, yx)) for yx in np.argwhere(s.maps["bad_pixels"] != 0)}
    pos = (s.report or {}).get("gain", {}).get("bad_pixel_positions")
    return {tuple(map(int, yx)) for yx in pos} if pos is not None else None


def _order(sessions: list[Session]) -> list[Session]:
    """Sessions in time order (the order given where a time is missing for any of them)."""
    if all(s.time is not None for s in sessions):
        return sorted(sessions, key=lambda s: s.time)
    for s in sessions:
        s.time, s.time_source = None, "order given"
    return sessions


def sessions_stability(paths, outdir, *, limits: dict | None = None, frequencies=(0.5, 1.0, 2.0),
                       overwrite: bool = False, progress=None) -> dict:
    """Trends over sessions and a verdict per figure and session (see the module docstring); writes the report."""
    from .io.outputs import FileSet

    limits = dict(limits or DEFAULT_LIMITS)
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise DataError("stability across sessions needs at least two sessions (report.json, manifest, dataset or "
                        "recording); for one recording under continuous exposure use 'stability RECORDING OUTDIR'")
    out = Path(outdir)
    files = FileSet(out, ("stability.json", "stability.html", "trends.png"), overwrite=overwrite, inputs=paths)
    if hasattr(progress, "set_total"):
        progress.set_total(len(paths))
    sessions = _order([_open_session(p, i, out, progress) for i, p in enumerate(paths)])
    kinds = {s.kind == "recording" for s in sessions}
    if len(kinds) > 1:
        raise DataError("stability: sessions mix characterisations and plain recordings; give one kind (the "
                        "figures compared differ)")
    pitches = {round(float(s.report["pixel_pitch_mm"]), 9) for s in sessions if s.report}
    if len(pitches) > 1:
        raise DataError(f"stability: the sessions' pixel pitches differ ({', '.join(f'{p:g}' for p in sorted(pitches))}"
                        " mm); compare sessions of one detector (or fix the pitch with set-attrs / the manifest)")
    doc = _sessions_document(sessions, limits, frequencies)
    _write(files, doc, sessions)
    return doc


def _time_h(sessions: list[Session]) -> list[float]:
    if sessions[0].time is None:
        return [float(i) for i in range(len(sessions))]
    t0 = sessions[0].time
    return [(s.time - t0).total_seconds() / 3600.0 for s in sessions]


def _sessions_document(sessions: list[Session], limits: dict, frequencies) -> dict:
    from .ops import stability as st

    t_h = _time_h(sessions)
    figs = [_figures(s, frequencies) for s in sessions]
    base_bad = _bad_positions(sessions[0])
    rows = []
    for s, f, t in zip(sessions, figs, t_h):
        row = {"path": str(s.path), "kind": s.kind, "time_h": t, "time_source": s.time_source,
               "acquired_at": s.time.isoformat() if s.time else None, **f}
        bad = _bad_positions(s)
        if s.report is not None:
            new = sorted(bad - base_bad) if bad is not None and base_bad is not None else None
            row["new_bad_pixels"] = len(new) if new is not None else None
            row["new_bad_pixel_positions"] = [list(p) for p in new[:1000]] if new is not None else None
            area = float(np.prod(np.shape(s.maps["gain"]))) if s.maps else None
            row["new_bad_pixels_pct_of_area"] = (100.0 * len(new) / area) if new is not None and area else None
            row["gain_change_rms_pct"] = _gain_change(sessions[0], s)
        rows.append(row)
    _same_object(sessions, rows)
    for row in rows:
        row["verdicts"] = _verdicts(row, rows[0], limits, frequencies)
        row["verdict"] = _worst(row["verdicts"].values())
    trends = {name: st.trend(t_h, [r[name] if not isinstance(r[name], dict) else None for r in rows])
              for name in _TREND_FIGURES if all(r.get(name) is not None for r in rows)}
    for f in frequencies:
        for fig in ("dqe", "nnps_mm2"):
            vals = [(r.get(fig) or {}).get(str(f)) for r in rows]
            if all(v is not None for v in vals):
                trends[f"{fig}_at_{f:g}_lp_per_mm"] = st.trend(t_h, vals)
    verdict = _worst(r["verdict"] for r in rows)
    return {"kind": "sessions", "created": utc_now(), "version": __version__, "limits": limits,
            "time_unit": "h" if sessions[0].time is not None else "session (no times: the order given)",
            "sessions": rows, "trends": trends, "verdict": verdict,
            "units": {"light_yield_counts_per_uGy": "dark-subtracted counts per uGy at the reference air kerma",
                      "mtf": "lp/mm", "nnps": "mm^2", "lag_first_frame": "fraction of the steady signal",
                      "slope_pct_per_h": "% of the baseline value per hour"}}


_TREND_FIGURES = ("light_yield_counts_per_uGy", "light_output_counts", "mtf50_lp_per_mm", "mtf20_lp_per_mm",
                  "lag_first_frame", "bad_pixels")


def _gain_change(base: Session, s: Session) -> float | None:
    """rms of the gain map's ratio to the baseline's, minus one, over pixels good in both (per cent)."""
    if base.maps is None or s.maps is None or np.shape(base.maps["gain"]) != np.shape(s.maps["gain"]):
        return None
    g0, g1 = np.asarray(base.maps["gain"], float), np.asarray(s.maps["gain"], float)
    good = (np.asarray(base.maps["bad_pixels"]) == 0) & (np.asarray(s.maps["bad_pixels"]) == 0) & (g0 > 0)
    r = g1[good] / g0[good]
    r = r / np.mean(r)  # a uniform change of light yield is not a change of the gain map's shape
    return float(np.sqrt(np.mean((r - 1.0) ** 2)) * 100.0)


def _same_object(sessions: list[Session], rows: list[dict]) -> None:
    """The sessions' edge images registered to the first and compared (sharpness, SSIM)."""
    from .ops import stability as st

    ref = sessions[0].maps["edge_mean"] if sessions[0].maps else None
    for s, row in zip(sessions, rows):
        if ref is None or s.maps is None or np.shape(s.maps["edge_mean"]) != np.shape(ref):
            row["same_object"] = None
            continue
        reg = st.register(ref, s.maps["edge_mean"])
        sh = st.sharpness(reg["aligned"], reference=ref)
        row["same_object"] = {"shift_yx_px": [float(v) for v in reg["shift_yx"]],
                              **{k: _num(v) for k, v in sh.items() if isinstance(v, (int, float, np.floating))}}


def _change_pct(v, v0):
    if v is None or v0 is None or v0 == 0:
        return None
    return 100.0 * (v / v0 - 1.0)


def _verdicts(row: dict, base: dict, limits: dict, frequencies) -> dict:
    from .ops.stability import verdict

    w = limits["warn_fraction"]
    out = {}
    pairs = {"light_yield_pct": ("light_yield_counts_per_uGy",), "mtf20_pct": ("mtf20_lp_per_mm",),
             "mtf50_pct": ("mtf50_lp_per_mm",), "lag_pct": ("lag_first_frame",)}
    if row.get("light_yield_counts_per_uGy") is None:
        pairs["light_yield_pct"] = ("light_output_counts",)
    for lim, (name,) in pairs.items():
        ch = _change_pct(row.get(name), base.get(name))
        if ch is not None or row.get(name) is not None:
            out[name] = verdict(ch, limits[lim], direction=_DIRECTION[lim], warn_fraction=w)
    for f in frequencies:
        ch = _change_pct((row.get("dqe") or {}).get(str(f)), (base.get("dqe") or {}).get(str(f)))
        if ch is not None:
            out[f"dqe_at_{f:g}_lp_per_mm"] = verdict(ch, limits["dqe_pct"], direction="both", warn_fraction=w)
    for name in ("new_bad_pixels_pct_of_area", "gain_change_rms_pct"):
        if row.get(name) is not None:
            out[name] = verdict(row[name], limits[name], direction="up", warn_fraction=w)
    return out


def _write(files, doc: dict, sessions) -> None:
    from . import report

    with files:
        report.stability_plot(doc, files.path(next(n for n in files.final if n.endswith(".png"))))
        files.path("stability.json").write_text(json.dumps(_clean(doc), indent=1, allow_nan=False))
        files.path("stability.html").write_text(report.stability_html(_clean(doc)))


def _clean(obj):
    """JSON-ready: NumPy scalars as Python numbers, NaN/inf as null, tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items() if k != "aligned"}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# ----- one recording under continuous exposure --------------------------------------------------------------------

def light_output_series(dataset, *, roi=None, block: int = 16, progress=None) -> dict:
    """Per-frame mean dark-subtracted signal over the open-beam area (pixels above 80 % of the 99th percentile of
    the first frames' mean) or ``roi`` (y0, y1, x0, x1); frame times from ``timestamps_s`` or the frame rate."""
    from .io import zarr_store

    ds = zarr_store.open_input(dataset)
    t, h, w = ds.shape
    reader = ds.reader()
    dark = (np.asarray(ds.array_reader("darks")[:], np.float64).mean(axis=0) if ds.darks is not None
            else np.zeros((h, w)))
    mask = _region(np.asarray(reader[: min(8, t)], np.float64).mean(axis=0) - dark, roi, (h, w), dataset)
    counts = np.empty(t)
    for t0 in range(0, t, block):
        b = np.asarray(reader[t0 : t0 + block], np.float64) - dark
        counts[t0 : t0 + len(b)] = np.nanmean(b[:, mask], axis=1)
        if progress is not None:
            progress(len(b))
    attrs = dict(ds.attrs)
    return {"counts": counts, "time_s": _frame_times(dataset, attrs, t), "mask": mask, "attrs": attrs,
            "darks": ds.darks is not None}


def _region(mean, roi, shape, dataset) -> np.ndarray:
    h, w = shape
    if roi is not None:
        y0, y1, x0, x1 = (int(v) for v in roi)
        if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
            raise DataError(f"--roi {list(roi)} lies outside the {h} x {w} frames of '{dataset}'")
        mask = np.zeros(shape, bool)
        mask[y0:y1, x0:x1] = True
        return mask
    finite = np.isfinite(mean)
    if not finite.any():
        raise DataError(f"'{dataset}': the first frames hold no finite pixel to follow")
    mask = finite & (mean >= 0.8 * np.nanpercentile(mean, 99))
    return mask


def _frame_times(dataset, attrs: dict, t: int) -> np.ndarray:
    from .io import zarr_store

    try:
        ts = np.asarray(zarr_store.read_array(dataset, "timestamps_s"), np.float64)
        if ts.shape == (t,) and np.all(np.isfinite(ts)) and np.all(np.diff(ts) > 0):
            return ts - ts[0]
    except Exception:  # no per-frame timestamps: the frame rate
        pass
    fr = attrs.get("frame_rate_hz")
    if fr is None or not np.isfinite(float(fr)) or float(fr) <= 0:
        raise DataError(f"'{dataset}' has no frame times (no timestamps_s array, no frame_rate_hz); pass "
                        "--frame-rate HZ")
    return np.arange(t) / float(fr)


def recording_stability(path, outdir, *, roi=None, source_options=None, limits: dict | None = None,
                        overwrite: bool = False, progress=None) -> dict:
    """Light output under continuous exposure (see the module docstring); writes the report into ``outdir``."""
    from .io.outputs import FileSet
    from .ops import stability as st
    from .sources import staged

    limits = dict(limits or DEFAULT_LIMITS)
    out = Path(outdir)
    files = FileSet(out, ("stability.json", "stability.html", "light_output.png"), overwrite=overwrite,
                    inputs=[path, *((source_options.inputs()) if source_options else [])])
    with staged(path, source_options, near=out / "x") as z:
        series = light_output_series(z, roi=roi, progress=progress)
        mtf = _mtf_per_frame(z)
    counts, ts = series["counts"], series["time_s"]
    first = counts[ts < 60.0] if np.any(ts < 60.0) else counts[:1]
    level0 = float(np.nanmean(first))
    t_h = ts / 3600.0
    fit = st.fit_drift(t_h, counts)
    flick = st.flicker(counts)
    change = (fit["retained_fraction_end"] - 1.0) * 100.0 if fit.get("retained_fraction_end") is not None else None
    verdicts = {"light_output": st.verdict(change, limits["light_yield_pct"], direction="both",
                                           warn_fraction=limits["warn_fraction"])}
    doc = {"kind": "recording", "source": str(path), "created": utc_now(), "version": __version__,
           "limits": limits, "frames": int(counts.size), "duration_h": float(t_h[-1]),
           "light_output": {"time_h": t_h.tolist(), "counts": counts.tolist(),
                            "pct_of_first_minute": (100.0 * counts / level0).tolist(),
                            "first_minute_counts": level0, "pixels": int(series["mask"].sum()),
                            "roi": list(roi) if roi is not None else "open-beam area (auto)",
                            "dark_subtracted": series["darks"],
                            "drift_pct_per_h": fit["linear"]["drift_pct_per_h"],
                            "drift_pct_per_h_err": fit["linear"]["drift_pct_per_h_err"],
                            "change_pct_at_end": change, "fit": fit, "flicker": flick},
           "mtf": mtf, "verdicts": verdicts, "verdict": _worst(verdicts.values()),
           "units": {"counts": "dark-subtracted counts, mean over the region", "time_h": "hours from frame 0",
                     "drift_pct_per_h": "% of the initial level per hour (linear fit)"}}
    _write(files, doc, None)
    return doc


def _mtf_per_frame(z) -> dict | None:
    """Per-frame MTF50/MTF20 where an edge is in view (None otherwise)."""
    from .measure import measure_mtf

    try:
        d = measure_mtf(z)
    except DataError:
        return None
    key = "lp_per_mm" if d.get("pixel_pitch_mm") else "cy_per_px"
    return {"unit": key, "roi": d["roi"], "mtf50": d[f"mtf50_{key}"], "mtf20": d[f"mtf20_{key}"]}
