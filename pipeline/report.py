"""Figures and text summaries (matplotlib, headless). No computation beyond display scaling."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _window(img, lo=1.0, hi=99.0):
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return 0.0, 1.0
    a, b = np.percentile(finite, [lo, hi])
    return float(a), float(b if b > a else a + 1)


def frame_comparison(raw, corrected, path, *, title_raw="raw (counts)", title_corr="corrected"):
    """Side-by-side raw and corrected frame, each with its own 1-99 % intensity window."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8), constrained_layout=True)
    for ax, img, title in ((axes[0], raw, title_raw), (axes[1], corrected, title_corr)):
        vmin, vmax = _window(np.asarray(img, dtype=np.float64))
        im = ax.imshow(img, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def bad_pixel_map(bad_bits, path, classes: dict[str, int]):
    """Map of bad pixels coloured by class (first matching bit)."""
    plt = _plt()
    from matplotlib.colors import ListedColormap

    names = list(classes)
    label = np.zeros(bad_bits.shape, dtype=np.int16)
    for i, name in enumerate(names, start=1):
        label[(label == 0) & ((bad_bits & classes[name]) != 0)] = i
    colours = ["#202020", "#e41a1c", "#ff7f00", "#984ea3", "#4daf4a", "#377eb8"][: len(names) + 1]
    fig, ax = plt.subplots(figsize=(6, 5.4), constrained_layout=True)
    ax.imshow(label, cmap=ListedColormap(colours), vmin=0, vmax=len(colours) - 1, interpolation="nearest")
    counts = {n: int(np.count_nonzero(bad_bits & classes[n])) for n in names}
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[i + 1]) for i in range(len(names))]
    ax.legend(handles, [f"{n} ({counts[n]})" for n in names], loc="upper right", fontsize=8, framealpha=0.8)
    ax.set_title(f"bad pixels: {int(np.count_nonzero(bad_bits))} of {bad_bits.size}")
    ax.set_axis_off()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def gain_map(gain, path):
    """The normalised gain (flat-field) map."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5), constrained_layout=True)
    vmin, vmax = _window(np.asarray(gain, np.float64), 0.5, 99.5)
    im = ax.imshow(gain, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8, label="relative gain")
    ax.set_title("gain map (mean 1 over good pixels)")
    ax.set_axis_off()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def summary_text(lines: dict) -> str:
    """Aligned 'key: value' lines."""
    width = max(len(k) for k in lines)
    return "\n".join(f"{k.ljust(width)} : {v}" for k, v in lines.items()) + "\n"


def afterglow_fit(fit, path):
    """Falling-step data, fitted model and residual (log axis), from a ``StepFit``."""
    plt = _plt()
    m = np.arange(fit.data.size) + fit.skipped_frames
    t_ms = m / fit.frame_rate_hz * 1e3
    fig, (ax, axr) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]},
                                  constrained_layout=True)
    pos = fit.data > 0
    ax.semilogy(t_ms[pos], fit.data[pos], "o", ms=3, label="data (fraction of steady signal)")
    ax.semilogy(t_ms, np.maximum(fit.model, 1e-12), "-", label=f"fit: {len(fit.tau_s)} term(s)")
    for A, tau in zip(fit.step_amplitudes, fit.tau_s):
        ax.semilogy(t_ms, A * np.exp(-m / (tau * fit.frame_rate_hz)), ":", lw=1,
                    label=f"A={A:.2e}, tau={tau * 1e3:.3g} ms")
    floor = max(float(np.min(fit.data[pos])) if pos.any() else 1e-6, 1e-7) / 3
    ax.set_ylim(floor, 2.0 * float(np.max(fit.data[pos])) if pos.any() else 1.0)
    ax.set_ylabel("signal / steady signal")
    ax.set_title(f"afterglow after beam cut-off (frame {fit.cutoff_frame}, {fit.frame_rate_hz:g} Hz)")
    ax.legend(fontsize=8)
    axr.plot(t_ms, fit.data - fit.model, ".", ms=3)
    axr.axhline(0, color="k", lw=0.8)
    axr.set_xlabel("time after cut-off (ms)")
    axr.set_ylabel("residual")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def mtf_curves(result, path, *, index: int = 0, pixel_pitch_mm: float | None = None, title: str = ""):
    """ESF, LSF and MTF of one ROI with the 0.5/0.2/0.1 crossings and Nyquist marked (plus MTF50/20 per frame
    when the result holds several ROIs)."""
    plt = _plt()
    many = result.mtf.shape[0] > 1
    fig, axes = plt.subplots(1, 4 if many else 3, figsize=(16 if many else 13, 4), constrained_layout=True)
    k = 1.0 / pixel_pitch_mm if pixel_pitch_mm else 1.0
    unit = "lp/mm" if pixel_pitch_mm else "cycles/pixel"
    axes[0].plot(result.esf_positions_px, result.esf[index], lw=1)
    axes[0].set(title="ESF", xlabel="distance from edge (pixels)", ylabel="normalised signal")
    axes[1].plot(result.esf_positions_px, result.lsf[index], lw=1)
    axes[1].set(title="LSF", xlabel="distance from edge (pixels)", ylabel="1/pixel")
    f = result.frequencies_cy_per_px * k
    ax = axes[2]
    ax.plot(f, result.mtf[index], lw=1.5, label="MTF")
    ax.axvline(0.5 * k, color="grey", ls="--", lw=1, label=f"Nyquist {0.5 * k:.3g} {unit}")
    for lv, colour in ((0.5, "C1"), (0.2, "C2"), (0.1, "C3")):
        fc = result.crossings_cy_per_px[lv][index]
        if np.isfinite(fc):
            ax.plot([fc * k], [lv], "o", color=colour, label=f"MTF{int(lv * 100)} = {fc * k:.3g} {unit}")
            ax.axhline(lv, color=colour, lw=0.6, ls=":")
    ax.set(title="MTF", xlabel=f"spatial frequency ({unit})", ylabel="MTF", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    if many:
        axes[3].plot(result.crossings_cy_per_px[0.5] * k, label="MTF50")
        axes[3].plot(result.crossings_cy_per_px[0.2] * k, label="MTF20")
        axes[3].set(title="per ROI / frame", xlabel="frame", ylabel=unit)
        axes[3].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def resolution_over_time(mtf50, mtf20, unit: str, path):
    """MTF50 and MTF20 per frame (resolution stability)."""
    plt = _plt()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
    ax.plot(mtf50, ".-", ms=3, lw=0.8, label="MTF50")
    ax.plot(mtf20, ".-", ms=3, lw=0.8, label="MTF20 (the paper's resolution)")
    ax.set(xlabel="frame", ylabel=unit, title="spatial resolution over time")
    ax.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _png_data_uri(fig) -> str:
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _linearity_figure(plt, reps, lab) -> str:
    """Signal vs air kerma (log-log, with the power-law fit) and the linear fit's residuals, as a PNG data URI."""
    fig, ax = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for r, name in zip(reps, lab):
        lin = r["linearity"]
        k, s = np.asarray(lin["kerma_uGy"]), np.asarray(lin["signal"])
        ax[0].loglog(k, s, "o", label=f"{name}: p = {lin['power_law']['exponent_p']:.3f}")
        kk = np.geomspace(k.min(), k.max(), 50)
        ax[0].loglog(kk, lin["power_law"]["c"] * kk ** lin["power_law"]["exponent_p"], "-", lw=1)
        ax[1].plot(k, 100 * np.asarray(lin["linear"]["relative_residuals"]), "o-", label=f"{name} (linear fit)")
    ax[0].set(xlabel="air kerma (uGy)", ylabel="mean signal (counts)", title="linearity")
    ax[0].legend(fontsize=8)
    ax[1].axhline(0, color="k", lw=0.8)
    ax[1].set(xlabel="air kerma (uGy)", ylabel="residual (%)", title="residuals of the linear fit")
    ax[1].legend(fontsize=8)
    return _png_data_uri(fig)


