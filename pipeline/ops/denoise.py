"""Denoising for low-dose video: noise model, generalised Anscombe transform, spatial and temporal filters.

* Noise model: ``var(z) = alpha * E[z] + beta`` (Poisson-Gaussian, in the data's units),
  estimated from the temporal differences of a few frames (static pixels dominate; a robust
  fit over intensity bins) or, for one image, from Immerkaer's Laplacian estimator.
* Generalised Anscombe transform (GAT) and its closed-form approximation of the exact
  unbiased inverse (Makitalo & Foi 2013), so any Gaussian denoiser (sigma = 1) can be used.
* Spatial denoisers, frame by frame (never a (T, H, W) block as one volume): median, Gaussian,
  bilateral, total variation (Chambolle), non-local means, guided. Median and Gaussian go through
  scipy.ndimage / cupyx.scipy.ndimage; TV through scikit-image on NumPy and ``tv_chambolle``
  here on CuPy (the two agree to rounding, tested); bilateral and non-local means use the array
  code here on both backends, so the CPU and GPU give the same numbers (scikit-image's versions
  approximate differently: a binned range kernel, a symmetric accumulation), checked against
  the filters' definitions computed pixel by pixel.
* The default spatial step, the self-guided filter (He et al.) inside the GAT: box statistics in
  O(1) per pixel; the array code (scipy / cupyx ``uniform_filter``) on both backends, a fused
  Numba kernel on a CPU (GAT, filter and inverse in two passes; equal to float32 rounding).
* Temporal filter: a recursive (IIR) filter whose per-pixel gain rises to 1 where the
  (locally smoothed) change exceeds a multiple of the local noise, so moving objects leave
  no trail; its state (the previous estimate) crosses blocks exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..backend import get_ndimage, get_xp, to_host
from .filters import median_filter

SPATIAL_METHODS = ("none", "median", "gaussian", "bilateral", "tv", "nlm", "guided")
#: The guided filter's defaults (config.DenoiseConfig): box radius (pixels) and eps (noise variances, in the GAT),
#: chosen on benchmarks/results/denoise_methods_cpu.md
GUIDED_RADIUS = 8
GUIDED_EPS = 0.4


# --------------------------------------------------------------------------- noise model
@dataclass(frozen=True)
class NoiseModel:
    """``var = alpha * mean + beta``; ``box_factor``: std of a 3x3 box mean of the noise / std of the noise."""

    alpha: float
    beta: float
    box_factor: float = 1.0 / 3.0
    level: float | None = None  # typical signal, where noise-unit parameters are scaled without the GAT

    def sigma(self, mean):
        xp = get_xp(mean)
        return xp.sqrt(xp.maximum(self.alpha * mean + self.beta, 1e-12))


def immerkaer_sigma(image) -> float:
    """Gaussian noise sigma of one image (Immerkaer 1996): the Laplacian-difference operator's mean |response|."""
    img = np.asarray(to_host(image), dtype=np.float64)
    k = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
    from scipy.signal import convolve2d

    r = convolve2d(img, k, mode="valid")
    h, w = img.shape
    return float(math.sqrt(math.pi / 2) * np.abs(r).sum() / (6 * (w - 2) * (h - 2)))


#: Frame differences the noise fit sorts at most (about; a regular grid of pixels of big frames).
FIT_PIXELS = 2_000_000


