"""The demo: simulate a recording and a beam-off step, fit the afterglow, correct, measure and report."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .io import zarr_store
from .measure import fit_afterglow, mtf_plot_path
from .ops import afterglow as ag
from .recordings import simulate
from .runner import run


def demo(
    outdir: str | Path = "demo-output",
    *,
    preset: str = "eu-gc",
    frames: int = 64,
    size: tuple[int, int] = (512, 512),
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Simulate a recording and a beam-off calibration, fit the afterglow, correct, report into ``outdir``.

    Returns a mapping of what was written and measured.
    """
    from . import report
    from .progress import phase

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    sim_path, run_path, step_path, model_path = _output_paths(out, overwrite)
    with phase("simulating the recording and a beam-off step"):
        simulate(sim_path, preset=preset, frames=frames, size=size, seed=seed, overwrite=overwrite)
        simulate(step_path, preset=preset, frames=160, size=(min(size[0], 256), min(size[1], 256)), seed=seed + 1,
                 scene="open", beam_off_frame=40, truth_frames=False, overwrite=overwrite)
    with phase("fitting the afterglow model"):
        fit = fit_afterglow(step_path, model_path, plot=out / "afterglow_fit.png", overwrite=overwrite)
    result = run(sim_path, run_path, overrides=[f"afterglow.model={model_path}", "mtf.enabled=true"],
                 overwrite=overwrite, progress=progress)
    true20, true_lag = _true_mtf20_and_lag(sim_path, fit["frame_rate_hz"])

    k = frames // 2
    raw = zarr_store.read_frame(sim_path, "frames", k)
    corr = zarr_store.read_frame(run_path, "frames", k)
    truth = zarr_store.read_frame(sim_path, "truth/frames", k)
    detected = zarr_store.read_array(run_path, "calibration/bad_pixels")
    true_bad = zarr_store.read_array(sim_path, "truth/bad_pixels")
    gain = zarr_store.read_array(run_path, "calibration/gain")
    recall, precision = _recall_precision(detected, true_bad)
    open_beam = (truth >= 0.999 * float(np.max(truth))) & (true_bad == 0)  # pixels the scene leaves unobstructed

    def rel(a):
        v = a[open_beam]
        return float(np.nanstd(v) / np.nanmean(v))

    with phase("writing the pictures"):
        files = _pictures(out, k, raw, corr, detected, gain, result)
    mt = result.mtf_summary
    gh = result.ghost or {}
    summary = {
        "preset": preset,
        "frames": f"{frames} of {size[0]} x {size[1]}",
        "throughput": f"{result.frames_per_second:.1f} frames/s ({result.seconds:.2f} s)",
        "bad pixels found": f"{int(np.count_nonzero(detected))} (recall {recall:.3f}, precision {precision:.3f} vs truth)",
        "open-beam non-uniformity": f"raw {rel(raw.astype(np.float64)) * 100:.2f} % -> corrected {rel(corr) * 100:.2f} % "
                                    f"(truth {rel(truth) * 100:.2f} %; the rest is quantum noise)",
        "afterglow model": f"{len(fit['tau_s'])} term(s), tau "
                           + ", ".join(f"{t * 1e3:.3g} ms" for t in fit["tau_s"])
                           + f"; first-frame lag {fit['figures']['lag_first_frame'] * 100:.3f} % (truth {true_lag * 100:.3f} %)",
        "ghost behind moving board": (f"{gh['mean_abs_before'] * 100:.3f} % of contrast before, "
                                      f"{gh['mean_abs_after'] * 100:.3f} % after afterglow removal"
                                      if gh.get("mean_abs_before") is not None else "n/a"),
        "resolution (slanted edge)": (f"MTF20 {mt['mtf20_median']:.2f} lp/mm, MTF50 {mt['mtf50_median']:.2f} lp/mm "
                                      f"(median over frames; analytic MTF20 {true20:.2f} lp/mm)"
                                      if mt and mt.get("mtf20_median") else "n/a"),
        "corrected - truth": f"mean {float(np.nanmean(corr - truth)):+.2f} counts, rms {float(np.sqrt(np.nanmean((corr - truth) ** 2))):.2f} counts",
        "outputs": ", ".join(str(p.name) for p in files.values()),
    }
    text = report.summary_text(summary)
    (out / "summary.txt").write_text(text)
    return {"summary": summary, "text": text, "files": files, "result": result,
            "simulated": sim_path, "corrected": run_path}


def _output_paths(out: Path, overwrite: bool):
    """The demo's recordings and model file in ``out``: ``(simulated, corrected, afterglow step, afterglow model)``,
    each checked (with the plots written next to them) against overwriting."""
    sim_path, run_path = out / "simulated.zarr", out / "corrected.zarr"
    step_path, model_path = out / "afterglow_step.zarr", out / "afterglow_model.json"
    for p in (sim_path, run_path, step_path):
        zarr_store.check_output_path(p, overwrite=overwrite)
    for p in (model_path, mtf_plot_path(run_path.resolve()), out / "afterglow_fit.png"):
        zarr_store.check_output_path(p, overwrite=overwrite, kind="file")
    return sim_path, run_path, step_path, model_path


def _true_mtf20_and_lag(sim_path: Path, frame_rate_hz: float) -> tuple[float, float]:
    """The simulated recording's true MTF20 (lp/mm, of the slanted edge) and first-frame lag."""
    tf = zarr_store.read_array(sim_path, "truth/mtf_frequencies_cy_per_px")
    tm = zarr_store.read_array(sim_path, "truth/mtf_edge")
    i20 = int(np.argmax(tm < 0.2))
    true20 = (tf[i20 - 1] + (tm[i20 - 1] - 0.2) * (tf[i20] - tf[i20 - 1]) / (tm[i20 - 1] - tm[i20])) \
        / zarr_store.read_attrs(sim_path)["pixel_pitch_mm"]
    tr_ag = zarr_store.read_attrs(sim_path, "truth")["afterglow"]
    true_lag = ag.figures(ag.step_amplitudes(tr_ag["amplitudes"], tr_ag["ratios_per_frame"]), tr_ag["tau_s"],
                          frame_rate_hz)["lag_first_frame"]
    return true20, true_lag


def _recall_precision(detected, true_bad) -> tuple[float, float]:
    """Recall and precision of the detected bad pixels against the true ones."""
    tp = int(np.count_nonzero((detected != 0) & (true_bad != 0)))
    recall = tp / max(1, int(np.count_nonzero(true_bad)))
    precision = tp / max(1, int(np.count_nonzero(detected)))
    return recall, precision


def _pictures(out: Path, k: int, raw, corr, detected, gain, result) -> dict:
    """The demo's PNGs: frame k raw and corrected, the bad-pixel and gain maps, the afterglow fit, resolution."""
    from . import report
    from .ops.flatfield import BAD_PIXEL_CLASSES

    return {
        "frame": report.frame_comparison(raw, corr, out / "frame_raw_vs_corrected.png",
                                         title_corr=f"corrected (flat-field, afterglow), frame {k} (counts)"),
        "bad_pixels": report.bad_pixel_map(detected, out / "bad_pixels.png", BAD_PIXEL_CLASSES),
        "gain": report.gain_map(gain, out / "gain_map.png"),
        "afterglow": out / "afterglow_fit.png",
        "resolution": Path(result.mtf_summary["plot"]),
    }
