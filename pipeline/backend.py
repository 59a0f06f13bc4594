"""Array backend selection: the only module that imports CuPy.

Stages never import NumPy or CuPy by name for computation; they ask
:func:`get_xp` for the module that owns their input array, so the same code
runs on a CPU (NumPy) and on a GPU (CuPy).
"""

from __future__ import annotations

import types

import numpy as np

from .errors import BackendError

try:  # CuPy is an optional extra: importing the package must never need it.
    import cupy as _cp  # type: ignore[import-not-found]
except Exception:  # pragma: no cover - depends on the machine
    _cp = None


def get_xp(array) -> types.ModuleType:
    """Return the array module (``numpy`` or ``cupy``) that owns ``array``."""
    if _cp is not None and isinstance(array, _cp.ndarray):
        return _cp
    return np


def get_ndimage(xp: types.ModuleType) -> types.ModuleType:
    """Return ``scipy.ndimage`` or ``cupyx.scipy.ndimage`` to match ``xp``."""
    if xp is np:
        import scipy.ndimage as ndi

        return ndi
    import cupyx.scipy.ndimage as cndi  # type: ignore[import-not-found]

    return cndi


def to_host(array) -> np.ndarray:
    """Copy an array to host memory as a NumPy array (no-op for NumPy)."""
    if _cp is not None and isinstance(array, _cp.ndarray):
        return _cp.asnumpy(array)
    return np.asarray(array)


def gpu_unavailable_reason() -> str | None:
    """Return why the GPU backend cannot be used, or ``None`` if it can."""
    if _cp is None:
        return "CuPy is not installed (pip install 'xray-pipeline[gpu]')"
    try:
        n = _cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # pragma: no cover - needs a broken driver
        return f"CuPy cannot reach a CUDA device ({exc})"
    if n < 1:  # pragma: no cover
        return "no CUDA device is visible"
    return None


def resolve_device(device: str) -> str:
    """Resolve ``cpu``/``gpu``/``auto`` to the device actually used.

    Returns the resolved name and raises :class:`BackendError` for ``gpu``
    when no GPU can be used.
    """
    if device == "cpu":
        return "cpu"
    reason = gpu_unavailable_reason()
    if device == "gpu":
        if reason:
            raise BackendError(f"execution.device=gpu but {reason}; use --device cpu or auto")
        raise BackendError(
            "execution.device=gpu: the GPU engine is not part of this version yet; "
            "use --device cpu (or auto)"
        )
    return "cpu"


def describe_device(device: str) -> str:
    """A short human description of the device, for provenance."""
    if device == "cpu":
        return f"cpu (numpy {np.__version__})"
    return device  # pragma: no cover