def estimate_noise_model(frames, *, bins: int = 24) -> NoiseModel:
    """Estimate ``var = alpha * mean + beta`` from consecutive frames of a video.

    The difference of two frames cancels the scene where it is static; its
    variance is twice the noise variance. Pixels are grouped by mean level in
    ``bins`` quantile bins; in each bin the variance is a robust (MAD) estimate,
    which ignores moving pixels; a weighted line through the bins gives alpha
    and beta. One frame only: Immerkaer's estimator, pure Gaussian (alpha = 0).
    """
    f = np.asarray(to_host(frames), dtype=np.float32)
    if f.ndim == 2 or f.shape[0] < 2:
        img = f if f.ndim == 2 else f[0]
        s = immerkaer_sigma(img)
        return NoiseModel(0.0, s * s)
    from scipy import ndimage as ndi

    # for big frames a regular grid of pixels is plenty for the fit (the box factor uses a whole frame): a stride
    # that leaves at most FIT_PIXELS differences (and at least 2000 a bin), float32 and one sort instead of a mask per
    # bin. At 2048 x 2048 with 8 frames the stride-2 grid (29 M values) took 1.6 s, most of a short run's time
    n = (f.shape[0] - 1) * f.shape[1] * f.shape[2]
    stride = max(1, math.ceil(math.sqrt(n / max(FIT_PIXELS, bins * 2000))))
    sub = f[:, ::stride, ::stride] if stride > 1 else f
    dv = (sub[1:] - sub[:-1]).ravel()
    mv = (np.float32(0.5) * (sub[1:] + sub[:-1])).ravel()
    ok = np.isfinite(dv) & np.isfinite(mv)
    dv, mv = dv[ok], mv[ok]
    from ..jit import argsort_f32

    order = argsort_f32(mv)  # the same permutation in linear time, where Numba runs
    if order is None:
        order = np.argsort(mv, kind="stable")
    dv, mv = dv[order], mv[order]
    xs, ys, ws = [], [], []
    bounds = np.linspace(0, mv.size, bins + 1).astype(np.int64)
    for a, b in zip(bounds[:-1], bounds[1:]):  # equal-count (quantile) bins of the mean level
        if b - a < 200:
            continue
        d = dv[a:b].astype(np.float64)
        mad = np.median(np.abs(d - np.median(d))) * 1.4826
        xs.append(float(mv[a:b].mean(dtype=np.float64)))
        ys.append(mad * mad / 2.0)
        ws.append(b - a)
    if len(xs) < 2:
        s = immerkaer_sigma(f[0])
        return NoiseModel(0.0, s * s)
    xs, ys, ws = np.array(xs), np.array(ys), np.array(ws, dtype=np.float64)
    alpha, beta = np.polyfit(xs, ys, 1, w=np.sqrt(ws))
    if alpha < 0:  # no signal dependence measurable
        alpha, beta = 0.0, float(np.average(ys, weights=ws))
    # how much a 3x3 box mean reduces this (possibly correlated) noise
    d0 = f[1] - f[0]
    box = ndi.uniform_filter(np.nan_to_num(d0), 3)
    r = (np.median(np.abs(box - np.median(box))) / max(np.median(np.abs(d0 - np.median(d0))), 1e-12))
    r = float(np.clip(r, 1.0 / 3.0, 1.0)) if np.isfinite(r) else 1.0 / 3.0
    return NoiseModel(float(alpha), float(beta), r)


# --------------------------------------------------------------------------- GAT
def gat_forward(x, alpha: float, beta: float):
    """Generalised Anscombe transform: ``2 / alpha * sqrt(alpha x + 3/8 alpha^2 + beta)``; noise -> sigma 1.

    With ``alpha = 0`` (pure Gaussian noise) it is the scaling ``x / sqrt(beta)``.
    """
    xp = get_xp(x)
    if alpha <= 0:
        return x / np.float32(math.sqrt(max(beta, 1e-12)))
    a = np.float32(alpha)
    return (np.float32(2.0) / a) * xp.sqrt(xp.maximum(a * x + np.float32(0.375 * alpha * alpha + beta), 0))


def gat_inverse(d, alpha: float, beta: float):
    """Closed-form approximation of the exact unbiased inverse of :func:`gat_forward` (Makitalo & Foi 2013)."""
    xp = get_xp(d)
    if alpha <= 0:
        return d * np.float32(math.sqrt(max(beta, 1e-12)))
    dd = xp.maximum(d, np.float32(0.8))  # the expansion holds for D >~ 0.8 (lambda >~ 0.1)
    s = np.float32(math.sqrt(1.5))
    inv = (np.float32(0.25) * dd * dd + np.float32(0.25) * s / dd - np.float32(11.0 / 8.0) / (dd * dd)
           + np.float32(5.0 / 8.0) * s / (dd * dd * dd) - np.float32(0.125) - np.float32(beta / (alpha * alpha)))
    return np.float32(alpha) * inv


