"""Slanted-edge MTF (ISO 12233 / IEC 62220-1 style), batched over ROIs, on NumPy or CuPy.

Algorithm (for each of B ROIs of the same shape, vectorised over the batch; the same code on NumPy and,
for ROIs already on a GPU, CuPy):

1. Orientation: the edge is treated as near-vertical (rows cross it); ROIs with a near-horizontal edge
   are transposed (one orientation for the whole batch). Polarity is normalised (dark-to-bright).
2. Edge location (:mod:`pipeline.ops.edge_fit`): the rows are summed in 16 blocks (the one read of the
   pixels before binning); in each block the derivative ``[-1/2, 0, 1/2]``; from a line through each
   block's steepest rise, the biweight-windowed centroid of every block's derivative and a line (or a
   2nd-order polynomial) fitted over the blocks by weighted least squares (closed-form normal equations,
   all ROIs at once), blocks more than 5 robust sigmas off rejected; two passes, the window narrowing to
   4 LSF sigmas + 3 px.
3. Projection of every pixel onto the edge normal, ``p = (x - x_edge(y)) cos(theta)`` (the slant
   correction of the frequency axis: frequencies come out in cycles per pixel along the normal),
   binned at 1/oversample pixel: one index pass and ONE ``bincount`` for all ROIs of a cache-sized
   sub-group (ROI ``i``'s bins at offset ``i L``; sums and counts packed in one pass, see
   :func:`_sums_and_counts`); each ROI keeps its own symmetric range, fully covered by all its rows;
   empty bins are filled by linear interpolation and flagged.
4. Noise-adaptive ESF (``esf_smoothing='adaptive'``, in the manner of MTF Mapper's smoothed ESF): the
   bins' noise is the robust spread of their second differences in the flat tails; where the ESF's
   slope (over 2 px each side) stands more than 3 sigmas above that noise, around the edge, the ESF
   is left as binned; beyond, a triangular average whose half-width grows by 1 bin per 2 bins of
   distance (up to 4 px) removes the tails' noise. A flat or straight ESF is unchanged by it, so a
   noise-free edge keeps its binned ESF (to rounding).
5. ESF -> LSF by central difference; the LSF is windowed (Tukey by default, centred on the LSF
   centroid); zero-padded FFT; |.| normalised at f = 0.
6. Corrections: the central difference's transfer ``sinc(2 f d)`` and the bin average's ``sinc(f d)``
   (d = bin width) are divided out.
7. MTF50/20/10 by linear interpolation at the first crossing; no clipping at Nyquist (the curve is
   reported to ``f_max``, 1 cycle/pixel by default).

A failed fit never gives NaN curves silently: the ROI gets a flag and a message. On NumPy, each thread
keeps its larger scratch arrays between calls (about 40 MB at the largest group; fresh multi-MB
temporaries would cost page faults on every call).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from ..backend import get_xp, to_host
from .edge_fit import _block_fit, _block_profiles, _solve_batch  # noqa: F401 (_solve_batch: tests import it here)
from .esf import _bin_geometry, _binned, _esf_bins, _smoothed_esf, _ws

LEVELS = (0.5, 0.2, 0.1)


@dataclass
class MTFResult:
    """Batched slanted-edge result (host NumPy arrays); frequencies along the edge normal."""

    frequencies_cy_per_px: np.ndarray  # (F,)
    mtf: np.ndarray  # (B, F)
    esf_positions_px: np.ndarray  # (N,)
    esf: np.ndarray  # (B, N), normalised 0..1 (dark side 0)
    lsf: np.ndarray  # (B, N), unit area
    angle_deg: np.ndarray  # (B,), edge angle from the row/column axis it is closest to
    crossings_cy_per_px: dict  # {0.5: (B,), 0.2: (B,), 0.1: (B,)}, NaN where not reached
    flags: list  # per ROI: list of str
    messages: list  # per ROI: list of str
    orientation: str  # "vertical" (edge along columns) or "horizontal"
    edge_fit_rms_px: np.ndarray  # (B,), rms of the row blocks' edge positions about the fitted edge (px)
    oversample: int = 4
    window: str = "tukey"
    extra: dict = field(default_factory=dict)

    def mtf_at(self, level: float) -> np.ndarray:
        return self.crossings_cy_per_px[level]

    def to_dict(self, pixel_pitch_mm: float | None = None, *, roi=None, index: int | None = None) -> dict:
        """JSON-ready dict; every field names its unit. ``index`` selects one ROI (lists otherwise)."""

        def sel(a):
            a = np.asarray(a)
            v = a[index] if index is not None else a
            return _clean(v)

        d = {
            "frequencies_cy_per_px": _clean(self.frequencies_cy_per_px),
            "mtf": sel(self.mtf),
            "mtf50_cy_per_px": sel(self.crossings_cy_per_px[0.5]),
            "mtf20_cy_per_px": sel(self.crossings_cy_per_px[0.2]),
            "mtf10_cy_per_px": sel(self.crossings_cy_per_px[0.1]),
            "edge_angle_deg": sel(self.angle_deg),
            "edge_orientation": self.orientation,
            "edge_fit_rms_px": sel(self.edge_fit_rms_px),
            "esf_positions_px": _clean(self.esf_positions_px),
            "esf": sel(self.esf),
            "lsf": sel(self.lsf),
            "flags": self.flags[index] if index is not None else self.flags,
            "messages": self.messages[index] if index is not None else self.messages,
            "oversample": self.oversample,
            "window": self.window,
            "roi": roi,
        }
        if pixel_pitch_mm:
            k = 1.0 / pixel_pitch_mm
            d["pixel_pitch_mm"] = pixel_pitch_mm
            d["frequencies_lp_per_mm"] = _clean(self.frequencies_cy_per_px * k)
            for lv, name in ((0.5, "mtf50"), (0.2, "mtf20"), (0.1, "mtf10")):
                d[f"{name}_lp_per_mm"] = sel(self.crossings_cy_per_px[lv] * k)
            d["nyquist_lp_per_mm"] = 0.5 * k
        return d


def _clean(a):
    """ndarray -> lists with NaN as None (valid JSON)."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        v = float(a)
        return v if math.isfinite(v) else None
    return [_clean(v) for v in a]


