"""The scintillator screen's optics: the presets (MTF20 and lag of each screen) and the analytic line-spread,
edge-spread and MTF the simulator renders and the tests take as truth."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import brentq
from scipy.special import ndtr

_SQRT2PI = math.sqrt(2.0 * math.pi)


@dataclass(frozen=True)
class ScintillatorPreset:
    """A scintillator screen: its blur and its afterglow.

    The blur is a Gaussian core plus an exponential (light-scattering) tail of
    weight ``tail_weight`` and length ``tail_length_mm``; the core width is
    solved so that the LSF's MTF falls to 0.2 at ``mtf20_lp_per_mm``.
    """

    name: str
    description: str
    mtf20_lp_per_mm: float
    tail_weight: float
    tail_length_mm: float
    afterglow_amplitudes: tuple[float, ...]
    afterglow_tau_s: tuple[float, ...]

    @property
    def sigma_mm(self) -> float:
        return _solve_sigma(self.mtf20_lp_per_mm, self.tail_weight, self.tail_length_mm)

    def mtf(self, f_lp_per_mm):
        """Analytic MTF of the scintillator's LSF at ``f`` (lp/mm)."""
        return lsf_mtf(np.asarray(f_lp_per_mm, dtype=np.float64), self.sigma_mm, self.tail_weight, self.tail_length_mm)


def lsf_mtf(f, sigma, tail_weight, tail_length):
    """MTF of the Gaussian-plus-exponential-tail LSF (f and lengths in reciprocal units)."""
    f = np.asarray(f, dtype=np.float64)
    core = np.exp(-2.0 * (math.pi * sigma * f) ** 2)
    tail = 1.0 / (1.0 + (2.0 * math.pi * tail_length * f) ** 2)
    return (1.0 - tail_weight) * core + tail_weight * tail


@lru_cache(maxsize=None)
def _solve_sigma(f20: float, w: float, lam: float) -> float:
    def g(s):
        return float(lsf_mtf(f20, s, w, lam)) - 0.2

    if w / (1.0 + (2 * math.pi * lam * f20) ** 2) >= 0.2:
        raise ValueError("scatter tail alone keeps the MTF above 0.2; lower tail_weight or lengthen the tail")
    return brentq(g, 1e-9, 10.0 / f20, xtol=1e-15, rtol=1e-14)


PRESETS: dict[str, ScintillatorPreset] = {
    "eu-gc": ScintillatorPreset(
        "eu-gc",
        "CsPbBr3:Eu perovskite glass-ceramic (Ma et al. 2021): low scattering, MTF20 = 15.0 lp/mm",
        15.0, 0.10, 0.020, (0.010, 0.003), (0.015, 0.120),
    ),
    "gc": ScintillatorPreset(
        "gc",
        "CsPbBr3 glass-ceramic without Eu: MTF20 = 4.1 lp/mm",
        4.1, 0.25, 0.080, (0.015, 0.005), (0.015, 0.120),
    ),
    "nc-film": ScintillatorPreset(
        "nc-film",
        "CsPbBr3 nanocrystal film (~100 um, strong scattering): MTF20 = 1.5 lp/mm",
        1.5, 0.40, 0.250, (0.030, 0.010), (0.020, 0.200),
    ),
}


# --------------------------------------------------------------------------- LSF integrals
def _g1_g2(x, sigma, w, lam):
    """First and second antiderivatives of the ESF (Gaussian core + Laplace tail)."""
    z = x / sigma
    phi = np.exp(-0.5 * z * z) / _SQRT2PI
    cdf = ndtr(z)
    g1 = x * cdf + sigma * phi
    g2 = 0.5 * (x * x + sigma * sigma) * cdf + 0.5 * x * sigma * phi
    e = np.exp(-np.abs(x) / lam)
    pos = x >= 0
    t1 = np.where(pos, x + 0.5 * lam * e, 0.5 * lam * e)
    t2 = np.where(pos, 0.5 * x * x - 0.5 * lam * lam * e + lam * lam, 0.5 * lam * lam * e)
    return (1 - w) * g1 + w * t1, (1 - w) * g2 + w * t2


def pixel_esf(d, a, b, sigma, w, lam):
    """Blurred half-plane indicator averaged over a unit pixel.

    ``d`` is the signed distance (pixels) of the pixel centre from the edge,
    positive inside; ``a``, ``b`` = ``|cos|``, ``|sin|`` of the normal's angle
    (the pixel's extent projected on the normal is a trapezoid of these two
    widths). Exact: the ESF convolved with both boxes, through the ESF's
    second antiderivative.
    """
    d = np.asarray(d, dtype=np.float64)
    a, b = max(a, b), min(a, b)
    if b < 1e-9:
        g1p, _ = _g1_g2(d + a / 2, sigma, w, lam)
        g1m, _ = _g1_g2(d - a / 2, sigma, w, lam)
        return (g1p - g1m) / a
    s = [(+1, d + (a + b) / 2), (-1, d + (a - b) / 2), (-1, d - (a - b) / 2), (+1, d - (a + b) / 2)]
    total = np.zeros_like(d)
    for sign, x in s:
        total += sign * _g1_g2(x, sigma, w, lam)[1]
    return total / (a * b)


def _box_profile(coords, lo, hi, sigma, w, lam):
    """Blurred, pixel-integrated indicator of the interval [lo, hi] along one axis."""
    return pixel_esf(coords - lo, 1.0, 0.0, sigma, w, lam) - pixel_esf(coords - hi, 1.0, 0.0, sigma, w, lam)


def _overlap(coords, lo, hi):
    """Length of the overlap of pixel [c-1/2, c+1/2] with [lo, hi] (area integration, no blur)."""
    return np.clip(np.minimum(coords + 0.5, hi) - np.maximum(coords - 0.5, lo), 0.0, 1.0)


# --------------------------------------------------------------------------- spec


def system_mtf_edge(f_cy_per_px, preset: ScintillatorPreset, pixel_pitch_mm: float, angle_deg: float):
    """Analytic presampled MTF of the rendered edge: LSF MTF times the pixel aperture along the normal."""
    f = np.asarray(f_cy_per_px, dtype=np.float64)
    t = math.radians(angle_deg)
    return preset.mtf(f / pixel_pitch_mm) * np.abs(np.sinc(f * math.cos(t)) * np.sinc(f * math.sin(t)))


def gaussian_edges(n: int, size: int, rng, *, angle_deg: float = 5.0, mtf20: float = 0.3, quanta: float = 2000,
                   dark: float = 0.1) -> np.ndarray:
    """``n`` slanted edges of ``size``² pixels, point-sampled erf profiles of a Gaussian LSF whose MTF20 is
    ``mtf20`` cycles/pixel (the analytic MTF ``exp(-2 pi^2 sigma^2 f^2)``), ``quanta`` on the bright side, ``dark``
    of it on the dark side, Poisson noise (``rng``), each edge offset by up to 2 px: float32 (n, size, size)."""
    from scipy.special import erf

    sigma = math.sqrt(math.log(5) / 2) / (math.pi * mtf20)
    t = math.radians(angle_deg)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    out = []
    for _ in range(n):
        d = (xx - (size - 1) / 2 - rng.uniform(-2, 2)) * math.cos(t) - (yy - (size - 1) / 2) * math.sin(t)
        out.append(rng.poisson(quanta * (dark + (1 - dark) * 0.5 * (1 + erf(d / (sigma * math.sqrt(2)))))))
    return np.stack(out).astype(np.float32)