# --------------------------------------------------------------------------- xp implementations (GPU path)
def tv_chambolle(image, weight: float, *, eps: float = 2e-4, max_num_iter: int = 200):
    """Total-variation denoising of one 2D image, Chambolle's (2004) projection algorithm, on xp arrays.

    Minimises ``||u - f||^2 / 2 + weight * TV(u)``; same parameters and stopping rule as
    ``skimage.restoration.denoise_tv_chambolle`` (which it is tested against).
    """
    xp = get_xp(image)
    f = image.astype(xp.float64)
    px = xp.zeros_like(f)
    py = xp.zeros_like(f)
    d = xp.zeros_like(f)
    tau = 1.0 / 4.0  # 1 / (2 * ndim)
    e_prev = 0.0
    out = f
    for i in range(max_num_iter):
        if i > 0:
            # divergence of p
            d = -px - py
            d[:, 1:] += px[:, :-1]
            d[1:, :] += py[:-1, :]
            out = f + d
        else:
            out = f
        e = float((d * d).sum())
        # gradient of out
        gx = xp.zeros_like(f)
        gy = xp.zeros_like(f)
        gx[:, :-1] = out[:, 1:] - out[:, :-1]
        gy[:-1, :] = out[1:, :] - out[:-1, :]
        norm = xp.sqrt(gx * gx + gy * gy)
        e += weight * float(norm.sum())
        norm *= tau / weight
        norm += 1.0
        px = (px - tau * gx) / norm
        py = (py - tau * gy) / norm
        if i == 0:
            e_init = e
            e_prev = e
        else:
            if abs(e_prev - e) < eps * e_init:
                break
            e_prev = e
    return out.astype(image.dtype)


def bilateral(image, sigma_spatial: float, sigma_range: float, *, radius: int | None = None):
    """Bilateral filter of one 2D image on xp arrays (Gaussian spatial and range kernels, reflect borders)."""
    xp = get_xp(image)
    r = int(radius if radius is not None else max(1, math.ceil(2 * sigma_spatial)))
    f = image.astype(xp.float32)
    pad = xp.pad(f, r, mode="reflect")
    h, w = f.shape
    num = xp.zeros_like(f)
    den = xp.zeros_like(f)
    inv_r = np.float32(-0.5 / (sigma_range * sigma_range))
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            ws = np.float32(math.exp(-(dy * dy + dx * dx) / (2 * sigma_spatial * sigma_spatial)))
            nb = pad[r + dy : r + dy + h, r + dx : r + dx + w]
            diff = nb - f
            wgt = ws * xp.exp(diff * diff * inv_r)
            num += wgt * nb
            den += wgt
    return (num / den).astype(image.dtype)


def nl_means(image, h: float, *, patch_size: int = 5, patch_distance: int = 5, sigma: float = 0.0):
    """Non-local means of one 2D image on xp arrays (the 'fast' form: box-filtered squared differences per offset).

    Weights ``exp(-max(d2 - 2 sigma^2, 0) / h^2)`` with ``d2`` the mean squared patch difference,
    as scikit-image's ``denoise_nl_means(fast_mode=True)``.
    """
    xp = get_xp(image)
    if xp is np and image.ndim == 2 and image.shape[0] > 1 and image.shape[1] > 1:
        from ..jit import nl_means_into  # the same sums, row tile by row tile in cache, on all cores

        res = np.empty(image.shape, np.float64)
        if nl_means_into(image, res, h=h, patch_size=patch_size, patch_distance=patch_distance, sigma=sigma):
            return res.astype(image.dtype)
    if xp is not np and image.ndim == 2 and image.size:
        from ..kernels import NLM_MAX_PATCH, nl_means_kernel  # one launch per frame (cuda/denoise.cu), float32 sums

        if 1 <= patch_size <= NLM_MAX_PATCH:
            return nl_means_kernel(image, h=h, patch_size=patch_size, patch_distance=patch_distance,
                                   sigma=sigma).astype(image.dtype, copy=False)
    return _nl_means_arrays(image, h, patch_size=patch_size, patch_distance=patch_distance, sigma=sigma)


