"""Afterglow / detector lag: the multi-exponential LTI model, its exact inverse, and its fit.

Model (Hsieh 2000; RTK's LagCorrectionImageFilter): with ``x_k`` the true
(dark-subtracted) frame and ``y_k`` the measured one,

    y_k = x_k + sum_n L_{n,k},        L_{n,k+1} = r_n (L_{n,k} + a_n x_k),
    r_n = exp(-T / tau_n),            T = 1 / frame_rate,

i.e. ``y_k = x_k + sum_{j>=1} sum_n a_n r_n^j x_{k-j}``. The inverse is exact
with the same N state images: ``x_k = y_k - sum_n L_{n,k}``, then the same
state update with the recovered ``x_k``. A constant input reaches the steady
state ``y = G x`` with the DC lag gain ``G = 1 + sum_n a_n r_n / (1 - r_n)``.

Falling step (beam on at steady state, cut off before frame ``k_c``): the
fraction of the steady signal left ``m`` frames after the cut-off is

    f(m) = y_{k_c + m} / y_ss = sum_n A_n r_n^m,   A_n = a_n r_n / ((1 - r_n) G),

so ``G = 1 / (1 - sum A_n)`` and ``a_n = A_n G (1 - r_n) / r_n``. The fit works
on ``f`` and converts.

Amplitudes may be one value per term, shape (N,), or a map per term,
shape (N, H, W) (non-uniform screens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..backend import get_xp


# --------------------------------------------------------------------------- model algebra
def ratios_from_tau(tau_s, frame_rate_hz: float) -> np.ndarray:
    """Per-frame decay ratios ``r_n = exp(-1 / (frame_rate * tau_n))``."""
    return np.exp(-1.0 / (float(frame_rate_hz) * np.asarray(tau_s, dtype=np.float64)))


def dc_gain(amplitudes, ratios):
    """Steady-state gain ``G = 1 + sum_n a_n r_n / (1 - r_n)`` (scalar, or a map for amplitude maps)."""
    xp = get_xp(amplitudes)
    a = xp.asarray(amplitudes, dtype=xp.float64)
    r = np.asarray(ratios, dtype=np.float64)
    w = r / (1.0 - r)
    w = xp.asarray(w.reshape((-1,) + (1,) * (a.ndim - 1)))
    return 1.0 + (a * w).sum(axis=0)


def _per_term(values, n, like, xp):
    """Amplitudes as a list of scalars (float32) or (H, W) float32 maps."""
    v = xp.asarray(values, dtype=xp.float32)
    if v.ndim == 1:
        return [np.float32(float(v[i])) for i in range(n)]
    return [v[i] for i in range(n)]


def steady_state(frame, amplitudes, ratios):
    """State images for a frame measured at steady state: ``x = y / G``, ``L_n = a_n r_n / (1 - r_n) x``.

    Parameters
    ----------
    frame : array (H, W)
        A measured (lagged) frame assumed to be at steady state.

    Returns
    -------
    array (N, H, W) float32
    """
    xp = get_xp(frame)
    r = np.asarray(ratios, dtype=np.float64)
    g = dc_gain(amplitudes, r)
    x = xp.asarray(frame, dtype=xp.float32) / xp.asarray(g, dtype=xp.float32)
    a = _per_term(amplitudes, r.size, frame, xp)
    return xp.stack([a[n] * np.float32(r[n] / (1 - r[n])) * x for n in range(r.size)]).astype(xp.float32)


def _setup(frames, amplitudes, ratios, state, out):
    """Common set-up of :func:`add_lag` and :func:`remove_lag`: per-term float32 parameters, state, output."""
    xp = get_xp(frames)
    r = [np.float32(v) for v in np.asarray(ratios, dtype=np.float64)]
    a = _per_term(amplitudes, len(r), frames, xp)
    if state is None:
        state = xp.zeros((len(r),) + tuple(frames.shape[1:]), dtype=xp.float32)
    if out is None:
        out = xp.array(frames, dtype=xp.float32, copy=True)
    elif out is not frames:
        out[...] = frames
    return xp, a, r, state, out, xp.empty(frames.shape[1:], dtype=xp.float32)


def add_lag(frames, amplitudes, ratios, state=None, *, out=None):
    """Forward model: add afterglow to true frames (T, H, W). Returns ``(lagged, state)``.

    ``state`` (N, H, W) is the lag before the first frame (zeros if ``None``) and
    is returned as the lag after the last one, so blocks chain exactly.
    """
    xp, a, r, state, out, tmp = _setup(frames, amplitudes, ratios, state, out)
    n = len(r)
    xk = xp.empty(frames.shape[1:], dtype=xp.float32)
    for k in range(frames.shape[0]):
        xk[...] = out[k]  # the prompt frame (out may alias frames)
        for i in range(n):
            out[k] += state[i]
            xp.multiply(xk, a[i], out=tmp)
            state[i] += tmp
            state[i] *= r[i]
    return out, state


def remove_lag(frames, amplitudes, ratios, state=None, *, out=None):
    """Exact inverse of :func:`add_lag`: recover true frames from lagged ones. Returns ``(x, state)``.

    Parameters
    ----------
    frames : array (T, H, W)
        Measured, dark-subtracted frames (any linear scaling per pixel, e.g.
        gain-normalised counts, commutes with the model).
    amplitudes : array (N,) or (N, H, W)
        ``a_n``.
    ratios : array (N,)
        ``r_n = exp(-T / tau_n)``.
    state : array (N, H, W), optional
        Lag images before the first frame (zeros if ``None``), e.g. from
        :func:`steady_state` or from the previous block. Updated in place and returned.
    out : array (T, H, W) float32, optional
        May be ``frames`` itself.

    Returns
    -------
    x : array (T, H, W) float32
    state : array (N, H, W) float32
        The lag after the last frame: pass it to the next block.

    Notes
    -----
    Per frame and term: one subtraction, one fused multiply-add, one scaling;
    float32 throughout, so chunked and whole-video results agree to rounding
    (bit for bit, since the operation order is the same).
    """
    xp, a, r, state, out, tmp = _setup(frames, amplitudes, ratios, state, out)
    n = len(r)
    if xp is np and n:
        from ..jit import remove_lag_into  # the same operations, all frames of a pixel span in cache, all cores

        if remove_lag_into(out, state, a, r):
            return out, state
    if xp is not np and n and out.size and all(v.dtype == np.float32 and v.flags.c_contiguous for v in (out, state)):
        from ..kernels import MAX_LAG_TERMS, remove_lag_gpu  # cuda/afterglow.cu: one launch for the block, bit-identical

        if n <= MAX_LAG_TERMS and np.ndim(amplitudes) in (1, out.ndim):
            remove_lag_gpu(out, amplitudes, ratios, state)
            return out, state
    for k in range(out.shape[0]):
        xk = out[k]
        for i in range(n):
            xk -= state[i]
        for i in range(n):
            xp.multiply(xk, a[i], out=tmp)
            state[i] += tmp
            state[i] *= r[i]
    return out, state


def estimate_memory(frame_shape, n_terms: int) -> int:
    """Bytes :func:`remove_lag` needs beyond its in-place block: the state and one temporary frame."""
    return (n_terms + 1) * int(np.prod(frame_shape)) * 4


# --------------------------------------------------------------------------- figures
def lag_fraction(t_s, step_amplitudes, tau_s):
    """Fraction of the steady frame signal in a frame starting ``t_s`` after the cut-off.

    ``f(t) = sum_n A_n exp(-t / tau_n)``; ``t = 0`` is the first frame after cut-off.
    """
    t = np.asarray(t_s, dtype=np.float64)[..., None]
    return np.sum(np.asarray(step_amplitudes) * np.exp(-t / np.asarray(tau_s)), axis=-1)


def step_amplitudes(amplitudes, ratios):
    """``A_n = a_n r_n / ((1 - r_n) G)``: the falling-step amplitudes of model amplitudes ``a_n``."""
    a = np.asarray(amplitudes, dtype=np.float64)
    r = np.asarray(ratios, dtype=np.float64)
    return a * r / (1 - r) / dc_gain(a, r)


def model_amplitudes(step_amps, ratios):
    """Inverse of :func:`step_amplitudes`: ``a_n = A_n G (1 - r_n) / r_n`` with ``G = 1 / (1 - sum A)``."""
    A = np.asarray(step_amps, dtype=np.float64)
    r = np.asarray(ratios, dtype=np.float64)
    if A.sum() >= 1:
        raise ValueError("the lag left after cut-off is not below the steady signal; this is not a falling step")
    g = 1.0 / (1.0 - A.sum())
    return A * g * (1 - r) / r


def figures(step_amps, tau_s, frame_rate_hz: float) -> dict:
    """Conventional afterglow figures (fractions of the steady signal)."""
    A, tau = np.asarray(step_amps), np.asarray(tau_s)
    return {
        "lag_first_frame": float(lag_fraction(0.0, A, tau)),
        "lag_second_frame": float(lag_fraction(1.0 / frame_rate_hz, A, tau)),
        "afterglow_3ms": float(lag_fraction(0.003, A, tau)),
        "afterglow_10ms": float(lag_fraction(0.010, A, tau)),
        "afterglow_100ms": float(lag_fraction(0.100, A, tau)),
    }


# --------------------------------------------------------------------------- fit
@dataclass
class StepFit:
    """Result of :func:`fit_falling_step` (times in seconds, fractions of the steady signal)."""

    frame_rate_hz: float
    tau_s: np.ndarray
    step_amplitudes: np.ndarray
    amplitudes: np.ndarray
    offset: float
    cutoff_frame: int
    skipped_frames: int
    steady_level: float
    noise: float
    rss: float
    n_points: int
    bic: dict = field(default_factory=dict)
    data: np.ndarray | None = None  # f(m) measured, m from cutoff_frame + skipped_frames
    model: np.ndarray | None = None

    @property
    def ratios(self):
        return ratios_from_tau(self.tau_s, self.frame_rate_hz)

    @property
    def dc_gain(self) -> float:
        return float(dc_gain(self.amplitudes, self.ratios))

    def figures(self) -> dict:
        return figures(self.step_amplitudes, self.tau_s, self.frame_rate_hz)


def find_cutoff(signal, *, min_drop_sigma: float = 10.0):
    """Locate the beam cut-off in a falling-step mean-signal curve.

    Returns ``(cutoff_frame, steady_level, noise)``: the first frame after the
    steepest drop (and after any further drops of at least a quarter of it: a
    ramp), the median level of the on-phase (its second half, to skip
    a turn-on ramp) and the frame-to-frame noise of the on-phase.
    Raises ``ValueError`` when no significant drop exists.
    """
    s = np.asarray(signal, dtype=np.float64)
    if s.size < 8:
        raise ValueError(f"only {s.size} frames: a falling-step sequence needs beam-on and beam-off frames")
    if not np.all(np.isfinite(s)):
        raise ValueError("the mean signal has NaN/Inf frames; check the recording")
    d = np.diff(s)
    kc = int(np.argmin(d)) + 1
    big = -d.min()
    # a beam ramp: several steep drops in a row; the cut-off is after the last of them
    while kc < s.size - 1 and (s[kc] - s[kc + 1]) > 0.25 * big:
        kc += 1
    start = int(np.argmin(d)) + 1  # first frame of the drop
    while start > 1 and (s[start - 2] - s[start - 1]) > 0.25 * big:
        start -= 1
    on = s[: max(start - 1, 1)]
    steady = float(np.median(on[len(on) // 2 :]))
    noise = float(np.std(np.diff(on[len(on) // 2 :])) / math.sqrt(2)) if len(on) >= 6 else 0.0
    drop = steady - float(s[kc])
    if kc < 3 or drop <= max(min_drop_sigma * noise, 1e-3 * abs(steady)) or steady <= 0:
        raise ValueError("no beam-off part found (the signal never drops from a steady level); "
                         "record the beam on to steady state, then off")
    if s.size - kc < 4:
        raise ValueError(f"only {s.size - kc} frames after the beam cut-off; record at least 4 (better: 5 x the longest time constant)")
    return kc, steady, noise


def _bic(rss, n, p, sigma):
    """Bayesian information criterion with a known noise level: chi-square + p ln n."""
    return rss / sigma**2 + p * math.log(n)


def _fit_k(m, f, k, grid_w, grid_tau, with_offset):
    """Refine a k-term exponential fit of f(m) (tau in frames) from NNLS grid weights."""
    from scipy.optimize import least_squares, nnls

    # initial taus: weighted quantiles of log(tau) under the NNLS weights
    w = grid_w / grid_w.sum() if grid_w.sum() > 0 else np.full(grid_w.size, 1.0 / grid_w.size)
    cdf = np.cumsum(w)
    lt = np.log(grid_tau)
    tau0 = np.exp(np.interp((np.arange(k) + 0.5) / k, cdf, lt))
    tau0 = np.unique(np.round(tau0, 6))
    while tau0.size < k:  # spread duplicates
        tau0 = np.unique(np.concatenate([tau0, tau0[-1:] * 3.0]))
    basis = np.exp(-m[:, None] / tau0[None, :])
    if with_offset:
        basis = np.column_stack([basis, np.ones_like(m), -np.ones_like(m)])
    amp0, _ = nnls(basis, f)
    off0 = (amp0[-2] - amp0[-1]) if with_offset else 0.0
    amp0 = amp0[:k]

    def resid(p):
        A = p[:k]
        tau = np.exp(p[k : 2 * k])
        off = p[2 * k] if with_offset else 0.0
        return (np.exp(-m[:, None] / tau[None, :]) @ A + off) - f

    p0 = np.concatenate([np.maximum(amp0, 1e-9), np.log(tau0)] + ([[off0]] if with_offset else []))
    lo = np.concatenate([np.zeros(k), np.full(k, math.log(0.05))] + ([[-np.inf]] if with_offset else []))
    hi = np.concatenate([np.full(k, np.inf), np.full(k, math.log(1e4 * max(m.max(), 1)))] + ([[np.inf]] if with_offset else []))
    p0 = np.clip(p0, lo + 1e-12, hi - 1e-12)
    sol = least_squares(resid, p0, bounds=(lo, hi), x_scale="jac", max_nfev=2000)
    A = sol.x[:k]
    tau = np.exp(sol.x[k : 2 * k])
    off = float(sol.x[2 * k]) if with_offset else 0.0
    keep = A > 1e-12
    order = np.argsort(tau[keep])
    return A[keep][order], tau[keep][order], off, float(np.sum(sol.fun**2))


def _fit_terms(tail, sk: int, max_terms: int, fit_offset: bool, sigma: float):
    """Fit 1..max_terms exponentials to the falling step's ``tail`` from ``sk`` frames after the cut-off.

    Returns ``(best, bics, f, m)``: the lowest-BIC fit ``(A, tau, off, rss, bic)`` (None if none), the BIC of each
    number of terms, the fitted data and their frame offsets.
    """
    from scipy.optimize import nnls

    f = tail[sk:]
    m = np.arange(sk, tail.size, dtype=np.float64)
    grid = np.geomspace(0.2, 5.0 * max(tail.size, 2), 80)
    basis = np.exp(-m[:, None] / grid[None, :])
    if fit_offset:
        basis = np.column_stack([basis, np.ones_like(m), -np.ones_like(m)])
    w, _ = nnls(basis, f)
    gw = w[: grid.size]
    best = None
    bics = {}
    for k in range(1, max_terms + 1):
        if 2 * k + int(fit_offset) >= f.size:
            break
        A, tau, off, rss = _fit_k(m, f, k, gw, grid, fit_offset)
        if A.size == 0:
            continue
        bic = _bic(rss, f.size, 2 * A.size + int(fit_offset), sigma)
        bics[k] = bic
        if best is None or bic < best[-1] - 1e-9:
            best = (A, tau, off, rss, bic)
    return best, bics, f, m


def _fit_skips(tail, skips, max_terms: int, fit_offset: bool, sigma: float) -> dict:
    """The best fit for each number of frames skipped after the cut-off (while 4 frames or more are left).

    Returns ``{skip: (best, bics, f, m, reduced chi-square)}`` (see :func:`_fit_terms`).
    """
    results = {}
    for sk in skips:
        if tail.size - sk < 4:
            break
        best, bics, f, m = _fit_terms(tail, sk, max_terms, fit_offset, sigma)
        if best is None:
            continue
        A, tau, off, rss, _ = best
        dof = max(f.size - 2 * A.size - int(fit_offset), 1)
        results[sk] = (best, bics, f, m, rss / dof / sigma**2)
    return results


def _choose_skip(results: dict) -> int:
    """The fewest frames skipped whose fit is as good (reduced chi-square within 1.5x of the best) as any."""
    best_chi = min(r[-1] for r in results.values())
    return min(k for k, r in results.items() if r[-1] <= 1.5 * best_chi)


def fit_falling_step(
    signal,
    frame_rate_hz: float,
    *,
    max_terms: int = 4,
    skip: int | None = None,
    fit_offset: bool = False,
) -> StepFit:
    """Fit the multi-exponential lag model to a falling-step curve.

    Parameters
    ----------
    signal : array (T,)
        Mean dark-subtracted signal per frame: beam on at steady state, then off.
    frame_rate_hz : float
    max_terms : int
        Up to this many exponentials (1-4).
    skip : int, optional
        Frames after the cut-off left out of the fit (a shutter/tube ramp).
        ``None``: the smallest of 0-3 whose fit is as good (reduced chi-square
        within 1.5x of the best) as skipping more.
    fit_offset : bool
        Also fit a constant offset (when no darks were subtracted).

    Returns
    -------
    StepFit

    Notes
    -----
    Criterion: non-negative least squares over 80 log-spaced time constants
    (0.2 frame to 5x the decay length) gives the spectrum; k = 1..max_terms
    exponentials are refined by bounded least squares started from the
    spectrum's weighted quantiles; the number of terms minimises the Bayesian
    information criterion with the noise level measured on the beam-on frames,
    ``RSS / sigma^2 + p ln n`` (p = 2k, +1 with offset; sigma at least 1e-6 of
    the steady signal).
    """
    if not 1 <= max_terms <= 4:
        raise ValueError("max_terms must be 1 to 4")
    if not (frame_rate_hz > 0 and math.isfinite(frame_rate_hz)):
        raise ValueError("frame_rate_hz must be a positive number")
    s = np.asarray(signal, dtype=np.float64)
    kc, steady, noise = find_cutoff(s)
    tail = s[kc:] / steady
    sigma = max(noise / steady, 1e-6)  # floor: float32 data carry ~1e-7 relative rounding
    results = _fit_skips(tail, [skip] if skip is not None else [0, 1, 2, 3], max_terms, fit_offset, sigma)
    if not results:
        raise ValueError("the decay could not be fitted; record more frames after the cut-off")
    sk = _choose_skip(results) if skip is None else skip
    (A, tau_frames, off, rss, _), bics, f, m, _ = results[sk]
    r = np.exp(-1.0 / tau_frames)
    a = model_amplitudes(A, r)
    model = np.exp(-m[:, None] / tau_frames[None, :]) @ A + off
    return StepFit(
        frame_rate_hz=float(frame_rate_hz), tau_s=tau_frames / frame_rate_hz, step_amplitudes=A, amplitudes=a,
        offset=off * steady, cutoff_frame=kc, skipped_frames=sk, steady_level=steady, noise=noise, rss=rss,
        n_points=int(f.size), bic={int(k): float(v) for k, v in bics.items()}, data=f, model=model,
    )


def fit_amplitude_maps(frames_after_cutoff, steady_map, tau_s, frame_rate_hz: float, *, first_frame: int = 0):
    """Per-pixel step amplitudes with the time constants fixed (non-uniform screens).

    Linear least squares per pixel on ``f_p(m) = sum_n A_{n,p} r_n^m``
    (vectorised: one pseudo-inverse for all pixels), clipped at 0, converted to
    model amplitudes ``a_{n,p}``.

    Parameters
    ----------
    frames_after_cutoff : array (M, H, W)
        Dark-subtracted frames from the cut-off frame on (``first_frame`` skipped frames included).
    steady_map : array (H, W)
        Per-pixel steady (beam-on) level.

    Returns
    -------
    array (N, H, W) float32 model amplitudes
    """
    xp = get_xp(frames_after_cutoff)
    r = ratios_from_tau(tau_s, frame_rate_hz)
    mm = np.arange(first_frame, frames_after_cutoff.shape[0], dtype=np.float64)
    basis = r[None, :] ** mm[:, None]
    pinv = xp.asarray(np.linalg.pinv(basis), dtype=xp.float32)  # (N, M')
    y = xp.asarray(frames_after_cutoff[first_frame:], dtype=xp.float32)
    steady = xp.asarray(steady_map, dtype=xp.float32)
    f = y / xp.where(steady > 0, steady, np.float32(np.inf))
    A = xp.tensordot(pinv, f, axes=(1, 0))  # (N, H, W)
    A = xp.maximum(A, 0)
    total = A.sum(axis=0)
    A = xp.where(total[None] < 0.99, A, A * (0.99 / xp.maximum(total, 1e-12))[None])
    g = 1.0 / (1.0 - A.sum(axis=0))
    rr = xp.asarray(r.reshape(-1, 1, 1), dtype=xp.float32)
    return (A * g[None] * (1 - rr) / rr).astype(xp.float32)


# --------------------------------------------------------------------------- ghost metric
def ghost_residual(frames, reference, mask, *, contrast: float):
    """Per-frame ghost: mean of ``frames - reference`` over ``mask`` as a fraction of ``contrast``.

    Parameters
    ----------
    frames, reference : array (T, H, W)
        Corrected frames and the lag-free truth (or the expected background).
    mask : array (T, H, W) bool
        Where a ghost can sit: background now, object (or beam) recently.
    contrast : float
        The object's contrast in the units of ``frames``.

    Returns
    -------
    array (T,) float64, NaN where the mask is empty
    """
    xp = get_xp(frames)
    d = xp.where(mask, frames.astype(xp.float64) - reference, 0.0)
    n = mask.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return d.sum(axis=(1, 2)) / n / contrast


def trail_mask(truth, since, *, background: float, threshold: float, window: int):
    """Where a ghost can sit in each frame: background now, covered by the object within ``window`` frames.

    Parameters
    ----------
    truth : array (T, H, W)
        Lag-free truth frames.
    since : array (H, W) int32 or None
        Frames since each pixel was last covered (state across blocks; ``None``: never).
    background : float
        Pixels at or above this truth level are background (open beam).
    threshold : float
        Pixels below this truth level are covered by the object.
    window : int
        How many frames after uncovering a pixel is watched.

    Returns
    -------
    mask : array (T, H, W) bool
    since : array (H, W) int32, for the next block
    """
    xp = get_xp(truth)
    big = np.int32(2**30)
    if since is None:
        since = xp.full(truth.shape[1:], big, dtype=xp.int32)
    mask = xp.zeros(truth.shape, dtype=bool)
    for k in range(truth.shape[0]):
        covered = truth[k] < threshold
        since = xp.where(covered, 0, xp.minimum(since + 1, big)).astype(xp.int32)
        mask[k] = (~covered) & (since <= window) & (since >= 1) & (truth[k] >= background)
    return mask, since
