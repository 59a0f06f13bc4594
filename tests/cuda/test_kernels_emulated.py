"""CUDA kernels' logic on the CPU: the .cu source compiled with g++ under an emulation header,
compared with the NumPy reference ops (bit for bit: same float32 operations in the same order)."""

import shutil
import subprocess

import numpy as np
import pytest

from pipeline.ops.afterglow import remove_lag

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not available")


@pytest.fixture(scope="module")
def exe(build_emulated):
    return build_emulated("run_afterglow")


@pytest.mark.parametrize("n_terms,per_pixel", [(1, False), (2, False), (4, False), (3, True)])
def test_remove_lag_kernel_matches_numpy(exe, tmp_path, n_terms, per_pixel):
    rng = np.random.default_rng(n_terms)
    t, h, w = 9, 5, 29  # 145 pixels: three blocks of 64, the last one partly idle
    y = (rng.random((t, h, w)) * 5000).astype(np.float32)
    state = (rng.random((n_terms, h, w)) * 50).astype(np.float32)
    amps = (rng.uniform(0.001, 0.05, (n_terms, h, w)) if per_pixel else rng.uniform(0.001, 0.05, n_terms)).astype(np.float32)
    ratios = rng.uniform(0.2, 0.999, n_terms).astype(np.float32)
    files = {}
    for name, arr in (("y", y), ("s", state), ("a", amps), ("r", ratios)):
        files[name] = tmp_path / f"{name}.bin"
        arr.tofile(files[name])
    subprocess.run([str(exe), str(t), str(h * w), str(n_terms), str(int(per_pixel)), files["y"], files["s"], files["a"],
                    files["r"], tmp_path / "x.bin", tmp_path / "so.bin"], check=True)
    x_k = np.fromfile(tmp_path / "x.bin", np.float32).reshape(t, h, w)
    s_k = np.fromfile(tmp_path / "so.bin", np.float32).reshape(n_terms, h, w)
    x_ref, s_ref = remove_lag(y, amps, ratios.astype(np.float64), state.copy())
    np.testing.assert_array_equal(x_k, x_ref)
    np.testing.assert_array_equal(s_k, s_ref)
