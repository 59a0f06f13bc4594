"""Unreadable frames skipped with ``execution.on_error: skip``: NaN in the output, the stateful stages restart
after them (the frames after a gap are what a run of the recording starting there gives), and the run's set-up
statistics (noise model, MTF edge) are made of readable frames only."""

import numpy as np
import pytest
import zarr

import pipeline
from pipeline.ops.denoise import NoiseModel
from pipeline.stages import AfterglowStage, TemporalDenoiseStage, run_stateful
from pipeline.config import load_config

NOISE = [1.0, 25.0]  # a fixed noise model: the same for the run and the run starting after the gap


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    """A 48-frame 64 x 64 recording in 16-frame chunks, its saved calibration, and frames 32-47 alone."""
    d = tmp_path_factory.mktemp("skip")
    sim = pipeline.simulate(d / "s.zarr", frames=48, size=(64, 64), chunk_frames=16, truth_frames=False, seed=5)
    pipeline.save_calibration(pipeline.calibrate(sim), d / "cal.zarr")
    frames = zarr.open_group(str(sim), mode="r")["frames"][:]
    np.save(d / "tail.npy", frames[32:])
    pipeline.api.ingest(d / "tail.npy", d / "tail.zarr", pixel_pitch_mm=0.01, frame_rate_hz=50.0)
    return d, sim


def _damaged(d, sim, chunk: int, name: str):
    import shutil

    dst = d / name
    if not dst.exists():
        shutil.copytree(sim, dst)
        (dst / "frames" / "c" / str(chunk) / "0" / "0").unlink()
    return dst


def _run(src, out, cal, *extra):
    over = ["denoise.enabled=true", "denoise.method=none", "execution.on_error=skip", "execution.chunk_frames=8",
            *extra]
    return pipeline.run(src, out, calibration=cal, overrides=over)


def test_frames_after_a_gap_are_those_of_a_run_starting_there(rec, tmp_path):
    d, sim = rec
    src = _damaged(d, sim, 1, "mid.zarr")  # frames 16-31 unreadable
    res = _run(src, tmp_path / "o.zarr", d / "cal.zarr", f"denoise.noise_model={NOISE}")
    out = zarr.open_group(str(res.output), mode="r")["frames"][:]
    assert sorted(f for a, b, *_ in res.skipped_frames for f in range(a, b + 1)) == list(range(16, 32))
    assert np.isnan(out[16:32]).all()  # not 16 copies of frame 15
    assert np.isfinite(out[:16]).all() and np.isfinite(out[32:]).all()
    fresh = _run(d / "tail.zarr", tmp_path / "t.zarr", d / "cal.zarr", f"denoise.noise_model={NOISE}")
    np.testing.assert_array_equal(out[32:], zarr.open_group(str(fresh.output), mode="r")["frames"][:])


def test_noise_model_is_fitted_on_readable_frames(rec, tmp_path):
    d, sim = rec
    src = _damaged(d, sim, 0, "first.zarr")  # frames 0-15 unreadable: the noise model comes from 16-23
    res = _run(src, tmp_path / "o.zarr", d / "cal.zarr")
    g = zarr.open_group(str(res.output), mode="r")
    nm = g.attrs["provenance"]["noise_model"]
    assert np.isfinite(nm["alpha"]) and np.isfinite(nm["beta"])
    out = g["frames"][:]
    assert np.isnan(out[:16]).all() and np.isfinite(out[16:]).all()
    # the same model as a run on the readable frames alone fits from its first 8 frames
    clean = _run(sim, tmp_path / "c.zarr", d / "cal.zarr", "execution.on_error=fail")
    assert nm != zarr.open_group(str(clean.output), mode="r").attrs["provenance"]["noise_model"]


def test_mtf_edge_found_on_a_readable_frame(tmp_path):
    sim = pipeline.simulate(tmp_path / "s.zarr", frames=16, size=(128, 128), chunk_frames=8, truth_frames=False)
    clean = pipeline.run(sim, tmp_path / "c.zarr", overrides=["mtf.enabled=true"])
    (sim / "frames" / "c" / "0" / "0" / "0").unlink()  # frames 0-7: the edge is looked for on frame 8
    res = pipeline.run(sim, tmp_path / "m.zarr", overrides=["mtf.enabled=true", "execution.on_error=skip"])
    assert res.mtf_summary["roi"] == clean.mtf_summary["roi"] and res.mtf_summary["mtf20_median"] > 0


def test_all_frames_unreadable_is_one_error(rec, tmp_path):
    import shutil

    d, sim = rec
    dst = tmp_path / "none.zarr"
    shutil.copytree(sim, dst)
    for c in range(3):
        (dst / "frames" / "c" / str(c) / "0" / "0").unlink()
    with pytest.raises(pipeline.PipelineError, match="no frame of .* could be read for the noise model"):
        _run(dst, tmp_path / "o.zarr", d / "cal.zarr")


@pytest.mark.parametrize("kind", ["afterglow", "temporal"])
@pytest.mark.parametrize("gaps", [[(3, 5)], [(0, 2)], [(10, 12)], [(2, 3), (6, 9)]])
def test_run_stateful_restarts_after_each_gap_whatever_the_blocks(kind, gaps):
    """Against an independent construction: each readable run of frames processed alone from a fresh state."""
    rng = np.random.default_rng(1)
    video = rng.normal(1000, 30, (12, 16, 16)).astype(np.float32)
    video[:, 4:8, 4:8] += 300 * (np.arange(12) % 3)[:, None, None]  # something that moves
    if kind == "afterglow":
        model = type("M", (), {"amplitudes": np.array([0.02, 0.005]), "ratios": np.array([0.5, 0.9])})()
        stage = AfterglowStage(model, load_config().afterglow)
    else:
        stage = TemporalDenoiseStage(NoiseModel(1.0, 100.0), load_config().denoise)
    # the truth: NaN in the gaps, each readable run alone from a fresh state
    want = np.full_like(video, np.nan)
    cuts = sorted(gaps)
    pos = 0
    for a, b in cuts + [(12, 12)]:
        if a > pos:
            part = video[pos:a].copy()
            want[pos:a], _ = stage(part, stage.initial_state(part))
        pos = max(pos, b)
    for block in (12, 5, 3, 1):  # any chunking: the same frames
        got, state = np.empty_like(video), None
        for t0 in range(0, 12, block):
            t1 = min(t0 + block, 12)
            local = [(max(a, t0) - t0, min(b, t1) - t0) for a, b in gaps if min(b, t1) > max(a, t0)]
            blk = video[t0:t1].copy()
            got[t0:t1], state = run_stateful(stage, blk, state, local)
        np.testing.assert_array_equal(got, want)
