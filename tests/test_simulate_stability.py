"""Stability simulations (a screen over its life): the planted drift is what the data show, within their noise."""

import numpy as np
import pytest

from pipeline.ops.flatfield import DEAD, HOT
from pipeline.simulator import SimulationSpec, build, characterisation
from pipeline.simulator_stability import light_factor, stability_recording, stability_sessions

SPEC = SimulationSpec(height=64, width=64, seed=11)
CHAR = dict(n_flats=12, n_edge=2, step_frames=30)
REF_KERMA = 100.0  # characterisation's reference level (index 2 of the default kerma list)


@pytest.fixture(scope="module")
def sessions():
    return stability_sessions(SPEC, **CHAR)


@pytest.fixture(scope="module")
def gain():
    return build(SPEC).truth_maps["gain"].astype(np.float64)  # the same screen: the seed's gain map


def _camera_var(spec):
    return spec.read_noise**2 + spec.dark_current + 1.0 / 12.0  # read, dark shot noise, rounding (counts^2)


def _signal_and_error(d, good, gain, spec):
    """Dark-subtracted mean flat signal at the reference level over ``good`` pixels, and its expected standard
    error: quantum noise (the blur keeps the sum of the Poisson noise; the steady afterglow multiplies it by at
    most its DC gain G) plus the camera's noise in the flats and the darks."""
    flats = dict(d["flats"])[REF_KERMA].astype(np.float64)
    darks = d["darks"].astype(np.float64)
    n, nd, npx = flats.shape[0], darks.shape[0], int(good.sum())
    s = flats.mean(0)[good].mean() - darks.mean(0)[good].mean()
    t = d["truth"]
    q = t["absorption"] * t["q_per_uGy_mm2"] * REF_KERMA * spec.pixel_pitch_mm**2
    cpq = spec.counts_per_quantum * t["light_factor"]
    g = t["afterglow"]["dc_gain"]
    var = (cpq**2 * g**2 * q * np.mean(gain[good] ** 2) + _camera_var(spec)) / (npx * n) + _camera_var(spec) / (npx * nd)
    return s, np.sqrt(var), flats, darks


def test_light_factor_models():
    assert light_factor(0.0, light_drift_pct_per_h=-0.05) == 1.0
    assert light_factor(200.0, light_drift_pct_per_h=-0.05) == pytest.approx(0.9)
    f = light_factor(np.array([0.0, 50.0, 200.0]), light_drift_pct_per_h=-0.05, light_model="exp", exp_tau_h=40.0)
    assert f[0] == 1.0 and f[2] == pytest.approx(0.9, abs=1e-12)  # matched to the linear model at 200 h
    assert 0.9 < f[1] < 1 - 0.05 / 100 * 50  # a decay: faster than linear early on
    e = np.exp(-200.0 / 40.0)
    c = (0.9 - e) / (1 - e)
    assert f[1] == pytest.approx(c + (1 - c) * np.exp(-50.0 / 40.0), rel=1e-12)
    g = light_factor(100.0, light_drift_pct_per_h=-0.05, light_model="exp", exp_tau_h=50.0, exp_floor=0.8)
    assert g == pytest.approx(0.8 + 0.2 * np.exp(-2.0), rel=1e-12)
    with pytest.raises(ValueError):
        light_factor(1.0, light_drift_pct_per_h=-1, light_model="cubic")


def test_first_session_is_the_characterisation(sessions):
    """At t = 0 the screen is the seed's own: the first session is characterisation() bit for bit."""
    c = characterisation(SPEC, **CHAR)
    s = sessions[0]
    assert np.array_equal(c["darks"], s["darks"])
    assert all(k0 == k1 and np.array_equal(a, b) for (k0, a), (k1, b) in zip(c["flats"], s["flats"]))
    assert np.array_equal(c["edge"], s["edge"]) and np.array_equal(c["afterglow_step"], s["afterglow_step"])
    assert np.array_equal(c["truth"]["bad_pixels"], s["truth"]["bad_pixels"])
    assert np.array_equal(c["truth"]["mtf_lsf"], s["truth"]["mtf_lsf"])


