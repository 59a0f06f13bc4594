"""cuda/correct.cu's fused kernel on the CPU (g++ under tests/cuda/emulate.h) against the NumPy chain.

The reference is the CPU run's own chain (pipeline.stages: FlatFieldStage.head -> AfterglowStage ->
FlatFieldStage.tail) over several blocks chained through the afterglow state; the kernel's
parameters come from pipeline.conveyor.parameters_from_chain, as on the GPU. Equality is bit for
bit (float32, and float16 as NumPy's astype of the float32 result).
"""

import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.config import AfterglowConfig, BadPixelConfig, FlatFieldConfig
from pipeline.conveyor import parameters_from_chain
from pipeline.conveyor import correct_block_reference
from pipeline.kernels import saturation_threshold
from pipeline.io.packing import DEFAULT_OFFSET, DEFAULT_SCALE, encode
from pipeline.ops.flatfield import DEAD, HOT, Calibration
from pipeline.stages import AfterglowStage, Chain, FlatFieldStage

pytestmark = [pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not available"),
              pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),  # the subnormal gain
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")]  # a pixel without neighbours
H, W = 16, 23  # 368 pixels: six blocks of 64 threads (two of 64 four-pixel threads), the last one partly idle


@pytest.fixture(scope="module", params=[(), ("XRAY_PREFETCH_BAD=0",)], ids=["as built", "bad values frame by frame"])
def exe(build_emulated, request):
    """The kernel as built, and as the benchmark's comparison builds it (the same results, bit for bit)."""
    return build_emulated("run_correct", defines=request.param)


def _calibration(rng, *, bad: bool, layout: str = "block"):
    dark = rng.uniform(90, 110, (H, W)).astype(np.float32)
    gain = rng.uniform(0.6, 1.4, (H, W)).astype(np.float32)
    bp = np.zeros((H, W), np.uint8)
    if layout == "isolated":  # good neighbours within radius 1: a table of at most 8 columns (bad_heads_*_k8)
        bp[rng.random((H, W)) < 0.05] = HOT
        gain[bp != 0] = 1.0
    elif layout == "clusters":  # 3 x 3 dead clusters: their centres reach radius 2, at most 24 columns (_k24)
        for y, x in ((2, 3), (9, 14), (12, 2)):
            bp[y:y + 3, x:x + 3] = DEAD
        bp[rng.random((H, W)) < 0.02] = HOT
        gain[bp != 0] = 1.0
    elif bad:
        bp[rng.random((H, W)) < 0.06] = HOT
        bp[0:11, 0:11] = DEAD  # pixel (5, 5) has no good neighbour within the table's reach: NaN
        bp[12, 20:23] = DEAD  # a corner cluster: fewer neighbours, even counts
        gain[bp != 0] = 1.0
    bp[H - 1, 0] = 0
    gain[H - 1, 0] = 1e-45  # a subnormal gain: inverse gain Inf, so +-Inf (and NaN) counts without any bad pixel
    return Calibration(dark=dark, gain=gain, flat_level=7321.5, exposure_ratio=0.8, bad_pixels=bp)


def _raw(rng, t, dtype, saturation):
    if dtype == np.uint16:
        raw = rng.integers(0, 9000, (t, H, W)).astype(np.uint16)
        raw[rng.random(raw.shape) < 0.03] = 65535
        raw[rng.random(raw.shape) < 0.02] = saturation
        raw[rng.random(raw.shape) < 0.02] = 100  # about the dark level: values near 0, both signs
        return raw
    raw = rng.uniform(-50, 9000, (t, H, W)).astype(np.float32)
    r = rng.random(raw.shape)
    raw[r < 0.02] = np.nan
    raw[(r >= 0.02) & (r < 0.03)] = np.inf
    raw[(r >= 0.03) & (r < 0.035)] = -np.inf
    raw[(r >= 0.035) & (r < 0.06)] = saturation + rng.uniform(0, 5, int(((r >= 0.035) & (r < 0.06)).sum()))
    return raw


def _chain(cal, *, output, saturation_level, replace, n_terms, per_pixel, initial, rng, dtype):
    cfg = FlatFieldConfig(output=output, saturation_level=saturation_level,
                          bad_pixels=BadPixelConfig(replace=replace))
    ff = FlatFieldStage(cal, cfg, dtype)
    stages = []
    if n_terms:
        amps = rng.uniform(0.002, 0.06, (n_terms, H, W) if per_pixel else n_terms)
        model = SimpleNamespace(amplitudes=amps.astype(np.float32) if per_pixel else amps,
                                ratios=rng.uniform(0.2, 0.98, n_terms))
        stages.append(AfterglowStage(model, AfterglowConfig(initial_state=initial)))
    return Chain(ff, stages)


