"""`characterise` end to end on a simulated detector with known truth, and its HTML report in a real
headless browser (Chromium from the system packages; skipped where it is not installed)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import pipeline
from conftest import chromium, chromium_flags, run_cli


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    d = tmp_path_factory.mktemp("char")
    a = pipeline.api.simulate_characterisation(d / "eu.zarr", preset="eu-gc", size=(512, 512), response_exponent=1.1)
    b = pipeline.api.simulate_characterisation(d / "gc.zarr", preset="gc", size=(512, 512), seed=1)
    p = run_cli("characterise", b, d / "gc")
    assert p.returncode == 0, p.stderr
    p = run_cli("characterise", a, d / "eu", "--compare", d / "gc" / "report.json")
    assert p.returncode == 0, p.stderr
    return d


def test_report_numbers_against_simulator_truth(reports):
    rep = json.loads((reports / "eu" / "report.json").read_text())
    assert rep["linearity"]["power_law"]["exponent_p"] == pytest.approx(1.1, rel=0.01)  # super-linear screen
    other = json.loads((reports / "gc" / "report.json").read_text())
    assert other["linearity"]["power_law"]["exponent_p"] == pytest.approx(1.0, rel=0.01)
    # resolution: the eu-gc screen resolves far more than the gc one (analytic system MTF20 ~14.8 vs ~3.9 lp/mm)
    assert rep["mtf"]["mtf20_lp_per_mm"] == pytest.approx(14.8, rel=0.05)
    assert other["mtf"]["mtf20_lp_per_mm"] < 0.35 * rep["mtf"]["mtf20_lp_per_mm"]
    # DQE at low frequency near the screen's absorption (0.6); the lag's DC gain and camera noise shift it a little
    assert 0.5 < other["dqe"]["dqe_at_0p5_lp_per_mm"] < 0.75
    truth_lag = 0.0197  # eu-gc preset: first-frame lag 1.97 %
    assert rep["afterglow"]["lag_first_frame"] == pytest.approx(truth_lag, rel=0.05)
    for key in ("MTF20 (lp/mm)", "DQE at 0.5 lp/mm", "First-frame lag (%)"):
        assert key in rep["summary"]


def test_bad_dataset_is_one_line(tmp_path):
    sim = pipeline.simulate(tmp_path / "v.zarr", frames=2, size=(64, 64), truth_frames=False)
    p = run_cli("characterise", sim, tmp_path / "r")
    assert p.returncode != 0 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr


@pytest.mark.skipif(chromium() is None, reason="no Chromium on this machine (apt-get install chromium)")
def test_html_report_renders_in_headless_chromium(reports, tmp_path):
    html = reports / "eu" / "report.html"
    rep = json.loads((reports / "eu" / "report.json").read_text())
    flags = chromium_flags(tmp_path / "prof")
    dom = subprocess.run([chromium(), *flags, "--dump-dom", html.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    assert 'data-loaded="yes"' in dom
    sizes = re.findall(r'data-natural="(\d+)x(\d+)"', dom)
    assert len(sizes) >= 4 and all(int(w) > 0 and int(h) > 0 for w, h in sizes)  # every plot decoded
    cells = dict(re.findall(r'data-key="([^"]+)">([^<]*)<', dom))
    for key, value in rep["summary"].items():
        shown = cells[key.replace("&", "&amp;")]
        if isinstance(value, float):
            assert float(shown) == pytest.approx(value, rel=1e-3)
        else:
            assert shown == str(value)
    shot = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "characterisation_report.png"
    subprocess.run([chromium(), *flags, f"--screenshot={tmp_path / 'shot.png'}", "--window-size=1400,2600",
                    html.as_uri()], capture_output=True, timeout=120)
    assert (tmp_path / "shot.png").stat().st_size > 10_000
    if not shot.exists():  # a picture of the report for people to look at (kept once)
        shutil.copy(tmp_path / "shot.png", shot)
