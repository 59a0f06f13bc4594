"""Bad pixels and saturation (issue 20, item 1): a pixel known to be bad is replaced whatever its raw value.

A hot pixel stuck at full scale (65535 in every frame, darks and flats included) is a defect, not a
saturated measurement: it comes out as the median of its good neighbours, finite in every frame. The
saturation mask (``flatfield.saturated: nan``) applies to the pixels that are not replaced; a replaced
bad pixel is NaN only where more than half of the good neighbours its median is taken over are
saturated (``pipeline.ops.flatfield.saturation_mask``). The same on the GPU's fused kernel (under
emulation): bit for bit what the CPU chain gives.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr

import pipeline
from conftest import bent_screen_response
from pipeline import jit
from pipeline.config import AfterglowConfig, FlatFieldConfig
from pipeline.ops.flatfield import compute_calibration, correct_frames, saturation_mask
from pipeline.simulator import SimulationSpec, build
from pipeline.stages import AfterglowStage, Chain, FlatFieldStage

FULL = 65535
H, W = 24, 28
STUCK = (7, 9)  # stuck at full scale, neighbours fine
SURROUNDED = (17, 20)  # stuck at full scale; in frame 2 all its neighbours saturate
BOUNDARY = (4, 20)  # stuck at full scale; 4 of 8 neighbours saturated in frame 2, 5 of 8 in frame 3
GENUINE = (15, 4)  # a good pixel, saturated in frame 1
RING = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _detector(rng, t=5):
    """Darks, flats and t frames of a 24 x 28 camera whose three stuck pixels read 65535 in all of them."""
    gain = rng.uniform(0.8, 1.2, (H, W))
    dark = rng.uniform(95, 105, (H, W))

    def frames(n, signal):
        f = dark + signal * gain + rng.normal(0, 3, (n, H, W))
        f = np.clip(np.rint(f), 0, FULL).astype(np.uint16)
        for y, x in (STUCK, SURROUNDED, BOUNDARY):
            f[:, y, x] = FULL
        return f

    darks, flats, raw = frames(8, 0.0), frames(8, 30000.0), frames(t, 20000.0)
    raw[1][GENUINE] = FULL
    for dy, dx in RING:  # frame 2: every neighbour of SURROUNDED saturated
        raw[2, SURROUNDED[0] + dy, SURROUNDED[1] + dx] = FULL
    for k, n in ((2, 4), (3, 5)):  # BOUNDARY: half of its neighbours saturated, then more than half
        for dy, dx in RING[:n]:
            raw[k, BOUNDARY[0] + dy, BOUNDARY[1] + dx] = FULL
    cal = compute_calibration(darks.mean(0), flats.mean(0), dark_noise=darks.std(0), saturation_level=FULL)
    return cal, raw


def _median_of_good_ring(raw, cal, k, y, x):
    """Independent: the median of the corrected values of the good pixels among the 8 around (y, x)."""
    vals = [(float(raw[k, y + dy, x + dx]) - float(cal.dark[y + dy, x + dx])) / float(cal.gain[y + dy, x + dx])
            for dy, dx in RING if cal.bad_pixels[y + dy, x + dx] == 0]
    return float(np.median(vals))


def _check_rule(out, raw, cal, *, values=True):
    for y, x in (STUCK, SURROUNDED, BOUNDARY):
        assert cal.bad_pixels[y, x] != 0, "a pixel stuck at full scale is classified bad"
    assert np.isfinite(out[:, STUCK[0], STUCK[1]]).all(), "the stuck pixel is NaN in some frame"
    assert np.isnan(out[1][GENUINE]) and np.isfinite(out[[0, 2, 3, 4]][:, GENUINE[0], GENUINE[1]]).all()
    sur = out[:, SURROUNDED[0], SURROUNDED[1]]
    assert np.isnan(sur[2]) and np.isfinite(sur[[0, 1, 3, 4]]).all(), "all neighbours saturated: NaN, only then"
    bnd = out[:, BOUNDARY[0], BOUNDARY[1]]
    assert np.isfinite(bnd[2]) and np.isnan(bnd[3]), "half the neighbours saturated: finite; more than half: NaN"
    # good pixels: NaN exactly where their raw value is at full scale
    good = cal.bad_pixels == 0
    np.testing.assert_array_equal(np.isnan(out)[:, good], (raw >= FULL)[:, good])
    if values:
        for k in range(raw.shape[0]):
            for (y, x) in (STUCK, SURROUNDED, BOUNDARY):
                if np.isfinite(out[k, y, x]):
                    assert out[k, y, x] == pytest.approx(_median_of_good_ring(raw, cal, k, y, x), rel=1e-5)


@pytest.mark.parametrize("path", ["numba", "numpy", "correct_frames"])
def test_stuck_high_pixel_replaced_in_every_frame_saturated_good_pixel_nan(path):
    rng = np.random.default_rng(1)
    cal, raw = _detector(rng)
    if path == "correct_frames":
        out = correct_frames(raw, cal, saturation_level=FULL)
    else:
        chain = Chain(FlatFieldStage(cal, FlatFieldConfig(), np.uint16))  # saturated: nan, the default
        if path == "numpy":
            with jit.disabled():
                out, _ = chain(raw)
        else:
            out, _ = chain(raw)
    _check_rule(out, raw, cal)


def test_rule_on_the_array_path_with_a_response():
    """FlatFieldStage's other head (a per-pixel response; CuPy arrays take it too): the same NaN pattern."""
    rng = np.random.default_rng(2)
    cal, raw = _detector(rng)
    chain = Chain(FlatFieldStage(cal, FlatFieldConfig(), np.uint16, response=bent_screen_response(rng, H, W)))
    out, _ = chain(raw)
    _check_rule(out, raw, cal, values=False)