def _nl_means_arrays(image, h: float, *, patch_size: int, patch_distance: int, sigma: float):
    # the definition, one array operation per offset: the reference for the kernels (and a fallback)
    xp = get_xp(image)
    ndi = get_ndimage(xp)
    f = image.astype(xp.float64)
    r = int(patch_distance)
    pad = xp.pad(f, r, mode="reflect")
    hh, ww = f.shape
    num = xp.zeros_like(f)
    den = xp.zeros_like(f)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            nb = pad[r + dy : r + dy + hh, r + dx : r + dx + ww]
            d2 = ndi.uniform_filter((nb - f) ** 2, patch_size, mode="reflect")
            wgt = xp.exp(-xp.maximum(d2 - 2 * sigma * sigma, 0) / (h * h))
            num += wgt * nb
            den += wgt
    return (num / den).astype(image.dtype)


def box_mean(image, size: int):
    """Mean over a ``size`` x ``size`` box of each 2D frame (scipy 'reflect' edges).

    Parameters
    ----------
    image : array (H, W) or (..., H, W)
        NumPy or CuPy; leading axes are frames (the box has size 1 along them).
    size : int
        Box side in pixels.

    Returns
    -------
    array of ``image``'s shape and dtype
    """
    ndi = get_ndimage(get_xp(image))
    return ndi.uniform_filter(image, (1,) * (image.ndim - 2) + (int(size), int(size)), mode="reflect")


def guided_filter(image, *, radius: int, eps: float):
    """Self-guided filter (He, Sun & Tang 2013) of each 2D frame: edge-preserving smoothing in O(1) per pixel.

    ``q = mean_box(a) * p + mean_box(b)`` with ``a = var / (var + eps)`` and ``b = (1 - a) * mean``,
    ``mean`` and ``var`` the box statistics of ``p`` (boxes ``2 radius + 1`` square, scipy 'reflect'
    edges). Where the local variance is far below ``eps`` the box mean replaces the pixel; across an
    edge (variance >> ``eps``) the pixel is kept. A linear ramp is returned unchanged for any ``eps``
    at ``2 radius`` or more from the frame's edges; a constant image exactly.

    Parameters
    ----------
    image : array (H, W) or (T, H, W), finite
        NumPy or CuPy; frames are filtered one by one (never across frames).
    radius : int
        Box radius in pixels.
    eps : float
        Regularisation in squared units of ``image`` (inside the GAT: noise variances).

    Returns
    -------
    array of ``image``'s shape; float32 for float32 input
    """
    if image.dtype == np.float32:  # the fused kernels: Numba on a CPU, cuda/denoise.cu on a GPU
        out = _guided_fused(image, radius, eps, gat_codes(None, 0.0))
        if out is not None:
            return out
    return _guided_arrays(image, radius, eps)


def gat_codes(alpha: float | None, beta: float) -> tuple:
    """The GAT around a fused filter as its kernels take it: ``(mode, k, c, alpha, ib)``, float32 numbers.

    Mode 0 (``alpha`` None): no transform. Mode 1 (``alpha`` > 0): forward ``k sqrt(max(alpha x + c, 0))``
    with ``k = 2 / alpha`` and ``c = 3/8 alpha^2 + beta``, inverse :func:`gat_inverse` with
    ``ib = beta / alpha^2``. Mode 2 (``alpha`` <= 0): division by, and multiplication with, ``sqrt(beta)``.
    The same float32 operations as :func:`gat_forward` and :func:`gat_inverse`.
    """
    f32 = np.float32
    if alpha is None:
        return 0, f32(1), f32(0), f32(1), f32(0)
    if alpha <= 0:
        s = f32(math.sqrt(max(beta, 1e-12)))
        return 2, s, f32(0), s, f32(0)
    return 1, f32(2.0) / f32(alpha), f32(0.375 * alpha * alpha + beta), f32(alpha), f32(beta / (alpha * alpha))


def _guided_fused(frames, radius: int, eps: float, gat: tuple):
    # the guided filter (with the GAT ``gat`` around it) of (H, W) or (T, H, W) frames in one fused kernel per
    # pass: Numba on NumPy arrays, cuda/denoise.cu on CuPy ones; None where no kernel takes them
    if frames.ndim not in (2, 3):
        return None
    xp = get_xp(frames)
    block = frames[None] if frames.ndim == 2 else frames
    if xp is np:
        from ..cpu.denoise import guided_into  # GAT, box statistics, box means and inverse in two passes per frame

        block = np.ascontiguousarray(block, dtype=np.float32)
        out = np.empty(block.shape, np.float32)
        if not guided_into(block, out, radius=radius, eps=eps, gat=gat):
            return None
    else:
        from ..kernels import guided_kernel  # four launches per frame

        out = guided_kernel(xp.ascontiguousarray(block, dtype=xp.float32), radius=radius, eps=eps, gat=gat)
    return out[0] if frames.ndim == 2 else out


