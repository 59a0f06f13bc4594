"""The README's "Your own data" walkthrough, run exactly as written on camera-TIFF folders this test writes.

The folders carry what the test planted: a known afterglow (one term, a = 0.02, tau = 60 ms), the simulated
screen's blur (its MTF computed from its line-spread function, not measured), bad pixels at known positions and a
gain map. Each number the commands print or write is checked against that truth, not against another run.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
import zarr

import pipeline
from pipeline.api import simulate_characterisation
from pipeline.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
AMPLITUDE, TAU_S, RATE_HZ = 0.02, 0.06, 50.0


def walkthrough_commands() -> list[list[str]]:
    """The ``$ xray-pipeline ...`` lines of the first console block under "## Your own data" (comments dropped)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Your own data"):]
    block = re.search(r"```console\n(.*?)```", section, re.S).group(1)
    cmds = [shlex.split(line[2:], comments=True) for line in block.splitlines() if line.startswith("$ xray-pipeline")]
    assert 5 <= len(cmds) <= 10, "the walkthrough is at most ten commands"
    return [c[1:] for c in cmds]


def _folder(path: Path, frames) -> None:
    path.mkdir()
    for i, f in enumerate(np.asarray(frames)):
        tifffile.imwrite(path / f"img_{i:04d}.tif", f)


def _mtf20(freq, mtf) -> float:
    """The first frequency where a curve falls to 0.2 (linear interpolation)."""
    i = int(np.argmax(np.asarray(mtf) < 0.2))
    f0, f1, m0, m1 = freq[i - 1], freq[i], mtf[i - 1], mtf[i]
    return float(f0 + (m0 - 0.2) * (f1 - f0) / (m0 - m1))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The lab's folders and the truth planted in them."""
    root = tmp_path_factory.mktemp("lab")
    terms = dict(afterglow_amplitudes=(AMPLITUDE,), afterglow_tau_s=(TAU_S,), frame_rate_hz=RATE_HZ,
                 pixel_pitch_mm=0.01)
    sims = root / ".sims"
    pipeline.simulate(sims / "video.zarr", frames=12, size=(96, 96), seed=11, **terms)
    pipeline.simulate(sims / "step.zarr", frames=48, size=(96, 96), seed=12, scene="open", beam_off_frame=24,
                      **terms)
    simulate_characterisation(sims / "char.zarr", size=(192, 192), seed=13)
    video = zarr.open_group(str(sims / "video.zarr"), mode="r")
    step = zarr.open_group(str(sims / "step.zarr"), mode="r")
    char = zarr.open_group(str(sims / "char.zarr"), mode="r")
    _folder(root / "rec", video["frames"][:])
    _folder(root / "darks", video["darks"][:])
    _folder(root / "flats", video["flats"][:])
    _folder(root / "step", step["frames"][:])
    _folder(root / "edge", char["edge"][:])
    _folder(root / "char_darks", char["darks"][:])
    _folder(root / "char_step", char["afterglow_step"][:])
    flats = {}
    for name, arr in char["flats"].arrays():
        k = float(arr.attrs["air_kerma_uGy"])
        _folder(root / f"flats_{k:g}uGy", arr[:])
        flats[k] = f"flats_{k:g}uGy/"
    a = dict(char.attrs)
    (root / "manifest.yaml").write_text(yaml.safe_dump({
        "pixel_pitch_mm": a["pixel_pitch_mm"], "frame_rate_hz": a["frame_rate_hz"], "beam_quality": a["beam_quality"],
        "reference_kerma_uGy": a["reference_kerma_uGy"], "darks": "char_darks/", "flats": flats, "edge": "edge/",
        "afterglow_step": "char_step/"}))
    truth = {
        "video_bad": np.asarray(video["truth/bad_pixels"][:]) > 0,
        "video_gain": np.asarray(video["truth/gain"][:], np.float64),
        "char_bad": int(np.count_nonzero(np.asarray(char["truth/bad_pixels"][:]))),
        "char_mtf20_cy": _mtf20(char["truth/mtf_frequencies_cy_per_px"][:], char["truth/mtf_edge"][:]),
        "char_pitch": float(a["pixel_pitch_mm"]),
    }
    return root, truth


def test_the_readme_walkthrough_on_tiff_folders(lab, monkeypatch, capsys):
    root, truth = lab
    monkeypatch.chdir(root)
    out = {}
    for argv in walkthrough_commands():
        rc = main(argv)
        cap = capsys.readouterr()
        assert rc == 0, f"xray-pipeline {shlex.join(argv)} -> {rc}: {cap.err}"
        out[argv[0] if argv[0] != "afterglow" else "afterglow"] = cap.out + cap.err

    # calibrate: the planted bad pixels, found where they were planted (by class in its line)
    cal = zarr.open_group(str(root / "cal.zarr"), mode="r")
    found = np.asarray(cal["bad_pixels"][:]) > 0
    assert np.array_equal(found, truth["video_bad"])
    assert f"{int(found.sum())} bad pixels" in out["calibrate"]
    # ... and the gain map, up to its normalisation, is the planted one (good pixels; flats' noise ~1 %)
    gain = np.asarray(cal["gain"][:], np.float64)
    good = ~truth["video_bad"]
    ratio = gain[good] / truth["video_gain"][good]
    assert np.std(ratio / np.mean(ratio)) < 0.02

    # afterglow fit: the planted term
    model = json.loads((root / "model.json").read_text())
    assert sum(model["amplitudes"]) == pytest.approx(AMPLITUDE, rel=0.15)
    a = np.asarray(model["amplitudes"])
    assert float(np.sum(a * np.asarray(model["tau_s"])) / a.sum()) == pytest.approx(TAU_S, rel=0.15)
    assert model["frame_rate_hz"] == RATE_HZ and model["source"] == str((root / "step").resolve())

    # run: the metadata with its source, and the MTF in lp/mm
    run_out = out["run"]
    assert "pixel pitch 0.01 mm (from --pixel-pitch)" in run_out and "frame rate 50 Hz (from --frame-rate)" in run_out
    res = zarr.open_group(str(root / "out.zarr"), mode="r")
    assert res["frames"].shape == (12, 96, 96)
    assert res.attrs["provenance"]["mtf"]["unit"] == "lp_per_mm"
    assert res.attrs["provenance"]["input"] == str((root / "rec").resolve())

    # export: a contact sheet with a raw row above the corrected one
    import imageio.v3 as iio

    sheet = iio.imread(root / "look.png")
    assert sheet.ndim == 2 and sheet.shape[0] > 2 * 96 // 2 and sheet.shape[1] >= 96

    # mtf of the edge folder: the screen's MTF20 (from its line-spread function) within 5 %
    m = json.loads((root / "mtf.json").read_text())
    mtf20 = np.nanmedian(np.asarray(m["mtf20_lp_per_mm"], float))
    assert mtf20 * 0.01 == pytest.approx(truth["char_mtf20_cy"], rel=0.05)

    # characterise from the manifest: bad pixels exactly, MTF20 within 5 % of the truth
    rep = json.loads((root / "report" / "report.json").read_text())
    s = rep["summary"]
    assert s["Bad pixels"] == truth["char_bad"]
    assert s["MTF20 (lp/mm)"] * truth["char_pitch"] == pytest.approx(truth["char_mtf20_cy"], rel=0.05)
    assert (root / "report" / "report.html").is_file()
