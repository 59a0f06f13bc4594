"""output.dtype: corrected frames stored as float32, float16 or scaled uint16, end to end (CPU engine)."""

import numpy as np
import pytest
import zarr

import pipeline
from pipeline.errors import RunInterrupted
from pipeline.io.zarr_store import open_input

OVER = {"execution": {"chunk_frames": 4, "scheduler": "synchronous"}, "flatfield": {"output": "transmission"}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("storage")
    src = pipeline.simulate(d / "in.zarr", frames=14, size=(48, 56), seed=3)
    out = {"src": src}
    for dtype in ("float32", "float16", "uint16"):
        out[dtype] = pipeline.run(src, d / f"{dtype}.zarr", {**OVER, "output": {"dtype": dtype}}).output
    return out


def _frames(path):
    return zarr.open_group(str(path), mode="r")["frames"]


def test_float16_and_uint16_hold_the_float32_result(runs):
    exact = _frames(runs["float32"])[:]
    f16 = _frames(runs["float16"])
    assert f16.dtype == np.float16
    np.testing.assert_array_equal(f16[:], exact.astype(np.float16))
    u16 = _frames(runs["uint16"])
    assert u16.dtype == np.uint16
    attrs = dict(u16.attrs)
    assert attrs["xray_pipeline_storage"] == {"dtype": "uint16", "scale": 50000.0, "offset": 500.0, "missing": 0}
    codes = u16[:]
    ok = np.isfinite(exact)
    np.testing.assert_array_equal(codes == 0, ~ok)  # NaN (saturated, bad) is code 0
    cf = codes.astype(np.float64) * attrs["scale_factor"] + attrs["add_offset"]  # what a CF reader computes
    assert np.max(np.abs(cf[ok] - exact[ok])) <= 0.5 / 50000 + 1e-6  # half a code step of transmission
    assert -0.01 < np.nanmin(exact) and np.nanmax(exact) < 1.3  # transmission: inside the default uint16 range
    assert dict(_frames(runs["float32"]).attrs)["xray_pipeline_storage"] == {"dtype": "float32"}


def test_a_packed_output_reads_back_as_values(runs):
    exact = _frames(runs["float32"])[:]
    for dtype, tol in (("uint16", 0.5 / 50000 + 1e-6), ("float16", 2.0 ** -11)):
        ds = open_input(runs[dtype])
        assert ds.frames.dtype == np.float32 and ds.frames.shape == exact.shape
        got, bad = ds.reader().read_block(2, 9, skip=False)
        assert bad == [] and got.dtype == np.float32
        np.testing.assert_array_equal(np.isnan(got), np.isnan(exact[2:9]))
        ok = np.isfinite(got)
        assert np.max(np.abs(got[ok] - exact[2:9][ok]) / np.maximum(np.abs(exact[2:9][ok]), 1)) <= tol


def test_uint16_resume_after_an_interrupt_equals_one_run(runs, tmp_path):
    out = tmp_path / "o.zarr"
    over = {**OVER, "output": {"dtype": "uint16"}}
    seen = []

    def stop_after_two_blocks(n):
        seen.append(n)
        if sum(seen) >= 8:
            raise KeyboardInterrupt

    with pytest.raises(RunInterrupted):
        pipeline.run(runs["src"], out, over, progress=stop_after_two_blocks)
    res = pipeline.run(runs["src"], out, over, resume=True)
    assert zarr.open_group(str(res.output), mode="r").attrs["provenance"]["resumed"]["blocks_kept"]  # checksums matched
    np.testing.assert_array_equal(_frames(res.output)[:], _frames(runs["uint16"])[:])


def test_clipping_is_counted_and_named(tmp_path, runs):
    over = {**OVER, "output": {"dtype": "uint16", "scale": 1e5, "offset": 0.0}}
    with pytest.warns(UserWarning, match=r"output values sit at the ends of uint16's range .*lower output.scale"):
        res = pipeline.run(runs["src"], tmp_path / "clip.zarr", over)
    exact = _frames(runs["float32"])[:]
    code = np.rint(exact.astype(np.float64) * 1e5)
    want = int(np.sum(np.isfinite(exact) & ((code >= 65535) | (code <= 1))))
    assert want > 0
    assert zarr.open_group(str(res.output), mode="r").attrs["provenance"]["stored_at_limit"] == want


def test_export_of_a_uint16_output_writes_its_values(runs, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    path = pipeline.export(runs["uint16"], tmp_path / "o.tif")
    got = tifffile.imread(path)
    exact = _frames(runs["float32"])[:]
    assert got.dtype == np.float32 and got.shape == exact.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(exact))
    ok = np.isfinite(exact)
    assert np.max(np.abs(got[ok] - exact[ok])) <= 0.5 / 50000 + 1e-6


def test_default_offsets_keep_the_noise_around_zero(tmp_path):
    """Attenuation over open beam scatters around 0: the default offset keeps both signs (nothing clipped)."""
    src = pipeline.simulate(tmp_path / "in.zarr", frames=6, size=(48, 56), seed=4)
    over = {**OVER, "flatfield": {"output": "attenuation"}}
    exact = _frames(pipeline.run(src, tmp_path / "f.zarr", over).output)[:]
    assert np.nanmin(exact) < 0  # noise below zero is there
    res = pipeline.run(src, tmp_path / "u.zarr", {**over, "output": {"dtype": "uint16"}})
    prov = zarr.open_group(str(res.output), mode="r").attrs["provenance"]
    assert prov["stored_at_limit"] == 0
    back = open_input(res.output).reader().read_block(0, 6, skip=False)[0]
    ok = np.isfinite(exact)
    assert np.max(np.abs(back[ok] - exact[ok])) <= 0.5 / 10000 + 1e-6


def test_a_packed_output_as_input_in_worker_processes(runs, tmp_path):
    """Decoded frames pickle (scheduler 'processes', dask.distributed): a run over a uint16 output's values."""
    import pickle

    ds = open_input(runs["uint16"])
    again = pickle.loads(pickle.dumps(ds.reader()))
    np.testing.assert_array_equal(again.read_block(0, 3, skip=False)[0], ds.reader().read_block(0, 3, skip=False)[0])
    over = {"flatfield": {"enabled": False}, "execution": {"chunk_frames": 4}}
    a = pipeline.run(runs["uint16"], tmp_path / "s.zarr", {**over, "execution": {"chunk_frames": 4,
                                                                                  "scheduler": "synchronous"}})
    b = pipeline.run(runs["uint16"], tmp_path / "p.zarr", {**over, "execution": {"chunk_frames": 4,
                                                                                  "scheduler": "processes",
                                                                                  "num_workers": 2}})
    np.testing.assert_array_equal(_frames(b.output)[:], _frames(a.output)[:])
    exact = _frames(runs["float32"])[:]
    ok = np.isfinite(exact)
    assert np.max(np.abs(_frames(a.output)[:][ok] - exact[ok])) <= 0.5 / 50000 + 1e-6  # the values, not the codes
