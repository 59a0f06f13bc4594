"""Long-term stability of a scintillator screen: drift, flicker, registration and sharpness.

The paper's stability test follows the light output under continuous X-ray
exposure for up to 200 h. These ops turn the series and the session images
into numbers with uncertainties:

* :func:`fit_drift` -- linear drift in % of the initial level per hour, and
  one- or two-exponential decays, chosen by AICc, with the retained fraction;
* :func:`flicker` -- frame-to-frame noise separated from slow drift;
* :func:`register` -- sub-pixel alignment of images from different sessions;
* :func:`sharpness` -- exposure-independent sharpness (and SSIM) with errors;
* :func:`trend`, :func:`verdict` -- a figure's change over sessions and a
  pass / warn / fail call against a limit.

Time is measured from the first finite sample (``t_start``): ``level0`` and
the exponential amplitudes refer to ``t_start``, not to ``t = 0``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage
from scipy.optimize import OptimizeWarning, approx_fprime, curve_fit
from skimage.filters import window as _window
from skimage.metrics import structural_similarity
from skimage.registration import phase_cross_correlation

_TAU_MAX_SPANS = 20.0  # a time constant beyond 20 x the record is indistinguishable from a line
_AICC_MARGIN = 2.0  # a more complex model must lower AICc by more than this
_REGISTER_ITER = 8  # window-bias iterations of the registration
_MIN_TILE = 8  # pixels per tile side (SSIM uses a 7 x 7 window)


# --------------------------------------------------------------------------- models (u = t - t_start)
def _linear(u, y0, s):
    return y0 * (1.0 + s * u)


def _jac_linear(u, y0, s):
    return np.column_stack([1.0 + s * u, y0 * u])


def _line(u, a, b):
    return a + b * u


def _jac_line(u, a, b):
    return np.column_stack([np.ones_like(u), u])


def _exp1(u, c, a, tau):
    return c + a * np.exp(-u / tau)


def _exp2(u, c, a1, tau1, a2, tau2):
    return c + a1 * np.exp(-u / tau1) + a2 * np.exp(-u / tau2)


# --------------------------------------------------------------------------- fitting helpers
def _per_sample(values, shape, name):
    """``values`` (a scalar or one per sample) broadcast to ``shape`` as float64."""
    try:
        return np.broadcast_to(np.asarray(values, dtype=np.float64), shape)
    except ValueError:
        raise ValueError(f"{name} must be a scalar or one value per sample ({shape[0]})") from None


def _series(t_h, y, sigma):
    """Validated float64 (t, y, sigma-or-None) with NaN samples of ``y`` dropped."""
    t = np.asarray(t_h, dtype=np.float64)
    v = np.asarray(y, dtype=np.float64)
    if t.ndim != 1 or t.shape != v.shape:
        raise ValueError(f"t_h and y must be 1-D of the same length (got {t.shape} and {v.shape})")
    if not np.all(np.isfinite(t)):
        raise ValueError("t_h has NaN/Inf times; give every sample a finite time in hours")
    s = None
    if sigma is not None:
        s = _per_sample(sigma, t.shape, "sigma")
        if not np.all(np.isfinite(s) & (s > 0)):
            raise ValueError("sigma must be positive and finite (a scalar or one per sample), or None")
    keep = np.isfinite(v)
    t, v = t[keep], v[keep]
    s = None if s is None else s[keep]
    if t.size < 3:
        raise ValueError(f"only {t.size} finite samples; a drift fit needs at least 3")
    if np.any(np.diff(t) <= 0):
        raise ValueError("t_h must be strictly increasing; sort the samples by time and merge duplicates")
    return t, v, s


def _aicc(rss, n, k):
    """AICc = n ln(RSS/n) + 2k + 2k(k+1)/(n-k-1); None where n - k - 1 <= 0."""
    if n - k - 1 <= 0:
        return None
    rss = max(float(rss), np.finfo(np.float64).tiny)
    return n * math.log(rss / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def _curve(model, u, y, s, p0, bounds, jac=None):
    """One curve_fit; ``(p, cov, chi2)`` or None if it fails or its covariance is not finite."""
    limit = {"maxfev": 2000} if np.all(np.isinf(bounds)) else {"max_nfev": 20 * len(p0)}  # lm / trf spelling
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (OptimizeWarning, RuntimeWarning))
            p, cov = curve_fit(model, u, y, p0=p0, sigma=s, absolute_sigma=s is not None, bounds=bounds,
                               jac=jac, **limit)
    except (RuntimeError, ValueError, np.linalg.LinAlgError):
        return None
    r = (y - model(u, *p)) / (1.0 if s is None else s)
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(cov))):
        return None
    return p, cov, float(r @ r)


def _tau_grid(u):
    """Log-spaced trial time constants from 0.1 x the shortest step to 20 x the record length."""
    return np.geomspace(0.1 * np.min(np.diff(u)), _TAU_MAX_SPANS * u[-1], 24)


def _grid_start(u, y, s, grid, combos):
    """Start for an exponential fit: the tau tuple of ``combos`` (index rows into ``grid``) whose linear
    least-squares fit of ``c + sum a_i exp(-u / tau_i)`` has the lowest chi2 (all tuples at once by QR
    projection); None if it lies on the edge of the grid (the data do not constrain that time constant)."""
    w = np.ones_like(u) if s is None else 1.0 / s
    e = np.exp(-u[None, :] / grid[:, None]) * w  # (taus, n)
    x = np.concatenate([np.broadcast_to(w, (len(combos), 1, u.size)), e[combos]], axis=1).transpose(0, 2, 1)
    q, _ = np.linalg.qr(x)
    yw = y * w
    proj = np.einsum("pnk,n->pk", q, yw)
    k = int(np.argmax(np.sum(proj ** 2, axis=1)))  # largest projection = smallest chi2
    if np.any((combos[k] == 0) | (combos[k] == grid.size - 1)):
        return None
    coef, *_ = np.linalg.lstsq(x[k], yw, rcond=None)
    return np.concatenate([[coef[0]], np.column_stack([coef[1:], grid[combos[k]]]).ravel()])


def _entry(names, p, cov, chi2, n, s):
    """Public dict of one fit: parameters, their errors, AICc, reduced chi2 (only with sigma), n."""
    err = np.sqrt(np.clip(np.diag(cov), 0, None))
    out = {}
    for name, v, e in zip(names, p, err):
        out[name], out[name + "_err"] = float(v), float(e)
    k = len(p)
    out["aicc"] = _aicc(chi2, n, k)
    out["chi2_red"] = chi2 / (n - k) if (s is not None and n > k) else None
    out["n"] = int(n)
    return out


def _fit_linear(u, y, s):
    b1, b0 = np.polyfit(u, y, 1)
    if b0 == 0:
        raise ValueError("the fitted initial level is zero; drift in % needs a non-zero light level")
    f = _curve(_linear, u, y, s, (b0, b1 / b0), (-np.inf, np.inf), jac=_jac_linear)
    if f is None:
        raise ValueError("the linear drift fit failed; check the series for outliers")
    p, cov, chi2 = f
    e = _entry(("level0", "drift_pct_per_h"), p * (1.0, 100.0), cov * np.outer((1.0, 100.0), (1.0, 100.0)),
               chi2, u.size, s)
    return e, (_linear, p, cov)


def _jac_exp(u, c, *at):
    """Jacobian of ``c + sum a_i exp(-u / tau_i)`` with parameters (c, a1, tau1, ...)."""
    cols = [np.ones_like(u)]
    for a, tau in zip(at[::2], at[1::2]):
        e = np.exp(-u / tau)
        cols += [e, a * u / tau ** 2 * e]
    return np.column_stack(cols)


def _fit_exp(u, y, s, terms):
    """``c + sum_i a_i exp(-u / tau_i)`` for 1 or 2 terms (tau1 < tau2), started from a tau grid."""
    grid = _tau_grid(u)
    i, j = np.triu_indices(grid.size, 1)
    keep = grid[j] >= 1.5 * grid[i]
    combos = np.arange(grid.size)[:, None] if terms == 1 else np.column_stack([i[keep], j[keep]])
    p0 = _grid_start(u, y, s, grid, combos)
    if p0 is None:
        return None
    lb = [-np.inf] + [-np.inf, grid[0]] * terms
    ub = [np.inf] + [np.inf, grid[-1]] * terms
    f = _curve(_exp1 if terms == 1 else _exp2, u, y, s, p0, (lb, ub), jac=_jac_exp)
    if f is None or not all(grid[0] * 1.001 < tau < grid[-1] * 0.999 for tau in f[0][2::2]):
        return None  # not converged, or a time constant ran to a bound
    return f


def _fit_exp1(u, y, s):
    f = _fit_exp(u, y, s, 1)
    if f is None:
        return None, None
    return _entry(("c", "a", "tau_h"), *f, u.size, s), (_exp1, f[0], f[1])


def _fit_exp2(u, y, s):
    f = _fit_exp(u, y, s, 2)
    if f is None:
        return None, None
    p, cov, chi2 = f
    if p[2] > p[4]:  # order the terms: tau1 < tau2
        order = [0, 3, 4, 1, 2]
        p, cov = p[order], cov[np.ix_(order, order)]
    err = np.sqrt(np.clip(np.diag(cov), 0, None))
    if p[4] / p[2] < 1.5 or abs(p[1]) <= err[1] or abs(p[3]) <= err[3]:
        return None, None  # degenerate: merged time constants or an amplitude not resolved
    return _entry(("c", "a1", "tau1_h", "a2", "tau2_h"), p, cov, chi2, u.size, s), (_exp2, p, cov)


def _retained(model, p, cov, span):
    """``f(span) / f(0)`` and its delta-method error from the fit covariance."""
    def ratio(q):
        return model(span, *q) / model(0.0, *q)

    step = 1e-7 * np.maximum(np.abs(p), np.sqrt(np.clip(np.diag(cov), 0, None)) + 1e-300)
    g = approx_fprime(p, ratio, step)
    return float(ratio(p)), float(np.sqrt(max(g @ cov @ g, 0.0)))


def fit_drift(t_h, y, *, sigma=None) -> dict:
    """Fit a light-output series with a linear drift and one- and two-exponential decays.

    Parameters
    ----------
    t_h : array_like (n,)
        Sample times in hours, finite and strictly increasing.
    y : array_like (n,)
        Light output (any units). NaN samples are dropped.
    sigma : float or array_like (n,), optional
        1-sigma errors of ``y``. Given: the errors are taken as absolute
        (``absolute_sigma=True``) and ``chi2_red`` is reported. None: the
        covariance is scaled by the residual variance, so the errors follow
        the observed scatter, and ``chi2_red`` is None.

    Returns
    -------
    dict
        ``linear`` (``level0``, ``drift_pct_per_h`` = 100 s for ``y = level0 (1 + s u)``, their ``_err``,
        ``aicc``, ``chi2_red``, ``n``); ``exp1`` (``c + a exp(-u/tau)``: ``c``, ``a``, ``tau_h``) or None;
        ``exp2`` (``c``, ``a1``, ``tau1_h``, ``a2``, ``tau2_h``, tau1 < tau2) or None; ``chosen``;
        ``retained_fraction_end`` (= model(t_end) / model(t_start)) and its ``_err``;
        ``uncertainty_method``; ``t_start_h``; ``t_end_h``. ``u = t - t_start``.

    Notes
    -----
    exp1 is tried with n >= 6, exp2 with n >= 10; a fit counts only if it
    converges with a finite covariance and its time constants lie inside
    (0.1 x the shortest step, 20 x the record length); exp2 also needs
    tau2 / tau1 >= 1.5 and both amplitudes larger than their errors. Models
    are taken in order of complexity; a more complex one replaces the current
    choice only if its AICc is lower by more than 2 (AICc uses the weighted
    chi2 as RSS when sigma is given). On pure white noise about 4 % of series
    still pick exp1 by chance. The fits start from a log-spaced grid of time
    constants solved by linear least squares, then curve_fit refines them.
    """
    t, v, s = _series(t_h, y, sigma)
    u = t - t[0]
    lin, best = _fit_linear(u, v, s)
    out = {"linear": lin, "exp1": None, "exp2": None, "chosen": "linear"}
    e1 = e2 = (None, None)
    if u.size >= 6:
        e1 = _fit_exp1(u, v, s)
    if u.size >= 10:
        e2 = _fit_exp2(u, v, s)
    out["exp1"], out["exp2"] = e1[0], e2[0]
    for name, (entry, fit) in (("exp1", e1), ("exp2", e2)):
        current = out[out["chosen"]]["aicc"]
        if entry is not None and (current is None or entry["aicc"] < current - _AICC_MARGIN):
            out["chosen"], best = name, fit
    r, r_err = _retained(*best, u[-1])
    out.update(retained_fraction_end=r, retained_fraction_end_err=r_err,
               uncertainty_method="delta method (curve_fit covariance)", t_start_h=float(t[0]), t_end_h=float(t[-1]))
    return out


# --------------------------------------------------------------------------- flicker
def flicker(y, *, window: int = 25) -> dict:
    """Frame-to-frame noise (flicker) separated from slow drift.

    Parameters
    ----------
    y : array_like (n,)
        Mean light output per frame, finite, with a non-zero mean; n >= 2 x window.
    window : int
        Frames per running-median window and per block for the Allan-type ratio (>= 2).

    Returns
    -------
    dict
        ``flicker_rms_pct``: rms of successive differences / sqrt(2), in % of the mean
        (a white-noise estimator insensitive to slow drift); ``drift_range_pct``: range
        (max - min) of the running median over ``window`` frames, in % of its first value,
        where the window is full; ``white_noise_ratio``: Allan variance of the means of
        consecutive non-overlapping ``window``-frame blocks over the white-noise prediction
        (frame variance / window) -- about 1 for white noise, above 1 for drift or 1/f
        noise; ``n``; ``window``.

    Notes
    -----
    Noise inflates ``drift_range_pct`` by a few times the running median's own
    noise (about 1.25 x flicker / sqrt(window)): 1 % flicker on a 5 % ramp over
    2000 frames reads about 5.5 % with window 25; a longer window lowers it.
    """
    v = np.asarray(y, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"y must be a 1-D series (got shape {v.shape}); average each frame first")
    if int(window) != window or window < 2:
        raise ValueError("window must be an integer of at least 2 frames")
    window = int(window)
    if v.size < 2 * window:
        raise ValueError(f"only {v.size} frames; give at least 2 x window = {2 * window} or a smaller window")
    if not np.all(np.isfinite(v)):
        raise ValueError("y has NaN/Inf frames; drop or interpolate them first")
    mean = v.mean()
    if mean == 0:
        raise ValueError("y has a zero mean; give the light output, not a mean-subtracted signal")
    var_white = 0.5 * np.mean(np.diff(v) ** 2)
    h = window // 2
    med = ndimage.median_filter(v, size=window, mode="nearest")[h: v.size - (window - 1 - h)]
    blocks = v[: (v.size // window) * window].reshape(-1, window).mean(axis=1)
    allan = 0.5 * np.mean(np.diff(blocks) ** 2)
    return {
        "flicker_rms_pct": float(100.0 * math.sqrt(var_white) / abs(mean)),
        "drift_range_pct": float(100.0 * (med.max() - med.min()) / abs(med[0])),
        "white_noise_ratio": float(allan / (var_white / window)) if var_white > 0 else None,
        "n": int(v.size),
        "window": window,
    }


# --------------------------------------------------------------------------- registration and sharpness
def _image(a, name):
    im = np.asarray(a, dtype=np.float64)
    if im.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image (got shape {im.shape})")
    if not np.all(np.isfinite(im)):
        raise ValueError(f"{name} has NaN/Inf pixels; correct bad pixels first")
    return im


def register(reference, image, *, upsample: int = 100) -> dict:
    """Sub-pixel shift of ``image`` relative to ``reference`` (phase correlation).

    Parameters
    ----------
    reference, image : array_like (H, W)
        Images of the same object from two sessions, same shape.
    upsample : int
        Sub-pixel precision 1 / upsample (skimage ``upsample_factor``), >= 1.

    Returns
    -------
    dict
        ``shift_yx``: (dy, dx) floats, the shift to apply to ``image`` to align it
        with ``reference``; ``error``: skimage's translation-invariant normalised
        RMS error; ``aligned``: ``image`` shifted by ``shift_yx`` with
        scipy.ndimage.shift (order 3, mode 'nearest'), float64.

    Notes
    -----
    Both images are mean-subtracted and multiplied by a Hann window (no edge
    effects), and cross-correlated without phase normalisation (whitening
    lets the flat high frequencies of smooth images pull the peak to zero).
    The window biases the peak towards zero shift, so the estimate is
    iterated: ``image`` is shifted by the current estimate and the residual
    shift is added, until it is below the sub-pixel step (at most 8 times).
    """
    ref, im = _image(reference, "reference"), _image(image, "image")
    if ref.shape != im.shape:
        raise ValueError(f"reference {ref.shape} and image {im.shape} differ in shape; crop them to the same size")
    if int(upsample) != upsample or upsample < 1:
        raise ValueError("upsample must be a positive integer")
    w = _window("hann", ref.shape)
    ref_w = (ref - ref.mean()) * w
    shift, aligned = np.zeros(2), im
    for _ in range(_REGISTER_ITER):
        step, error, _ = phase_cross_correlation(ref_w, (aligned - aligned.mean()) * w,
                                                 upsample_factor=int(upsample), normalization=None)
        shift += step
        aligned = ndimage.shift(im, shift, order=3, mode="nearest")
        if np.all(np.abs(step) < 0.5 / upsample):
            break
    return {"shift_yx": tuple(float(x) for x in shift), "error": float(error), "aligned": aligned}


def _tiles(a, tiles):
    """Means of ``a`` over a tiles x tiles grid (near-equal tiles), flattened."""
    return np.array([blk.mean() for row in np.array_split(a, tiles, axis=0)
                     for blk in np.array_split(row, tiles, axis=1)])


def _gradient_energy(im, tiles):
    """Global and per-tile mean squared Sobel magnitude over the mean intensity squared."""
    mean = im.mean()
    if mean <= 0:
        raise ValueError("the image mean is not positive; give dark-subtracted light images")
    g2 = (ndimage.sobel(im, axis=0) ** 2 + ndimage.sobel(im, axis=1) ** 2) / mean ** 2
    return float(g2.mean()), _tiles(g2, tiles)


def sharpness(image, *, reference=None, tiles: int = 4) -> dict:
    """Exposure-independent sharpness of an image, optionally against a reference image.

    Parameters
    ----------
    image : array_like (H, W)
        Dark-subtracted image (positive mean); at least 8 x tiles pixels a side.
    reference : array_like (H, W), optional
        The same object from another session, already registered (see :func:`register`).
    tiles : int
        The errors come from a tiles x tiles grid of tiles (>= 2).

    Returns
    -------
    dict
        ``gradient_energy``: mean of |Sobel gradient|^2 / mean(image)^2 (an exposure change
        does not change it); ``gradient_energy_err``: standard error over the tiles;
        ``ssim``, ``ssim_err`` (std over tiles / sqrt(n)), ``relative_sharpness``
        (gradient_energy / that of the reference) and ``relative_sharpness_err``: None
        without a reference; ``n_tiles``.

    Notes
    -----
    SSIM is computed after scaling ``image`` to the reference's mean intensity
    (an exposure change alone gives SSIM 1), with ``data_range`` = reference
    max - min. The error of ``relative_sharpness`` is propagated from the
    tile-mean variances *and* their covariance between the two images (the
    same scene's texture varies from tile to tile in both).
    """
    im = _image(image, "image")
    if int(tiles) != tiles or tiles < 2:
        raise ValueError("tiles must be an integer of at least 2")
    tiles = int(tiles)
    if min(im.shape) < _MIN_TILE * tiles:
        raise ValueError(f"image {im.shape} is too small for {tiles} x {tiles} tiles of >= {_MIN_TILE} px; "
                         "use fewer tiles")
    n = tiles * tiles
    ge, ge_t = _gradient_energy(im, tiles)
    out = {"gradient_energy": ge, "gradient_energy_err": float(ge_t.std(ddof=1) / math.sqrt(n)),
           "ssim": None, "ssim_err": None, "relative_sharpness": None, "relative_sharpness_err": None,
           "n_tiles": n}
    if reference is None:
        return out
    ref = _image(reference, "reference")
    if ref.shape != im.shape:
        raise ValueError(f"reference {ref.shape} and image {im.shape} differ in shape; register and crop them first")
    span = float(ref.max() - ref.min())
    if span <= 0:
        raise ValueError("the reference image is flat; SSIM needs a reference with contrast")
    gr, gr_t = _gradient_energy(ref, tiles)
    _, smap = structural_similarity(ref, im * (ref.mean() / im.mean()), data_range=span, full=True)
    s_t = _tiles(smap, tiles)
    cov = np.cov(np.vstack([ge_t, gr_t])) / n  # covariance of the two tile means
    rel = ge / gr
    var = rel ** 2 * (cov[0, 0] / ge ** 2 + cov[1, 1] / gr ** 2 - 2 * cov[0, 1] / (ge * gr))
    out.update(ssim=float(smap.mean()), ssim_err=float(s_t.std(ddof=1) / math.sqrt(n)),
               relative_sharpness=float(rel), relative_sharpness_err=float(math.sqrt(max(var, 0.0))))
    return out


# --------------------------------------------------------------------------- trend and verdict
def trend(t_h, values, *, baseline=None, errors=None) -> dict:
    """Weighted least-squares slope of a figure over sessions, in % of a baseline per hour.

    Parameters
    ----------
    t_h : array_like (n,)
        Session times in hours, strictly increasing, n >= 2.
    values : array_like (n,)
        The figure per session (finite).
    baseline : float, optional
        The reference value (non-zero); default ``values[0]``.
    errors : array_like (n,) or float, optional
        1-sigma errors of ``values`` (positive). Given: weights 1/errors^2, the
        slope error is propagated from them and inflated by sqrt(chi2_red) when
        the scatter exceeds them (chi2_red > 1). None: unweighted, error from the
        residual scatter.

    Returns
    -------
    dict
        ``slope_pct_per_h``, ``slope_pct_per_h_err`` (None with 2 points and no
        errors: no scatter to estimate it from), ``change_pct`` (last value vs
        baseline, %), ``n``, ``note`` (None or why the error is missing).
    """
    t = np.asarray(t_h, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.ndim != 1 or t.shape != v.shape or t.size < 2:
        raise ValueError(f"t_h and values must be 1-D of the same length >= 2 (got {t.shape} and {v.shape})")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(v))):
        raise ValueError("t_h and values must be finite; drop sessions without a result")
    if np.any(np.diff(t) <= 0):
        raise ValueError("t_h must be strictly increasing; sort the sessions by time")
    base = float(v[0] if baseline is None else baseline)
    if not (math.isfinite(base) and base != 0):
        raise ValueError("baseline must be finite and non-zero")
    rel = 100.0 * (v / base - 1.0)
    s = None
    if errors is not None:
        s = _per_sample(errors, t.shape, "errors") * (100.0 / abs(base))
        if not np.all(np.isfinite(s) & (s > 0)):
            raise ValueError("errors must be positive and finite (a scalar or one per session), or None")
    u = t - t[0]
    b1, b0 = np.polyfit(u, rel, 1) if s is None else np.polyfit(u, rel, 1, w=1.0 / s)
    out = {"slope_pct_per_h": float(b1), "slope_pct_per_h_err": None, "change_pct": float(rel[-1]),
           "n": int(t.size), "note": None}
    if t.size == 2 and s is None:
        out["note"] = "2 sessions and no errors: the slope's error cannot be estimated"
        return out
    f = _curve(_line, u, rel, s, (b0, b1), (-np.inf, np.inf), jac=_jac_line)
    if f is None:
        out["note"] = "the slope's covariance could not be estimated"
        return out
    p, cov, chi2 = f
    err = math.sqrt(cov[1, 1])
    if s is not None and t.size > 2:
        err *= math.sqrt(max(chi2 / (t.size - 2), 1.0))
    out.update(slope_pct_per_h=float(p[1]), slope_pct_per_h_err=float(err))
    return out


def verdict(change_pct, limit_pct, *, direction: str = "both", warn_fraction: float = 0.8) -> str:
    """Pass / warn / fail call for a change against a limit.

    Parameters
    ----------
    change_pct : float or None
        The change (%, signed). None or NaN gives "unknown".
    limit_pct : float
        The allowed change (%), positive.
    direction : {"both", "up", "down"}
        Which changes count: both signs, only increases (e.g. lag), only decreases (e.g. light output).
    warn_fraction : float
        "warn" beyond this fraction of the limit, in (0, 1].

    Returns
    -------
    str
        "fail" if the counted change is strictly beyond the limit, "warn" if strictly
        beyond warn_fraction x limit, else "pass"; "unknown" for a missing change.
    """
    if direction not in ("both", "up", "down"):
        raise ValueError(f"direction must be 'both', 'up' or 'down' (got {direction!r})")
    if not (limit_pct is not None and math.isfinite(limit_pct) and limit_pct > 0):
        raise ValueError("limit_pct must be a positive finite number")
    if not (0 < warn_fraction <= 1):
        raise ValueError("warn_fraction must be in (0, 1]")
    if change_pct is None or not math.isfinite(change_pct):
        return "unknown"
    x = {"both": abs(change_pct), "up": change_pct, "down": -change_pct}[direction]
    if x > limit_pct:
        return "fail"
    return "warn" if x > warn_fraction * limit_pct else "pass"
