"""The Numba CPU kernels against the NumPy array code they replace (bit for bit)."""

import subprocess
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