def test_session_signal_follows_light_factor_within_poisson_noise(sessions, gain):
    t_h = [d["truth"]["time_h"] for d in sessions]
    assert t_h == [0.0, 50.0, 100.0, 150.0, 200.0]
    assert [d["attrs"]["acquired_at"] for d in sessions] == [
        "2026-01-01T00:00:00Z", "2026-01-03T02:00:00Z", "2026-01-05T04:00:00Z", "2026-01-07T06:00:00Z",
        "2026-01-09T08:00:00Z"]
    good = sessions[-1]["truth"]["bad_pixels"] == 0  # good in every session (the new defects only add)
    s0, e0, flats0, darks0 = _signal_and_error(sessions[0], good, gain, SPEC)
    # the noise model itself: the scatter of the per-frame means is what it predicts for one frame
    per_frame = flats0[:, good].mean(1)
    predicted_one = e0 * np.sqrt(flats0.shape[0])
    assert 0.5 < per_frame.std(ddof=1) / predicted_one < 1.6
    for d in sessions[1:]:
        f = d["truth"]["light_factor"]
        assert f == pytest.approx(1 - 0.05 / 100 * d["truth"]["time_h"])
        s, e, flats, _ = _signal_and_error(d, good, gain, SPEC)
        ratio = s / s0
        sigma = ratio * np.hypot(e / s, e0 / s0)
        assert abs(ratio - f) < 4 * sigma, (d["truth"]["time_h"], ratio, f, sigma)
        assert not np.array_equal(flats, np.rint(flats0 * f))  # each session draws its own noise
    assert abs(s / s0 - 1.0) > 20 * sigma  # the 10 % drop is far outside the noise


def test_quantum_noise_stays_in_xray_units(sessions):
    """Fewer light photons per X-ray: the signal drops by f and the quantum variance (counts^2) by f^2, not f."""
    good = sessions[-1]["truth"]["bad_pixels"] == 0

    def quantum_var(d):
        flats = dict(d["flats"])[REF_KERMA].astype(np.float64)
        return flats.var(0, ddof=1)[good].mean() - _camera_var(SPEC)

    f = sessions[-1]["truth"]["light_factor"]
    ratio = quantum_var(sessions[-1]) / quantum_var(sessions[0])
    # the variance of 12 frames over ~200 independent (blur-correlated) patches is known to ~3 %: f^2 = 0.81, f = 0.9
    assert ratio == pytest.approx(f**2, rel=0.06)
    assert ratio < f - 0.03


def test_new_bad_pixels_are_exactly_the_listed_ones_and_persist(sessions):
    base = sessions[0]["truth"]["bad_pixels"]
    assert sessions[0]["truth"]["new_bad_pixels"] == []
    previous = []
    for i, d in enumerate(sessions):
        bad = d["truth"]["bad_pixels"]
        listed = d["truth"]["new_bad_pixels"]
        assert len(listed) == 5 * i and len({tuple(p) for p in listed}) == len(listed)
        new = {tuple(map(int, p)) for p in np.argwhere((bad != 0) & (base == 0))}
        assert new == {tuple(p) for p in listed}
        assert listed[: len(previous)] == previous  # earlier ones stay, in order
        assert np.all(bad[base != 0] == base[base != 0])  # the baseline's defects stay as they were
        previous = listed
    # each new defect behaves as its class says: dead reads the dark level, hot has a high dark current
    d = sessions[-1]
    flats = dict(d["flats"])[REF_KERMA].astype(np.float64).mean(0)
    darks, darks0 = d["darks"].astype(np.float64).mean(0), sessions[0]["darks"].astype(np.float64).mean(0)
    level = np.median(flats - darks)
    for y, x in d["truth"]["new_bad_pixels"]:
        kind = d["truth"]["bad_pixels"][y, x]
        assert kind in (DEAD, HOT)
        if kind == DEAD:
            assert abs(flats[y, x] - darks[y, x]) < 0.05 * level
        else:
            assert darks[y, x] - darks0[y, x] > 250


