"""The fused kernel (cuda/correct.cu) and the conveyor on a real GPU against the NumPy chain.

Skipped without a working GPU. The fused kernel and the conveyor without denoisers are bit-identical
to the CPU engine; the CuPy denoisers agree with their NumPy versions to float32 rounding.
"""

from types import SimpleNamespace

import numpy as np
import pytest

cp = pytest.importorskip("cupy")
from pipeline.backend import gpu_unavailable_reason  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(gpu_unavailable_reason() is not None,
                                                  reason=str(gpu_unavailable_reason())),
              pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")]

from conftest import bent_screen_response  # noqa: E402
from pipeline.config import AfterglowConfig, BadPixelConfig, DenoiseConfig, FlatFieldConfig  # noqa: E402
from pipeline.conveyor import Conveyor, parameters_from_chain  # noqa: E402
from pipeline.kernels import CorrectKernel, correct_block_gpu  # noqa: E402
from pipeline.ops.denoise import NoiseModel  # noqa: E402
from pipeline.ops.flatfield import DEAD, HOT, Calibration  # noqa: E402
from pipeline.schedule import process_frames  # noqa: E402
from pipeline.stages import AfterglowStage, Chain, FlatFieldStage, SpatialDenoiseStage, TemporalDenoiseStage  # noqa

H, W = 67, 129  # not a multiple of the CUDA block


def _chain(rng, *, dtype=np.uint16, n_terms=2, per_pixel=False, output="counts", temporal=False, spatial=False):
    dark = rng.uniform(90, 110, (H, W)).astype(np.float32)
    gain = rng.uniform(0.6, 1.4, (H, W)).astype(np.float32)
    bp = np.zeros((H, W), np.uint8)
    bp[rng.random((H, W)) < 0.03] = HOT
    bp[10:21, 10:21] = DEAD  # its centre has no good neighbour within reach: NaN
    gain[bp != 0] = 1
    cal = Calibration(dark=dark, gain=gain, flat_level=6000.0, exposure_ratio=0.9, bad_pixels=bp)
    ff = FlatFieldStage(cal, FlatFieldConfig(output=output, saturation_level=9000.0,
                                             bad_pixels=BadPixelConfig(replace=True)), dtype)
    stateful, post = [], []
    if n_terms:
        amps = rng.uniform(0.002, 0.05, (n_terms, H, W) if per_pixel else n_terms)
        model = SimpleNamespace(amplitudes=amps.astype(np.float32) if per_pixel else amps,
                                ratios=rng.uniform(0.2, 0.97, n_terms))
        stateful.append(AfterglowStage(model, AfterglowConfig(initial_state="steady")))
    noise = NoiseModel(0.5, 20.0)
    if temporal:
        stateful.append(TemporalDenoiseStage(noise, DenoiseConfig(enabled=True)))
    if spatial:
        post.append(SpatialDenoiseStage(noise, DenoiseConfig(enabled=True, method="gaussian")))
    return Chain(ff, stateful, [], post)


def _raw(rng, t, dtype):
    if dtype == np.uint16:
        return rng.integers(0, 9500, (t, H, W)).astype(np.uint16)
    raw = rng.uniform(-50, 9500, (t, H, W)).astype(np.float32)
    raw[rng.random(raw.shape) < 0.02] = np.nan
    raw[rng.random(raw.shape) < 0.01] = np.inf
    return raw


def _same(a, b):
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    m = ~np.isnan(a)
    np.testing.assert_array_equal(a[m], b[m])


@pytest.mark.parametrize("dtype,out_dtype,n_terms,per_pixel", [
    (np.uint16, np.float32, 0, False), (np.uint16, np.float32, 2, False), (np.uint16, np.float32, 3, True),
    (np.uint16, np.float16, 1, False), (np.float32, np.float32, 2, False), (np.float32, np.float16, 0, False)])
def test_fused_kernel_bit_identical_to_numpy_chain(dtype, out_dtype, n_terms, per_pixel):
    rng = np.random.default_rng(n_terms)
    chain = _chain(rng, dtype=dtype, n_terms=n_terms, per_pixel=per_pixel, output="transmission")
    kernel = CorrectKernel(parameters_from_chain(chain, (H, W)))
    states, st = None, None
    for t in (6, 1, 9):
        raw = _raw(rng, t, dtype)
        ref, states = chain(raw.copy(), states)
        if st is None:
            st = cp.asarray(chain.stateful[0].initial_state(chain.head(raw[:1])[0])) if n_terms else None
        out = cp.empty(raw.shape, out_dtype)
        kernel(cp.asarray(raw), out, st)
        with np.errstate(over="ignore"):
            _same(cp.asnumpy(out), ref.astype(out_dtype))
        if n_terms:
            _same(cp.asnumpy(st), states[0])


