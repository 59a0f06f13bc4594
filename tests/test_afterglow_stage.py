"""The afterglow stage in the pipeline: ghosts removed, chunking exact, bad input refused."""

import json

import numpy as np
import pytest
import zarr

import pipeline
from conftest import run_cli

AMPS, TAUS_S = (0.02, 0.006), (0.03, 0.4)  # 1.5 and 20 frames at 50 Hz: a strong, visible ghost


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    d = tmp_path_factory.mktemp("ag")
    out = {}
    for noise in (False, True):
        tag = "clean" if not noise else "noisy"
        cal = pipeline.simulate(d / f"cal_{tag}.zarr", scene="open", frames=160, size=(64, 64), beam_off_frame=40,
                                afterglow_amplitudes=AMPS, afterglow_tau_s=TAUS_S, noise=noise, truth_frames=False)
        pipeline.api.fit_afterglow(cal, d / f"model_{tag}.json")
        vid = pipeline.simulate(d / f"vid_{tag}.zarr", frames=60, size=(128, 128), afterglow_amplitudes=AMPS,
                                afterglow_tau_s=TAUS_S, noise=noise, speed_px_per_frame=3.0, seed=4)
        out[tag] = (vid, d / f"model_{tag}.json")
    return out


def test_noise_free_ghost_below_0p1_percent(recordings, tmp_path):
    vid, model = recordings["clean"]
    res = pipeline.run(vid, tmp_path / "o.zarr", overrides=[f"afterglow.model={model}"])
    g = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    before, after = g["ghost/before"][:], g["ghost/after"][:]
    ok = np.isfinite(after)
    assert ok.sum() > 20
    assert np.max(np.abs(before[ok])) > 0.01  # the ghost is there without the stage
    assert np.max(np.abs(after[ok])) <= 0.001  # and gone with it, from the first frame after the object leaves
    assert res.ghost["mean_abs_after"] <= 0.001


def test_noisy_ghost_energy_reduced_20x(recordings, tmp_path):
    vid, model = recordings["noisy"]
    res = pipeline.run(vid, tmp_path / "o.zarr", overrides=[f"afterglow.model={model}"])
    assert res.ghost["energy_reduction"] >= 20


def test_afterglow_corrected_video_matches_prompt_truth(recordings, tmp_path):
    vid, model = recordings["clean"]
    pipeline.run(vid, tmp_path / "o.zarr", overrides=[f"afterglow.model={model}"])
    out = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["frames"][:]
    g = zarr.open_group(str(vid), mode="r")
    truth = g["truth/frames"][:]
    good = np.isfinite(out) & (g["truth/bad_pixels"][:] == 0)[None]  # replaced defects are estimates
    assert np.max(np.abs(out[good] - truth[good])) < 2.0  # counts: rounding of the raw frames to integers


@pytest.mark.parametrize("chunk", [1, 7, 60])
def test_chunked_equals_whole(recordings, tmp_path, chunk):
    vid, model = recordings["noisy"]
    ref = tmp_path / "whole.zarr"
    pipeline.run(vid, ref, overrides=[f"afterglow.model={model}", "execution.chunk_frames=60",
                                      "execution.scheduler=synchronous"])
    out = tmp_path / "c.zarr"
    pipeline.run(vid, out, overrides=[f"afterglow.model={model}", f"execution.chunk_frames={chunk}"])
    a = zarr.open_group(str(out), mode="r")["frames"][:]
    b = zarr.open_group(str(ref), mode="r")["frames"][:]
    np.testing.assert_array_equal(a, b)


def test_transmission_same_with_and_without_stage(recordings, tmp_path):
    """Flats hold the DC lag gain; the calibration removes it, so a static open beam is 1 either way."""
    vid, model = recordings["clean"]
    for name, extra in (("a", [f"afterglow.model={model}"]), ("b", [])):
        pipeline.run(vid, tmp_path / f"{name}.zarr", overrides=["flatfield.output=transmission", *extra])
    truth = zarr.open_group(str(vid), mode="r")["truth/frames"][0]
    open_beam = truth > 0.999 * truth.max()
    for name in "ab":
        frame0 = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="r")["frames"][0]
        assert np.nanmean(frame0[open_beam]) == pytest.approx(1.0, abs=2e-3)


def _err(proc):
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_bad_inputs(recordings, tmp_path):
    vid, model = recordings["clean"]
    # a calibration recording without a beam-off part
    nocut = pipeline.simulate(tmp_path / "nocut.zarr", scene="open", frames=30, size=(32, 32), truth_frames=False)
    e = _err(run_cli("afterglow", "fit", nocut, "--out", tmp_path / "m.json"))
    assert "no beam-off part" in e and not (tmp_path / "m.json").exists()
    # model fitted at another frame rate
    doc = json.loads(model.read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**doc, "frame_rate_hz": 25.0}))
    e = _err(run_cli("run", vid, tmp_path / "o.zarr", "--set", f"afterglow.model={other}"))
    assert "25 Hz" in e and "50 Hz" in e
    for bad in ([-0.01, 0.002], [float("nan"), 0.002]):
        f = tmp_path / "bad.json"
        f.write_text(json.dumps({**doc, "amplitudes": bad}))
        e = _err(run_cli("run", vid, tmp_path / "o.zarr", "--set", f"afterglow.model={f}"))
        assert "amplitudes" in e
    e = _err(run_cli("run", vid, tmp_path / "o.zarr", "--set", f"afterglow.model={tmp_path / 'none.json'}"))
    assert "does not exist" in e
    assert not (tmp_path / "o.zarr").exists()