def test_blur_and_afterglow_growth():
    ss = stability_sessions(SPEC, hours=(0, 100, 200), new_bad_per_session=0, light_drift_pct_per_h=0.0,
                            blur_growth_pct_per_h=0.1, lag_growth_pct_per_h=0.25, **CHAR)
    f = ss[0]["truth"]["mtf_frequencies_cy_per_px"]
    for d, b, a in zip(ss, (1.0, 1.1, 1.2), (1.0, 1.25, 1.5)):
        t = d["truth"]
        assert t["blur_factor"] == pytest.approx(b) and t["afterglow_factor"] == pytest.approx(a)
        assert t["mtf20_cy_per_px"] == pytest.approx(15.0 * SPEC.pixel_pitch_mm / b)
        assert np.interp(t["mtf20_cy_per_px"], f, t["mtf_lsf"]) == pytest.approx(0.2, abs=1e-4)
        assert t["afterglow"]["amplitudes"] == pytest.approx([0.010 * a, 0.003 * a])
        # the falling step shows the planted first-frame lag (fraction of the steady level)
        step = d["afterglow_step"].astype(np.float64).mean((1, 2)) - d["darks"].astype(np.float64).mean()
        cut = CHAR["step_frames"] // 3
        measured = step[cut] / step[:cut].mean()
        # the frame after the cut-off holds no new quanta: only camera noise (~5e-5 of the steady level)
        assert measured == pytest.approx(t["lag_first_frame"], abs=3e-4)
    assert ss[2]["truth"]["lag_first_frame"] > 1.4 * ss[0]["truth"]["lag_first_frame"]
    # a wider LSF smooths the flats' quantum noise: less of it between neighbouring pixels
    def neighbour_var(d):
        fl = dict(d["flats"])[REF_KERMA].astype(np.float64)
        return np.diff(fl - fl.mean(0), axis=2).var()
    assert neighbour_var(ss[2]) < 0.9 * neighbour_var(ss[0])


def test_sessions_are_deterministic():
    a = stability_sessions(SPEC, hours=(0, 10), n_flats=2, n_edge=1, step_frames=6)
    b = stability_sessions(SPEC, hours=(0, 10), n_flats=2, n_edge=1, step_frames=6)
    assert a[1]["truth"]["new_bad_pixels"] == b[1]["truth"]["new_bad_pixels"]
    assert np.array_equal(a[1]["flats"][0][1], b[1]["flats"][0][1]) and np.array_equal(a[1]["edge"], b[1]["edge"])


def _recording_means(rec):
    frames = np.concatenate([b for _, b, _ in rec.iter_chunks()]).astype(np.float64)
    good = rec.truth_maps["bad_pixels"] == 0
    dark = rec.darks.astype(np.float64).mean(0)[good].mean()
    base = rec.flats.astype(np.float64).mean(0)[good].mean() - dark
    return (frames[:, good].mean(1) - dark) / base, good


def _frame_sigma(rec, good):
    """One frame's relative noise: quantum (the blur keeps the sum) and camera, as in the sessions test."""
    spec = rec.spec
    g = rec.truth_maps["gain"].astype(np.float64)[good]
    s = spec.quanta_per_pixel * spec.counts_per_quantum * g.mean()
    var = (spec.counts_per_quantum**2 * spec.quanta_per_pixel * np.mean(g**2) + _camera_var(spec)) / good.sum()
    return np.sqrt(var) / s