def _run_kernel(exe, tmp_path, raw, params, state, out_dtype, code=(1.0, 0.0), lanes=1):
    t = raw.shape[0]
    p = params.n_pixels
    raw.tofile(tmp_path / "raw.bin")
    params.dark.tofile(tmp_path / "dark.bin")
    params.inv.tofile(tmp_path / "inv.bin")
    n_bad = params.targets.size
    if n_bad:
        params.slot.tofile(tmp_path / "slot.bin")
        params.neighbours.tofile(tmp_path / "nb.bin")
    params.amplitudes.tofile(tmp_path / "amps.bin")
    params.ratios.tofile(tmp_path / "ratios.bin")
    np.ascontiguousarray(state, np.float32).tofile(tmp_path / "state.bin")
    thr = saturation_threshold(params.saturation, raw.dtype)
    subprocess.run([str(exe), str(tmp_path), "u16" if raw.dtype == np.uint16 else "f32",
                    {np.float16: "f16", np.uint16: "c16"}.get(out_dtype, "f32"), str(t), str(p), str(params.n_terms),
                    str(int(params.amplitudes.ndim > 1)), str(params.neighbours.shape[1]), str(n_bad),
                    "nan" if np.isnan(thr) else repr(float(thr)), str(int(params.nonfinite_to_nan)),
                    repr(float(np.float32(code[0]))), repr(float(np.float32(code[1]))), str(lanes)], check=True)
    out = np.fromfile(tmp_path / "out.bin", out_dtype).reshape(raw.shape)
    st = np.fromfile(tmp_path / "state_out.bin", np.float32).reshape((params.n_terms, H, W))
    return out, st


def _same(a, b):
    """Bit for bit, any NaN equal to any NaN."""
    assert a.dtype == b.dtype and a.shape == b.shape
    na, nb = np.isnan(a), np.isnan(b)
    np.testing.assert_array_equal(na, nb)
    np.testing.assert_array_equal(a[~na].view(np.uint8 if a.itemsize == 1 else f"u{a.itemsize}"),
                                  b[~nb].view(np.uint8 if b.itemsize == 1 else f"u{b.itemsize}"))


CASES = [  # input, output, afterglow terms, per-pixel amplitudes, flat-field output, bad pixels replaced, initial
    ("u16", "f32", 0, False, "counts", True, "zero"),
    ("u16", "f32", 1, False, "counts", True, "steady"),
    ("u16", "f32", 2, True, "transmission", True, "steady"),
    ("u16", "f32", 3, False, "counts", False, "zero"),
    ("u16", "f16", 2, False, "transmission", True, "steady"),
    ("u16", "f16", 0, False, "counts", True, "zero"),
    ("f32", "f32", 2, False, "counts", True, "steady"),
    ("f32", "f32", 0, False, "transmission", True, "zero"),
    ("f32", "f16", 3, True, "counts", True, "zero"),
    ("u16", "c16", 2, False, "transmission", True, "steady"),
    ("u16", "c16", 0, False, "counts", True, "zero"),
    ("f32", "c16", 1, True, "counts", True, "zero"),
]


@pytest.mark.parametrize("lanes", [1, 4])
@pytest.mark.parametrize("seed,case", list(enumerate(CASES)), ids=["-".join(map(str, c)) for c in CASES])
def test_fused_kernel_matches_numpy_chain(exe, tmp_path, seed, case, lanes):
    inp, outp, n_terms, per_pixel, output, replace, initial = case
    dtype = np.uint16 if inp == "u16" else np.float32
    out_dtype = {"f16": np.float16, "c16": np.uint16}.get(outp, np.float32)
    # the uint16 code (output.dtype uint16) with the storage defaults of its output kind
    code = (DEFAULT_SCALE[output], DEFAULT_OFFSET[output])
    rng = np.random.default_rng(seed)
    sat_level = {"u16": 60000.0, "f32": 8000.5}[inp]
    cal = _calibration(rng, bad=replace)
    chain = _chain(cal, output=output, saturation_level=sat_level, replace=replace, n_terms=n_terms,
                   per_pixel=per_pixel, initial=initial, rng=rng, dtype=dtype)
    params = parameters_from_chain(chain, (H, W))
    if replace:
        assert params.targets.size > 0 and params.neighbours.shape[1] > 1
    blocks = [_raw(rng, t, dtype, sat_level) for t in (5, 3, 1, 7)]
    states = None
    st_k = None
    for b, raw in enumerate(blocks):
        ref, states = chain(raw.copy(), states)
        if st_k is None:  # the conveyor's initial state: the stage's own, from the head of the first frame
            st_k = (chain.stateful[0].initial_state(chain.head(raw[:1])[0]) if n_terms
                    else np.zeros((0, H, W), np.float32))
        out_k, st_k = _run_kernel(exe, tmp_path, raw, params, st_k, out_dtype, code, lanes)
        if out_dtype == np.uint16:
            np.testing.assert_array_equal(out_k, encode(ref, "uint16", scale=code[0], offset=code[1]))
        else:
            with np.errstate(over="ignore"):  # counts above 65504 are Inf in float16
                _same(out_k, ref.astype(out_dtype))
        if n_terms:
            _same(st_k, states[0])
    assert np.isnan(ref).any() and np.isfinite(ref).any()