def _guided_arrays(p, radius: int, eps: float):
    # the definition in array operations (box statistics in float64: E[p^2] - E[p]^2 of float32 data that sits
    # far from zero, as inside the GAT, would lose the variance): the reference for the kernel, and the GPU path
    xp = get_xp(p)
    size = 2 * int(radius) + 1
    ft = p.dtype if p.dtype in (xp.float32, xp.float64) else xp.float64
    p64 = p.astype(xp.float64)
    m = box_mean(p64, size)
    v = xp.maximum(box_mean(p64 * p64, size) - m * m, 0.0)
    a = (v / (v + float(eps))).astype(ft)
    b = (m * (1.0 - a.astype(xp.float64))).astype(ft)
    del p64, m, v
    return box_mean(a, size) * p.astype(ft, copy=False) + box_mean(b, size)


def guided_denoise(frames, *, radius: int, eps: float, noise: NoiseModel | None = None):
    """The guided filter of each (finite, float32) frame, inside the GAT of ``noise`` (``None``: as they are).

    Parameters
    ----------
    frames : array (H, W) or (T, H, W) float32
        NumPy or CuPy, no NaN (:func:`denoise_spatial` fills them first).
    radius, eps : int, float
        As :func:`guided_filter`; with ``noise`` ``eps`` is in noise variances (the GAT makes them 1).
    noise : NoiseModel or None
        Noise model of the frames for the forward and the unbiased inverse transform.

    Returns
    -------
    array float32 of ``frames``' shape
    """
    xp = get_xp(frames)
    out = _guided_fused(frames, radius, eps, gat_codes(None if noise is None else noise.alpha,
                                                      0.0 if noise is None else noise.beta))
    if out is not None:
        return out
    if frames.ndim == 2:
        f = frames.astype(xp.float32, copy=False)
        if noise is None:
            return _guided_arrays(f, radius, eps)
        t = _guided_arrays(gat_forward(f, noise.alpha, noise.beta), radius, eps)
        return gat_inverse(t, noise.alpha, noise.beta)
    out = xp.empty(frames.shape, dtype=xp.float32)
    for k in range(frames.shape[0]):  # frame by frame: the float64 statistics of one frame at a time in memory
        out[k] = guided_denoise(frames[k], radius=radius, eps=eps, noise=noise)
    return out


# --------------------------------------------------------------------------- spatial (frame by frame)
def denoise_frame(img, method: str, params: dict):
    """One 2D frame with one method (NumPy: scipy/scikit-image; CuPy: cupyx.ndimage and the xp code above)."""
    xp = get_xp(img)
    ndi = get_ndimage(xp)
    if method == "none":
        return img
    if method == "median":
        return median_filter(img, size=int(params.get("median_size", 3)))
    if method == "gaussian":
        return ndi.gaussian_filter(img, float(params.get("gaussian_sigma", 1.0)), mode="reflect")
    if method == "bilateral":  # the array code on both backends (CPU == GPU); checked against the definition
        return bilateral(img, float(params.get("bilateral_sigma_spatial", 2.0)),
                         float(params.get("bilateral_sigma_range", 2.0)))
    if method == "tv":
        wgt = float(params.get("tv_weight", 1.0))
        if xp is np:  # scikit-image; the array code gives the same numbers (tested)
            from skimage.restoration import denoise_tv_chambolle

            return denoise_tv_chambolle(img.astype(np.float64), weight=wgt).astype(img.dtype)
        return tv_chambolle(img, wgt)
    if method == "guided":  # Numba on a CPU, cuda/denoise.cu on a GPU: both equal to the array code (float32 rounding)
        return guided_filter(img, radius=int(params.get("guided_radius", GUIDED_RADIUS)),
                             eps=float(params.get("guided_eps", GUIDED_EPS)))
    if method == "nlm":  # Numba on a CPU, cuda/denoise.cu on a GPU: both equal to the array code (float32 rounding)
        return nl_means(img, float(params.get("nlm_h", 0.8)), patch_size=int(params.get("nlm_patch", 5)),
                        patch_distance=int(params.get("nlm_search", 3)), sigma=float(params.get("nlm_sigma", 1.0)))
    raise ValueError(f"unknown denoising method '{method}'; choose one of {', '.join(SPATIAL_METHODS)}")


