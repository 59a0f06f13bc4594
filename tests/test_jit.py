"""The Numba CPU kernels against the NumPy array code they replace (bit for bit)."""

import subprocess
import warnings
import sys

import numpy as np
import pytest

from pipeline import jit
from pipeline.ops.flatfield import flat_field

pytestmark = pytest.mark.skipif(not jit.available(), reason="numba is not installed")


def _numpy_reference(frames, dark, gain):
    inv = (np.float32(1) / gain).astype(np.float32)
    out = frames.astype(np.float32)
    out -= dark
    out *= inv
    return out


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8, np.float32])
def test_fused_flat_field_equals_numpy(dtype):
    rng = np.random.default_rng(3)
    frames = (rng.random((5, 33, 47)) * 250).astype(dtype)
    if dtype == np.float32:
        frames[0, 1, 2] = np.nan
        frames[1, 2, 3] = np.inf
    dark = (rng.random((33, 47)) * 20).astype(np.float32)
    gain = (0.5 + rng.random((33, 47))).astype(np.float32)
    out = np.empty(frames.shape, np.float32)
    assert jit.flat_field_into(frames, dark, (np.float32(1) / gain).astype(np.float32), out)
    ref = _numpy_reference(frames, dark, gain)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(flat_field(frames, dark, gain), ref)


def test_kernel_declines_what_it_cannot_take():
    f = np.zeros((2, 4, 6), np.uint16)
    d = np.zeros((4, 6), np.float32)
    o = np.empty((2, 4, 6), np.float32)
    assert not jit.flat_field_into(f[:, :, ::2], d[:, ::2], d[:, ::2], o[:, :, ::2])  # strided
    assert not jit.flat_field_into(f.astype(np.float64), d, d, o)  # float64 input: the NumPy path
    assert not jit.flat_field_into(f, d.astype(np.float64), d, o)
    # the op still answers, through the NumPy code, for the strided case
    g = np.ones((4, 3), np.float32)
    np.testing.assert_array_equal(flat_field(f[:, :, ::2], d[:, ::2], g), np.zeros((2, 4, 3), np.float32))


def test_no_jit_switch_falls_back():
    code = "from pipeline import jit; print(jit.available())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"XRAY_PIPELINE_NO_JIT": "1", "PATH": ""}, check=True)
    assert out.stdout.strip() == "False"


def test_bad_pixel_kernel_equals_numpy_nanmedian():
    from pipeline.ops.flatfield import neighbour_table, replace_bad_pixels

    rng = np.random.default_rng(4)
    bad = rng.random((40, 50)) < 0.08
    bad[0:6, 0:6] = True  # a cluster: neighbours found only at a larger radius
    bad[-3:, -3:] = True
    frames = rng.normal(100, 10, (6, 40, 50)).astype(np.float32)
    frames[2, 10, 10] = np.nan  # a NaN good neighbour is ignored by both
    frames[3, ~bad] = np.where(rng.random((~bad).sum()) < 0.3, np.nan, frames[3, ~bad])
    targets, neighbours = neighbour_table(bad)
    fast = replace_bad_pixels(frames.copy(), targets, neighbours)
    with jit.disabled():
        ref = replace_bad_pixels(frames.copy(), targets, neighbours)
    assert np.isnan(ref).any()  # some bad pixel in frame 3 has no finite neighbour left
    np.testing.assert_array_equal(fast, ref)


@pytest.mark.parametrize("smooth,hold", [(3, 0.5), (1, 0.0), (4, 0.3)])
def test_temporal_kernel_matches_numpy(smooth, hold):
    from pipeline.ops.denoise import NoiseModel, temporal_filter

    rng = np.random.default_rng(5)
    t, h, w = 12, 48, 40
    scene = np.full((t, h, w), 500.0)
    for k in range(t):  # a bright square moving 3 px per frame over a static background
        scene[k, 10:22, 3 * k : 3 * k + 12] = 900.0
    frames = rng.poisson(scene).astype(np.float32)
    frames[5, 7, 7] = np.nan
    nm = NoiseModel(1.0, 4.0, 0.5)
    kw = dict(noise=nm, gain_min=0.1, threshold=(1.5, 3.0), smooth=smooth, hold=hold)
    fast, fs = temporal_filter(frames.copy(), None, **kw)
    with jit.disabled():
        ref, rs = temporal_filter(frames.copy(), None, **kw)
    # identical float32 operations except the box mean (float64 sum here, scipy's running window there)
    np.testing.assert_allclose(fast, ref, rtol=2e-6, atol=1e-3)
    np.testing.assert_allclose(fs, rs, rtol=2e-6, atol=1e-4)
    assert np.isnan(fast[5, 7, 7]) == np.isnan(ref[5, 7, 7])
    # chained through the state, block by block: the same as the whole
    a, st = temporal_filter(frames[:5].copy(), None, **kw)
    b, _ = temporal_filter(frames[5:].copy(), st, **kw)
    np.testing.assert_array_equal(np.concatenate([a, b]), fast)


