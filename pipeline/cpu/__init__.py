"""CPU kernels compiled with Numba: this package is the only one that imports numba.

The NumPy array code in :mod:`pipeline.ops` is the reference; these kernels do the
same float32 operations in the same order, fused into one pass over memory and
spread over the CPU's cores, so their results are bit-identical to it (tested
in tests/test_jit.py). Without Numba (or with ``XRAY_PIPELINE_NO_JIT=1``)
:func:`available` is False and the ops fall back to their NumPy code.

Kernels are compiled on first use and cached on disk (``cache=True``). One module per family, beside the
op it stands in for: :mod:`.flatfield`, :mod:`.afterglow`, :mod:`.denoise`, :mod:`.stats`, :mod:`.quantise`.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

try:  # Numba is a dependency, but the NumPy path must keep working without it
    if os.environ.get("XRAY_PIPELINE_NO_JIT", "") not in ("", "0"):
        raise ImportError("disabled by XRAY_PIPELINE_NO_JIT")
    import numba as _nb
except Exception:  # pragma: no cover - depends on the machine
    _nb = None


_enabled = True
_layer_ok: bool | None = None  # None: not probed yet

if _nb is not None:
    # Dask calls the kernels from several threads at once: only the OpenMP and TBB layers allow that
    # (Numba's own 'workqueue' layer aborts the process). Without either, the NumPy code runs instead.
    _nb.config.THREADING_LAYER = "threadsafe"


def _threading_layer_ok() -> bool:
    global _layer_ok
    if _layer_ok is None:
        try:
            _probe(np.zeros(4, np.float32))
            _layer_ok = _nb.threading_layer() in ("omp", "tbb")
        except Exception as exc:  # pragma: no cover - a machine without OpenMP and TBB
            import warnings

            warnings.warn(f"Numba kernels off (NumPy code instead): no thread-safe threading layer ({exc}); "
                          "pip install tbb, or install the OpenMP runtime (libgomp)", RuntimeWarning, stacklevel=3)
            _layer_ok = False
    return _layer_ok


def available() -> bool:
    """True when the Numba kernels can be used."""
    return _nb is not None and _enabled and _threading_layer_ok()


@contextlib.contextmanager
def disabled():
    """Within this block the ops use their NumPy code (to compare the kernels with it)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before


if _nb is not None:

    @_nb.njit(parallel=True, cache=True, nogil=True)
    def _probe(a):  # pragma: no cover - compiled
        for i in _nb.prange(a.size):
            a[i] += 1

