"""The stability command on a simulated 200-hour series with planted drifts: what it measures against the truth.

Usage: python benchmarks/validate_stability.py [--size 256] [--seed 7]

Two truths from the simulator (``simulate --stability``):

* **sessions**: five characterisation sessions at 0, 50, 100, 150 and 200 h; the light yield falls 0.05 %/h
  (10 % at 200 h), 5 new bad pixels appear in each later session, the blur and the lag stay;
* **recording**: one open-beam recording of 400 frames over 200 h of continuous exposure whose light output
  decays exponentially (tau 60 h, 20 % lost at 200 h) with 0.3 % flicker per frame.

Writes benchmarks/results/stability_simulated_200h.json/.md (the measured figures beside the planted ones).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from _common import machine, write_results

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    import zarr

    import pipeline
    from pipeline.characterisation import simulate_stability_sessions
    from pipeline.ops.stability import fit_drift
    from pipeline.stability import recording_stability, sessions_stability

    tmp = Path(tempfile.mkdtemp(prefix="validate-stability-"))
    try:
        paths = simulate_stability_sessions(tmp / "s", size=(args.size, args.size), seed=args.seed,
                                            hours=(0.0, 50.0, 100.0, 150.0, 200.0), light_drift_pct_per_h=-0.05,
                                            new_bad_per_session=5)
        doc = sessions_stability(paths, tmp / "out")
        truth = [dict(zarr.open_group(str(p), mode="r")["truth"].attrs) for p in paths]
        rows = []
        for r, t in zip(doc["sessions"], truth):
            found = sorted(map(tuple, r["new_bad_pixel_positions"]))
            rows.append({"time_h": r["time_h"], "light_yield_rel": r["light_yield_counts_per_uGy"]
                         / doc["sessions"][0]["light_yield_counts_per_uGy"], "light_factor_truth": t["light_factor"],
                         "mtf20_lp_per_mm": r["mtf20_lp_per_mm"],
                         "mtf20_truth_lp_per_mm": t["mtf20_cy_per_px"] / float(
                             zarr.open_group(str(paths[0]), mode="r").attrs["pixel_pitch_mm"]),
                         "new_bad_pixels": r["new_bad_pixels"], "new_bad_truth": len(t["new_bad_pixels"]),
                         "new_bad_positions_exact": found == sorted(map(tuple, t["new_bad_pixels"])),
                         "verdict": r["verdict"], "verdicts": r["verdicts"]})
        tr = doc["trends"]["light_yield_counts_per_uGy"]

        rec = pipeline.simulate(tmp / "rec.zarr", frames=400, size=(64, 64), seed=args.seed, truth_frames=False,
                                stability={"hours": 200.0, "light_drift_pct_per_h": -0.1, "light_model": "exp",
                                           "exp_tau_h": 60.0, "flicker_pct": 0.3})
        rd = recording_stability(rec, tmp / "rout")
        g = zarr.open_group(str(rec), mode="r")
        drift = np.asarray(g["truth/light_drift"][:])
        planted = fit_drift(g["truth/time_h"][:], drift)["linear"]["drift_pct_per_h"]
        lo = rd["light_output"]
        data = {"machine": machine(), "args": vars(args), "sessions": rows,
                "light_yield_trend": {"measured_pct_per_h": tr["slope_pct_per_h"],
                                      "measured_err": tr["slope_pct_per_h_err"], "planted_pct_per_h": -0.05},
                "sessions_verdict": doc["verdict"],
                "recording": {"chosen": lo["fit"]["chosen"], "linear_drift_pct_per_h": lo["drift_pct_per_h"],
                              "linear_drift_err": lo["drift_pct_per_h_err"],
                              "linear_drift_of_the_planted_curve": planted,
                              "retained_end": lo["fit"]["retained_fraction_end"],
                              "retained_end_err": lo["fit"]["retained_fraction_end_err"],
                              "retained_end_truth": float(drift[-1] / drift[0]),
                              "tau_h": (lo["fit"].get("exp1") or {}).get("tau_h"),
                              "tau_h_err": (lo["fit"].get("exp1") or {}).get("tau_h_err"), "tau_h_truth": 60.0,
                              "flicker_rms_pct": lo["flicker"]["flicker_rms_pct"], "flicker_truth_pct": 0.3,
                              "verdict": rd["verdict"]}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [f"# stability on a simulated 200-hour series ({args.size}² sessions, seed {args.seed})", "",
             f"{machine()}; `benchmarks/validate_stability.py`", "",
             "| session (h) | light yield / baseline | planted | MTF20 (lp/mm) | truth | new bad pixels | planted | "
             "positions exact | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in data["sessions"]:
        lines.append(f"| {r['time_h']:.0f} | {r['light_yield_rel']:.4f} | {r['light_factor_truth']:.4f} | "
                     f"{r['mtf20_lp_per_mm']:.2f} | {r['mtf20_truth_lp_per_mm']:.2f} | {r['new_bad_pixels']} | "
                     f"{r['new_bad_truth']} | {r['new_bad_positions_exact']} | {r['verdict']} |")
    t = data["light_yield_trend"]
    rr = data["recording"]
    lines += ["", f"light-yield trend: {t['measured_pct_per_h']:.4f} ± {t['measured_err']:.4f} %/h (planted "
                  f"{t['planted_pct_per_h']} %/h); verdict over the sessions: {data['sessions_verdict']}", "",
              f"recording (400 frames over 200 h, exponential decay tau 60 h, 0.3 % flicker): model chosen "
              f"{rr['chosen']}; tau {rr['tau_h']:.1f} ± {rr['tau_h_err']:.1f} h (planted 60); retained at the end "
              f"{rr['retained_end']:.4f} ± {rr['retained_end_err']:.4f} (planted {rr['retained_end_truth']:.4f}); "
              f"linear drift {rr['linear_drift_pct_per_h']:.4f} ± {rr['linear_drift_err']:.4f} %/h (of the planted "
              f"curve: {rr['linear_drift_of_the_planted_curve']:.4f}); flicker {rr['flicker_rms_pct']:.3f} % rms "
              f"(planted 0.3 % on top of the quantum noise); verdict {rr['verdict']}"]
    write_results(HERE / "results", "stability_simulated_200h", json.loads(json.dumps(data, default=float)), lines)


if __name__ == "__main__":
    main()