@pytest.mark.parametrize("shape,patch,search", [((37, 53), 5, 3), ((20, 16), 3, 2), ((9, 64), 4, 1)])
def test_nl_means_kernel_matches_the_array_code(shape, patch, search):
    from pipeline.ops.denoise import nl_means

    rng = np.random.default_rng(6)
    img = (rng.normal(0, 1, shape) + np.linspace(0, 6, shape[1])[None]).astype(np.float32)
    kw = dict(patch_size=patch, patch_distance=search, sigma=1.0)
    fast = nl_means(img, 0.8, **kw)
    with jit.disabled():
        ref = nl_means(img, 0.8, **kw)
    assert fast.dtype == ref.dtype == np.float32
    np.testing.assert_allclose(fast, ref, rtol=1e-6, atol=1e-6)
    assert np.abs(fast - img).mean() > 0.1  # it did denoise


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_fused_correction_equals_the_separate_numpy_steps(dtype):
    from pipeline.ops.flatfield import flat_field_and_bad_pixels, inverse_gain, neighbour_table

    rng = np.random.default_rng(8)
    h, w = 70, 45
    bad = rng.random((h, w)) < 0.05
    bad[30:34, 0:5] = True  # a cluster at the edge, across band boundaries
    bad[0, :] = True  # a whole row: neighbours only in the next rows
    frames = rng.integers(0, 4096, (4, h, w)).astype(dtype)
    frames[1, 5, 5] = 4095
    if dtype == np.float32:
        frames[2, 31, 5] = np.nan  # a NaN good neighbour is ignored
    dark = (rng.random((h, w)) * 50).astype(np.float32)
    inv = inverse_gain((0.5 + rng.random((h, w))).astype(np.float32))
    table = neighbour_table(bad)
    fast, n = flat_field_and_bad_pixels(frames, dark, inv, table, saturation=4095)
    with jit.disabled():
        ref, n_ref = flat_field_and_bad_pixels(frames, dark, inv, table, saturation=4095)
    np.testing.assert_array_equal(fast, ref)
    assert n == n_ref == int((frames >= 4095).sum()) >= 1


@pytest.mark.parametrize("per_pixel", [False, True])
def test_remove_lag_kernel_is_bit_identical(per_pixel):
    from pipeline.ops.afterglow import ratios_from_tau, remove_lag

    rng = np.random.default_rng(9)
    frames = rng.normal(1000, 30, (9, 37, 29)).astype(np.float32)
    r = ratios_from_tau([0.01, 0.05, 0.4], 50.0)
    amps = np.array([0.02, 0.01, 0.004])
    if per_pixel:
        amps = (amps[:, None, None] * (1 + 0.2 * rng.random((3, 37, 29)))).astype(np.float32)
    s0 = (rng.random((3, 37, 29)) * 5).astype(np.float32)
    fast, fs = remove_lag(frames, amps, r, s0.copy())
    with jit.disabled():
        ref, rs = remove_lag(frames, amps, r, s0.copy())
    np.testing.assert_array_equal(fast, ref)
    np.testing.assert_array_equal(fs, rs)
    a, st = remove_lag(frames[:4], amps, r, s0.copy())  # blocks chain through the state
    b, _ = remove_lag(frames[4:], amps, r, st)
    np.testing.assert_array_equal(np.concatenate([a, b]), ref)


