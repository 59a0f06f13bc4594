"""Every op on CuPy against NumPy on the same inputs (float32 tolerance). Skipped without a working GPU."""

import numpy as np
import pytest

cp = pytest.importorskip("cupy")
from pipeline.backend import gpu_unavailable_reason  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_unavailable_reason() is not None,
                                                  reason=str(gpu_unavailable_reason()))]
RNG = np.random.default_rng(0)


def _close(gpu, cpu, rtol=2e-5, atol=1e-4):
    np.testing.assert_allclose(cp.asnumpy(gpu), cpu, rtol=rtol, atol=atol)


def test_flatfield():
    from pipeline.ops.flatfield import compute_calibration, correct_frames

    raw = RNG.integers(100, 8000, (5, 64, 80)).astype(np.uint16)
    d = RNG.uniform(90, 110, (64, 80)).astype(np.float32)
    f = RNG.uniform(7000, 9000, (64, 80)).astype(np.float32)
    cal = compute_calibration(d, f, detect=False)
    gcal = compute_calibration(cp.asarray(d), cp.asarray(f), detect=False)
    _close(correct_frames(cp.asarray(raw), gcal, replace=False, saturation_level=65535),
           correct_frames(raw, cal, replace=False, saturation_level=65535))


def test_afterglow_ops_and_kernel():
    from pipeline.kernels import remove_lag_gpu
    from pipeline.ops.afterglow import remove_lag

    y = (RNG.random((20, 32, 48)) * 1000).astype(np.float32)
    a, r = np.array([0.02, 0.004]), np.array([0.4, 0.97])
    st = (RNG.random((2, 32, 48)) * 10).astype(np.float32)
    ref, ref_state = remove_lag(y, a, r, st.copy())
    g, gs = remove_lag(cp.asarray(y), a, r, cp.asarray(st))  # the op on CuPy runs cuda/afterglow.cu
    np.testing.assert_array_equal(cp.asnumpy(g), ref)
    np.testing.assert_array_equal(cp.asnumpy(gs), ref_state)
    amap = (RNG.uniform(0.001, 0.03, (2, 32, 48))).astype(np.float32)  # per-pixel amplitudes
    ref_m, _ = remove_lag(y, amap, r, st.copy())
    np.testing.assert_array_equal(cp.asnumpy(remove_lag(cp.asarray(y), cp.asarray(amap), r, cp.asarray(st))[0]), ref_m)
    k, ks = remove_lag_gpu(cp.asarray(y), a.astype(np.float32), r, cp.asarray(st))
    np.testing.assert_array_equal(cp.asnumpy(k), ref)  # same float32 operations in the same order
    np.testing.assert_array_equal(cp.asnumpy(ks), ref_state)


def test_denoisers():
    from pipeline.ops.denoise import NoiseModel, bilateral, denoise_frame, nl_means, temporal_filter, tv_chambolle

    img = (RNG.normal(100, 5, (48, 40))).astype(np.float32)
    _close(tv_chambolle(cp.asarray(img.astype(np.float64)), 1.0), tv_chambolle(img.astype(np.float64), 1.0), atol=1e-6)
    _close(bilateral(cp.asarray(img), 2.0, 2.0), bilateral(img, 2.0, 2.0))
    _close(nl_means(cp.asarray(img), 4.0, patch_size=5, patch_distance=3), nl_means(img, 4.0, patch_size=5,
                                                                                      patch_distance=3))
    for m in ("median", "gaussian"):
        _close(denoise_frame(cp.asarray(img), m, {}), denoise_frame(img, m, {}))
    y = RNG.normal(1000, 30, (10, 24, 24)).astype(np.float32)
    nm = NoiseModel(1.0, 20.0)
    g, _ = temporal_filter(cp.asarray(y), None, noise=nm)
    c, _ = temporal_filter(y, None, noise=nm)
    _close(g, c)


def test_mtf_and_nnps():
    import math

    from pipeline.ops.characterise import nnps
    from pipeline.ops.mtf import slanted_edge_mtf
    from pipeline.simulator import pixel_esf

    t = math.radians(5)
    yy, xx = np.mgrid[0:128, 0:100]
    img = 100 + 900 * pixel_esf((xx - 50.3) * math.cos(t) - (yy - 64) * math.sin(t), math.cos(t), math.sin(t),
                                1.2, 0.1, 3.0)
    stack = np.stack([img, img[::-1]])
    g = slanted_edge_mtf(cp.asarray(stack))
    c = slanted_edge_mtf(stack)
    np.testing.assert_allclose(g.mtf, c.mtf, rtol=1e-6, atol=1e-8)
    flat = np.stack([img, np.full_like(img, 500.0)])  # a ROI without an edge in the batch: its solve is singular
    g, c = slanted_edge_mtf(cp.asarray(flat)), slanted_edge_mtf(flat)
    np.testing.assert_allclose(g.mtf, c.mtf, rtol=1e-6, atol=1e-8, equal_nan=True)
    assert g.flags == c.flags and "edge_fit_poor" in c.flags[1]
    flats = RNG.poisson(1000, (2, 512, 512)).astype(np.float32)
    np.testing.assert_allclose(nnps(cp.asarray(flats), 0.05)["nnps_mm2"], nnps(flats, 0.05)["nnps_mm2"], rtol=1e-5)