def _hann(u):
    """Hann taper on |u| <= 1 (0 outside)."""
    xp = get_xp(u)
    c = xp.minimum(xp.abs(u), 1.0)
    return 0.5 + 0.5 * xp.cos(np.pi * c)


def _tukey(u, alpha=0.5):
    """Tukey window on |u| <= 1: flat for |u| < 1 - alpha, cosine taper outside (0 beyond 1)."""
    xp = get_xp(u)
    c = xp.clip((xp.abs(u) - (1 - alpha)) / alpha, 0.0, 1.0)
    return 0.5 + 0.5 * xp.cos(np.pi * c)


def auto_n_fft(width_px: int, oversample: int = 4) -> int:
    """FFT length for ROIs ``width_px`` wide across the edge: zero padding to >= 4x the longest ESF.

    It depends on the ROI size only, so every ROI of a size shares one frequency grid.
    """
    return 1 << int(math.ceil(math.log2(max(8 * width_px * oversample, 1024))))


def _first_crossing(f, m, level, xp):
    """Frequency where each row of m first falls below level (linear interpolation); NaN if never."""
    i = xp.argmax(m < level, axis=1)
    rows = xp.arange(m.shape[0])
    has = m[rows, i] < level
    i = xp.maximum(i, 1)
    m0, m1 = m[rows, i - 1], m[rows, i]
    f0, f1 = f[i - 1], f[i]
    with np.errstate(invalid="ignore", divide="ignore"):
        t = xp.where(m0 != m1, (m0 - level) / (m0 - m1), 0.0)
    out = f0 + t * (f1 - f0)
    return xp.where(has, out, xp.nan)


_CPU_GROUP_PIXELS = 1 << 22  # ROI pixels per group on a CPU (edge fit, LSF, FFT): bounds the temporaries
_CPU_BIN_PIXELS = 1 << 18  # ROI pixels binned at once on a CPU: the index array stays in the cache
_GPU_GROUP_PIXELS = 1 << 26  # on a GPU: one group for any usual batch (bounds the temporaries' memory)


