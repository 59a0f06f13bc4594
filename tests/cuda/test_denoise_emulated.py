"""cuda/denoise.cu's kernels on the CPU (g++ under tests/cuda/emulate.h), driven by pipeline.kernels' own
host code through ctypes, against the NumPy definitions in pipeline.ops.denoise.

The temporal filter uses the reference's float32 operations in the same order (its box mean summed
in float64, as the Numba kernel): it equals the Numba kernel bit for bit and the array code (scipy's
running-sum box filter) to float32 rounding. NLM sums in float32 where the references sum in
float64: agreement to float32 rounding.
"""

import ctypes
import math
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline import jit
from pipeline.kernels import NLM_RUN, NLM_SPECIALISED, nl_means_kernel, temporal_filter_kernel
from pipeline.ops.denoise import NoiseModel, nl_means, temporal_filter


def _signature(name):
    """Parameter C types of an extern "C" kernel of cuda/denoise.cu."""
    src = (Path(__file__).resolve().parents[2] / "cuda" / "denoise.cu").read_text()
    if re.fullmatch(r"nl_means_f32_p\d+", name):  # XRAY_NLM_KERNEL's: nl_means_f32's parameters, by construction
        assert f"XRAY_NLM_KERNEL({name.rsplit('_p', 1)[1]})" in src, name
        name = "nl_means_f32"
    body = re.search(rf"__global__ void {name}\((.*?)\)", src, re.DOTALL).group(1)
    return [" ".join(p.split()).rsplit(" ", 1)[0].replace("const ", "").replace(" *", "*") for p in body.split(",")]


@pytest.fixture(scope="module")
def launch(build_emulated):
    """Launches the emulated kernel with the arguments CuPy would get, checked against the kernel's signature."""
    lib = ctypes.CDLL(str(build_emulated("denoise_lib", shared=True)))

    def run(function, grid, block, args):
        sig = _signature(function)
        assert len(sig) == len(args), (function, sig, args)
        cargs = [ctypes.c_uint(grid), ctypes.c_uint(block)]
        for ctype, a in zip(sig, args):
            if ctype == "float*" and isinstance(a, np.uint64):
                assert a == 0, "a pointer passed as a number must be NULL"
                cargs.append(ctypes.c_void_p(None))
            elif ctype == "float*":
                assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous, (function, a)
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            elif ctype == "int":
                assert type(a) is np.int32, (function, ctype, type(a))
                cargs.append(ctypes.c_int(int(a)))
            elif ctype == "double*":
                assert isinstance(a, np.ndarray) and a.dtype == np.float64 and a.flags.c_contiguous, (function, a)
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            elif ctype == "float":
                assert type(a) is np.float32, (function, ctype, type(a))
                cargs.append(ctypes.c_float(float(a)))
            elif ctype == "double":
                assert type(a) is np.float64, (function, ctype, type(a))
                cargs.append(ctypes.c_double(float(a)))
            else:
                raise AssertionError(f"unexpected parameter type {ctype} in {function}")
        fn = getattr(lib, "launch_" + function)
        fn.restype = None
        fn(*cargs)

    return run


def _moving_scene(rng, t, h, w):
    """A bright bar moving 2 px/frame over a sloped background, Poisson-like noise, a few NaN/Inf pixels."""
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((t, h, w), np.float32)
    for k in range(t):
        clean = 500 + 3 * xx + 2 * yy + 800 * ((xx - 2 * k) % w < 4)
        frames[k] = clean + rng.normal(0, np.sqrt(clean))
    frames[rng.random(frames.shape) < 0.01] = np.nan
    frames[1, 3, 4] = np.inf
    frames[2, 0, 0] = -np.inf
    return frames