def test_denoise_kernels_against_the_array_code_on_the_gpu():
    """cuda/denoise.cu (what the CuPy ops use) against the same ops' array code on the same device."""
    import math

    from pipeline.kernels import nl_means_kernel, temporal_filter_kernel
    from pipeline.ops.denoise import NoiseModel, _nl_means_arrays, _temporal_arrays

    img = cp.asarray(RNG.normal(20, 1, (70, 83)).astype(np.float32))
    for patch, r in ((5, 3), (4, 2), (7, 5)):
        kw = dict(h=0.8, patch_size=patch, patch_distance=r, sigma=1.0)
        _close(nl_means_kernel(img, **kw), cp.asnumpy(_nl_means_arrays(img.astype(cp.float64), **kw)), rtol=1e-5,
               atol=1e-5)
    nm = NoiseModel(1.0, 20.0)
    y = cp.asarray(RNG.normal(1000, 30, (12, 40, 70)).astype(np.float32))
    y[3, 5, 6] = cp.nan
    for smooth, hold in ((3, 0.0), (3, 0.5), (1, 0.0)):
        infl = math.sqrt(1.0 + 0.1 / 1.9) * nm.box_factor ** (3.0 / smooth if smooth > 1 else 0)
        ref, rs = _temporal_arrays(y, None, None, out=cp.empty_like(y), noise=nm, gmin=np.float32(0.1), lo=1.0, hi=3.0,
                                   infl=infl, smooth=smooth, hold=hold)
        blocks, state = [], None
        for part in (y[:5].copy(), y[5:].copy()):  # in place, two blocks chained
            out, state = temporal_filter_kernel(part, state, out=part, alpha=1.0, beta=20.0, infl=infl, gain_min=0.1,
                                                lo=1.0, span=2.0, hold=hold, smooth=smooth)
            blocks.append(cp.asnumpy(out))
        np.testing.assert_allclose(np.concatenate(blocks), cp.asnumpy(ref), rtol=2e-6, atol=1e-3)
        np.testing.assert_allclose(cp.asnumpy(state), cp.asnumpy(rs), rtol=2e-6, atol=1e-3)


def test_guided_kernel_against_the_array_code_and_the_cpu():
    """cuda/denoise.cu's guided filter (what guided_denoise runs on CuPy) against the array code on the same
    device and against the CPU path (Numba), at the default radius, with and without the GAT, 2048 x 2048
    in the frame layout of a block."""
    from pipeline.ops.denoise import NoiseModel, _guided_arrays, gat_forward, gat_inverse, guided_denoise

    yy, xx = np.mgrid[0:200, 0:301]
    clean = 300 + xx + 500 * (xx > 150)
    nm = NoiseModel(1.5, 20.0)
    host = np.stack([clean + RNG.normal(0, np.sqrt(1.5 * clean + 20.0)) for _ in range(3)]).astype(np.float32)
    y = cp.asarray(host)
    for noise in (nm, None):
        got = guided_denoise(y, radius=8, eps=0.4, noise=noise)
        for k in range(3):
            t = y[k] if noise is None else gat_forward(y[k], nm.alpha, nm.beta)
            ref = _guided_arrays(t, 8, 0.4)
            ref = ref if noise is None else gat_inverse(ref, nm.alpha, nm.beta)
            _close(got[k], cp.asnumpy(ref), rtol=1e-5, atol=1e-3)
        _close(got, guided_denoise(host, radius=8, eps=0.4, noise=noise), rtol=1e-5, atol=1e-3)
    big = cp.asarray(RNG.normal(900, 30, (2, 2048, 2048)).astype(np.float32))
    _close(guided_denoise(big, radius=8, eps=0.4, noise=NoiseModel(1.0, 0.0)),
           guided_denoise(cp.asnumpy(big), radius=8, eps=0.4, noise=NoiseModel(1.0, 0.0)), rtol=1e-5, atol=1e-3)


def test_nlm_patch_kernels_equal_the_generic_one_on_the_gpu():
    """nl_means_f32_p3/_p5/_p7 (arrays in registers) against nl_means_f32 (runtime patch): bit for bit."""
    from pipeline.kernels import NLM_SPECIALISED, gpu_launcher, nl_means_kernel

    base = gpu_launcher("denoise")
    img = cp.asarray(RNG.normal(20, 1, (2 * 16 + 5, 77)).astype(np.float32))
    for patch in NLM_SPECIALISED:
        kw = dict(h=0.8, patch_size=patch, patch_distance=2, sigma=1.0)
        got = nl_means_kernel(img, **kw)
        want = nl_means_kernel(img, launch=lambda fn, g, b, a: base("nl_means_f32", g, b, a), **kw)
        np.testing.assert_array_equal(cp.asnumpy(got).view(np.uint32), cp.asnumpy(want).view(np.uint32))


def test_bad_pixel_detection_cupy_equals_numpy():
    """The local medians: cupyx.scipy.ndimage on the GPU, the Numba sliding-window kernel on the CPU."""
    from pipeline.ops.flatfield import detect_bad_pixels

    dark = RNG.normal(100, 2, (96, 130)).astype(np.float32)
    sig = RNG.normal(8000, 80, (96, 130)).astype(np.float32)
    sig[10, 10], sig[50, 60], dark[30, 40] = 0.0, 16000.0, 400.0
    noise = RNG.uniform(1, 2, (96, 130)).astype(np.float32)
    cpu = detect_bad_pixels(dark, sig, dark_noise=noise)
    gpu = detect_bad_pixels(cp.asarray(dark), cp.asarray(sig), dark_noise=cp.asarray(noise))
    np.testing.assert_array_equal(cp.asnumpy(gpu), cpu)
    assert cpu[10, 10] and cpu[50, 60] and cpu[30, 40]


def test_bench_times_the_mtf_on_the_gpu_too():
    """bench --device gpu times the batched MTF on ROIs on the GPU as well as on NumPy arrays."""
    from pipeline.bench import bench_mtf

    res = bench_mtf(repeats=1, n=4, device="gpu", log=lambda *a: None)
    assert {"mtf batched", "mtf batched [gpu]"} <= set(res) and res["mtf batched [gpu]"]["per_s"] > 0