def _maps_figure(plt, gain, bad, nps2d) -> str:
    """The gain map, the bad pixels and the 2D NPS (log10), as a PNG data URI."""
    fig, ax = plt.subplots(1, 3, figsize=(13, 4), constrained_layout=True)
    lo, hi = np.percentile(gain, [0.5, 99.5])
    im = ax[0].imshow(gain, cmap="viridis", vmin=lo, vmax=hi)
    fig.colorbar(im, ax=ax[0], shrink=0.8)
    ax[0].set_title("gain map")
    ax[1].imshow(bad != 0, cmap="gray_r", interpolation="nearest")
    ax[1].set_title(f"bad pixels ({int(np.count_nonzero(bad))})")
    n2 = np.log10(np.maximum(nps2d, 1e-30))
    ax[2].imshow(n2, cmap="magma")
    ax[2].set_title("2D NPS (log10, centred)")
    for a in ax:
        a.set_axis_off()
    return _png_data_uri(fig)


def _mtf_nnps_dqe_figure(plt, rep, reps, lab) -> str:
    """MTF, NNPS and DQE curves of each report (Nyquist of ``rep`` marked), as a PNG data URI."""
    fig, ax = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    for r, name in zip(reps, lab):
        m = r["mtf"]
        ax[0].plot(m["frequencies_lp_per_mm"], m["mtf"], label=f"{name}: MTF50 {m['mtf50_lp_per_mm']:.3g}, "
                                                                  f"MTF20 {m['mtf20_lp_per_mm']:.3g} lp/mm")
        ax[1].semilogy(r["nnps"]["frequencies_lp_per_mm"], r["nnps"]["nnps_mm2"], label=name)
        ax[2].plot(r["dqe"]["frequencies_lp_per_mm"], r["dqe"]["dqe"], label=name)
    for lv in (0.5, 0.2):
        ax[0].axhline(lv, color="grey", ls=":", lw=0.8)
    nyq = 0.5 / rep["pixel_pitch_mm"]
    for a in ax:
        a.axvline(nyq, color="grey", ls="--", lw=0.8)
        a.legend(fontsize=8)
    ax[0].set(xlabel="lp/mm", ylabel="MTF", title="MTF (slanted edge)", ylim=(0, 1.05), xlim=(0, 2 * nyq))
    ax[1].set(xlabel="lp/mm", ylabel="NNPS (mm^2)", title="NNPS")
    ax[2].set(xlabel="lp/mm", ylabel="DQE", title=f"DQE ({rep['beam_quality']}, K = {rep['reference_kerma_uGy']:g} uGy)",
              ylim=(0, 1.05))
    return _png_data_uri(fig)