def test_recording_follows_drift_and_timestamps():
    spec = SimulationSpec(height=64, width=64, frames=48, seed=2)
    rec = stability_recording(spec, hours=2.0, light_drift_pct_per_h=-1.0, frame_times=True)
    rate = 48 / (2.0 * 3600)
    assert rec.attrs["frame_rate_hz"] == pytest.approx(rate) and rec.spec.frame_rate_hz == pytest.approx(rate)
    ts = rec.truth_maps["frame_times_s"]
    assert np.array_equal(ts, rec.timestamps_s)
    assert np.allclose(ts, np.arange(48) / rate) and np.allclose(rec.truth_maps["time_h"], ts / 3600)
    f = rec.truth_maps["light_factor"]
    assert np.allclose(f, 1 - 0.01 * ts / 3600, atol=1e-7) and np.array_equal(rec.truth_maps["flicker"], np.ones(48))
    m, good = _recording_means(rec)
    z = (m - f) / _frame_sigma(rec, good)
    assert np.max(np.abs(z)) < 4.5 and 0.4 < np.mean(z**2) < 1.8
    slope = np.polyfit(rec.truth_maps["time_h"], m, 1)[0]
    assert slope == pytest.approx(-0.01, abs=6 * _frame_sigma(rec, good) / np.sqrt(48) / rec.truth_maps["time_h"].std())
    # truth frames carry the factor; no timestamps unless asked
    truth = np.concatenate([t for _, _, t in rec.iter_chunks()])
    assert np.allclose(truth.mean((1, 2)) / truth[0].mean(), f / f[0], rtol=1e-5)
    assert stability_recording(spec, hours=2.0).timestamps_s is None


def test_recording_flicker_and_exp_model():
    spec = SimulationSpec(height=64, width=64, frames=40, seed=4)
    rec = stability_recording(spec, hours=1.0, light_drift_pct_per_h=-2.0, light_model="exp", exp_tau_h=0.25,
                              flicker_pct=0.5)
    t = rec.truth_maps
    assert np.allclose(t["light_drift"], light_factor(t["time_h"], light_drift_pct_per_h=-2.0, light_model="exp",
                                                      exp_tau_h=0.25, match_h=1.0))
    assert np.allclose(t["light_factor"], t["light_drift"] * t["flicker"], rtol=1e-6)
    assert 0.003 < np.std(t["flicker"]) < 0.007
    m, good = _recording_means(rec)
    z = (m - t["light_factor"]) / _frame_sigma(rec, good)
    assert np.max(np.abs(z)) < 4.5
    again = stability_recording(spec, hours=1.0, light_drift_pct_per_h=-2.0, light_model="exp", exp_tau_h=0.25,
                                flicker_pct=0.5)
    assert np.array_equal(again.truth_maps["flicker"], t["flicker"])


def test_recording_writes_like_simulate(tmp_path):
    """The recording goes through the writer as pipeline.recordings.simulate writes build()'s output."""
    import zarr

    from pipeline.io import zarr_store

    rec = stability_recording(SimulationSpec(height=32, width=32, frames=8, seed=1), hours=0.5, frame_times=True)
    w = zarr_store.OutputWriter(tmp_path / "r.zarr")
    frames = w.frames_target(w.create("frames", (8, 32, 32), np.uint16, chunks=(8, 32, 32)))
    w.write("darks", rec.darks, chunks=(8, 32, 32))
    w.write("flats", rec.flats, chunks=(8, 32, 32))
    for name, arr in rec.truth_maps.items():
        w.write(f"truth/{name}", arr)
    w.write("timestamps_s", rec.timestamps_s)
    for start, block, _ in rec.iter_chunks():
        frames[start : start + block.shape[0]] = block
    w.set_attrs(rec.attrs)
    w.set_attrs(rec.truth_attrs, "truth")
    g = zarr.open_group(str(w.commit()), mode="r")
    assert g.attrs["frame_rate_hz"] == pytest.approx(8 / 1800)
    assert np.array_equal(g["timestamps_s"][:], rec.timestamps_s)
    assert np.array_equal(g["truth/light_factor"][:], rec.truth_maps["light_factor"])
    assert g["truth"].attrs["stability"]["hours"] == 0.5