def _temporal_args(noise, gain_min, threshold, smooth):
    lo, hi = threshold
    infl = math.sqrt(1.0 + gain_min / (2.0 - gain_min)) * noise.box_factor ** (3.0 / smooth if smooth > 1 else 0)
    return dict(alpha=noise.alpha, beta=noise.beta, infl=infl, gain_min=gain_min, lo=lo, span=max(hi - lo, 1e-6),
                smooth=smooth)


@pytest.mark.parametrize("smooth,hold,in_place", [(3, 0.0, False), (3, 0.7, True), (1, 0.0, True), (4, 0.5, False)])
def test_temporal_kernel_matches_reference(launch, smooth, hold, in_place):
    rng = np.random.default_rng(smooth)
    t, h, w = 11, 9, 37  # 333 pixels: two CUDA blocks of 256, the second partly idle
    frames = _moving_scene(rng, t, h, w)
    noise = NoiseModel(1.0, 25.0)
    kw = dict(noise=noise, gain_min=0.1, threshold=(1.0, 3.0), smooth=smooth, hold=hold)
    with jit.disabled():  # the array code: scipy's box filter, NumPy's float32 operations
        ref_a, st_a = temporal_filter(frames[:5].copy(), None, **kw)
        ref_b, st_b = temporal_filter(frames[5:].copy(), st_a, **kw)
    args = _temporal_args(noise, 0.1, (1.0, 3.0), smooth)
    blocks, state = [], None
    for part in (frames[:5].copy(), frames[5:].copy()):  # two blocks chained through the state
        out = part if in_place else np.full(part.shape, -1.0, np.float32)
        res, state = temporal_filter_kernel(part, state, out=out, hold=hold, launch=launch, **args)
        assert res is out
        blocks.append(res)
    got = np.concatenate(blocks)
    ref = np.concatenate([ref_a, ref_b])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-3, equal_nan=True)
    np.testing.assert_allclose(state, st_b, rtol=2e-6, atol=1e-3)
    assert not np.array_equal(got[-1][np.isfinite(got[-1])], frames[-1][np.isfinite(got[-1])])  # it did filter
    if jit.available():  # the Numba kernel: the same float32 operations, bit for bit
        j_a, s_a = temporal_filter(frames[:5].copy(), None, **kw)
        j_b, s_b = temporal_filter(frames[5:].copy(), s_a, **kw)
        np.testing.assert_array_equal(got, np.concatenate([j_a, j_b]))
        np.testing.assert_array_equal(state, s_b)


def test_temporal_kernel_follows_motion_and_smooths_still_parts(launch):
    """Independent of the references: a moving bar is followed without a fading copy behind it, and still
    noise is reduced (to 0.25 of its variance here: 0.053 if the gain stayed at g = 0.1, more where
    noise alone lifts the smoothed difference over the lower threshold)."""
    rng = np.random.default_rng(7)
    t, h, w = 24, 32, 48
    clean = np.full((t, h, w), 1000.0, np.float32)
    for k in range(t):
        clean[k, :, k:k + 4] += 1500.0  # a bar moving 1 px/frame over columns 0..26; 30.. stay still
    frames = (clean + rng.normal(0, np.sqrt(clean))).astype(np.float32)
    out, _ = temporal_filter_kernel(frames, None, out=np.empty_like(frames), hold=0.0, launch=launch,
                                    **_temporal_args(NoiseModel(1.0, 0.0), 0.1, (1.0, 3.0), 3))
    k = t - 1
    ratio = np.var(out[k][:, 30:]) / np.var(frames[k][:, 30:])
    bar = out[k][:, k:k + 4].mean() - 1000
    trail = out[k][:, k - 4:k].mean() - 1000  # where the bar was during the last four frames
    assert ratio < 0.4, ratio  # noise std at most 0.63 of the input's
    assert abs(bar - 1500) < 0.04 * 1500, bar
    assert abs(trail) < 0.03 * 1500, trail


@pytest.mark.parametrize("shape,patch,r", [((21, 37), 5, 3), ((NLM_RUN + 3, 11), 3, 2), ((7, 9), 4, 5),
                                          ((40, 5), 7, 1), ((1, 13), 3, 2)])