def _afterglow_figure(plt, reps, lab) -> str:
    """The afterglow decays and their fits (log axis), as a PNG data URI."""
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for r, name in zip(reps, lab):
        a = r.get("afterglow")
        if not a:
            continue
        d = np.asarray(a["decay_fraction"], dtype=float)
        t = np.asarray(a["decay_t_ms"])
        ax.semilogy(t[d > 0], d[d > 0], "o", ms=3, label=f"{name} data")
        ax.semilogy(t, np.maximum(a["decay_model"], 1e-12), "-", label=f"{name} fit")
    ax.set(xlabel="time after cut-off (ms)", ylabel="fraction of steady signal", title="afterglow")
    ax.legend(fontsize=8)
    return _png_data_uri(fig)


def _summary_rows(rep: dict, other: dict | None, lab) -> tuple[str, list[str]]:
    """The summary table's header row and rows (a column for ``other`` when comparing)."""
    import html as _h

    rows = []
    for key, val in rep["summary"].items():
        other_cell = ""
        if other:
            other_cell = f"<td>{_h.escape(_fmt(other.get('summary', {}).get(key)))}</td>"
        rows.append(f'<tr><th>{_h.escape(key)}</th><td class="value" data-key="{_h.escape(key)}">'
                    f"{_h.escape(_fmt(val))}</td>{other_cell}</tr>")
    head = "<tr><th>figure</th><th>" + _h.escape(lab[0]) + "</th>" + (f"<th>{_h.escape(lab[1])}</th>" if other else "") + "</tr>"
    return head, rows


