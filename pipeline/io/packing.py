"""Storage types for corrected frames: float32 (exact), float16, or uint16 with a linear scale.

A float32 result takes 4 bytes per pixel, twice the raw frame: on a GPU the download then
limits a run to half the upload rate, and on disk the output is twice the input. float16
(11 significant bits) and uint16 (``round(value * scale + offset)``) take 2 bytes.

The uint16 code follows the CF packing convention, so readers that know it (xarray, netCDF
tools) decode it without help: ``value = stored * scale_factor + add_offset`` with
``scale_factor = 1 / scale``, ``add_offset = -offset / scale``, and ``missing_value`` 0 for a
missing value (NaN: a bad or saturated pixel). Finite values are rounded to nearest and
clipped to 1..65535; infinities go to the nearest end.
"""

from __future__ import annotations

import numpy as np

from ..backend import get_xp

STORAGE_DTYPES = ("float32", "float16", "uint16")
#: Default uint16 scale and offset per flat-field output, so that the noise around zero (counts at the
#: dark level, transmission behind a thick object, attenuation in open beam) is kept, not clipped:
#: counts -100..65435 in steps of 1; transmission -0.01..1.3007 in steps of 2e-5; attenuation
#: (-ln T) -0.1..6.4535 in steps of 1e-4 (T down to 0.0016).
DEFAULT_SCALE = {"counts": 1.0, "transmission": 50000.0, "attenuation": 10000.0}
DEFAULT_OFFSET = {"counts": 100.0, "transmission": 500.0, "attenuation": 1000.0}
MISSING = 0  # the uint16 code of NaN


def encode(values, dtype: str, *, scale: float = 1.0, offset: float = 0.0, out=None):
    """Frames (float32) in their storage type.

    Parameters
    ----------
    values : array (..., H, W), float32
    dtype : {"float32", "float16", "uint16"}
        float32: ``values`` itself; float16: rounded to nearest even (beyond 65504: +-Inf);
        uint16: ``rint(values * scale + offset)`` in float32, clipped to 1..65535, NaN -> 0.
    scale, offset : float
        The uint16 code's (see the module docstring).
    out : array, optional
        Receives the result (of the storage type).
    """
    xp = get_xp(values)
    if dtype == "float32":
        res = values.astype(np.float32, copy=False)
    elif dtype == "float16":
        with np.errstate(over="ignore"):  # beyond 65504: Inf, as documented (and counted by at_limit)
            res = values.astype(np.float16)
    elif dtype == "uint16":
        if xp is np and isinstance(values, np.ndarray) and values.dtype == np.float32:
            from ..cpu.quantise import code_u16_into  # one parallel pass; bit-identical to the code below

            dst = out if isinstance(out, np.ndarray) and out.dtype == np.uint16 and out.flags.c_contiguous \
                and out.shape == values.shape else np.empty(values.shape, np.uint16)
            if code_u16_into(np.ascontiguousarray(values), scale, offset, dst) is not None:
                if out is not None and dst is not out:
                    out[...] = dst
                    return out
                return dst
        v = values.astype(np.float32) * np.float32(scale)
        v += np.float32(offset)
        xp.rint(v, out=v)
        nan = xp.isnan(v)
        xp.clip(v, 1, 65535, out=v)
        xp.copyto(v, np.float32(MISSING), where=nan)  # not v[nan] = ...: on a GPU that waits for the device
        res = v.astype(np.uint16)
    else:
        raise ValueError(f"unknown storage dtype '{dtype}'; choose one of {', '.join(STORAGE_DTYPES)}")
    if out is None:
        return res
    out[...] = res
    return out


def decode(stored, *, scale: float = 1.0, offset: float = 0.0):
    """Stored frames back as float32 values (float32 input is returned as is)."""
    if stored.dtype == np.float32:
        return stored
    if stored.dtype == np.uint16:
        v = stored.astype(np.float32)
        v -= np.float32(offset)
        v /= np.float32(scale)
        v[stored == MISSING] = np.nan
        return v
    return stored.astype(np.float32)


def at_limit(stored) -> int:
    """How many stored values sit at the ends of their type's range (clipped, or an infinity).

    uint16: codes 1 and 65535; float16 and float32: +-Inf.
    """
    xp = get_xp(stored)
    if stored.dtype == np.uint16:
        return int(xp.count_nonzero(stored == 1) + xp.count_nonzero(stored == 65535))
    return int(xp.count_nonzero(xp.isinf(stored)))


def cf_attributes(dtype: str, *, scale: float = 1.0, offset: float = 0.0) -> dict:
    """Attributes that describe the code to readers (CF names plus this package's own record)."""
    if dtype != "uint16":
        return {"xray_pipeline_storage": {"dtype": dtype}}
    return {"scale_factor": 1.0 / float(scale), "add_offset": -float(offset) / float(scale), "missing_value": MISSING,
            "xray_pipeline_storage": {"dtype": "uint16", "scale": float(scale), "offset": float(offset),
                                      "missing": MISSING}}