def test_nl_means_kernel_matches_reference(launch, shape, patch, r):
    rng = np.random.default_rng(patch * 10 + r)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    img = (20 + 8 * ((xx + yy) % 7 < 3) + rng.normal(0, 1, shape)).astype(np.float32)  # stripes in unit noise
    kw = dict(h=0.9, patch_size=patch, patch_distance=r, sigma=1.0)
    got = nl_means_kernel(img, launch=launch, **kw)
    from pipeline.ops.denoise import _nl_means_arrays

    ref = _nl_means_arrays(img.astype(np.float64), **kw)  # the definition, float64
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    if jit.available() and min(shape) > 1:
        np.testing.assert_allclose(got, nl_means(img.astype(np.float64), **kw), rtol=1e-5, atol=1e-5)
    assert np.std(got - img) > 0.2  # it removed noise of std 1 (not an identity)


@pytest.mark.parametrize("patch", NLM_SPECIALISED)
@pytest.mark.parametrize("shape", [(2 * NLM_RUN + 5, 19), (NLM_RUN, 8), (3, 30), (1, 6)])
def test_nl_means_patch_kernels_equal_the_generic_one(launch, shape, patch):
    """nl_means_f32_p<N> (arrays in registers) adds the same float32 values in the same order as
    nl_means_f32 (runtime patch): the same output bit for bit, on strips cut short by the frame's end
    and on frames narrower than the patch. The host code launches the specialised one for these sizes."""
    rng = np.random.default_rng(patch)
    img = rng.normal(10, 2, shape).astype(np.float32)
    if shape[0] > NLM_RUN:
        img[0, 0] = np.nan  # NaN distances spread the same way
    kw = dict(h=1.1, patch_size=patch, patch_distance=2, sigma=0.5)
    launched = []

    def generic(function, grid, block, args):
        launched.append(function)
        launch("nl_means_f32", grid, block, args)

    def recorded(function, grid, block, args):
        launched.append(function)
        launch(function, grid, block, args)

    got = nl_means_kernel(img, launch=recorded, **kw)
    want = nl_means_kernel(img, launch=generic, **kw)
    assert launched == [f"nl_means_f32_p{patch}", f"nl_means_f32_p{patch}"]
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.isfinite(got).sum() > 0


def test_nl_means_kernel_refuses_a_patch_it_cannot_hold(launch):
    with pytest.raises(ValueError, match="nlm_patch 17"):
        nl_means_kernel(np.zeros((8, 8), np.float32), h=1.0, patch_size=17, patch_distance=2, sigma=0.0, launch=launch)


def test_nl_means_kernel_spreads_nan_as_the_definition(launch):
    """A NaN pixel makes every patch distance that sums over it NaN: exactly the outputs within
    search radius + patch radius of it are NaN (the pipeline fills NaN before it denoises). scipy's
    running-sum box filter, in the array code, carries a NaN further along its lines."""
    img = np.random.default_rng(3).normal(10, 1, (15, 15)).astype(np.float32)
    img[7, 7] = np.nan
    kw = dict(h=0.9, patch_size=5, patch_distance=2, sigma=1.0)
    got = nl_means_kernel(img, launch=launch, **kw)
    want = np.zeros(img.shape, bool)
    want[7 - 4:7 + 5, 7 - 4:7 + 5] = True  # reach 2 + 2
    np.testing.assert_array_equal(np.isnan(got), want)
    if jit.available():
        np.testing.assert_array_equal(np.isnan(nl_means(img.astype(np.float64), **kw)), want)