def slanted_edge_mtf(
    rois,
    *,
    oversample: int = 4,
    window: str = "tukey",
    poly_order: int = 1,
    f_max: float = 1.0,
    orientation: str | None = None,
    n_fft: int | None = None,
    esf_smoothing: str = "adaptive",
) -> MTFResult:
    """Slanted-edge MTF of one ROI (H, W) or a batch (B, H, W), on NumPy or (ROIs on the GPU) CuPy.

    Parameters
    ----------
    rois : array (H, W) or (B, H, W), linear detector signal
        Each ROI holds one straight edge crossing it completely (ideally 2-10 degrees
        from a pixel axis). Polarity does not matter. float32 is read as is (bin sums in float64).
    oversample : int
        Bins per pixel along the edge normal (ISO 12233: 4).
    window : {'tukey', 'hann', 'none'}
        Window on the LSF, centred on its centroid.
    poly_order : {1, 2}
        Edge model: straight line or 2nd-order polynomial (lens distortion).
    f_max : float
        Highest frequency reported, cycles/pixel (Nyquist is 0.5; not a limit).
    orientation : {'vertical', 'horizontal'}, optional
        Force the edge orientation (default: from the gradients, one for the batch).
    n_fft : int, optional
        FFT length (zero padding); fix it to get the same frequency grid for
        ROIs of the same size whatever their edge position.
    esf_smoothing : {'adaptive', 'none'}
        'adaptive' smooths the ESF's tails where they are lost in noise (module notes, step 4);
        'none' keeps the binned ESF as it is.

    Returns
    -------
    MTFResult
    """
    xp = get_xp(rois)
    if esf_smoothing not in ("adaptive", "none"):
        raise ValueError(f"unknown esf_smoothing '{esf_smoothing}'; choose adaptive or none")
    a, orientation = _prepared(rois, orientation, poly_order, xp)
    b, h, w = a.shape
    opts = {"oversample": oversample, "window": window, "f_max": f_max, "esf_smoothing": esf_smoothing,
            "n_fft": n_fft if n_fft is not None else auto_n_fft(w, oversample)}
    step = max(1, (_CPU_GROUP_PIXELS if xp is np else _GPU_GROUP_PIXELS) // (h * w))
    groups = [slice(i, min(i + step, b)) for i in range(0, b, step)]
    passes = [_pixel_pass(a[g], poly_order, oversample, xp) for g in groups]  # every read of the pixels
    fit = {k: np.concatenate([p["fit"][k] for p in passes]) for k in ("rms", "n_used", "step", "angle")}
    own, failed, reach = _own_ranges(np.concatenate([p["reach"] for p in passes]), oversample)
    out = _curves(groups, passes, own, opts, xp)
    out["mtf"][failed] = np.nan
    for lv in LEVELS:
        out["crossings"][lv][failed] = np.nan
    fit["noise"], nb = out["noise"], out["esf"].shape[1]
    flags, msgs = _flags(fit, {"empty": out["empty"], "nb": nb, "failed": failed, "reach": reach}, out, fit["step"],
                         h, f_max, xp)
    return MTFResult(
        frequencies_cy_per_px=_grid(opts["n_fft"], oversample, f_max)[0].copy(), mtf=out["mtf"],
        esf_positions_px=(np.arange(nb) - nb // 2 + 0.5) / oversample, esf=out["esf"], lsf=out["lsf"],
        angle_deg=fit["angle"], crossings_cy_per_px=out["crossings"], flags=flags, messages=msgs,
        orientation=orientation, edge_fit_rms_px=fit["rms"], oversample=oversample, window=window,
        extra={"n_fft": opts["n_fft"], "bins": nb, "empty_bins": out["empty"].tolist(), "groups": len(groups),
               "esf_smoothing": esf_smoothing, "esf_noise": out["sigma"]},
    )


def _curves(groups: list, passes: list, own, opts: dict, xp) -> dict:
    """The ESF, LSF and MTF of every group (module notes, steps 3-7) written into host arrays for the batch:
    ``mtf`` (B, F), ``esf`` and ``lsf`` (B, 2 max(own)), the crossings, the noise and the empty bins."""
    b, n_half, os_ = len(own), int(own.max()), opts["oversample"]
    f, _ = _grid(opts["n_fft"], os_, opts["f_max"])
    out = {"mtf": np.empty((b, f.size)), "esf": np.empty((b, 2 * n_half)), "lsf": np.empty((b, 2 * n_half)),
           "noise": np.empty(b), "sigma": np.empty(b), "empty": np.empty(b, np.int64), "bad_dc": np.empty(b, bool),
           "crossings": {lv: np.empty(b) for lv in LEVELS}}
    for g, p in zip(groups, passes):
        bins = _esf_bins(p, own[g], n_half, os_, xp)
        smooth = _smoothed_esf(bins, opts["esf_smoothing"] == "adaptive", xp)
        bins["esf"] = smooth["esf"]
        rows = {k: _rows(v, g) for k, v in out.items()}
        _lsf_and_mtf(bins, opts["window"], opts["n_fft"], os_, opts["f_max"], xp, rows)
        out["noise"][g], out["sigma"][g], out["empty"][g] = smooth["noise_px"], to_host(smooth["sigma"]), bins["empty"]
    return out


def _rows(v, g: slice):
    """The rows ``g`` of an output (a dict of outputs: each one's rows)."""
    return {k: x[g] for k, x in v.items()} if isinstance(v, dict) else v[g]


def _own_ranges(reach, oversample: int):
    """Each ROI's own range of bins ``[-own, own)`` (the bins every row covers, less one), whether it has room
    for 4 pixels each side of the edge (``failed`` where not: binned over 4 pixels, its curve NaN) and the
    reach (px); raises when no ROI has room."""
    own = np.floor(np.nan_to_num(reach, nan=-1.0) * oversample).astype(np.int64) - 1
    failed = own < 4 * oversample
    if failed.all():
        i = int(np.argmin(own))
        raise ValueError(f"no edge crosses the ROI with room on both sides (only {reach[i]:.1f} px on one side"
                         f"{f' in ROI {i}' if len(own) > 1 else ''}); centre the edge in the ROI or widen the ROI")
    return np.where(failed, 4 * oversample, own), failed, reach


def _pixel_pass(a, poly_order: int, oversample: int, xp) -> dict:
    """Everything that reads the pixels of a group of ROIs (B, H, W): the edge fit (host results in ``fit``)
    and each ROI's bin sums and counts (B, L) (binned in sub-groups small enough for the cache on a CPU)."""
    b, h, w = a.shape
    fit = _edge_fit(a, poly_order, xp)
    geo = _bin_geometry(fit["coef"], h, w, oversample, xp)
    step = b if xp is not np else max(1, _CPU_BIN_PIXELS // (h * w))
    parts = [_binned(a[i : i + step], {k: v[i : i + step] for k, v in geo.items() if k != "span"}, geo["span"], xp)
             for i in range(0, b, step)]
    sums, counts = (xp.concatenate([p[j] for p in parts]) if len(parts) > 1 else parts[0][j] for j in (0, 1))
    return {"fit": fit, "sums": sums, "counts": counts, "k_lo": geo["k_lo"], "reach": to_host(geo["reach"]),
            "sign": fit["sign"]}


def _prepared(rois, orientation, poly_order, xp):
    """The ROIs (B, H, W), checked, C-contiguous, turned so that the edge runs along the columns ('vertical').

    float32 and float64 ROIs are used as they are (no copy); other types become float64. The batch's
    orientation comes from the mean absolute gradients on a sample of 16-31 rows and columns of <= 15 ROIs.
    """
    a = rois if getattr(rois, "dtype", None) in (xp.float32, xp.float64) else xp.asarray(rois, dtype=xp.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or min(a.shape[1:]) < 8:
        raise ValueError(f"ROIs must be (H, W) or (B, H, W) with sides >= 8 pixels, got {tuple(a.shape)}")
    if poly_order not in (1, 2):
        raise ValueError("poly_order must be 1 or 2")
    if orientation is None:
        s, sub = max(1, min(a.shape[1:]) // 16), a[:: max(1, a.shape[0] // 8)]
        gx = xp.abs(xp.diff(sub[:, ::s, :], axis=2)).mean(dtype=xp.float64)
        gy = xp.abs(xp.diff(sub[:, :, ::s], axis=1)).mean(dtype=xp.float64)
        orientation = "vertical" if bool(gx >= gy) or not bool(xp.isfinite(gy)) else "horizontal"
    if orientation == "horizontal":
        a = xp.swapaxes(a, 1, 2)
    return xp.ascontiguousarray(a), orientation


def _edge_fit(a, poly_order: int, xp) -> dict:
    """Polarity and edge of every ROI (module notes, step 2): ``coef`` (B, 3) of ``x = c0 + c1 y' + c2 y'^2``,
    ``y' = y - (H-1)/2``, and on the host the angle, the fit's rms, the rows used and the edge step."""
    b, h, w = a.shape
    prof, yb, hb = _block_profiles(a, xp)
    k = max(2, w // 8)
    left, right = prof[:, :, :k].mean(axis=(1, 2)) / hb, prof[:, :, -k:].mean(axis=(1, 2)) / hb
    sign = xp.where(right >= left, 1.0, -1.0)
    d = xp.subtract(prof[:, :, 2:], prof[:, :, :-2], out=_ws(xp, "d", (b, prof.shape[1], w - 2)))
    d *= (0.5 / hb * sign)[:, None, None]  # the derivative of the block means, dark to bright
    coef, used, rms = _block_fit(d, yb - (h - 1) / 2.0, poly_order, w, xp)
    return {"coef": coef, "sign": sign, "rms": to_host(rms), "n_used": to_host(used.sum(axis=1)) * hb,
            "step": to_host(xp.abs(right - left)), "angle": to_host(xp.degrees(xp.arctan(coef[:, 1])))}


def _rfft(x, n: int, xp):
    """Real FFT of each row, zero-padded to ``n`` (on NumPy into this thread's scratch)."""
    if xp is np:
        return np.fft.rfft(x, n=n, axis=1, out=_ws(xp, "fft", (x.shape[0], n // 2 + 1), np.complex128))
    return xp.fft.rfft(x, n=n, axis=1)


def _windowed_lsf(bins: dict, window: str, xp):
    """The LSF (difference of the ESF over two bins, zero at the ends of each ROI's own range) and the LSF
    windowed about its centroid (positive part), the window reaching the nearer end of the range."""
    esf, own, n_half, nb = (bins[k] for k in ("esf", "own", "n_half", "nb"))
    dlt = 1.0 / bins["os"]
    lsf = _ws(xp, "lsf", esf.shape)
    lsf[:, [0, -1]] = 0.0
    xp.subtract(esf[:, 2:], esf[:, :-2], out=lsf[:, 1:-1])  # twice the LSF: the scale cancels later
    rows = xp.arange(len(own))
    lsf[rows, xp.asarray(n_half - own)] = 0.0  # the ends of the own range, as at an array end (beyond: zero)
    lsf[rows, xp.asarray(n_half + own - 1)] = 0.0
    posx = xp.asarray(bins["pos"])
    wpk = xp.maximum(lsf, 0, out=_ws(xp, "lsf_pos", esf.shape))
    cent = (wpk @ posx) / xp.maximum(wpk.sum(axis=1), 1e-300)
    span = xp.minimum(cent - xp.asarray(-(own - 0.5) * dlt), xp.asarray((own - 0.5) * dlt) - cent)
    u = xp.subtract(posx[None, :], cent[:, None], out=wpk)
    u /= xp.maximum(span, dlt)[:, None]
    if window == "tukey":
        win = _tukey(u)
    elif window == "hann":
        win = _hann(u)
    elif window == "none":
        win = xp.asarray((bins["ii"][None, :] >= n_half - own[:, None]) & (bins["ii"][None, :] < n_half + own[:, None]),
                         dtype=xp.float64)
    else:
        raise ValueError(f"unknown window '{window}'; choose tukey, hann or none")
    return lsf, xp.multiply(lsf, win, out=u)


def _lsf_and_mtf(bins: dict, window: str, n_fft: int, oversample: int, f_max: float, xp, out: dict) -> None:
    """Into ``out`` (host rows of this group): the windowed LSF's FFT modulus normalised at zero frequency and
    corrected for the binning and the derivative, where it crosses 0.5, 0.2 and 0.1, whether the LSF has no
    positive area, and the normalised ESF and LSF for the report (on NumPy written in place)."""
    esf, nb = bins["esf"], bins["nb"]
    if n_fft < nb:
        raise ValueError(f"n_fft={n_fft} is shorter than the {nb} ESF bins")
    lsf, lw = _windowed_lsf(bins, window, xp)
    f, corr = _grid(n_fft, oversample, f_max)
    spec = xp.abs(_rfft(lw, n_fft, xp)[:, : f.size], out=_dest(out["mtf"], xp, "spec"))
    dc = spec[:, :1]
    out["bad_dc"][...] = to_host(dc[:, 0] <= 0)
    spec /= xp.where(dc > 0, dc, 1.0) * xp.asarray(corr)[None, :]
    for lv in LEVELS:
        out["crossings"][lv][...] = to_host(_first_crossing(xp.asarray(f), spec, lv, xp))
    lo_v = esf[:, : max(1, nb // 10)].mean(axis=1, keepdims=True)
    hi_v = esf[:, -max(1, nb // 10):].mean(axis=1, keepdims=True)
    esf_n = xp.subtract(esf, lo_v, out=_dest(out["esf"], xp, "esf_n"))
    esf_n /= xp.where(hi_v - lo_v != 0, hi_v - lo_v, 1.0)
    area = lsf.sum(axis=1, keepdims=True)
    lsf_n = xp.divide(lsf, xp.where(area != 0, area / oversample, 1.0), out=_dest(out["lsf"], xp, "lsf_n"))
    for name, v in (("mtf", spec), ("esf", esf_n), ("lsf", lsf_n)):
        if v is not out[name]:
            out[name][...] = to_host(v)


def _dest(host_rows, xp, name: str):
    """Where to compute an output: on NumPy the (contiguous) host rows themselves, on a GPU a device array."""
    if xp is np and host_rows.flags.c_contiguous:
        return host_rows
    return _ws(xp, name, host_rows.shape) if xp is np else xp.empty(host_rows.shape, host_rows.dtype)


@functools.lru_cache(maxsize=32)
def _grid(n_fft: int, oversample: int, f_max: float):
    """The frequencies kept (cycles/pixel along the normal, up to ``f_max``) and the correction the binning
    (``sinc(f d)``) and the central difference (``sinc(2 f d)``) call for, d = 1/oversample (host arrays)."""
    dlt = 1.0 / oversample
    f = np.arange(n_fft // 2 + 1) / (n_fft * dlt)
    f = f[f <= f_max + 1e-12]
    corr = np.maximum(np.sinc(f * dlt) * np.sinc(2 * f * dlt), 0.1)
    f.flags.writeable = corr.flags.writeable = False
    return f, corr


def _flags(fit: dict, bins: dict, spec: dict, step, h: int, f_max: float, xp) -> tuple[list, list]:
    """Per ROI: the flags and messages that say what to trust (angle, phase sampling, edge fit, contrast)."""
    angle, rms_h, n_used, noise = fit["angle"], fit["rms"], fit["n_used"], fit["noise"]
    empty, nb, failed, reach = bins["empty"], bins["nb"], bins["failed"], bins["reach"]
    crossings, bad_dc = spec["crossings"], spec["bad_dc"]
    ang = np.abs(angle)
    reached = np.stack([np.isfinite(crossings[lv]) for lv in LEVELS], axis=1)
    poor_phase = (h * np.abs(np.tan(np.radians(ang))) < 2.0) | (empty > 0)
    any_flag = ((ang < 1.0) | (ang > 40.0) | poor_phase | (rms_h > 0.5) | (n_used < max(4, h // 4))
                | (step < 5 * noise) | failed | bad_dc | ~reached.all(axis=1))
    b = len(angle)
    flags: list[list[str]] = [[] for _ in range(b)]
    msgs: list[list[str]] = [[] for _ in range(b)]
    for i in np.nonzero(any_flag)[0]:
        def add(flag, msg, i=i):
            flags[i].append(flag)
            msgs[i].append(msg)

        if ang[i] < 1.0:
            add("angle_below_1deg", f"edge angle {angle[i]:.2f} deg is below 1 deg: phase sampling is poor; "
                "tilt the edge 2-10 deg")
        if ang[i] > 40.0:
            add("angle_near_45deg", f"edge angle {angle[i]:.1f} deg is near 45 deg; use 2-10 deg")
        if poor_phase[i]:
            add("poor_phase_sampling", f"{int(empty[i])} of {nb} ESF bins were empty (filled by interpolation); "
                "use more rows or a larger angle")
        if rms_h[i] > 0.5 or n_used[i] < max(4, h // 4):
            add("edge_fit_poor", f"edge fit residual {rms_h[i]:.2f} px over {int(n_used[i])} rows; "
                "is there one straight edge?")
        if step[i] < 5 * noise[i]:
            add("low_contrast", "the edge step is below 5x the pixel noise")
        if failed[i]:
            add("edge_not_found", f"no edge crosses this ROI with room on both sides ({reach[i]:.1f} px); "
                "its curve is NaN")
            continue
        if bad_dc[i]:
            add("no_edge", "the LSF has no positive area: no edge found")
        for j, lv in enumerate(LEVELS):
            if not reached[i, j]:
                add(f"mtf{int(lv * 100)}_not_reached", f"MTF stays above {lv} up to {f_max} cycles/pixel")
    return flags, msgs


def _pad_bins(a, n, mode):
    """Centre-pad (B, m) ESF ('edge' values) or LSF ('constant' zeros) arrays to n bins (positions centred on 0)."""
    k = (n - a.shape[1]) // 2
    return np.pad(a, ((0, 0), (k, n - a.shape[1] - k)), mode=mode)


def expand_result(res: MTFResult, keep, *, flag: str = "nonfinite_roi") -> MTFResult:
    """``res`` (of the ROIs where ``keep`` is True) as a result for every ROI: the others NaN, flagged ``flag``.

    Parameters
    ----------
    res : MTFResult
        Measured on ``keep.sum()`` ROIs, in order.
    keep : (B,) bool array
    flag : str
        The flag of the ROIs not measured (e.g. a frame skipped as NaN).
    """
    keep = np.asarray(keep, bool)
    idx = np.nonzero(keep)[0]
    if idx.size == keep.size:
        return res
    b = keep.size

    def full(a, fill=np.nan):
        a = np.asarray(a)
        out = np.full((b,) + a.shape[1:], fill, dtype=np.result_type(a.dtype, np.float64))
        out[idx] = a
        return out

    flags, messages = [[flag] for _ in range(b)], [[] for _ in range(b)]
    for j, i in enumerate(idx):
        flags[i], messages[i] = res.flags[j], res.messages[j]
    return MTFResult(frequencies_cy_per_px=res.frequencies_cy_per_px, mtf=full(res.mtf),
                     esf_positions_px=res.esf_positions_px, esf=full(res.esf), lsf=full(res.lsf),
                     angle_deg=full(res.angle_deg),
                     crossings_cy_per_px={lv: full(v) for lv, v in res.crossings_cy_per_px.items()},
                     flags=flags, messages=messages, orientation=res.orientation,
                     edge_fit_rms_px=full(res.edge_fit_rms_px), oversample=res.oversample, window=res.window,
                     extra=dict(res.extra))


def concat_results(parts: list) -> MTFResult:
    """Concatenate results of ROI groups of the same size (same frequency grid)."""
    first = parts[0]
    if len(parts) == 1:
        return first
    nb = max(p.esf.shape[1] for p in parts)
    longest = max(parts, key=lambda p: p.esf.shape[1])
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    return MTFResult(
        frequencies_cy_per_px=first.frequencies_cy_per_px, mtf=cat("mtf"),
        esf_positions_px=longest.esf_positions_px,
        esf=np.concatenate([_pad_bins(p.esf, nb, "edge") for p in parts]),
        lsf=np.concatenate([_pad_bins(p.lsf, nb, "constant") for p in parts]),
        angle_deg=cat("angle_deg"),
        crossings_cy_per_px={lv: np.concatenate([p.crossings_cy_per_px[lv] for p in parts]) for lv in LEVELS},
        flags=sum((p.flags for p in parts), []), messages=sum((p.messages for p in parts), []),
        orientation=first.orientation, edge_fit_rms_px=cat("edge_fit_rms_px"), oversample=first.oversample,
        window=first.window, extra=_merged_extra(parts),
    )


def _merged_extra(parts: list) -> dict:
    """The groups' ``extra`` as one: per-ROI lists concatenated, the rest from the first, ``bins`` the most."""
    out = dict(parts[0].extra)
    for key, v in out.items():
        if isinstance(v, (list, np.ndarray)):
            vals = [p.extra.get(key, []) for p in parts]
            out[key] = sum((list(x) for x in vals), []) if isinstance(v, list) else np.concatenate(vals)
    if "bins" in out:
        out["bins"] = max(p.extra.get("bins", 0) for p in parts)
    out["groups"] = len(parts)
    return out

