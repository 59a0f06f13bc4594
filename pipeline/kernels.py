"""CUDA kernels from ``cuda/*.cu``, compiled with ``cupy.RawModule`` on first use and cached per device.

Nothing is compiled at import. A ``#line`` directive makes nvrtc's error messages point at the
``.cu`` file and line.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .errors import BackendError

CUDA_DIR = Path(__file__).resolve().parents[1] / "cuda"


@lru_cache(maxsize=None)
def _module(name: str, device_id: int):
    from .backend import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason:
        raise BackendError(f"CUDA kernel '{name}' needs a GPU: {reason}")
    import cupy as cp  # noqa: F401 - only reached with a working CuPy (see backend)

    src = CUDA_DIR / f"{name}.cu"
    if not src.is_file():
        raise BackendError(f"CUDA source '{src}' is missing; reinstall from the repository")
    code = f'#line 1 "{src}"\n' + src.read_text()
    with cp.cuda.Device(device_id):
        return cp.RawModule(code=code, options=("-std=c++14",))


def get_kernel(name: str, function: str):
    """The kernel ``function`` of ``cuda/<name>.cu`` for the current device."""
    import cupy as cp

    return _module(name, cp.cuda.Device().id).get_function(function)


def remove_lag_gpu(frames, amplitudes, ratios, state):
    """Run ``remove_lag_f32`` on CuPy arrays: frames (T, H, W) float32 in place, state (N, H, W) updated."""
    import cupy as cp
    import numpy as np

    t = frames.shape[0]
    n_pix = int(np.prod(frames.shape[1:]))
    a = cp.ascontiguousarray(cp.asarray(amplitudes, dtype=cp.float32))
    r = cp.asarray(np.asarray(ratios, dtype=np.float32))
    per_pixel = int(a.ndim == 3)
    block = 256
    grid = (n_pix + block - 1) // block
    get_kernel("afterglow", "remove_lag_f32")(
        (grid,), (block,),
        (frames, frames, state, a, r, np.int32(r.size), np.int32(t), np.int64(n_pix), np.int32(per_pixel)),
    )
    return frames, state
