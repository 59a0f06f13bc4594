"""Flat-field ops against closed forms and brute-force references."""

import numpy as np
import pytest

from pipeline.ops.flatfield import (
    DEAD, HOT, NOISY, OVER, UNDER, compute_calibration, correct_frames, detect_bad_pixels, neighbour_table,
    replace_bad_pixels,
)


@pytest.fixture
def raw():
    rng = np.random.default_rng(1)
    h, w = 40, 50
    dark = rng.uniform(80, 120, (h, w))
    gain = rng.uniform(0.5, 1.5, (h, w))
    flats = (dark + 4000 * gain + rng.normal(0, 20, (6, h, w))).astype(np.uint16)
    darks = (dark + rng.normal(0, 3, (6, h, w))).astype(np.uint16)
    frames = rng.integers(90, 6000, (7, h, w)).astype(np.uint16)
    return frames, darks, flats


def test_counts_transmission_attenuation_match_closed_form(raw):
    frames, darks, flats = raw
    d = darks.astype(np.float64).mean(0)
    f = flats.astype(np.float64).mean(0)
    cal = compute_calibration(d.astype(np.float32), f.astype(np.float32), detect=False, exposure_ratio=2.0)
    ref_counts = (frames - d) * (f - d).mean() / (f - d)
    ref_trans = (frames - d) / (2.0 * (f - d))
    got = correct_frames(frames, cal, output="counts", replace=False, saturation_level=None)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref_counts, rtol=2e-6, atol=1e-3)
    got = correct_frames(frames, cal, output="transmission", replace=False, saturation_level=None)
    np.testing.assert_allclose(got, ref_trans, rtol=2e-6, atol=1e-7)
    got = correct_frames(frames, cal, output="attenuation", replace=False, saturation_level=None)
    np.testing.assert_allclose(got, -np.log(np.maximum(ref_trans, 1e-6)), rtol=1e-5, atol=2e-6)


def test_no_division_by_zero_and_dead_pixels_flagged(raw):
    frames, darks, flats = raw
    d = darks.astype(np.float32).mean(0)
    f = flats.astype(np.float32).mean(0)
    f[3, 4] = d[3, 4]  # zero flat signal
    f[10, 11] = d[10, 11] - 5  # negative flat signal
    f[0:2, 0:2] = 0  # a dead corner cluster
    cal = compute_calibration(d, f, detect=False)
    assert cal.bad_pixels[3, 4] & DEAD and cal.bad_pixels[10, 11] & DEAD and np.all(cal.bad_pixels[0:2, 0:2] & DEAD)
    assert np.all(cal.gain > 0)
    with np.errstate(all="raise"):
        out = correct_frames(frames, cal, saturation_level=None)
    assert np.all(np.isfinite(out))


def _brute_median(img, bad, y, x):
    for r in range(1, 5):
        ys, xs = slice(max(y - r, 0), y + r + 1), slice(max(x - r, 0), x + r + 1)
        vals = img[ys, xs][~bad[ys, xs]]
        if vals.size:
            return np.median(vals)
    return np.nan


def test_bad_pixel_replacement_is_median_of_good_neighbours():
    rng = np.random.default_rng(7)
    img = rng.normal(100, 10, (3, 30, 30)).astype(np.float32)
    bad = rng.random((30, 30)) < 0.08
    bad[10:14, 10:14] = True  # a cluster whose centre needs a wider ring
    bad[0, 0] = bad[29, 29] = True  # corners
    out = replace_bad_pixels(img, *neighbour_table(bad))
    for t in range(3):
        for y, x in zip(*np.nonzero(bad)):
            assert out[t, y, x] == pytest.approx(_brute_median(img[t], bad, y, x), rel=1e-6)
        np.testing.assert_array_equal(out[t][~bad], img[t][~bad])


def test_detect_each_class():
    rng = np.random.default_rng(2)
    h, w = 64, 64
    yy, xx = np.mgrid[0:h, 0:w]
    shading = 1 - 0.3 * ((yy - 32) ** 2 + (xx - 32) ** 2) / 32**2  # smooth: must not be flagged
    sig = (5000 * shading * (1 + 0.02 * rng.standard_normal((h, w)))).astype(np.float32)
    dark = (100 + 2 * rng.standard_normal((h, w))).astype(np.float32)
    noise = (3 + 0.1 * rng.standard_normal((h, w))).astype(np.float32)
    sig[5, 5] = 0
    sig[20, 30] *= 0.4
    sig[40, 10] *= 2.0
    dark[50, 50] += 500
    noise[12, 60] = 40
    bad = detect_bad_pixels(dark, sig, dark_noise=noise)
    assert bad[5, 5] & DEAD and bad[20, 30] & UNDER and bad[40, 10] & OVER
    assert bad[50, 50] & HOT and bad[12, 60] & NOISY
    assert np.count_nonzero(bad) == 5


def test_saturated_pixels_become_nan(raw):
    frames, darks, flats = raw
    frames = frames.copy()
    frames[2, 5, 6] = 65535
    cal = compute_calibration(darks.mean(0).astype(np.float32), flats.mean(0).astype(np.float32), detect=False)
    out = correct_frames(frames, cal, saturation_level=65535)
    assert np.isnan(out[2, 5, 6]) and np.isfinite(np.delete(out.ravel(), 2 * 40 * 50 + 5 * 50 + 6)).all()
