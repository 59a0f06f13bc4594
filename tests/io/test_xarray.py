"""Outputs that xarray opens: every array carries Zarr v3 ``dimension_names``, and the packed uint16 output decodes
through CF (``scale_factor``/``add_offset``/``missing_value``) to the values the pipeline reads back itself."""

import numpy as np
import pytest
import zarr

import pipeline
from pipeline.io import zarr_store

xr = pytest.importorskip("xarray")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("xr")
    sim = pipeline.simulate(d / "s.zarr", frames=8, size=(128, 128), chunk_frames=4)
    f32 = pipeline.run(sim, d / "f.zarr", overrides=["mtf.enabled=true"]).output
    u16 = pipeline.run(sim, d / "u.zarr", overrides=["output.dtype=uint16"]).output
    return sim, f32, u16


def _arrays(path):
    return {
        name: node for name, node in zarr.open_group(str(path), mode="r").members(max_depth=None)
        if isinstance(node, zarr.Array)}


def test_every_array_has_dimension_names(runs):
    for path in runs:
        for name, a in _arrays(path).items():
            dims = a.metadata.dimension_names
            assert dims is not None and len(dims) == a.ndim, (path, name)


def test_xarray_opens_each_group(runs):
    sim, f32, u16 = runs
    ds = xr.open_zarr(sim, consolidated=False)
    assert ds.frames.dims == ("t", "y", "x") and ds.darks.dims == ("t_darks", "y", "x")
    got = xr.open_zarr(f32, consolidated=False)
    np.testing.assert_array_equal(got.frames.values, zarr.open_group(str(f32), mode="r")["frames"][:])
    assert xr.open_zarr(f32, group="calibration", consolidated=False).gain.dims == ("y", "x")
    m = xr.open_zarr(f32, group="mtf", consolidated=False)
    assert m.mtf.dims == ("t", "f") and m.mtf20_lp_per_mm.dims == ("t",) and m.sizes["t"] == 8


def test_packed_uint16_decodes_to_the_pipelines_values(runs):
    _, _, u16 = runs
    got = xr.open_zarr(u16, consolidated=False).frames.values  # CF decoding: scale_factor, add_offset, missing
    want = np.asarray(zarr_store.open_input(u16).frames[:], np.float64)  # the pipeline's own decoding
    np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
    assert np.isnan(got).sum() == np.isnan(want).sum()