def _guided_reference(frames, radius, eps, noise):
    """The definition: scipy's box means of the GAT'd frames in float64 (ops.denoise._guided_arrays)."""
    from pipeline.ops.denoise import _guided_arrays, gat_forward, gat_inverse

    out = np.empty(frames.shape, np.float32)
    for k, f in enumerate(frames):
        if noise is None:
            out[k] = _guided_arrays(f, radius, eps)
        else:
            out[k] = gat_inverse(_guided_arrays(gat_forward(f, noise.alpha, noise.beta), radius, eps),
                                 noise.alpha, noise.beta)
    return out


@pytest.mark.parametrize("shape,radius,noise", [
    ((2, 70, 45), 3, NoiseModel(2.0, 30.0)),   # strips of 32 rows cut short (70 = 2 x 32 + 6), the GAT
    ((1, 40, 64), 8, NoiseModel(1.0, 0.0)),    # the default radius
    ((1, 33, 17), 8, NoiseModel(0.0, 16.0)),   # alpha 0: the GAT is a scaling; a box wider than the frame
    ((3, 5, 40), 6, None),                     # no GAT; a box taller than the frame (reflected more than once)
    ((1, 1, 9), 2, NoiseModel(1.0, 0.0)),      # one row
])
def test_guided_kernel_matches_reference(launch, shape, radius, noise):
    from pipeline.kernels import guided_kernel
    from pipeline.ops.denoise import gat_codes, guided_denoise

    rng = np.random.default_rng(radius)
    t, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    clean = 200 + 2 * xx + yy + 600 * (xx > w // 2)  # an edge on a slope
    var = clean * 0 + 1.0 if noise is None else noise.alpha * clean + noise.beta  # the noise the model describes
    frames = np.stack([clean + rng.normal(0, np.sqrt(var)) for _ in range(t)]).astype(np.float32)
    eps = 0.4
    codes = gat_codes(None if noise is None else noise.alpha, 0.0 if noise is None else noise.beta)
    got = guided_kernel(frames, radius=radius, eps=eps, gat=codes, launch=launch)
    ref = _guided_reference(frames, radius, eps, noise)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-3)
    if jit.available():  # the Numba kernel: the same float64 sums in another order
        np.testing.assert_allclose(got, guided_denoise(frames, radius=radius, eps=eps, noise=noise), rtol=1e-5,
                                   atol=1e-3)
    assert not np.array_equal(got, frames)  # not an identity (how much it smooths: the next test)
    again = frames.copy()
    assert guided_kernel(again, radius=radius, eps=eps, gat=codes, out=again, launch=launch) is again
    np.testing.assert_array_equal(again, got)  # in place: the same result


def test_guided_kernel_keeps_a_ramp_and_smooths_flat_noise(launch):
    """Independent of the references: the guided filter returns a linear ramp unchanged at 2 radius or more
    from the edges (its coefficients are constant there), and with eps far above the noise's variance it is
    a box mean of box means: unit white noise keeps sum(w^2) of its variance, w the 13 x 13 tent of two 7 x 7
    boxes: (231 / 2401)^2 = 0.00926 (plus a^2 ~ 1e-4 of the pixel itself, a = 1 / 101)."""
    from pipeline.kernels import guided_kernel
    from pipeline.ops.denoise import gat_codes

    r = 3
    yy, xx = np.mgrid[0:40, 0:50]
    ramp = (100 + 3.0 * xx - 2.0 * yy).astype(np.float32)[None]
    got = guided_kernel(ramp, radius=r, eps=0.4, gat=gat_codes(None, 0.0), launch=launch)
    inner = (slice(None), slice(2 * r, -2 * r), slice(2 * r, -2 * r))
    np.testing.assert_allclose(got[inner], ramp[inner], atol=2e-4)
    noise = np.random.default_rng(0).normal(0, 1, (1, 256, 256)).astype(np.float32)
    flat = guided_kernel(noise, radius=r, eps=100.0, gat=gat_codes(None, 0.0), launch=launch)
    ratio = np.var(flat) / np.var(noise)
    assert abs(ratio / ((231 / 2401) ** 2 + 1e-4) - 1) < 0.15, ratio