#: marks a report page loaded (and each plot's decoded size) for the headless-browser tests
_LOADED = """<script>
window.addEventListener("load", function () {
  for (const img of document.images) { img.setAttribute("data-natural", img.naturalWidth + "x" + img.naturalHeight); }
  document.body.setAttribute("data-loaded", "yes");
});
</script>"""


def characterisation_html(rep: dict, gain, bad, nps2d, *, other: dict | None = None) -> str:
    """A self-contained HTML report (plots embedded as PNG data URIs, no network) of :func:`pipeline.api.characterise`."""
    import html as _h

    plt = _plt()
    figs = {}
    lab = [Path(rep["dataset"]).name] + ([Path(other["dataset"]).name + " (compare)"] if other else [])
    reps = [rep] + ([other] if other else [])

    figs["linearity"] = _linearity_figure(plt, reps, lab)
    figs["maps"] = _maps_figure(plt, gain, bad, nps2d)
    figs["mtf_nnps_dqe"] = _mtf_nnps_dqe_figure(plt, rep, reps, lab)
    if rep.get("afterglow"):
        figs["afterglow"] = _afterglow_figure(plt, reps, lab)
    head, rows = _summary_rows(rep, other, lab)
    imgs = "\n".join(f'<figure><img alt="{k}" src="{v}"><figcaption>{k}</figcaption></figure>' for k, v in figs.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Detector characterisation: {_h.escape(lab[0])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1500px}} table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}} img{{max-width:100%}} figure{{margin:1em 0}}</style>
