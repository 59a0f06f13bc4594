"""The simulator checked against its own physics (independent closed forms and numerics)."""

import numpy as np
import pytest
import zarr

import pipeline
from pipeline.ops.afterglow import add_lag


def _open(p):
    return zarr.open_group(str(p), mode="r")


@pytest.mark.parametrize("preset,mtf20", [("eu-gc", 15.0), ("gc", 4.1), ("nc-film", 1.5)])
def test_preset_analytic_mtf20(tmp_path, preset, mtf20):
    g = _open(pipeline.simulate(tmp_path / "s.zarr", preset=preset, frames=1, size=(64, 64), truth_frames=False))
    f = g["truth/mtf_frequencies_cy_per_px"][:] / g.attrs["pixel_pitch_mm"]
    m = g["truth/mtf_lsf"][:]
    i = int(np.argmax(m < 0.2))  # first sample below 0.2; the curve is monotone
    crossing = f[i - 1] + (0.2 - m[i - 1]) * (f[i] - f[i - 1]) / (m[i] - m[i - 1])
    assert crossing == pytest.approx(mtf20, rel=2e-3)
    assert np.all(np.diff(m) <= 0)


@pytest.mark.parametrize("preset", ["eu-gc", "gc"])
def test_rendered_edge_mtf_matches_analytic(tmp_path, preset):
    """Project the noise-free edge onto its normal, bin at 1/4 px, differentiate, FFT: equals truth/mtf_edge."""
    g = _open(pipeline.simulate(tmp_path / "e.zarr", preset=preset, frames=1, size=(512, 512)))
    ta = dict(g["truth"].attrs)
    img = g["truth/frames"][0].astype(np.float64)
    e = ta["edge"]
    y0, y1, x0, x1 = e["region_yx"]
    yc, xc = e["center_yx"]
    nx, ny = e["normal_xy"]
    m = int(max(8, 5 * ta["preset"]["tail_length_mm"] / g.attrs["pixel_pitch_mm"]))
    yy, xx = np.mgrid[y0 + m : y1 - m, x0 + m : x1 - m]
    d = ((xx - xc) * nx + (yy - yc) * ny).ravel()
    v = img[y0 + m : y1 - m, x0 + m : x1 - m].ravel()
    step = 0.25
    b = np.floor((d - d.min()) / step).astype(int)
    counts = np.bincount(b)
    assert counts[1:-1].min() > 0
    esf = (np.bincount(b, v) / counts)[1:-1]
    lsf = (esf[2:] - esf[:-2]) / (2 * step)
    f = np.fft.rfftfreq(lsf.size, step)
    mtf = np.abs(np.fft.rfft(lsf))
    mtf = mtf / mtf[0] / (np.sinc(f * step) * np.sinc(2 * f * step))  # bin average and central difference
    ref = np.interp(f, g["truth/mtf_frequencies_cy_per_px"][:], g["truth/mtf_edge"][:])
    sel = f <= 1.0
    assert np.max(np.abs(mtf - ref)[sel]) < 0.01
    strong = sel & (ref > 0.1)
    assert np.max(np.abs(mtf / ref - 1)[strong]) < 0.01


@pytest.mark.parametrize("dose", [100.0, 1000.0, 5000.0])
def test_flat_variance_follows_gain_model(tmp_path, dose):
    """Photon transfer: var = (P g)^2 q sum(h^2) sum(c^2) + read^2 + dark current + 1/12, within 5 %."""
    g = _open(pipeline.simulate(tmp_path / "f.zarr", frames=1, size=(96, 96), n_flats=64, quanta_per_pixel=dose,
                                truth_frames=False, seed=11))
    flats = g["flats"][:].astype(np.float64)
    ta = dict(g["truth"].attrs)
    p = g["truth/gain"][:].astype(np.float64)
    good = g["truth/bad_pixels"][:] == 0
    gq = ta["spec"]["counts_per_quantum"]
    a = np.array(ta["afterglow"]["amplitudes"])
    r = np.array(ta["afterglow"]["ratios_per_frame"])
    temporal = 1 + np.sum(np.outer(a * r, a * r) / (1 - np.outer(r, r)))
    dc = g["truth/dark_current"][:]
    pred_var = (p * gq) ** 2 * dose * ta["noise_power_factor"] * temporal + g["truth/read_noise"][:] ** 2 + dc + 1 / 12
    pred_mean = p * gq * ta["afterglow"]["dc_gain"] * dose + g["truth/dark_offset"][:] + dc
    var = flats.var(axis=0, ddof=1)
    assert var[good].mean() / pred_var[good].mean() == pytest.approx(1.0, abs=0.05)
    assert flats.mean(axis=0)[good].mean() / pred_mean[good].mean() == pytest.approx(1.0, abs=0.005)
    # the quantum part alone (read and dark noise removed) scales with the squared gain per pixel
    dim, bright = p < np.percentile(p[good], 25), p > np.percentile(p[good], 75)
    quantum = var - (g["truth/read_noise"][:] ** 2 + dc + 1 / 12)
    ratio = quantum[good & bright].mean() / quantum[good & dim].mean()
    assert ratio == pytest.approx((p[good & bright] ** 2).mean() / (p[good & dim] ** 2).mean(), rel=0.05)


