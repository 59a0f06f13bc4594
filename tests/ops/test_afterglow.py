"""Afterglow model: exact inverse, chunking, fit accuracy against simulator truth."""

import numpy as np
import pytest
import zarr

import pipeline
from pipeline.ops.afterglow import (
    add_lag, dc_gain, figures, fit_falling_step, ratios_from_tau, remove_lag, step_amplitudes, steady_state,
)


def test_inverse_is_exact_and_chunks_chain():
    rng = np.random.default_rng(0)
    x = rng.random((50, 6, 5)).astype(np.float32) * 1000
    a, r = np.array([0.04, 0.01, 0.002]), np.array([0.3, 0.9, 0.995])
    st0 = steady_state(x[0] * np.float32(dc_gain(a, r)), a, r)
    y, _ = add_lag(x, a, r, st0.copy())
    whole, _ = remove_lag(y, a, r, st0.copy())
    np.testing.assert_allclose(whole, x, rtol=2e-5, atol=2e-3)
    for chunk in (1, 7, 50):
        state, parts = st0.copy(), []
        for t0 in range(0, 50, chunk):
            out, state = remove_lag(y[t0 : t0 + chunk], a, r, state)
            parts.append(out)
        np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_per_pixel_amplitudes_and_steady_state():
    rng = np.random.default_rng(1)
    amap = rng.uniform(0.001, 0.05, (2, 4, 3)).astype(np.float32)
    r = np.array([0.5, 0.95])
    x = np.full((30, 4, 3), 100.0, np.float32)
    y, _ = add_lag(x, amap, r, steady_state(x[0] * dc_gain(amap, r).astype(np.float32), amap, r))
    np.testing.assert_allclose(y, np.broadcast_to(100.0 * dc_gain(amap, r), y.shape), rtol=1e-5)
    back, _ = remove_lag(y, amap, r, steady_state(y[0], amap, r))
    np.testing.assert_allclose(back, x, rtol=1e-5)


def test_fit_on_exact_curve_recovers_parameters():
    fr = 100.0
    a, tau = np.array([0.02, 0.004]), np.array([0.03, 0.5])
    r = ratios_from_tau(tau, fr)
    x = np.ones((400, 1, 1), np.float32)
    x[100:] = 0
    y, _ = add_lag(x, a, r, steady_state(x[0] * np.float32(dc_gain(a, r)), a, r))
    fit = fit_falling_step(y[:, 0, 0].astype(np.float64), fr)
    np.testing.assert_allclose(fit.tau_s, tau, rtol=1e-3)
    np.testing.assert_allclose(fit.amplitudes, a, rtol=1e-3)
    assert fit.cutoff_frame == 100


def _step(tmp_path, amps, taus_frames, *, ramp=0, frames=None, fr=50.0, noise=True, name="cal.zarr"):
    taus = tuple(t / fr for t in taus_frames)
    off = 40
    frames = frames or off + int(max(40, 5 * max(taus_frames)))
    return pipeline.simulate(tmp_path / name, scene="open", frames=frames, size=(64, 64), beam_off_frame=off,
                             ramp_frames=ramp, afterglow_amplitudes=tuple(amps), afterglow_tau_s=taus,
                             frame_rate_hz=fr, truth_frames=False, noise=noise, seed=2)


CASES = [
    ([0.02], [5]),
    ([0.01, 0.003], [2, 50]),
    ([0.001, 0.01], [1, 20]),
    ([0.05, 0.005, 0.001], [1, 20, 200]),
]


@pytest.mark.parametrize("amps,taus", CASES)
def test_fitted_first_frame_lag_within_5pct(tmp_path, amps, taus):
    path = _step(tmp_path, amps, taus)
    doc = pipeline.api.fit_afterglow(path, tmp_path / "m.json")
    r = ratios_from_tau(np.array(taus) / 50.0, 50.0)
    truth = figures(step_amplitudes(amps, r), np.array(taus) / 50.0, 50.0)["lag_first_frame"]
    assert doc["figures"]["lag_first_frame"] == pytest.approx(truth, rel=0.05)
    assert doc["dc_gain"] == pytest.approx(float(dc_gain(amps, r)), rel=0.01)


def test_fit_tolerates_a_beam_ramp_and_missing_darks(tmp_path):
    amps, taus = [0.01, 0.004], [10, 60]
    path = _step(tmp_path, amps, taus, ramp=2)
    # a copy of the recording without darks: the fit estimates the offset itself
    src = zarr.open_group(str(path), mode="r")
    nodark = zarr.open_group(str(tmp_path / "nodark.zarr"), mode="w")
    nodark.create_array("frames", data=src["frames"][:], chunks=(16, 64, 64))
    nodark.attrs.update(dict(src.attrs))
    r = ratios_from_tau(np.array(taus) / 50.0, 50.0)
    truth = figures(step_amplitudes(amps, r), np.array(taus) / 50.0, 50.0)
    for p in (path, tmp_path / "nodark.zarr"):
        doc = pipeline.api.fit_afterglow(p, tmp_path / f"{p.stem}.json")
        assert doc["fit"]["cutoff_frame"] == 40
        assert doc["figures"]["lag_first_frame"] == pytest.approx(truth["lag_first_frame"], rel=0.05)
        assert doc["figures"]["afterglow_100ms"] == pytest.approx(truth["afterglow_100ms"], rel=0.05)


def test_per_pixel_maps_match_uniform_screen(tmp_path):
    path = _step(tmp_path, [0.02, 0.005], [3, 30])
    doc = pipeline.api.fit_afterglow(path, tmp_path / "m.json", per_pixel=True)
    amap = np.load(tmp_path / "m.amplitudes.npy")
    assert amap.shape == (2, 64, 64)
    np.testing.assert_allclose(np.median(amap, axis=(1, 2)), doc["amplitudes"], rtol=0.05)