@pytest.mark.parametrize("out_dtype", [np.float32, np.float16, np.uint16])
def test_fused_kernel_four_pixels_a_thread(monkeypatch, out_dtype):
    """The _v4 kernels (frame size a multiple of 4): bit-identical to the NumPy chain and to one pixel a
    thread; a misaligned input falls back to one pixel a thread with the same result."""
    import sys

    from pipeline.io.packing import encode

    monkeypatch.setattr(sys.modules[__name__], "W", 128)  # 67 x 128: a multiple of 4
    rng = np.random.default_rng(11)
    chain = _chain(rng, n_terms=3, per_pixel=True, output="transmission")
    params = parameters_from_chain(chain, (H, W))
    k4, k1 = CorrectKernel(params), CorrectKernel(params, lanes=1)
    assert (k4.lanes, k1.lanes) == (4, 1)
    raw = _raw(rng, 7, np.uint16)
    ref, states = chain(raw.copy(), None)
    st0 = chain.stateful[0].initial_state(chain.head(raw[:1])[0])
    outs = []
    for k, misaligned in ((k4, False), (k1, False), (k4, True)):
        st = cp.asarray(st0)
        if misaligned:
            buf = cp.empty(raw.size + 1, cp.uint16)
            g_raw = buf[1:].reshape(raw.shape)
            g_raw[...] = cp.asarray(raw)
        else:
            g_raw = cp.asarray(raw)
        out = cp.empty(raw.shape, out_dtype)
        k(g_raw, out, st, scale=50000.0, offset=500.0)
        outs.append(cp.asnumpy(out))
        _same(cp.asnumpy(st), states[0])
    want = encode(ref, "uint16", scale=50000.0, offset=500.0) if out_dtype == np.uint16 else ref.astype(out_dtype)
    for o in outs:
        if out_dtype == np.uint16:
            np.testing.assert_array_equal(o, want)
        else:
            _same(o, want)


def test_fused_kernel_bad_pixels_at_full_size():
    """At 1024 x 1024 (tens of thousands of bad pixels, the medians' launch and the main kernel in many thread
    blocks), on a caller's non-default stream, block after block: the outputs and the state are bit-identical to
    the NumPy chain."""
    import sys

    mod = sys.modules[__name__]
    h, w = 1024, 1024
    rng = np.random.default_rng(23)
    old = (mod.H, mod.W)
    mod.H, mod.W = h, w
    try:
        chain = _chain(rng, n_terms=3, output="transmission")
        raws = [_raw(rng, t, np.uint16) for t in (8, 8, 5)]
    finally:
        mod.H, mod.W = old
    params = parameters_from_chain(chain, (h, w))
    assert params.targets.size > 10_000
    st0 = chain.stateful[0].initial_state(chain.head(raws[0][:1])[0])
    refs, states = [], None
    for raw in raws:
        ref, states = chain(raw.copy(), states)
        refs.append((ref, states[0].copy()))
    stream = cp.cuda.Stream(non_blocking=True)
    k = CorrectKernel(params)
    with stream:  # uploaded on the stream the kernel runs on (a non-blocking stream does not wait on the default one)
        st = cp.asarray(st0)
    for raw, (ref, ref_state) in zip(raws, refs):
        with stream:
            out = cp.empty(raw.shape, cp.float32)
            k(cp.asarray(raw), out, st, stream=stream)
            got = cp.asnumpy(out, stream=stream)
        stream.synchronize()
        _same(got, ref)
        _same(cp.asnumpy(st), ref_state)


