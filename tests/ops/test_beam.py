"""Beam-intensity normalisation: the op against an exact construction, and a run on a flickering recording
against the same recording without the flicker (the truth the flicker was added to)."""

import numpy as np
import pytest
import zarr

import pipeline
from pipeline.ops.beam import normalise_beam, region_means

RNG = np.random.default_rng(7)


def test_op_divides_out_an_exact_flicker():
    base = RNG.uniform(500, 1500, (1, 32, 40)).astype(np.float32)
    s = np.array([1.0, 0.8, 1.25, 0.95, 1.1])
    frames = (base * s[:, None, None]).astype(np.float32)
    region = (2, 10, 3, 20)
    out, factors = normalise_beam(frames, region=region, reference=1000.0)
    m0 = float(base[0, 2:10, 3:20].astype(np.float64).mean())
    np.testing.assert_allclose(factors, 1000.0 / (m0 * s), rtol=1e-6)
    np.testing.assert_allclose(out, np.broadcast_to(base * (1000.0 / m0), frames.shape), rtol=2e-6)
    np.testing.assert_allclose(region_means(out, region=region), 1000.0, rtol=1e-6)


def test_op_nan_pixels_ignored_dark_frames_nan():
    frames = np.full((3, 8, 8), 100.0, np.float32)
    frames[0, 1, 1] = np.nan
    frames[2] = 0.0  # beam off
    out, factors = normalise_beam(frames, region=(0, 4, 0, 4), reference=50.0)
    assert factors[0] == pytest.approx(0.5) and np.isnan(out[0, 1, 1]) and out[0, 2, 2] == 50.0
    assert np.isnan(factors[2]) and np.isnan(out[2]).all()


@pytest.fixture(scope="module")
def flicker(tmp_path_factory):
    """A recording, the same frames with a source flicker of +-20 % (on the dark-subtracted signal), a calibration."""
    d = tmp_path_factory.mktemp("beam")
    sim = pipeline.simulate(d / "s.zarr", frames=24, size=(96, 96), chunk_frames=8, seed=9, quanta_per_pixel=4000)
    g = zarr.open_group(str(sim), mode="r")
    raw = g["frames"][:].astype(np.float64)
    dark = g["darks"][:].astype(np.float64).mean(axis=0)
    s = 1.0 + 0.2 * np.sin(np.arange(24) * 1.3)
    flick = np.clip(np.rint(dark + (raw - dark) * s[:, None, None]), 0, 65535).astype(np.uint16)
    np.save(d / "flicker.npy", flick)
    pipeline.api.ingest(d / "flicker.npy", d / "f.zarr", pixel_pitch_mm=0.01, frame_rate_hz=50.0)
    pipeline.save_calibration(pipeline.calibrate(sim), d / "cal.zarr")
    return d, sim, d / "f.zarr", s


def _run(src, out, cal, *extra):
    r = pipeline.run(src, out, calibration=cal, overrides=["flatfield.output=transmission", *extra])
    return zarr.open_group(str(r.output), mode="r")["frames"][:].astype(np.float64)


def test_a_run_removes_the_flicker(flicker, tmp_path):
    d, sim, flick, s = flicker
    region = [0, 12, 0, 96]  # the simulated scene's open top rows
    beam = ["beam.enabled=true", f"beam.region={region}", "beam.reference=1.0"]
    truth = _run(sim, tmp_path / "t.zarr", d / "cal.zarr")  # no flicker, no normalisation
    fixed = _run(flick, tmp_path / "b.zarr", d / "cal.zarr", *beam)
    raw = _run(flick, tmp_path / "r.zarr", d / "cal.zarr")
    scene = (slice(None), slice(20, 90), slice(5, 90))  # the object area, away from the region
    # per frame: the scene's mean transmission relative to the region's, as without the flicker
    t_ratio = np.nanmean(truth[scene], axis=(1, 2)) / np.nanmean(truth[:, 0:12, :], axis=(1, 2))
    f_mean = np.nanmean(fixed[scene], axis=(1, 2))
    np.testing.assert_allclose(f_mean, t_ratio, rtol=5e-3)  # the flicker is gone (counting noise and rounding left)
    r_mean = np.nanmean(raw[scene], axis=(1, 2))
    assert np.max(np.abs(r_mean / t_ratio / np.mean(r_mean / t_ratio) - 1)) > 0.15  # it was there: +-20 %


def test_chunking_does_not_change_the_result_and_the_plan_says_beam(flicker, tmp_path):
    d, _, flick, _ = flicker
    beam = ["beam.enabled=true", "beam.region=[0, 12, 0, 96]"]  # reference from the first frames
    a = _run(flick, tmp_path / "a.zarr", d / "cal.zarr", *beam, "execution.chunk_frames=24")
    b = _run(flick, tmp_path / "b.zarr", d / "cal.zarr", *beam, "execution.chunk_frames=5")
    np.testing.assert_array_equal(a, b)
    plan = pipeline.runner.dry_run(flick, tmp_path / "c.zarr", overrides=beam, calibration=d / "cal.zarr")
    assert plan.stages == ("flatfield", "beam") and "beam reference" in plan.estimates


def test_bad_beam_settings_are_one_line(flicker, tmp_path):
    d, _, flick, _ = flicker
    for over, msg in ((["beam.enabled=true"], "needs beam.region"),
                      (["beam.enabled=true", "beam.region=[0, 12, 0, 500]"], "inside the 96 x 96 frames"),
                      (["beam.region=[5, 2, 0, 4]"], "Y0 < Y1"),
                      (["beam.enabled=true", "beam.region=[0, 4, 0, 4]", "beam.reference=.nan"], "finite")):
        with pytest.raises(pipeline.PipelineError, match=msg):
            pipeline.run(flick, tmp_path / "x.zarr", calibration=d / "cal.zarr", overrides=over)