def test_no_saturation_level_counts_nothing_even_for_inf():
    from pipeline.ops.flatfield import flat_field_and_bad_pixels

    frames = np.array([[[1.0, np.inf], [np.nan, 4.0]]], np.float32)
    one = np.ones((2, 2), np.float32)
    _, n = flat_field_and_bad_pixels(frames, 0 * one, one, None, saturation=None)
    assert n == 0
    _, n = flat_field_and_bad_pixels(frames, 0 * one, one, None, saturation=4.0)
    assert n == 2  # 4.0 and +Inf, as NumPy's frames >= 4.0


def test_edge_cases_found_in_review():
    from pipeline.ops.denoise import NoiseModel, estimate_noise_model, nl_means, temporal_filter
    from pipeline.ops.flatfield import flat_field_and_bad_pixels, inverse_gain, neighbour_table

    rng = np.random.default_rng(11)
    # a search window wider than the image (the shifted row must stay inside its buffer)
    img = rng.normal(0, 1, (6, 2)).astype(np.float32)
    fast = nl_means(img, 0.8, patch_size=3, patch_distance=3, sigma=1.0)
    with jit.disabled():
        np.testing.assert_allclose(fast, nl_means(img, 0.8, patch_size=3, patch_distance=3, sigma=1.0), atol=1e-6)
    # out is the input itself (float32 frames): still the NumPy result
    f = rng.normal(500, 20, (3, 40, 300)).astype(np.float32)
    bad = np.zeros((40, 300), bool)
    bad[::4, ::7] = True
    table = neighbour_table(bad)
    dark, inv = np.full((40, 300), 10, np.float32), inverse_gain(np.full((40, 300), 0.9, np.float32))
    with jit.disabled():
        ref, _ = flat_field_and_bad_pixels(f.copy(), dark, inv, table)
    g = f.copy()
    got, _ = flat_field_and_bad_pixels(g, dark, inv, table, out=g)
    np.testing.assert_array_equal(got, ref)
    # smooth 0 means no smoothing, as in the NumPy code
    nm = NoiseModel(1.0, 4.0, 0.5)
    a, _ = temporal_filter(f.copy(), None, noise=nm, smooth=0)
    with jit.disabled():
        b, _ = temporal_filter(f.copy(), None, noise=nm, smooth=0)
    np.testing.assert_allclose(a, b, rtol=2e-6)
    # float16 frames: the NumPy path
    from pipeline.ops.flatfield import flat_field

    h = (rng.random((2, 4, 5)) * 100).astype(np.float16)
    np.testing.assert_array_equal(flat_field(h, np.zeros((4, 5), np.float32), np.ones((4, 5), np.float32)),
                                  h.astype(np.float32))
    # a small video still gets a signal-dependent noise model
    lam = np.linspace(50, 400, 32 * 32).reshape(32, 32)
    vid = (rng.poisson(lam, (8, 32, 32)) + rng.normal(0, 3, (8, 32, 32))).astype(np.float32)
    assert 0.7 < estimate_noise_model(vid).alpha < 1.3


@pytest.mark.parametrize("scale, offset", [(1.0, 100.0), (50000.0, 500.0), (10000.0, 1000.0), (0.37, -2.5)])
def test_uint16_code_kernel_is_bit_identical(scale, offset):
    """One pass (Numba) against the NumPy encode: halves, NaN, +-Inf, the clip ends, every scale of the defaults."""
    from pipeline.jit import code_u16_into
    from pipeline.io.packing import at_limit, encode

    rng = np.random.default_rng(6)
    v = rng.uniform(-200, 70000, (3, 37, 41)).astype(np.float32) / np.float32(scale)
    v.flat[::7] = ((np.arange(v.size)[::7] % 2000) + 0.5 - offset) / scale  # codes on exact halves (ties)
    v.flat[3::11] = np.nan
    v.flat[5::13] = np.inf
    v.flat[6::13] = -np.inf
    with jit.disabled():
        want = encode(v, "uint16", scale=scale, offset=offset)
    got = np.zeros(v.shape, np.uint16)
    n = code_u16_into(v, scale, offset, got)
    np.testing.assert_array_equal(got, want)
    assert n == at_limit(want) > 0
    np.testing.assert_array_equal(encode(v, "uint16", scale=scale, offset=offset), want)  # encode uses it
    out = np.zeros(v.shape, np.uint16)
    assert encode(v, "uint16", scale=scale, offset=offset, out=out) is out and np.array_equal(out, want)


