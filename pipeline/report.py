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
