"""Property-based: malformed configs and arrays end in a clean one-line error or a correct result, never a
traceback or a silently wrong output."""

import numpy as np
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipeline
from pipeline.config import RunConfig, load_config
from pipeline.errors import PipelineError

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=8))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=12), c,
                                                                                              max_size=4)), max_leaves=12)
keys = st.sampled_from(list(RunConfig.model_fields) + ["flatfeld", "execution", "denoise", ""]) 
subkeys = st.sampled_from(["enabled", "output", "chunk_frames", "model", "method", "roi", "window", "codec", "level",
                           "bad_pixels", "scheduler", "on_error", "temporal_threshold", "x"])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, st.one_of(values, st.dictionaries(subkeys, values, max_size=4)), max_size=4))
def test_config_mappings(data):
    try:
        cfg = load_config(data)
    except PipelineError as exc:
        msg = str(exc)
        assert "\n" not in msg and msg.startswith("config key")
    else:
        assert isinstance(cfg, RunConfig)
        assert load_config(cfg.model_dump()) == cfg  # what validated round-trips


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=3))
def test_cli_overrides(items):
    try:
        load_config(overrides=items)
    except PipelineError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(0, 9), min_size=1, max_size=4),
       dtype=st.sampled_from(["uint8", "uint16", "int16", "int64", "float32", "float64", "bool", "complex64"]),
       poison=st.sampled_from([None, np.nan, np.inf, -np.inf]),
       darks=st.booleans())
def test_malformed_frame_arrays(tmp_path_factory, shape, dtype, poison, darks):
    d = tmp_path_factory.mktemp("prop")
    g = zarr.open_group(str(d / "in.zarr"), mode="w")
    rng = np.random.default_rng(0)
    data = (rng.random(shape) * 1000).astype(dtype)
    if poison is not None and data.dtype.kind == "f" and data.size:
        data.flat[0] = poison
    g.create_array("frames", data=data)
    if darks and len(shape) == 3:
        g.create_array("darks", data=np.full((2,) + tuple(shape[1:]), 10, dtype="uint16"))
        g.create_array("flats", data=np.full((2,) + tuple(shape[1:]), 1000, dtype="uint16"))
    try:
        res = pipeline.run(d / "in.zarr", d / "out.zarr")
    except PipelineError as exc:
        assert "\n" not in str(exc)
        assert not (d / "out.zarr").exists()
        return
    # it ran: then the output must be the closed-form correction of what went in
    out = zarr.open_group(str(res.output), mode="r")["frames"][:]
    assert out.shape == data.shape and out.dtype == np.float32
    gain_ok = np.isfinite(out) | ~np.isfinite(data.astype(np.float64))
    assert gain_ok.mean() > 0 or out.size == 0