@pytest.mark.parametrize("cluster", [False, True])
def test_fused_kernel_narrow_tables_bit_identical(cluster):
    """Isolated bad pixels (a table of <= 8 columns) and 3 x 3 clusters (<= 24): the register medians."""
    rng = np.random.default_rng(13)
    dark = rng.uniform(90, 110, (H, W)).astype(np.float32)
    gain = rng.uniform(0.6, 1.4, (H, W)).astype(np.float32)
    bp = np.zeros((H, W), np.uint8)
    bp[rng.random((H, W)) < 0.02] = HOT
    if cluster:
        bp[30:33, 40:43] = DEAD
    gain[bp != 0] = 1
    cal = Calibration(dark=dark, gain=gain, flat_level=6000.0, exposure_ratio=0.9, bad_pixels=bp)
    ff = FlatFieldStage(cal, FlatFieldConfig(output="counts", saturation_level=9000.0,
                                             bad_pixels=BadPixelConfig(replace=True)), np.uint16)
    chain = Chain(ff, [], [], [])
    params = parameters_from_chain(chain, (H, W))
    assert (8 < params.neighbours.shape[1] <= 24) if cluster else (params.neighbours.shape[1] <= 8)
    raw = _raw(rng, 5, np.uint16)
    ref, _ = chain(raw.copy(), [])
    for registers in (True, False):  # the register medians, and the generic one the benchmark compares with
        out = cp.empty(raw.shape, cp.float32)
        k = CorrectKernel(params, register_medians=registers)
        assert k.median_kernel.endswith(("_k24" if cluster else "_k8") if registers else "*")
        k(cp.asarray(raw), out, None)
        _same(cp.asnumpy(out), ref)


def test_correct_block_gpu_one_call():
    from pipeline.ops.afterglow import remove_lag
    from pipeline.ops.flatfield import flat_field, neighbour_table, replace_bad_pixels

    rng = np.random.default_rng(1)
    raw = rng.integers(0, 5000, (4, H, W)).astype(np.uint16)
    dark = rng.uniform(90, 110, (H, W)).astype(np.float32)
    inv = rng.uniform(0.8, 1.2, (H, W)).astype(np.float32)
    bp = (rng.random((H, W)) < 0.05).astype(np.uint8)
    targets, nb = neighbour_table(bp)
    a, r = np.array([0.02, 0.004], np.float32), np.array([0.4, 0.97])
    ref = flat_field(raw, dark, np.ones_like(inv), inv=inv)
    replace_bad_pixels(ref, targets, nb, out=ref)
    ref, st_ref = remove_lag(ref, a, r, None)
    out, st = correct_block_gpu(raw, dark, inv, targets, nb, a, r, None, None, np.float32)
    _same(cp.asnumpy(out), ref)
    _same(cp.asnumpy(st), st_ref)


@pytest.mark.parametrize("denoise", [False, True])
def test_conveyor_matches_cpu_engine(denoise):
    rng = np.random.default_rng(2)
    chain = _chain(rng, temporal=denoise, spatial=denoise, output="attenuation" if denoise else "counts")
    video = _raw(rng, 29, np.uint16)
    ref = np.full(video.shape, -1, np.float32)
    commits_c, commits_g = {}, {}
    res_c = process_frames(video, ref, chain, chunk_frames=4, scheduler="synchronous",
                           on_commit=lambda c, t0, t1, w, s: commits_c.__setitem__(c, s))
    conv = Conveyor(chain, (H, W), block_frames=4)
    out = np.full(video.shape, -1, np.float32)
    res_g = conv.process_frames(video, out, chain, chunk_frames=4,
                                on_commit=lambda c, t0, t1, w, s: commits_g.__setitem__(c, s))
    if denoise:
        # NLM on the GPU sums its patch distances in float32, the CPU reference in float64; exp(-d2 / h^2)
        # multiplies their relative rounding by d2 / h^2 (tens), so weights and outputs agree to ~1e-4, not
        # 1e-6 (seen on an H200: 167 of 250647 values beyond 2e-5, the largest 3.5e-5, on values ~0.4)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    else:
        _same(out, ref)
        assert [r["checksum"] for r in res_g] == [r["checksum"] for r in res_c]
        for c in commits_c:
            _same(commits_g[c][0], commits_c[c][0])
    assert conv.allocations == 1


def test_conveyor_stream_from_pinned_memory_float16():
    rng = np.random.default_rng(3)
    chain = _chain(rng)
    conv = Conveyor(chain, (H, W), block_frames=5, out_dtype=np.float16)
    video = _raw(rng, 15, np.uint16)
    blocks = []
    for i in range(0, 15, 5):
        b = conv.dev.empty_pinned((5, H, W), np.uint16)
        b[...] = video[i:i + 5]
        assert conv.dev.is_pinned(b)
        blocks.append(b)
    outs = [o.copy() for _, o, _ in conv.stream((i, b, True) for i, b in enumerate(blocks))]
    states = None
    for b, o in zip(blocks, outs):
        ref, states = chain(np.array(b), states)
        with np.errstate(over="ignore"):
            _same(o, ref.astype(np.float16))


