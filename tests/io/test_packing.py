"""Storage codes of the corrected frames (pipeline.io.packing) against their definitions."""

import numpy as np
import pytest

from pipeline.io.packing import at_limit, cf_attributes, decode, encode


def test_uint16_code_round_trip_and_cf_decoding():
    rng = np.random.default_rng(0)
    scale, offset = 50000.0, 200.0
    v = rng.uniform(-0.003, 1.3, (4, 30, 40)).astype(np.float32)  # transmission, a little noise below 0
    v[0, 0, :5] = np.nan
    stored = encode(v, "uint16", scale=scale, offset=offset)
    assert stored.dtype == np.uint16
    assert (stored[0, 0, :5] == 0).all() and (stored[np.isfinite(v)] >= 1).all()
    back = decode(stored, scale=scale, offset=offset)
    ok = np.isfinite(v)
    np.testing.assert_array_equal(np.isnan(back), ~ok)
    # half a code step, plus float32 rounding of value * scale (~65000: ulp 1/256 code) and of the decoded value
    assert np.max(np.abs(back[ok] - v[ok])) <= 0.5 / scale + 4 * float(np.spacing(np.float32(1.3)))
    # a CF reader: value = stored * scale_factor + add_offset, stored == missing_value -> missing
    cf = cf_attributes("uint16", scale=scale, offset=offset)
    cf_values = stored.astype(np.float64) * cf["scale_factor"] + cf["add_offset"]
    np.testing.assert_allclose(cf_values[ok], back[ok], atol=2e-7 * 1.3)
    assert cf["missing_value"] == 0


def test_uint16_clips_and_counts_the_ends():
    v = np.array([[-5.0, 0.2, 1.0, 65534.6, 1e9, np.inf, -np.inf, np.nan]], np.float32)
    stored = encode(v, "uint16", scale=1.0, offset=0.0)
    np.testing.assert_array_equal(stored, [[1, 1, 1, 65535, 65535, 65535, 1, 0]])  # rint(0.2) = 0 -> 1 (0 is NaN)
    assert at_limit(stored) == 7
    assert np.array_equal(encode(np.array([2.5, 3.5], np.float32), "uint16"), [2, 4])  # rint: half to even


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_float16_is_numpy_rounding_and_float32_is_untouched():
    rng = np.random.default_rng(1)
    v = (rng.standard_normal((3, 8, 9)) * 3e4).astype(np.float32)
    v[0, 0, 0] = 7e4  # beyond float16: Inf, counted
    s16 = encode(v, "float16")
    np.testing.assert_array_equal(s16, v.astype(np.float16))
    assert at_limit(s16) == int(np.isinf(v.astype(np.float16)).sum()) >= 1
    np.testing.assert_array_equal(decode(s16), v.astype(np.float16).astype(np.float32))
    assert encode(v, "float32") is v and decode(v) is v
    out = np.empty(v.shape, np.uint16)
    assert encode(v, "uint16", scale=0.5, offset=3e4, out=out) is out
    with pytest.raises(ValueError, match="unknown storage dtype 'int8'"):
        encode(v, "int8")
