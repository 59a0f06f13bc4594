"""``xray-pipeline stability`` against planted drifts: the simulator's truth (its light factor per frame and per
session, the new bad pixels it placed, its screen's analytic MTF), limits at their boundaries, bad sessions, and the
HTML report in a headless browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml
import zarr

import pipeline
from pipeline.characterisation import simulate_stability_sessions
from pipeline.cli import main
from pipeline.ops.stability import fit_drift

from conftest import chromium, chromium_flags


def _cli(argv, capsys):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    """A 2-hour open-beam recording whose light output falls 2 %/h (0.5 % flicker), and one that decays."""
    root = tmp_path_factory.mktemp("stab")
    lin = pipeline.simulate(root / "lin.zarr", frames=240, size=(48, 48), seed=1, truth_frames=False,
                            stability={"hours": 2.0, "light_drift_pct_per_h": -2.0, "flicker_pct": 0.5,
                                       "frame_times": True})
    exp = pipeline.simulate(root / "exp.zarr", frames=240, size=(48, 48), seed=2, truth_frames=False,
                            stability={"hours": 2.0, "light_drift_pct_per_h": -5.0, "light_model": "exp",
                                       "exp_tau_h": 0.3, "flicker_pct": 0.2})
    return root, lin, exp


def test_a_planted_linear_drift_is_measured_within_its_uncertainty(drifting, tmp_path, capsys):
    root, lin, _ = drifting
    rc, out, err = _cli(["stability", lin, tmp_path / "r"], capsys)
    assert rc == 0, err
    doc = json.loads((tmp_path / "r" / "stability.json").read_text())
    lo = doc["light_output"]
    assert abs(lo["drift_pct_per_h"] - (-2.0)) < 3 * lo["drift_pct_per_h_err"]
    # the same fit of the factor the simulator applied (its flicker realisation included): the measurement adds
    # only the quantum and camera noise
    g = zarr.open_group(str(lin), mode="r")
    truth = fit_drift(g["truth/time_h"][:], g["truth/light_factor"][:])["linear"]
    assert abs(lo["drift_pct_per_h"] - truth["drift_pct_per_h"]) < 0.5 * lo["drift_pct_per_h_err"]
    assert lo["fit"]["chosen"] == "linear"
    assert lo["flicker"]["flicker_rms_pct"] == pytest.approx(0.5, rel=0.2)
    # frame times from the stored timestamps, the first minute as the reference level
    assert doc["light_output"]["time_h"][1] == pytest.approx(g["timestamps_s"][1] / 3600.0)
    assert lo["pct_of_first_minute"][0] == pytest.approx(100.0, abs=1.5)
    assert doc["verdict"] == "pass" and "drift -2" in out or "drift -1.9" in out


def test_an_exponential_decay_is_told_from_a_line(drifting, tmp_path, capsys):
    _, _, exp = drifting
    rc, _, err = _cli(["stability", exp, tmp_path / "r", "-q"], capsys)
    assert rc == 0 or rc == 3, err
    lo = json.loads((tmp_path / "r" / "stability.json").read_text())["light_output"]
    assert lo["fit"]["chosen"] in ("exp1", "exp2")
    g = zarr.open_group(str(exp), mode="r")
    f = g["truth/light_drift"][:]
    want = f[-1] / f[0]
    assert abs(lo["fit"]["retained_fraction_end"] - want) < 3 * lo["fit"]["retained_fraction_end_err"] + 2e-3


def test_limits_decide_the_exit_status(drifting, tmp_path, capsys):
    _, lin, _ = drifting
    strict = tmp_path / "strict.yaml"
    strict.write_text(yaml.safe_dump({"light_yield_pct": 3.0}))  # -4 % over 2 h: beyond 3 %
    rc, out, _ = _cli(["stability", lin, tmp_path / "a", "--limits", strict], capsys)
    assert rc == 3 and "verdict fail" in out
    loose = tmp_path / "loose.yaml"
    loose.write_text(yaml.safe_dump({"light_yield_pct": 4.5}))  # 4 % of 4.5: past the warn band (0.8 x 4.5)
    rc, out, _ = _cli(["stability", lin, tmp_path / "b", "--limits", loose], capsys)
    assert rc == 0 and "verdict warn" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"light_yeld_pct": 4.5}))
    rc, _, err = _cli(["stability", lin, tmp_path / "c", "--limits", bad, "-q"], capsys)  # -q: no progress line
    assert rc == 2 and "unknown key 'light_yeld_pct'" in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """Three sessions at 0, 100 and 200 h: light yield -0.02 %/h, 4 new bad pixels per session."""
    root = tmp_path_factory.mktemp("sessions")
    paths = simulate_stability_sessions(root / "s", size=(192, 192), seed=4, hours=(0.0, 100.0, 200.0),
                                        light_drift_pct_per_h=-0.02, new_bad_per_session=4)
    return root, paths


def test_sessions_trends_new_bad_pixels_and_same_object(sessions, tmp_path, capsys):
    root, paths = sessions
    # a 192 x 192 screen's MTF and DQE from 8 edge frames and 16 flats scatter by several per cent between sessions:
    # limits wide enough for that; 4 new bad pixels are 0.011 % of its area: beyond the default 0.01 %
    limits = tmp_path / "limits.yaml"
    limits.write_text(yaml.safe_dump({"mtf20_pct": 20, "mtf50_pct": 20, "dqe_pct": 40}))
    rc, out, err = _cli(["stability", *reversed(paths), "--out", tmp_path / "o", "--limits", limits], capsys)
    assert rc == 3, err  # order from acquired_at, not the order given
    doc = json.loads((tmp_path / "o" / "stability.json").read_text())
    assert [r["verdicts"]["new_bad_pixels_pct_of_area"] for r in doc["sessions"]] == ["pass", "fail", "fail"]
    assert all(r["verdicts"]["light_yield_counts_per_uGy"] == "pass" for r in doc["sessions"])
    rows = doc["sessions"]
    assert [r["time_h"] for r in rows] == [0.0, 100.0, 200.0]
    assert all(r["time_source"].startswith("acquired_at") for r in rows)
    truths = [zarr.open_group(str(p), mode="r")["truth"].attrs for p in paths]
    for r, tr in zip(rows, truths):
        # light yield relative to the baseline follows the planted factor (flats' noise: well under 0.5 %)
        assert r["light_yield_counts_per_uGy"] / rows[0]["light_yield_counts_per_uGy"] == pytest.approx(
            tr["light_factor"] / truths[0]["light_factor"], rel=5e-3)
        # the new bad pixels, exactly where they were placed
        assert sorted(map(tuple, r["new_bad_pixel_positions"])) == sorted(map(tuple, tr["new_bad_pixels"]))
        # the same edge: registered to within a tenth of a pixel, as sharp (the blur did not grow)
        so = r["same_object"]
        assert np.hypot(*so["shift_yx_px"]) < 0.1
        assert abs(so["relative_sharpness"] - 1) < 3 * so["relative_sharpness_err"] + 0.02
    tr = doc["trends"]["light_yield_counts_per_uGy"]
    assert abs(tr["slope_pct_per_h"] - (-0.02)) < 3 * tr["slope_pct_per_h_err"] + 0.002
    assert doc["verdict"] == "fail"
    # the per-session characterisation reports are kept
    assert len(list((tmp_path / "o" / "sessions").glob("*/report.json"))) == 3
    # report.json sessions give the same trend (times from their acquired_at)
    reports = sorted((tmp_path / "o" / "sessions").glob("*/report.json"))
    limits.write_text(yaml.safe_dump({"mtf20_pct": 20, "mtf50_pct": 20, "dqe_pct": 40,
                                      "new_bad_pixels_pct_of_area": 0.05}))
    rc, _, err = _cli(["stability", *reports, "--out", tmp_path / "r", "-q", "--limits", limits], capsys)
    assert rc == 0, err
    again = json.loads((tmp_path / "r" / "stability.json").read_text())
    assert [r["new_bad_pixels"] for r in again["sessions"]] == [r["new_bad_pixels"] for r in rows]
    assert again["trends"]["light_yield_counts_per_uGy"]["slope_pct_per_h"] == pytest.approx(tr["slope_pct_per_h"])


def test_bad_sessions_are_one_line(sessions, tmp_path, capsys):
    root, paths = sessions
    rc, _, err = _cli(["stability", paths[0], "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "at least two sessions" in err
    other = tmp_path / "other.zarr"
    shutil.copytree(paths[1], other)
    pipeline.api.set_dataset_attrs(other, {"pixel_pitch_mm": "0.05"})
    rc, _, err = _cli(["stability", paths[0], other, "--out", tmp_path / "o", "-q"], capsys)  # no progress line
    assert rc == 2 and "pixel pitches differ" in err and len(err.strip().splitlines()) == 1
    junk = tmp_path / "report.json"
    junk.write_text(json.dumps({"hello": 1}))
    rc, _, err = _cli(["stability", paths[0], junk, "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "not a report" in err
    assert not (tmp_path / "o" / "stability.json").exists()


@pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine (apt-get install chromium)")
def test_stability_html_renders_in_headless_chromium(drifting, tmp_path, capsys):
    _, lin, _ = drifting
    assert _cli(["stability", lin, tmp_path / "r", "-q"], capsys)[0] == 0
    html = tmp_path / "r" / "stability.html"
    flags = chromium_flags(tmp_path / "prof")
    dom = subprocess.run([chromium(), *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert 'data-loaded="yes"' in dom
    sizes = re.findall(r'data-natural="(\d+)x(\d+)"', dom)
    assert len(sizes) == 1 and all(int(w) > 0 and int(h) > 0 for w, h in sizes)
    doc = json.loads((tmp_path / "r" / "stability.json").read_text())
    assert f'id="verdict" class="{doc["verdict"]}"' in dom


def test_recordings_as_sessions_trend_their_light_output(drifting, tmp_path, capsys):
    """Plain recordings as sessions (light output only), timed by their acquired_at attributes."""
    root, lin, _ = drifting
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    shutil.copytree(lin, a)
    shutil.copytree(lin, b)
    pipeline.api.set_dataset_attrs(a, {"acquired_at": "2026-01-01T00:00:00Z"})
    pipeline.api.set_dataset_attrs(b, {"acquired_at": "2026-01-02T00:00:00Z"})
    rc, _, err = _cli(["stability", b, a, "--out", tmp_path / "o", "-q"], capsys)
    assert rc == 0, err
    rows = json.loads((tmp_path / "o" / "stability.json").read_text())["sessions"]
    assert [r["time_h"] for r in rows] == [0.0, 24.0] and [r["kind"] for r in rows] == ["recording"] * 2
    assert rows[0]["light_output_counts"] == pytest.approx(rows[1]["light_output_counts"])  # the same frames
    assert rows[1]["verdicts"]["light_output_counts"] == "pass"