def test_api_run_on_gpu_equals_cpu(tmp_path):
    import zarr

    import pipeline

    src = pipeline.simulate(tmp_path / "sim.zarr", frames=20, size=(64, 96), seed=2)
    over = {"execution": {"chunk_frames": 6}, "flatfield": {"output": "transmission"}}
    a = pipeline.run(src, tmp_path / "cpu.zarr", over)
    b = pipeline.run(src, tmp_path / "gpu.zarr", over, overrides=["execution.device=gpu"])
    fa = np.asarray(zarr.open_group(str(a.output), mode="r")["frames"])
    fb = np.asarray(zarr.open_group(str(b.output), mode="r")["frames"])
    _same(fb, fa)
    assert zarr.open_group(str(b.output), mode="r").attrs["provenance"]["device"].startswith("gpu")
    acc = b.time_account  # read into pinned blocks by the input's chunk decoder, and the conveyor's waits
    assert set(acc["gpu_waits_s"]) == {"reads", "device", "writers"} and acc["read_s"] > 0 and acc["write_s"] > 0


def _run_both(chain, video, chunk=4):
    from pipeline.stages import Storage  # noqa: F401  (the chain's storage decides the output type)

    dt = chain.storage.numpy_dtype
    ref = np.zeros(video.shape, dt)
    process_frames(video, ref, chain, chunk_frames=chunk, scheduler="synchronous")
    conv = Conveyor(chain, (H, W), block_frames=chunk)
    out = np.zeros(video.shape, dt)
    conv.process_frames(video, out, chain, chunk_frames=chunk)
    return out, ref, conv


@pytest.mark.parametrize("width", [129, 128])  # 128: the fused kernel writes the code itself, four pixels a thread
def test_conveyor_uint16_output_equals_cpu_engine(monkeypatch, width):
    import sys

    from pipeline.stages import Storage

    monkeypatch.setattr(sys.modules[__name__], "W", width)
    rng = np.random.default_rng(4)
    chain = _chain(rng, output="transmission")
    chain.storage = Storage("uint16", 50000.0, 500.0)
    out, ref, conv = _run_both(chain, _raw(rng, 17, np.uint16))
    assert conv.out_dtype == np.uint16
    np.testing.assert_array_equal(out, ref)  # the fused kernel is bit-identical, so the codes are


def test_conveyor_default_denoisers_nlm_close_to_cpu_engine():
    rng = np.random.default_rng(5)
    chain = _chain(rng, temporal=True)
    noise = NoiseModel(0.5, 20.0)
    chain.post.append(SpatialDenoiseStage(noise, DenoiseConfig(enabled=True, method="nlm")))
    out, ref, _ = _run_both(chain, _raw(rng, 13, np.uint16))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-3)


def test_conveyor_with_a_per_pixel_response_close_to_cpu_engine():
    rng = np.random.default_rng(6)
    chain = _chain(rng, output="transmission")
    coeffs = bent_screen_response(rng, H, W)
    chain.flatfield.response = coeffs
    chain.flatfield.inv_gain = None
    out, ref, conv = _run_both(chain, _raw(rng, 11, np.uint16))
    assert conv.ff_dev is not None
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=1e-6)  # log/exp/sqrt on the GPU: a few ulps apart


def test_device_chain_on_the_gpu_close_to_cpu_engine():
    """DeviceChain (device gpu on a cluster) with the real CuPy upload, in this process's scheduler."""
    from pipeline.conveyor import DeviceChain

    rng = np.random.default_rng(7)
    chain = _chain(rng, temporal=True, spatial=True, output="transmission")
    video = _raw(rng, 13, np.uint16)
    ref = np.zeros(video.shape, np.float32)
    process_frames(video, ref, chain, chunk_frames=4, scheduler="synchronous")
    out = np.zeros(video.shape, np.float32)
    dchain = DeviceChain(chain)
    process_frames(video, out, dchain, chunk_frames=4, scheduler="threads", num_workers=2)
    assert dchain._local is not None and isinstance(dchain._local[0].cal.dark, cp.ndarray)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5)
