"""Array backend selection: the only module that imports CuPy.

Stages never import NumPy or CuPy by name for computation; they ask
:func:`get_xp` for the module that owns their input array, so the same code
runs on a CPU (NumPy) and on a GPU (CuPy).
"""

from __future__ import annotations

import types
import warnings

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


def to_device(array):
    """Copy an array to the current GPU as a CuPy array (no-op for one already there).

    Raises :class:`BackendError` where no GPU can be used.
    """
    return cupy_module().asarray(array)


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


def cupy_module() -> types.ModuleType:
    """The ``cupy`` module, for the GPU engine (:mod:`pipeline.conveyor`, :mod:`pipeline.kernels`).

    Raises :class:`BackendError` (one line, saying why) where no GPU can be used.
    """
    reason = gpu_unavailable_reason()
    if reason:
        raise BackendError(f"the GPU engine needs a GPU: {reason}")
    return _cp


_said: set[str] = set()


def say_once(message: str) -> None:
    """Warn with ``message`` (a :class:`RuntimeWarning`) the first time it comes up in this process."""
    if message not in _said:
        _said.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def resolve_device(device: str) -> str:
    """Resolve ``cpu``/``gpu``/``auto`` to the device actually used (``cpu`` or ``gpu``).

    ``gpu`` raises :class:`BackendError` when no GPU can be used; ``auto`` then falls back to
    the CPU and says why (once per process). Whether the GPU engine can run a given chain is
    decided later (:func:`pipeline.conveyor.gpu_engine`), with the same rule.
    """
    if device == "cpu":
        return "cpu"
    if device not in ("gpu", "auto"):
        raise BackendError(f"execution.device must be cpu, gpu or auto, not {device!r}")
    reason = gpu_unavailable_reason()
    if reason is None:
        return "gpu"
    if device == "gpu":
        raise BackendError(f"execution.device=gpu but {reason}; use --device cpu or auto")
    say_once(f"execution.device=auto runs on the CPU: {reason}")
    return "cpu"


def describe_device(device: str) -> str:
    """A short human description of the device, for provenance."""
    if device == "cpu":
        return f"cpu (numpy {np.__version__})"
    if device == "gpu" and _cp is not None:
        try:
            dev = _cp.cuda.Device()
            name = _cp.cuda.runtime.getDeviceProperties(dev.id)["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            cuda = _cp.cuda.runtime.runtimeGetVersion()
            return f"gpu {dev.id}: {name} (cupy {_cp.__version__}, CUDA runtime {cuda // 1000}.{cuda % 1000 // 10})"
        except Exception:  # pragma: no cover - a broken driver after the run
            return f"gpu (cupy {_cp.__version__})"
    return device  # pragma: no cover
