"""CUDA kernels from ``cuda/*.cu``, compiled with ``cupy.RawModule`` on first use and cached per device.

Nothing is compiled at import, and CuPy is reached only through :func:`pipeline.backend.cupy_module`.
A ``#line`` directive makes nvrtc's error messages point at the ``.cu`` file and line.

The fused correction (``cuda/correct.cu``) has three parts here:

* :func:`correction_parameters`: its parameters on the host (NumPy), in the layout it reads;
* :class:`CorrectKernel`: those parameters on the device, launched block after block
  (what :mod:`pipeline.conveyor` uses), and :func:`correct_block_gpu`, a one-call wrapper;
* :func:`pipeline.conveyor.correct_block_reference`: the same computation with the NumPy ops, the
  specification the kernel is tested against (bit for bit, ``tests/cuda/test_correct_emulated.py``);
  it lives with the engine so that this module imports no op (the ops call its kernels).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import BackendError

_PACKAGE = Path(__file__).resolve().parent
#: Where the ``.cu`` sources are looked for, in order: ``$XRAY_PIPELINE_CUDA_DIR``, ``pipeline/cuda``
#: (package data of an installed wheel) and the repository's ``cuda/``.
CUDA_DIR = _PACKAGE.parent / "cuda"
MAX_LAG_TERMS = 4  # XRAY_MAX_LAG_TERMS in the .cu sources
MAX_NEIGHBOURS = 80  # XRAY_MAX_NEIGHBOURS in cuda/correct.cu
_BLOCK = 256  # threads per CUDA block


def cuda_source(name: str) -> Path:
    """Path of ``<name>.cu``; :class:`BackendError` if no search location has it."""
    places = [Path(p) for p in (os.environ.get("XRAY_PIPELINE_CUDA_DIR"),) if p] + [_PACKAGE / "cuda", CUDA_DIR]
    for d in places:
        if (d / f"{name}.cu").is_file():
            return d / f"{name}.cu"
    raise BackendError(f"CUDA source '{name}.cu' not found in {', '.join(map(str, places))}; reinstall the package "
                       "or set XRAY_PIPELINE_CUDA_DIR to the repository's cuda/ folder")


@lru_cache(maxsize=None)
def _module(name: str, device_id: int, defines: tuple = ()):
    from .backend import cupy_module

    cp = cupy_module()
    src = cuda_source(name)
    code = f'#line 1 "{src}"\n' + src.read_text()
    with cp.cuda.Device(device_id):
        return cp.RawModule(code=code, options=("-std=c++14", *(f"-D{d}" for d in defines)))


def get_kernel(name: str, function: str, defines: tuple = ()):
    """The kernel ``function`` of ``cuda/<name>.cu`` for the current device (``defines``: ``NAME=VALUE`` macros
    for the build, e.g. ``("XRAY_FRAMES_IN_FLIGHT=8",)``; each set is built once)."""
    from .backend import cupy_module

    return _module(name, cupy_module().cuda.Device().id, tuple(defines)).get_function(function)


def remove_lag_gpu(frames, amplitudes, ratios, state):
    """Run ``remove_lag_f32`` on CuPy arrays: frames (T, H, W) float32 in place, state (N, H, W) updated."""
    from .backend import cupy_module

    cp = cupy_module()
    t = frames.shape[0]
    n_pix = int(np.prod(frames.shape[1:]))
    a = cp.ascontiguousarray(cp.asarray(amplitudes, dtype=cp.float32))
    r = cp.asarray(np.asarray(ratios, dtype=np.float32))
    per_pixel = int(a.ndim > 1)  # (N, ...) maps, one value per pixel and term
    grid = (n_pix + _BLOCK - 1) // _BLOCK
    get_kernel("afterglow", "remove_lag_f32")(
        (grid,), (_BLOCK,),
        (frames, frames, state, a, r, np.int32(r.size), np.int32(t), np.int64(n_pix), np.int32(per_pixel)),
    )
    return frames, state


# --------------------------------------------------------------------------- fused correction
_INPUTS = {np.dtype(np.uint16): "u16", np.dtype(np.float32): "f32"}
_OUTPUTS = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16", np.dtype(np.uint16): "c16"}  # c16: the code


def saturation_threshold(level: float | None, input_dtype) -> np.float32:
    """The float32 threshold the kernels compare ``float(raw)`` with, for a configured saturation level.

    Chosen so that ``float(raw) >= threshold`` is NumPy's ``raw >= level``: integer input is
    compared exactly (``ceil(level)``, clipped to the dtype's range plus one), float32 input
    against ``float32(level)`` (NumPy 2 compares a float32 array with a Python float in
    float32). ``None`` (no check) gives NaN, which no value reaches.
    """
    dt = np.dtype(input_dtype)
    if level is None or math.isnan(level):
        return np.float32(np.nan)
    if dt.kind in "ui":
        info = np.iinfo(dt)
        if level == math.inf:
            return np.float32(info.max + 1)
        if level == -math.inf:
            return np.float32(info.min)
        return np.float32(min(max(math.ceil(level), info.min), info.max + 1))
    with np.errstate(over="ignore"):
        return np.float32(level)


@dataclass(frozen=True)
class CorrectionParameters:
    """The fused kernel's parameters on the host, in its layout (P = pixels of a frame).

    Attributes
    ----------
    frame_shape : tuple of int
    dark, inv : ndarray (P,) float32
        Dark map and inverse gain ``1 / (gain * scale)``.
    targets : ndarray (n_bad,) int64
        Flat indices of the bad pixels replaced (empty: none).
    neighbours : ndarray (n_bad, K) int32
        Their good neighbours, ``-1`` = none (``neighbour_table``'s table).
    slot : ndarray (P,) int32 or None
        Row of each pixel in ``neighbours``, ``-1`` for a good pixel; None without bad pixels.
    amplitudes : ndarray (N,) or (N, P) float32
    ratios : ndarray (N,) float32
    saturation : float or None
        Configured raw saturation level (None: no check); see :func:`saturation_threshold`.
    nonfinite_to_nan : bool
        Non-finite values become NaN (the CPU chain's afterglow stage does this).
    """

    frame_shape: tuple
    dark: np.ndarray
    inv: np.ndarray
    targets: np.ndarray
    neighbours: np.ndarray
    slot: np.ndarray | None
    amplitudes: np.ndarray
    ratios: np.ndarray
    saturation: float | None
    nonfinite_to_nan: bool

    @property
    def n_pixels(self) -> int:
        return int(np.prod(self.frame_shape))

    @property
    def n_terms(self) -> int:
        return int(self.ratios.size)


def _host(a):
    from .backend import to_host

    return to_host(a)


def correction_parameters(frame_shape, *, dark=None, inv=None, targets=None, neighbours=None, amplitudes=(),
                          ratios=(), saturation: float | None = None,
                          nonfinite_to_nan: bool | None = None) -> CorrectionParameters:
    """Check and lay out the fused kernel's parameters.

    Parameters
    ----------
    frame_shape : tuple of int
        (H, W) of a frame.
    dark, inv : array (H, W), optional
        Dark map (default 0) and inverse gain (default 1), as :func:`pipeline.ops.flatfield.flat_field`
        computes it: ``float32(1) / (gain * float32(scale))`` in float32.
    targets, neighbours : arrays, optional
        From :func:`pipeline.ops.flatfield.neighbour_table`; None: no bad-pixel replacement.
    amplitudes : array (N,) or (N, H, W)
        Afterglow model amplitudes (``()``: no afterglow).
    ratios : array (N,)
        Afterglow decay ratios (float64 is rounded to float32, as ``remove_lag`` does).
    saturation : float, optional
        Raw level at or above which a pixel is NaN in the output.
    nonfinite_to_nan : bool, optional
        Default: True when there are afterglow terms.

    Returns
    -------
    CorrectionParameters
    """
    shape = tuple(int(v) for v in frame_shape)
    p = int(np.prod(shape))
    if p >= 2**31:
        raise ValueError(f"frames of {p} pixels are too large for the fused kernel (int32 indices)")
    dark = np.zeros(p, np.float32) if dark is None else np.ascontiguousarray(_host(dark), np.float32).reshape(-1)
    inv = np.ones(p, np.float32) if inv is None else np.ascontiguousarray(_host(inv), np.float32).reshape(-1)
    if dark.size != p or inv.size != p:
        raise ValueError(f"dark and inv must have the frame shape {shape}")
    r = np.asarray(ratios, dtype=np.float64).astype(np.float32).reshape(-1)
    a = np.ascontiguousarray(_host(amplitudes), dtype=np.float32) if len(r) else np.zeros(0, np.float32)
    if r.size > MAX_LAG_TERMS:
        raise ValueError(f"the fused kernel takes up to {MAX_LAG_TERMS} afterglow terms, not {r.size}")
    if a.ndim == 1 and a.size != r.size or a.ndim > 1 and (a.shape[0] != r.size or a[0].size != p):
        raise ValueError(f"amplitudes must have shape ({r.size},) or ({r.size}, {shape[0]}, {shape[1]})")
    a = a.reshape(r.size, p) if a.ndim > 1 else a
    if targets is None or neighbours is None or np.size(targets) == 0:
        tg, nb, slot = np.zeros(0, np.int64), np.full((0, 1), -1, np.int32), None
    else:
        tg = np.asarray(_host(targets), dtype=np.int64).reshape(-1)
        nb64 = np.asarray(_host(neighbours), dtype=np.int64)
        if nb64.ndim != 2 or nb64.shape[0] != tg.size or nb64.shape[1] > MAX_NEIGHBOURS:
            raise ValueError(f"neighbours must be ({tg.size}, K <= {MAX_NEIGHBOURS}) from neighbour_table")
        if tg.min() < 0 or tg.max() >= p or nb64.max(initial=-1) >= p:
            raise ValueError("bad-pixel indices outside the frame")
        nb = np.ascontiguousarray(nb64, dtype=np.int32)
        slot = np.full(p, -1, np.int32)
        slot[tg] = np.arange(tg.size, dtype=np.int32)
    if nonfinite_to_nan is None:
        nonfinite_to_nan = r.size > 0
    return CorrectionParameters(shape, dark, inv, tg, nb, slot, a, r, None if saturation is None else float(saturation),
                                bool(nonfinite_to_nan))


def _check_dtypes(raw_dtype, out_dtype):
    raw_dtype, out_dtype = np.dtype(raw_dtype), np.dtype(out_dtype)
    if raw_dtype not in _INPUTS:
        raise ValueError(f"the fused kernel reads uint16 or float32 frames, not {raw_dtype}")
    if out_dtype not in _OUTPUTS:
        raise ValueError(f"the fused kernel writes float32, float16 or the uint16 code, not {out_dtype}")
    return raw_dtype, out_dtype


#: Pixels per thread of the fused kernel where the frame size and the buffers allow (``_v4`` kernels: 8-
#: and 16-byte accesses); ``XRAY_PIPELINE_KERNEL_LANES=1`` turns them off.
LANES = 4


class CorrectKernel:
    """The fused correction with its parameters on the current GPU, launched block after block.

    Parameters
    ----------
    params : CorrectionParameters
    lanes : {1, 4}, optional
        Pixels per thread: 4 (default, ``$XRAY_PIPELINE_KERNEL_LANES`` or :data:`LANES`) where the frame's
        pixel count is a multiple of 4 and every buffer is aligned to 4 values, else 1. The results are
        identical (each pixel gets the same operations); only the memory accesses differ.
    defines : tuple of str, optional
        Macros for building ``cuda/correct.cu`` (benchmarks try other ``XRAY_FRAMES_IN_FLIGHT``).
    register_medians : bool
        The bad pixels' medians in registers for tables of up to 8 or 24 columns (default); False
        builds the generic version (a local array) for every table, to compare (same results).
    """

    def __init__(self, params: CorrectionParameters, *, lanes: int | None = None, defines: tuple = (),
                 register_medians: bool = True):
        from .backend import cupy_module

        cp = self._cp = cupy_module()
        self.params = params
        given = lanes if lanes is not None else os.environ.get("XRAY_PIPELINE_KERNEL_LANES", LANES)
        if str(given).strip() not in ("1", "4"):
            raise ValueError(f"pixels per thread (lanes, or $XRAY_PIPELINE_KERNEL_LANES) must be 1 or 4, not {given!r}")
        lanes = int(given)
        self.lanes = lanes if params.n_pixels % 4 == 0 else 1
        self.dark = cp.asarray(params.dark)
        self.inv = cp.asarray(params.inv)
        self.slot = cp.asarray(params.slot) if params.slot is not None else None
        self.neighbours = cp.asarray(params.neighbours)
        self.amplitudes = cp.asarray(params.amplitudes if params.n_terms else np.zeros(1, np.float32))
        self.ratios = cp.asarray(params.ratios if params.n_terms else np.zeros(1, np.float32))
        self.no_state = cp.zeros(1, cp.float32)
        # compiled now: a missing compiler or a bad source fails at set-up, not in the middle of a run
        self._functions = {(r, o, v): get_kernel("correct", f"correct_{_INPUTS[r]}_{_OUTPUTS[o]}{'_v4' if v > 1 else ''}",
                                                 defines)
                           for r in _INPUTS for o in _OUTPUTS for v in {1, self.lanes}}
        self._saturate = {r: get_kernel("correct", f"saturate_{_INPUTS[r]}", defines) for r in _INPUTS}
        # with bad pixels: the saturation of the good ones, then of the bad ones by their neighbours
        self._saturate_good = {r: get_kernel("correct", f"saturate_good_{_INPUTS[r]}", defines) for r in _INPUTS}
        self._saturate_bad = {(r, o): get_kernel("correct", f"saturate_bad_{_INPUTS[r]}_{_OUTPUTS[o]}", defines)
                              for r in _INPUTS for o in _OUTPUTS}
        # the medians in registers for tables of up to 8 or 24 columns (bad pixels with good neighbours within
        # radius 1 or 2), the generic version (a local array) for wider ones
        k = int(params.neighbours.shape[1])
        width = ("_k8" if k <= 8 else "_k24" if k <= 24 else "") if register_medians else ""
        self.median_kernel = f"bad_heads_*{width}"  # which one runs (reported by the benchmark)
        self._bad_heads = {r: get_kernel("correct", f"bad_heads_{_INPUTS[r]}{width}", defines) for r in _INPUTS}
        self.n_bad = int(params.targets.size)
        self.targets = cp.asarray(params.targets.astype(np.int32))  # each bad pixel's flat index (saturate_bad_*)
        self._bad = cp.empty(0, cp.float32)  # (T, n_bad) replacement values, grown to the largest block once

    def _function(self, raw_dtype, out_dtype, lanes: int = 1):
        return self._functions[np.dtype(raw_dtype), np.dtype(out_dtype), lanes]

    def _saturate_function(self, raw_dtype):
        return self._saturate[np.dtype(raw_dtype)]

    def __call__(self, raw, out, state, *, saturation: bool = True, stream=None, scale: float = 1.0,
                 offset: float = 0.0):
        """Correct ``raw`` (T, H, W) into ``out`` (T, H, W) on the current (or given) stream.

        ``state`` (N, H, W) float32 is updated in place (ignored without afterglow terms);
        ``saturation=False`` leaves saturated pixels for :meth:`saturate`. A uint16 ``out`` receives
        the storage code with ``scale`` and ``offset`` (:func:`pipeline.io.packing.encode`).
        """
        cp, p = self._cp, self.params
        _check_dtypes(raw.dtype, out.dtype)
        t, n = int(raw.shape[0]), p.n_pixels
        if raw.size != t * n or out.shape != raw.shape:
            raise ValueError(f"raw and out must be (T, {', '.join(map(str, p.frame_shape))}) of the same shape")
        if not (raw.flags.c_contiguous and out.flags.c_contiguous):
            raise ValueError("raw and out must be C-contiguous")
        if p.n_terms and (state is None or state.dtype != cp.float32 or state.size != p.n_terms * n
                          or not state.flags.c_contiguous):
            raise ValueError(f"state must be a C-contiguous ({p.n_terms}, {n}) float32 array")
        thr = saturation_threshold(p.saturation if saturation else None, raw.dtype)
        out_arg = out.view(cp.uint16) if out.dtype == cp.float16 else out
        slot = self.slot if self.slot is not None else np.uint64(0)  # NULL: no bad pixels
        if t == 0:
            return out
        nb = self.n_bad if self.slot is not None else 0
        with stream if stream is not None else _null():
            if nb and self._bad.size < t * nb:  # grown once, on the stream that uses it
                self._bad = cp.empty(t * nb, cp.float32)
            bad = self._bad if nb else self.no_state
            args = (raw, out_arg, state if p.n_terms else self.no_state, self.dark, self.inv, slot, bad,
                    np.int32(nb), self.amplitudes, self.ratios, np.int32(p.n_terms), np.int32(p.amplitudes.ndim > 1),
                    np.int32(t), np.int64(n), thr, np.int32(p.nonfinite_to_nan), np.float32(scale), np.float32(offset))
            if nb:  # the bad pixels' replacement values (medians of their neighbours), one thread per pixel and frame
                self._bad_heads[np.dtype(raw.dtype)](
                    ((t * nb + _BLOCK - 1) // _BLOCK,), (_BLOCK,),
                    (raw, self.dark, self.inv, self.neighbours, np.int32(self.neighbours.shape[1]), np.int32(nb),
                     np.int32(t), np.int64(n), bad))
            v = self.lanes if self.lanes > 1 and all(array_address(a) % (a.itemsize * self.lanes) == 0
                                                     for a in (raw, out, state if p.n_terms else None)
                                                     if a is not None) else 1
            threads = n // v
            self._function(raw.dtype, out.dtype, v)(((threads + _BLOCK - 1) // _BLOCK,), (_BLOCK,), args)
            if nb and not np.isnan(thr):  # the bad pixels saturated by their neighbours (never by their own value)
                self._saturate_bad_launch(raw, out_arg, out.dtype, t, thr)
        return out

    def _saturate_bad_launch(self, raw, out_arg, out_dtype, t: int, thr):
        nb = self.n_bad
        self._saturate_bad[np.dtype(raw.dtype), np.dtype(out_dtype)](
            ((t * nb + _BLOCK - 1) // _BLOCK,), (_BLOCK,),
            (raw, out_arg, self.dark, self.inv, self.neighbours, self.targets, np.int32(self.neighbours.shape[1]),
             np.int32(nb), np.int32(t), np.int64(self.params.n_pixels), thr))

    def saturate(self, raw, out, *, stream=None):
        """Set ``out`` (float32, the shape of ``raw``) to NaN where ``raw`` is saturated."""
        cp = self._cp
        if out.dtype != cp.float32 or out.shape != raw.shape or not (raw.flags.c_contiguous and out.flags.c_contiguous):
            raise ValueError("saturate needs C-contiguous raw and float32 out of one shape")
        thr = saturation_threshold(self.params.saturation, raw.dtype)
        if np.isnan(thr) or raw.size == 0:
            return out
        with stream if stream is not None else _null():
            grid = ((raw.size + _BLOCK - 1) // _BLOCK,)
            if self.slot is None:
                self._saturate_function(raw.dtype)(grid, (_BLOCK,), (raw, out, np.int64(raw.size), thr))
            else:  # the good pixels by their raw values, the bad ones by their neighbours'
                self._saturate_good[np.dtype(raw.dtype)](grid, (_BLOCK,), (raw, out, np.int64(raw.size), thr, self.slot,
                                                                         np.int64(self.params.n_pixels)))
                self._saturate_bad_launch(raw, out, out.dtype, int(raw.size // self.params.n_pixels), thr)
        return out


def array_address(a) -> int:
    """Device (CuPy) or host (NumPy) address of an array's first element (a view from an array's start: its own)."""
    data = getattr(a, "data", None)
    return int(data.ptr) if hasattr(data, "ptr") else int(a.ctypes.data)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def correct_block_gpu(raw, dark, inv, targets, neighbours, amps, ratios, state, saturation, out_dtype=np.float32, *,
                      nonfinite_to_nan: bool | None = None):
    """Fused flat field, bad pixels, afterglow and saturation of one block on the GPU (one call).

    Parameters
    ----------
    raw : CuPy or NumPy array (T, H, W) uint16 or float32
    dark, inv : arrays (H, W) float32
        Dark map; inverse gain ``1 / (gain * scale)`` as ``flat_field`` computes it.
    targets, neighbours : arrays or None
        From ``neighbour_table`` (None: no replacement).
    amps, ratios : arrays
        Afterglow amplitudes (N,) or (N, H, W) and ratios (N,); empty for none.
    state : CuPy array (N, H, W) float32 or None
        Updated in place (zeros when None).
    saturation : float or None
        Raw saturation level.
    out_dtype : float32 or float16
    nonfinite_to_nan : bool, optional
        Default: True when there are afterglow terms (as the CPU chain's afterglow stage).

    Returns
    -------
    out : CuPy array (T, H, W) of ``out_dtype``
    state : CuPy array (N, H, W) float32

    Notes
    -----
    Uploads the parameters and compiles on every call; for a sequence of blocks use
    :class:`CorrectKernel` (or :mod:`pipeline.conveyor`) once.
    """
    from .backend import cupy_module

    cp = cupy_module()
    params = correction_parameters(raw.shape[1:], dark=dark, inv=inv, targets=targets, neighbours=neighbours,
                                   amplitudes=amps, ratios=ratios, saturation=saturation,
                                   nonfinite_to_nan=nonfinite_to_nan)
    kernel = CorrectKernel(params)
    raw = cp.ascontiguousarray(cp.asarray(raw))
    if state is None:
        state = cp.zeros((params.n_terms,) + tuple(raw.shape[1:]), cp.float32)
    out = cp.empty(raw.shape, np.dtype(out_dtype))
    kernel(raw, out, state)
    return out, state


# --------------------------------------------------------------------------- denoisers (cuda/denoise.cu)
NLM_RUN = 16  # XRAY_NLM_RUN in cuda/denoise.cu: output rows per thread
NLM_MAX_PATCH = 15  # XRAY_NLM_MAX_PATCH
#: Patch sizes with their own NLM kernel (nl_means_f32_p<N>: every per-thread array in registers; others: nl_means_f32)
NLM_SPECIALISED = (3, 5, 7)


def gpu_launcher(module: str):
    """``launch(function, grid, block, args)`` for the kernels of ``cuda/<module>.cu`` on the current GPU.

    The wrappers below take such a launcher, so their host logic also runs with the same kernels
    compiled for the CPU (``tests/cuda/test_denoise_emulated.py``).
    """
    def launch(function: str, grid: int, block: int, args: tuple):
        get_kernel(module, function)((grid,), (block,), args)

    return launch


def temporal_filter_kernel(frames, state, *, out, alpha: float, beta: float, infl: float, gain_min: float, lo: float,
                           span: float, hold: float, smooth: int, launch=None):
    """The temporal filter of :func:`pipeline.ops.denoise.temporal_filter` with ``temporal_step_f32``.

    ``frames`` and ``out`` (T, H, W) float32 C-contiguous (``out`` may be ``frames``); ``state``
    (2, H, W) (previous estimate, previous gain) or None (start from the first frame). One launch
    per frame; the estimate alternates between two buffers (the kernel reads its neighbours' old
    estimates), and frame ``k``'s output is written by the launch for frame ``k + 1`` (from the
    estimate it reads) so that ``out`` may overwrite the frames. Returns ``(out, state)``.
    """
    from .backend import get_xp

    xp = get_xp(frames)
    launch = launch or gpu_launcher("denoise")
    t, h, w = frames.shape
    f32 = np.float32
    if state is None:
        if t == 0:
            return out, None
        x = frames[0].astype(f32, copy=True)
        k = xp.ones((h, w), f32)
        if out is not frames:
            out[0] = x
        start = 1
    else:
        x, k, start = state[0].astype(f32, copy=True), state[1].astype(f32, copy=True), 0
    x_next = xp.empty_like(x)
    grid = (h * w + _BLOCK - 1) // _BLOCK
    scalars = (np.int32(h), np.int32(w), np.int32(max(int(smooth), 1)), f32(alpha), f32(beta), f32(infl),
               f32(gain_min), f32(lo), f32(span), f32(hold))
    for i in range(start, t):
        prev = out[i - 1] if i > 0 else np.uint64(0)  # NULL: nothing to write (CuPy passes a uint64 as a pointer)
        launch("temporal_step_f32", grid, _BLOCK, (frames[i], x, k, x_next, prev) + scalars)
        x, x_next = x_next, x
    if t > start:
        out[t - 1] = x
    return out, xp.stack([x, k])


def nl_means_kernel(image, *, h: float, patch_size: int, patch_distance: int, sigma: float, launch=None):
    """Non-local means of one (H, W) image with ``nl_means_f32`` (float32): the result, float32.

    The weights and sums of :func:`pipeline.ops.denoise.nl_means`, in float32 (the reference sums in
    float64). ``patch_size`` up to :data:`NLM_MAX_PATCH`.
    """
    from .backend import get_xp

    if not 1 <= int(patch_size) <= NLM_MAX_PATCH:
        raise ValueError(f"nlm_patch {patch_size} is outside 1..{NLM_MAX_PATCH}, the GPU kernel's range; "
                         "choose a smaller patch")
    xp = get_xp(image)
    launch = launch or gpu_launcher("denoise")
    f = xp.ascontiguousarray(image, dtype=np.float32)
    out = xp.empty_like(f)
    hh, ww = f.shape
    n = ((hh + NLM_RUN - 1) // NLM_RUN) * ww
    name = f"nl_means_f32_p{int(patch_size)}" if int(patch_size) in NLM_SPECIALISED else "nl_means_f32"
    launch(name, (n + _BLOCK - 1) // _BLOCK, _BLOCK,
           (f, out, np.int32(hh), np.int32(ww), np.int32(patch_distance), np.int32(patch_size),
            np.float32(1.0 / (float(h) * float(h))), np.float32(2.0 * float(sigma) ** 2)))
    return out


GUIDED_RUN = 32  # XRAY_GUIDED_RUN in cuda/denoise.cu: rows per thread of the column sums


def guided_kernel(frames, *, radius: int, eps: float, gat: tuple, out=None, launch=None):
    """The guided filter of :func:`pipeline.ops.denoise.guided_denoise`, frame by frame, with cuda/denoise.cu.

    Parameters
    ----------
    frames : array (T, H, W) float32, C-contiguous, finite
    radius, eps : int, float
        Box radius (the box is ``2 radius + 1`` square, scipy 'reflect' edges) and the regularisation.
    gat : tuple
        ``(mode, k, c, alpha, ib)`` of the transform around the filter
        (:func:`pipeline.ops.denoise.gat_codes`).
    out : array like ``frames``, optional
        The result; it may be ``frames`` (each output pixel is written from its own input pixel last).
    launch : callable, optional
        ``launch(function, grid, block, args)``; default: :func:`gpu_launcher` ``("denoise")``.

    Returns
    -------
    array (T, H, W) float32
        Four launches per frame (column sums, coefficients, their column sums, the output), with two
        float64 and two float32 frame-sized buffers reused across frames.
    """
    from .backend import get_xp

    xp = get_xp(frames)
    launch = launch or gpu_launcher("denoise")
    t, h, w = frames.shape
    out = xp.empty_like(frames) if out is None else out
    s1, s2 = xp.empty((h, w), np.float64), xp.empty((h, w), np.float64)
    a, b = xp.empty((h, w), np.float32), xp.empty((h, w), np.float32)
    mode, k, c, alpha, ib = gat
    f32 = np.float32
    dims = (np.int32(h), np.int32(w), np.int32(radius))
    transform = (np.int32(mode), f32(k), f32(c), f32(alpha))
    scale = np.float64(1.0 / (2 * int(radius) + 1) ** 2)
    grid_px = (h * w + _BLOCK - 1) // _BLOCK
    grid_cols = (((h + GUIDED_RUN - 1) // GUIDED_RUN) * w + _BLOCK - 1) // _BLOCK
    for i in range(t):
        launch("guided_colsum_f32", grid_cols, _BLOCK, (frames[i], s1, s2) + dims + transform)
        launch("guided_coef_f32", grid_px, _BLOCK, (s1, s2, a, b) + dims + (np.float64(eps), scale))
        launch("guided_colsum_ab_f32", grid_cols, _BLOCK, (a, b, s1, s2) + dims)
        launch("guided_apply_f32", grid_px, _BLOCK,
               (frames[i], s1, s2, out[i]) + dims + (scale,) + transform + (f32(ib),))
    return out