</head><body>
<h1>Detector characterisation</h1>
<p>{_h.escape(rep['dataset'])} &mdash; xray-pipeline {_h.escape(rep['version'])}, {_h.escape(rep['created'])}</p>
<h2>Summary</h2>
<table id="summary">{head}{''.join(rows)}</table>
{imgs}
{_LOADED}
</body></html>
"""


def _stability_panels(doc: dict) -> list:
    """(title, x, y, band) for each trend a stability report plots; ``band``: (lo, hi) of the limits or None."""
    lim = doc["limits"]
    if doc["kind"] == "recording":
        lo = doc["light_output"]
        band = (100 - lim["light_yield_pct"], 100 + lim["light_yield_pct"])
        panels = [("light output (% of the first minute)", lo["time_h"], lo["pct_of_first_minute"], band)]
        m = doc.get("mtf")
        if m:
            t = lo["time_h"][: len(m["mtf20"])]
            panels.append((f"MTF20 ({m['unit'].replace('_per_', '/')})", t, m["mtf20"], None))
        return panels
    rows = doc["sessions"]
    t = [r["time_h"] for r in rows]

    def rel(name):
        v = [r.get(name) for r in rows]
        return [100 * x / v[0] if x is not None and v[0] else None for x in v] if v[0] is not None else None

    panels = []
    for name, title, key in (("light_yield_counts_per_uGy", "light yield (% of baseline)", "light_yield_pct"),
                             ("light_output_counts", "light output (% of baseline)", "light_yield_pct"),
                             ("mtf20_lp_per_mm", "MTF20 (% of baseline)", "mtf20_pct"),
                             ("mtf50_lp_per_mm", "MTF50 (% of baseline)", "mtf50_pct"),
                             ("lag_first_frame", "first-frame lag (% of baseline)", "lag_pct")):
        y = rel(name)
        if y is not None and any(v is not None for v in y):
            up = key == "lag_pct"
            panels.append((title, t, y, (0 if up else 100 - lim[key], 100 + lim[key])))
    for name, title, key in (("new_bad_pixels_pct_of_area", "new bad pixels (% of the area)",
                              "new_bad_pixels_pct_of_area"),
                             ("gain_change_rms_pct", "gain-map change (rms %)", "gain_change_rms_pct")):
        y = [r.get(name) for r in rows]
        if any(v is not None for v in y):
            panels.append((title, t, y, (0, lim[key])))
    return panels


def _stability_figure(doc: dict):
    plt = _plt()
    panels = _stability_panels(doc)
    cols = min(3, len(panels)) or 1
    rows = -(-len(panels) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    unit = "h" if doc["kind"] == "recording" or doc.get("time_unit") == "h" else "session"
    for ax, (title, x, y, band) in zip(axes.ravel(), panels):
        pts = [(a, b) for a, b in zip(x, y) if b is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "." if len(xs) > 50 else "o-", ms=2 if len(xs) > 50 else 5)
        if band is not None:
            ax.axhspan(band[0], band[1], color="tab:green", alpha=0.12, label="within limits")
            ax.legend(loc="best", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"time ({unit})")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"stability: verdict {doc['verdict']}")
    fig.tight_layout()
    return fig


def stability_plot(doc: dict, path) -> Path:
    """The trends of a stability report (:mod:`pipeline.stability`) with their tolerance bands, as a PNG."""
    fig = _stability_figure(doc)
    fig.savefig(path, dpi=100, format="png")
    _plt().close(fig)
    return Path(path)


def stability_html(doc: dict) -> str:
    """A self-contained HTML page (plots as data URIs, no network) of a stability report."""
    import html as _h

    uri = _png_data_uri(_stability_figure(doc))
    if doc["kind"] == "recording":
        lo = doc["light_output"]
        rows = [("source", doc["source"]), ("frames", doc["frames"]), ("duration (h)", doc["duration_h"]),
                ("drift (%/h, linear)", f"{_fmt(lo['drift_pct_per_h'])} ± {_fmt(lo['drift_pct_per_h_err'])}"),
                ("model chosen", lo["fit"].get("chosen")), ("change at the end (%)", lo["change_pct_at_end"]),
                ("flicker (rms %)", lo["flicker"].get("flicker_rms_pct")), ("verdict", doc["verdict"])]
        table = "".join(f"<tr><th>{_h.escape(str(k))}</th><td>{_h.escape(_fmt(v))}</td></tr>" for k, v in rows)
    else:
        cols = ["time_h", "light_yield_counts_per_uGy", "light_output_counts", "mtf20_lp_per_mm", "mtf50_lp_per_mm",
                "lag_first_frame", "bad_pixels", "new_bad_pixels", "gain_change_rms_pct", "verdict"]
        cols = [c for c in cols if any(r.get(c) is not None for r in doc["sessions"])]
        head = "<tr><th>session</th>" + "".join(f"<th>{_h.escape(c)}</th>" for c in cols) + "</tr>"
        body = "".join("<tr><td>" + _h.escape(Path(r["path"]).name) + "</td>"
                       + "".join(f"<td class='{_h.escape(str(r.get(c)))}'>{_h.escape(_fmt(r.get(c)))}</td>"
                                 for c in cols) + "</tr>" for r in doc["sessions"])
        trends = "".join(f"<tr><th>{_h.escape(k)}</th><td>{_h.escape(_fmt(v.get('slope_pct_per_h')))} ± "
                         f"{_h.escape(_fmt(v.get('slope_pct_per_h_err')))} %/h</td></tr>" for k, v in doc["trends"].items())
        table = head + body + "</table><h2>Trends</h2><table id='trends'>" + trends
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Detector stability: {_h.escape(doc['verdict'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1500px}} table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}} img{{max-width:100%}} .fail{{background:#fcc}}
.warn{{background:#ffe6b3}} .pass{{background:#d9f2d9}}</style>
</head><body>
<h1>Detector stability</h1>
<p>verdict <b id="verdict" class="{_h.escape(doc['verdict'])}">{_h.escape(doc['verdict'])}</b> &mdash; xray-pipeline
{_h.escape(doc['version'])}, {_h.escape(doc['created'])}</p>
<table id="summary">{table}</table>
<figure><img alt="trends" src="{uri}"><figcaption>trends with the tolerance bands</figcaption></figure>
{_LOADED}
</body></html>
"""