@pytest.mark.parametrize("shape,size", [((64, 80), 9), ((37, 53), 3), ((40, 40), 5), ((7, 5), 9), ((1, 1), 3),
                                        ((3, 120), 7)])
def test_sliding_median_equals_scipy(shape, size):
    # small integer values: many ties, so a window kept in the wrong order or a column dropped twice shows up;
    # images smaller than the window: the reflect edges fold more than once
    from scipy import ndimage

    rng = np.random.default_rng(size)
    img = rng.integers(0, 12, shape).astype(np.float32) + rng.choice([0, 0.5], shape).astype(np.float32)
    out = np.full(shape, np.nan, np.float32)
    assert jit.median_filter_into(img, out, size=size)
    np.testing.assert_array_equal(out, ndimage.median_filter(img, size=size, mode="reflect"))


def test_sliding_median_declines_what_it_cannot_take():
    img = np.ones((8, 8), np.float32)
    out = np.empty_like(img)
    assert not jit.median_filter_into(img, out, size=4)  # even: scipy's off-centre window
    assert not jit.median_filter_into(img.astype(np.float64), out.astype(np.float64), size=3)
    img[2, 3] = np.nan
    assert not jit.median_filter_into(img, out, size=3)  # NaN: scipy's own selection


def _nanmedian_cases(rng):
    for n in (1, 2, 3, 4, 5, 10, 101, 4097, 70_000):
        normal = rng.normal(0, 100, n).astype(np.float32)
        ties = rng.integers(-5, 5, n).astype(np.float32)  # many equal values, both signs, zeros
        nans = normal.copy()
        nans[rng.random(n) < 0.3] = np.nan
        infs = normal.copy()
        infs[rng.random(n) < 0.2] = np.inf
        infs[rng.random(n) < 0.2] = -np.inf
        tiny = np.abs(normal) * np.float32(1e-40)  # subnormals
        spread = (rng.normal(0, 1, n) * 2.0 ** rng.integers(-60, 60, n)).astype(np.float32)  # all exponents
        yield from (normal, ties, nans, infs, tiny, spread, np.full(n, np.nan, np.float32))
    yield rng.normal(1000, 30, (3, 64, 80)).astype(np.float32)  # frames, as the noise level takes them


def test_nanmedian_selection_equals_numpy():
    """The linear-time selection gives np.nanmedian's value (one middle value, or the float32 mean of two)."""
    rng = np.random.default_rng(12)
    for a in _nanmedian_cases(rng):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
            want = float(np.nanmedian(a))
        got = jit.nanmedian_f32(a)
        assert (np.isnan(want) and np.isnan(got)) or got == want, (a.size, want, got)
    assert jit.nanmedian_f32(np.array([-0.0, 0.0, -0.0], np.float32)) == 0.0
    assert jit.nanmedian_f32(np.arange(4.0)) is None  # float64: NumPy's own
    assert jit.nanmedian_f32(np.zeros((4, 4), np.float32)[:, ::2]) is None  # not contiguous
    with jit.disabled():
        assert jit.nanmedian_f32(np.zeros(4, np.float32)) is None


def test_radix_argsort_is_numpys_stable_argsort():
    """The same permutation as np.argsort(kind="stable"): ties in index order, -0.0 equal to +0.0, NaN last."""
    rng = np.random.default_rng(13)
    for n in (0, 1, 2, 3, 17, 1000, 65537, 200_000):
        normal = rng.normal(0, 100, n).astype(np.float32)
        ties = rng.integers(-3, 3, n).astype(np.float32)
        ties[rng.random(n) < 0.3] *= np.float32(-0.0)  # signed zeros among the ties
        nans = normal.copy()
        nans[rng.random(n) < 0.2] = np.nan
        nans[rng.random(n) < 0.1] = -np.nan
        infs = normal.copy()
        infs[rng.random(n) < 0.2] = np.inf
        infs[rng.random(n) < 0.2] = -np.inf
        spread = (rng.normal(0, 1, n) * 2.0 ** rng.integers(-140, 100, n)).astype(np.float32)  # subnormals too
        for a in (normal, ties, nans, infs, spread):
            np.testing.assert_array_equal(jit.argsort_f32(a), np.argsort(a, kind="stable"))
    assert jit.argsort_f32(np.zeros((2, 2), np.float32)) is None and jit.argsort_f32(np.zeros(3)) is None