def denoise_spatial(frames, method: str, *, noise: NoiseModel | None = None, anscombe: bool = True, params=None):
    """Denoise each frame of (T, H, W) (or one (H, W) frame) separately, optionally inside the GAT.

    With ``anscombe`` the frames are stabilised to unit noise with ``noise`` first and brought
    back with the unbiased inverse; method parameters are then in units of that noise sigma
    (``guided_eps``: of its variance). NaN pixels are left NaN (filled by their frame's median
    for the filter only). ``guided`` filters the whole block in one call (a box of one frame).
    """
    xp = get_xp(frames)
    params = dict(params or {})
    if method == "none":
        return frames
    if not anscombe and noise is not None:
        params = _noise_unit_params(params, noise, frames)
    single = frames.ndim == 2
    block = frames[None] if single else frames
    frames_with_bad = to_host(~xp.isfinite(block).all(axis=(1, 2)))  # one look for the block (one GPU sync)
    if method == "guided":
        out = _guided_block(block, frames_with_bad, noise if anscombe else None, params)
        return out[0] if single else out
    out = xp.empty(block.shape, dtype=xp.float32)
    for k in range(block.shape[0]):
        img = block[k].astype(xp.float32)
        has_bad = bool(frames_with_bad[k])
        bad = ~xp.isfinite(img) if has_bad else None
        if has_bad:
            img = xp.where(bad, xp.nanmedian(img), img)
        if anscombe and noise is not None:
            t = gat_forward(img, noise.alpha, noise.beta)
            res = gat_inverse(denoise_frame(t, method, params), noise.alpha, noise.beta)
        else:
            res = denoise_frame(img, method, params)
        if has_bad:
            res = xp.where(bad, xp.nan, res)
        out[k] = res
    return out[0] if single else out


def _noise_unit_params(params: dict, noise: NoiseModel, frames) -> dict:
    # without the GAT, parameters in noise sigmas are scaled by the noise at the frames' median level
    xp = get_xp(frames)
    level = noise.level if noise.level is not None else float(xp.nanmedian(frames))
    sg = math.sqrt(max(noise.alpha * level + noise.beta, 1e-12))
    for key, default in (("bilateral_sigma_range", 2.0), ("nlm_h", 0.8), ("tv_weight", 1.0)):
        params[key] = float(params.get(key, default)) * sg
    params["guided_eps"] = float(params.get("guided_eps", GUIDED_EPS)) * sg * sg  # a variance
    params["nlm_sigma"] = sg
    return params


def _guided_block(block, frames_with_bad, noise: NoiseModel | None, params: dict):
    # the guided filter of a (T, H, W) block in one call; NaN filled with their frame's median, then put back
    xp = get_xp(block)
    img = block.astype(xp.float32, copy=bool(frames_with_bad.any()))
    bad = None
    if frames_with_bad.any():
        bad = ~xp.isfinite(img)
        for k in np.flatnonzero(frames_with_bad):
            img[k] = xp.where(bad[k], xp.nanmedian(img[k]), img[k])
    out = guided_denoise(img, radius=int(params.get("guided_radius", GUIDED_RADIUS)),
                         eps=float(params.get("guided_eps", GUIDED_EPS)), noise=noise)
    if bad is not None:
        out[bad] = xp.nan
    return out