def test_bad_pixel_detection_recall_precision(tmp_path):
    path = pipeline.simulate(tmp_path / "b.zarr", frames=1, size=(256, 256), bad_fraction=0.002, truth_frames=False)
    cal = pipeline.calibrate(path)
    truth = _open(path)["truth/bad_pixels"][:] != 0
    found = np.asarray(cal.bad_pixels) != 0
    tp = np.count_nonzero(truth & found)
    assert tp / truth.sum() >= 0.95
    assert tp / found.sum() >= 0.95


def test_lag_recursion_equals_convolution():
    rng = np.random.default_rng(0)
    x = rng.random((40, 3, 2)).astype(np.float32)
    a, r = [0.05, 0.01], [0.6, 0.95]
    y, _ = add_lag(x, a, r)
    c = np.array([sum(an * rn**j for an, rn in zip(a, r)) for j in range(1, 40)])
    ref = x.astype(np.float64).copy()
    for k in range(40):
        for j in range(1, k + 1):
            ref[k] += c[j - 1] * x[k - j]
    np.testing.assert_allclose(y, ref, rtol=1e-5)


def test_seed_reproducible_and_static_scene_steady(tmp_path):
    a = _open(pipeline.simulate(tmp_path / "a.zarr", frames=20, size=(64, 64), seed=5, speed_px_per_frame=0.0))
    b = _open(pipeline.simulate(tmp_path / "b.zarr", frames=20, size=(64, 64), seed=5, speed_px_per_frame=0.0))
    c = _open(pipeline.simulate(tmp_path / "c.zarr", frames=20, size=(64, 64), seed=6, speed_px_per_frame=0.0))
    np.testing.assert_array_equal(a["frames"][:], b["frames"][:])
    assert not np.array_equal(a["frames"][:], c["frames"][:])
    t = a["truth/frames"][:]
    np.testing.assert_allclose(t, np.broadcast_to(t[0], t.shape), rtol=1e-5)  # steady-state afterglow start


def test_stored_chunks_follow_the_frame_size_and_leave_the_frames_alone(tmp_path, monkeypatch):
    """simulate stores chunks sized from the frame (RECORDING_CHUNK_BYTES) unless chunk_frames is given; the
    simulation's own 16-frame blocks, and so a seed's frames, do not change with them."""
    import zarr

    from pipeline import api, recordings

    ref = zarr.open_group(str(api.simulate(tmp_path / "ref.zarr", frames=20, size=(32, 48), seed=4)), mode="r")
    assert ref["frames"].chunks == (16, 32, 48)
    monkeypatch.setattr(recordings, "RECORDING_CHUNK_BYTES", 4 * 32 * 48 * 2)  # four uint16 frames, two float32 ones
    g = zarr.open_group(str(api.simulate(tmp_path / "small.zarr", frames=20, size=(32, 48), seed=4)), mode="r")
    assert g["frames"].chunks == (4, 32, 48) and g["truth/frames"].chunks == (2, 32, 48)
    assert g["darks"].chunks[0] == 4 and g["flats"].chunks[0] == 4
    for name in ("frames", "truth/frames", "darks", "flats"):
        np.testing.assert_array_equal(np.asarray(g[name]), np.asarray(ref[name]))
    given = zarr.open_group(str(api.simulate(tmp_path / "given.zarr", frames=20, size=(32, 48), seed=4,
                                             chunk_frames=5)), mode="r")
    assert given["frames"].chunks == (5, 32, 48) and given["truth/frames"].chunks == (5, 32, 48)
    for name in ("frames", "truth/frames"):  # chunk_frames sets the chunks only, not the random streams
        np.testing.assert_array_equal(np.asarray(given[name]), np.asarray(ref[name]))
    with pytest.raises(pipeline.errors.DataError, match="chunk_frames must be a positive integer"):
        api.simulate(tmp_path / "bad.zarr", frames=4, size=(32, 48), chunk_frames=0)


def test_simulate_writes_whole_chunks_itself(tmp_path, monkeypatch):
    """Every block simulate stores goes through the pipelines' own chunk writer (truth frames included), the
    array's last, partial chunk aside."""
    from pipeline import api, recordings
    from pipeline.io import zarr_store

    taken = []
    real = zarr_store.ChunkEncoder.write

    def write(self, start, stop, block):
        taken.append((self.dtype, start, stop, real(self, start, stop, block)))
        return taken[-1][-1]

    monkeypatch.setattr(zarr_store.ChunkEncoder, "write", write)
    monkeypatch.setattr(recordings, "RECORDING_CHUNK_BYTES", 4 * 32 * 48 * 2)
    api.simulate(tmp_path / "s.zarr", frames=22, size=(32, 48), seed=4)
    assert taken and all(ok for *_, ok in taken)
    for dt, chunk in ((np.uint16, 4), (np.float32, 2)):  # all but the last, partial chunk of each array
        assert sum(b - a for d, a, b, _ in taken if d == dt) == 22 // chunk * chunk