def test_saturation_mask_rule_and_keep():
    rng = np.random.default_rng(3)
    cal, raw = _detector(rng)
    from pipeline.ops.flatfield import neighbour_table

    table = neighbour_table(cal.bad_pixels)
    mask = saturation_mask(raw, FULL, table)
    assert not mask[:, STUCK[0], STUCK[1]].any()
    assert mask[:, BOUNDARY[0], BOUNDARY[1]].tolist() == [False, False, False, True, False]
    # without a table (bad pixels not replaced) every pixel is judged by its own raw value
    np.testing.assert_array_equal(saturation_mask(raw, FULL), raw >= FULL)
    # only stuck pixels at full scale: nothing is saturated
    clean = raw[[0, 4]]
    assert saturation_mask(clean, FULL, table) is None
    assert saturation_mask(clean, None, table) is None
    # saturated: keep leaves every value, the stuck pixel its replacement
    out, _ = Chain(FlatFieldStage(cal, FlatFieldConfig(saturated="keep"), np.uint16))(raw)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_fused_pass_flags_bad_pixels_as_the_array_code(dtype):
    """The Numba pass's flags for the bad pixels (bands, neighbours across band edges, NaN neighbours left out)
    equal the array code's, and the masks built from them are the same."""
    from pipeline.ops.flatfield import flat_field_and_bad_pixels, inverse_gain, neighbour_table

    rng = np.random.default_rng(12)
    h, w = 70, 45
    bad = rng.random((h, w)) < 0.06
    bad[30:34, 0:5] = True  # a cluster at the edge, across band boundaries
    bad[0, :] = True  # a whole row: neighbours only in the next rows
    frames = rng.integers(3000, 4096, (5, h, w)).astype(dtype)
    frames[rng.random(frames.shape) < 0.45] = 4095  # about half of the neighbours saturated: both outcomes
    if dtype == np.float32:
        frames[rng.random(frames.shape) < 0.05] = np.nan  # NaN neighbours: out of the median and of the count
    dark = (rng.random((h, w)) * 50).astype(np.float32)
    inv = inverse_gain((0.5 + rng.random((h, w))).astype(np.float32))
    table = neighbour_table(bad)
    flags = np.empty((5, table[0].size), bool)
    fast, n = flat_field_and_bad_pixels(frames, dark, inv, table, saturation=4095, saturated_bad=flags)
    with jit.disabled():
        ref_flags = np.empty_like(flags)
        ref, n_ref = flat_field_and_bad_pixels(frames, dark, inv, table, saturation=4095, saturated_bad=ref_flags)
    np.testing.assert_array_equal(fast, ref)
    np.testing.assert_array_equal(flags, ref_flags)
    assert n == n_ref and 0.05 < flags.mean() < 0.95
    m_fast = saturation_mask(frames, 4095, table, fast, count=n, bad_saturated=flags)
    np.testing.assert_array_equal(m_fast, saturation_mask(frames, 4095, table, ref))