@pytest.mark.parametrize("lanes", [1, 4])
@pytest.mark.parametrize("layout,widths", [("isolated", (2, 8)), ("clusters", (9, 24))])
def test_narrow_tables_medians_in_registers(exe, tmp_path, layout, widths, lanes):
    """Tables of <= 8 and <= 24 columns take the register medians (bad_heads_*_k8/_k24): bit-identical too."""
    rng = np.random.default_rng(17)
    cal = _calibration(rng, bad=False, layout=layout)
    for dtype, sat in ((np.uint16, 60000.0), (np.float32, 8000.5)):
        chain = _chain(cal, output="counts", saturation_level=sat, replace=True, n_terms=2, per_pixel=False,
                       initial="steady", rng=rng, dtype=dtype)
        params = parameters_from_chain(chain, (H, W))
        assert widths[0] <= params.neighbours.shape[1] <= widths[1]
        raw = _raw(rng, 6, dtype, sat)
        ref, states = chain(raw.copy(), None)
        st = chain.stateful[0].initial_state(chain.head(raw[:1])[0])
        out, st = _run_kernel(exe, tmp_path, raw, params, st, np.float32, lanes=lanes)
        _same(out, ref)
        _same(st, states[0])
        assert np.isfinite(ref).any()


def test_reference_matches_numpy_chain():
    rng = np.random.default_rng(7)
    cal = _calibration(rng, bad=True)
    chain = _chain(cal, output="counts", saturation_level=60000.0, replace=True, n_terms=2, per_pixel=False,
                   initial="steady", rng=rng, dtype=np.uint16)
    params = parameters_from_chain(chain, (H, W))
    states, st = None, None
    for t in (4, 2):
        raw = _raw(rng, t, np.uint16, 60000.0)
        ref, states = chain(raw.copy(), states)
        if st is None:
            st = chain.stateful[0].initial_state(chain.head(raw[:1])[0])
        out, st = correct_block_reference(raw, params, st)
        _same(out, ref)
        _same(st, states[0])


def test_float16_rounding_matches_numpy(exe, tmp_path):
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    f = bits.view(np.float32)
    edges = np.array([0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e9, -1e9, 2.0**-24, 2.0**-25, 1.5 * 2.0**-25,
                      2.0**-14, 2.0**-14 * (1 - 2.0**-11), np.inf, -np.inf, np.nan, 1.0 + 2.0**-11,
                      1.0 + 3 * 2.0**-11], np.float32)
    small = (rng.uniform(-1, 1, 50_000) * 2.0 ** rng.integers(-30, 17, 50_000)).astype(np.float32)
    f = np.concatenate([f, edges, small])
    f.tofile(tmp_path / "f.bin")
    subprocess.run([str(exe), "--half", tmp_path / "f.bin", tmp_path / "h.bin"], check=True)
    h = np.fromfile(tmp_path / "h.bin", np.uint16)
    with np.errstate(over="ignore"):
        want = f.astype(np.float16).view(np.uint16)
    nan = np.isnan(f)
    np.testing.assert_array_equal(h[~nan], want[~nan])
    assert (h[nan] == 0x7E00).all()


@pytest.mark.parametrize("scale,offset", [(1.0, 100.0), (50000.0, 500.0), (10000.0, 1000.0), (0.37, -3.5)])
def test_uint16_code_matches_encode(exe, tmp_path, scale, offset):
    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32)
    f = np.concatenate([bits.view(np.float32), rng.uniform(-0.1, 1.4, 100_000).astype(np.float32),
                        rng.uniform(-200, 70000, 100_000).astype(np.float32),
                        ((np.arange(-4, 131076) - offset) / scale).astype(np.float32),  # halves, both ends
                        np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30], np.float32)])
    f.tofile(tmp_path / "f.bin")
    subprocess.run([str(exe), "--code", tmp_path / "f.bin", tmp_path / "c.bin", repr(float(np.float32(scale))),
                    repr(float(np.float32(offset)))], check=True)
    with np.errstate(over="ignore", invalid="ignore"):
        want = encode(f, "uint16", scale=scale, offset=offset)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "c.bin", np.uint16), want)


@pytest.mark.parametrize("dtype,level,expect", [
    (np.uint16, 4095.5, 4096.0), (np.uint16, 4095.0, 4095.0), (np.uint16, 70000.0, 65536.0),
    (np.uint16, -3.0, 0.0), (np.uint16, None, np.nan), (np.float32, 16777217.0, 16777216.0),
])
def test_saturation_threshold_is_numpys_comparison(dtype, level, expect):
    thr = saturation_threshold(level, dtype)
    if np.isnan(expect):
        assert np.isnan(thr)
        return
    assert thr == expect
    if dtype == np.uint16:
        vals = np.arange(0, 65536, dtype=np.uint16)
        np.testing.assert_array_equal(vals.astype(np.float32) >= thr, vals >= level)