# --------------------------------------------------------------------------- temporal
def temporal_filter(frames, state, *, noise: NoiseModel, gain_min: float = 0.1, threshold=(1.0, 3.0),
                    smooth: int = 3, hold: float = 0.0, out=None):
    """Motion-adaptive recursive filter over (T, H, W); returns ``(filtered, state)``.

    ``x_k = x_{k-1} + K (y_k - x_{k-1})`` with ``K = gain_min`` where the scene is still and
    ``K -> 1`` where the ``smooth`` x ``smooth`` averaged difference exceeds ``threshold[1]`` of
    its noise sigma (linear from ``threshold[0]``): a moving edge is followed at once. With
    ``hold`` > 0 a pixel that moved keeps a high gain for a few frames (``K >= hold * K_prev``),
    so the blurred tail of a passing edge is followed too.

    ``state`` is ``(2, H, W)``: the previous estimate and the previous gain (``None``: start
    from the first frame); it is returned for the next block, so blocks chain exactly.
    """
    xp = get_xp(frames)
    if out is None:
        out = xp.empty(frames.shape, dtype=xp.float32)
    lo, hi = float(threshold[0]), float(threshold[1])
    gmin = np.float32(gain_min)
    # the difference y - x_prev carries the noise of y plus that of the estimate (K/(2-K) of it)
    infl = math.sqrt(1.0 + gain_min / (2.0 - gain_min)) * noise.box_factor ** (3.0 / smooth if smooth > 1 else 0)
    if state is None:
        x, kprev = None, None
    else:
        x, kprev = state[0].astype(xp.float32), state[1].astype(xp.float32)
    if xp is np and frames.ndim == 3 and frames.shape[0] and frames.dtype == np.float32:
        from ..jit import temporal_into  # the same filter fused into two parallel passes per frame

        x0, k0, start = x, kprev, 0
        if x0 is None:
            x0, k0, start = frames[0].copy(), np.ones(frames.shape[1:], np.float32), 1
        x0, k0 = np.ascontiguousarray(x0), np.ascontiguousarray(k0)
        if start and out is not frames:
            out[0] = x0
        if frames.flags.c_contiguous and out.flags.c_contiguous and temporal_into(
                frames[start:], out[start:], x0, k0, smooth=smooth, alpha=noise.alpha, beta=noise.beta, infl=infl,
                gain_min=gain_min, lo=lo, span=max(hi - lo, 1e-6), hold=hold):
            return out, np.stack([x0, k0])
    if (xp is not np and frames.ndim == 3 and frames.size and hold >= 0 and gain_min >= 0
            and all(a.dtype == np.float32 and a.flags.c_contiguous for a in (frames, out))):
        from ..kernels import temporal_filter_kernel  # one fused launch per frame (cuda/denoise.cu)

        return temporal_filter_kernel(frames, state, out=out, alpha=noise.alpha, beta=noise.beta, infl=infl,
                                      gain_min=gain_min, lo=lo, span=max(hi - lo, 1e-6), hold=hold, smooth=smooth)
    return _temporal_arrays(frames, x, kprev, out=out, noise=noise, gmin=gmin, lo=lo, hi=hi, infl=infl,
                            smooth=smooth, hold=hold)


def _temporal_arrays(frames, x, kprev, *, out, noise, gmin, lo, hi, infl, smooth, hold):
    # the definition, frame by frame with array operations: the reference for the kernels (and a fallback)
    xp = get_xp(frames)
    ndi = get_ndimage(xp)
    for k in range(frames.shape[0]):
        y = frames[k].astype(xp.float32)
        if x is None:
            x = y.copy()
            kprev = xp.ones_like(y)
            out[k] = x
            continue
        d = y - x
        fin = xp.isfinite(d)
        d0 = xp.where(fin, d, 0)
        ds = ndi.uniform_filter(d0, smooth, mode="reflect") if smooth > 1 else d0
        sig = noise.sigma(xp.where(xp.isfinite(x), x, 0)) * np.float32(infl)
        m = xp.abs(ds) / sig
        gain = gmin + (1 - gmin) * xp.clip((m - lo) / max(hi - lo, 1e-6), 0, 1)
        if hold > 0:
            gain = xp.maximum(gain, np.float32(hold) * kprev)
        gain = xp.where(fin, gain, 1.0).astype(xp.float32)
        x = xp.where(xp.isfinite(x), x + gain * d0, y).astype(xp.float32)
        kprev = gain
        out[k] = x
    return out, xp.stack([x, kprev])


def psnr(estimate, truth, peak: float) -> float:
    """Peak signal-to-noise ratio in dB over the finite pixels."""
    e, t = np.asarray(to_host(estimate), np.float64), np.asarray(to_host(truth), np.float64)
    ok = np.isfinite(e) & np.isfinite(t)
    mse = float(np.mean((e[ok] - t[ok]) ** 2))
    return 10 * math.log10(peak * peak / mse) if mse > 0 else float("inf")