def _sim_spec(**kw):
    base = dict(frames=16, height=128, width=128, seed=5, bad_fraction=0.0, stuck_high=40, stuck_low=20,
                cluster_defects=3, column_defects=2)
    base.update(kw)
    return SimulationSpec(**base)


def _kinds(sim, raw):
    """The defects by kind, from the recording itself: stuck pixels read one value in every frame."""
    truth = sim.truth_maps["bad_pixels"] != 0
    every = np.concatenate([sim.darks, sim.flats, raw])
    high = (every == FULL).all(0)
    low = (every == 0).all(0)
    column = np.zeros_like(truth)
    for x in np.nonzero(truth.sum(0) >= raw.shape[1] // 4)[0]:
        column[:, x] = truth[:, x]
    cluster = truth & ~high & ~low & ~column
    return truth, {"stuck_high": high, "stuck_low": low, "column": column, "cluster": cluster}


def test_simulator_defects_found_and_replaced():
    spec = _sim_spec()
    sim = build(spec)
    raw = np.concatenate([b for _, b, _ in sim.iter_chunks()])
    truth_frames = np.concatenate([t for _, _, t in build(spec).iter_chunks()])
    truth, kinds = _kinds(sim, raw)
    assert kinds["stuck_high"].sum() == 40 and kinds["stuck_low"].sum() == 20
    assert kinds["column"].sum() >= 2 * 128 // 4 and kinds["cluster"].sum() >= 9  # (3 x 3 blocks may overlap)
    np.testing.assert_array_equal(np.logical_or.reduce(list(kinds.values())), truth)
    cal = compute_calibration(sim.darks.mean(0), sim.flats.mean(0), dark_noise=sim.darks.std(0),
                              saturation_level=FULL)
    found = cal.bad_pixels != 0
    for name, m in kinds.items():
        assert found[m].all(), f"{name}: recall {found[m].mean():.3f}"
    out, _ = Chain(FlatFieldStage(cal, FlatFieldConfig(), np.uint16))(raw)
    assert (raw[:, ~truth] < FULL).all()  # the scene does not saturate: so no NaN anywhere
    assert np.isfinite(out).all()
    open_level = sim.truth_attrs["open_level"]
    for name, m in kinds.items():
        err = np.abs(out[:, m] - truth_frames[:, m]) / open_level
        assert np.median(err) < 0.03 and err.max() < 0.25, (name, np.median(err), err.max())


def test_simulator_defects_are_opt_in_and_touch_only_their_pixels():
    """The new defects come only when asked, and change nothing but their own pixels (same seed, same noise)."""
    plain = build(SimulationSpec(frames=3, height=64, width=64, seed=9))
    with_defects = build(SimulationSpec(frames=3, height=64, width=64, seed=9, stuck_high=5, stuck_low=5,
                                        cluster_defects=2, column_defects=2))
    new = (with_defects.truth_maps["bad_pixels"] != 0) & (plain.truth_maps["bad_pixels"] == 0)
    assert new.sum() >= 10 + 2 * 16  # stuck pixels on working ones; the columns at least a quarter of the height
    for a, b in [(plain.darks, with_defects.darks), (plain.flats, with_defects.flats),
                 (np.concatenate([r for _, r, _ in plain.iter_chunks()]),
                  np.concatenate([r for _, r, _ in with_defects.iter_chunks()]))]:
        np.testing.assert_array_equal(a[:, ~new], b[:, ~new])
        assert (a[:, new] != b[:, new]).any()
    for bad in (dict(stuck_high=-1), dict(column_defects=1.5), dict(cluster_defects=True), dict(column_defects=40)):
        with pytest.raises(ValueError):
            SimulationSpec(frames=1, height=64, width=64, **bad)


@pytest.fixture(scope="module")
def defects_recording(tmp_path_factory):
    path = tmp_path_factory.mktemp("stuck") / "sim.zarr"
    pipeline.simulate(path, frames=16, size=(128, 128), seed=5, bad_fraction=0.0, stuck_high=40, stuck_low=20,
                      cluster_defects=3, column_defects=2)
    return path


def test_run_end_to_end_no_nan_and_mtf_in_every_frame(defects_recording, tmp_path):
    src = zarr.open_group(str(defects_recording), mode="r")
    raw, truth_bad = src["frames"][:], src["truth/bad_pixels"][:] != 0
    stuck = (raw == FULL).all(0)
    assert stuck.sum() == 40 and (raw[:, ~truth_bad] < FULL).all()  # the scene never saturates a good pixel
    res = pipeline.run(defects_recording, tmp_path / "out.zarr", overrides=["mtf.enabled=true"])
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    frames = out["frames"][:]
    assert not np.isnan(frames).any(), f"{int(np.isnan(frames).sum())} NaN pixels"
    y0, y1, x0, x1 = res.mtf_summary["roi"]
    assert stuck[y0:y1, x0:x1].any(), "the test needs a stuck pixel in the MTF's region"
    mtf50 = out["mtf/mtf50_cy_per_px"][:]
    assert mtf50.shape == (16,) and np.isfinite(mtf50).all(), res.mtf_summary["flag_counts"]
    assert "nonfinite_roi" not in res.mtf_summary["flag_counts"]


def test_run_end_to_end_nan_only_where_the_scene_saturates(tmp_path):
    """A dose that saturates the open beam at the centre: NaN where good pixels clip, and at an isolated stuck
    pixel only where more than half of its 8 neighbours clip; every other stuck pixel finite."""
    path = pipeline.simulate(tmp_path / "sat.zarr", frames=4, size=(96, 96), seed=6, bad_fraction=0.0,
                             stuck_high=60, quanta_per_pixel=8050.0, truth_frames=False, n_flats=4, n_darks=4,
                             edge_transmission=0.5)
    # the flats are recorded at a lower dose (the calibration refuses saturated flats)
    flats_path = pipeline.simulate(tmp_path / "flats.zarr", frames=1, size=(96, 96), seed=6, bad_fraction=0.0,
                                   stuck_high=60, quanta_per_pixel=4000.0, truth_frames=False, n_flats=8, n_darks=8)
    g = zarr.open_group(str(path), mode="a")
    g["flats"][:] = zarr.open_group(str(flats_path), mode="r")["flats"][:4]
    raw, bad = g["frames"][:], g["truth/bad_pixels"][:] != 0
    saturated_good = (raw >= FULL) & ~bad
    assert saturated_good.any() and (~saturated_good[:, ~bad]).any()
    pipeline.run(path, tmp_path / "out.zarr", overrides=["flatfield.output=transmission"])
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["frames"][:]
    np.testing.assert_array_equal(np.isnan(out)[:, ~bad], saturated_good[:, ~bad])
    ys, xs = np.nonzero(bad)
    checked = 0
    for y, x in zip(ys, xs):
        if not (0 < y < 95 and 0 < x < 95) or bad[y - 1 : y + 2, x - 1 : x + 2].sum() != 1:
            continue  # isolated ones only: their median is over exactly their 8 neighbours
        n_sat = saturated_good[:, y - 1 : y + 2, x - 1 : x + 2].sum(axis=(1, 2))
        np.testing.assert_array_equal(np.isnan(out[:, y, x]), 2 * n_sat > 8)
        checked += 1
    assert checked > 40


# --------------------------------------------------------------------------- the fused kernel, emulated
def _run_kernel(exe, tmp_path, raw, params, state, out_dtype=np.float32, lanes=1):
    """tests/cuda/run_correct.cpp (cuda/correct.cu under emulation) on one block: (out, state)."""
    from pipeline.kernels import saturation_threshold

    h, w = raw.shape[1:]
    raw.tofile(tmp_path / "raw.bin")
    params.dark.tofile(tmp_path / "dark.bin")
    params.inv.tofile(tmp_path / "inv.bin")
    if params.targets.size:
        params.slot.tofile(tmp_path / "slot.bin")
        params.neighbours.tofile(tmp_path / "nb.bin")
    params.amplitudes.tofile(tmp_path / "amps.bin")
    params.ratios.tofile(tmp_path / "ratios.bin")
    np.ascontiguousarray(state, np.float32).tofile(tmp_path / "state.bin")
    thr = saturation_threshold(params.saturation, raw.dtype)
    subprocess.run([str(exe), str(tmp_path), "u16", {np.float16: "f16", np.uint16: "c16"}.get(out_dtype, "f32"),
                    str(raw.shape[0]), str(params.n_pixels), str(params.n_terms), str(int(params.amplitudes.ndim > 1)),
                    str(params.neighbours.shape[1]), str(params.targets.size),
                    "nan" if np.isnan(thr) else repr(float(thr)), str(int(params.nonfinite_to_nan)), "1.0", "0.0",
                    str(lanes)], check=True)
    out = np.fromfile(tmp_path / "out.bin", out_dtype).reshape(raw.shape)
    st = np.fromfile(tmp_path / "state_out.bin", np.float32).reshape((params.n_terms, h, w))
    return out, st


def _same(a, b):
    """Bit for bit, any NaN equal to any NaN."""
    na, nb = np.isnan(a), np.isnan(b)
    np.testing.assert_array_equal(na, nb)
    np.testing.assert_array_equal(a[~na].view(np.uint32), b[~nb].view(np.uint32))


@pytest.fixture(scope="module")
def exe(build_emulated):
    return build_emulated("run_correct")


@pytest.mark.parametrize("n_terms", [0, 2])
def test_fused_kernel_emulated_stuck_pixel_equals_cpu_chain(exe, tmp_path, n_terms):
    from pipeline.conveyor import parameters_from_chain

    rng = np.random.default_rng(4)
    cal, raw = _detector(rng, t=6)
    stages = []
    if n_terms:  # the afterglow between head and tail: the replacement enters the lag state, the mask after it
        model = SimpleNamespace(amplitudes=np.array([0.03, 0.01]), ratios=np.array([0.6, 0.95]))
        stages.append(AfterglowStage(model, AfterglowConfig(initial_state="zero")))
    chain = Chain(FlatFieldStage(cal, FlatFieldConfig(), np.uint16), stages)
    params = parameters_from_chain(chain, (H, W))
    blocks = [raw[:4], raw[4:]]
    states, st = None, np.zeros((n_terms, H, W), np.float32)
    outs = []
    for b, block in enumerate(blocks):
        ref, states = chain(block.copy(), states)
        for lanes in (1, 4):  # one pixel a thread, and four
            got, st_k = _run_kernel(exe, tmp_path, block, params, st.copy(), lanes=lanes)
            _same(got, ref)
            if n_terms:
                _same(st_k, states[0])
        st = st_k
        outs.append(got)
    _check_rule(np.concatenate(outs), raw, cal, values=n_terms == 0)
    # the float16 output and the uint16 code mark the same pixels (0x7E00 and code 0)
    half, _ = _run_kernel(exe, tmp_path, raw[:4], params, np.zeros((n_terms, H, W), np.float32), np.float16)
    ref, _ = chain(raw[:4].copy(), None)
    np.testing.assert_array_equal(np.isnan(half), np.isnan(ref))
    code, _ = _run_kernel(exe, tmp_path, raw[:4], params, np.zeros((n_terms, H, W), np.float32), np.uint16)
    np.testing.assert_array_equal(code == 0, np.isnan(ref))
