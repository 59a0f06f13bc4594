"""Stability ops (drift fits, flicker, registration, sharpness, trend, verdict) against planted truths."""

import math

import numpy as np
import pytest
from scipy import ndimage

from pipeline.ops.stability import fit_drift, flicker, register, sharpness, trend, verdict

T = np.linspace(0.0, 200.0, 201)  # hours


def _linear_series(seed, y0=1000.0, drift_pct=-0.1, noise_pct=0.5):
    rng = np.random.default_rng(seed)
    return y0 * (1 + drift_pct / 100 * T) + rng.normal(0.0, noise_pct / 100 * y0, T.size)


def _ols_drift_err(t, y, sigma_y):
    """Analytic OLS error of 100 b1/b0 for y = b0 + b1 t (delta method with var/cov of b0, b1)."""
    n, tbar = t.size, t.mean()
    sxx = np.sum((t - tbar) ** 2)
    b1, b0 = np.polyfit(t, y, 1)
    v0, v1, c01 = sigma_y ** 2 * (1 / n + tbar ** 2 / sxx), sigma_y ** 2 / sxx, -sigma_y ** 2 * tbar / sxx
    s = b1 / b0
    return 100 * math.sqrt(v1 - 2 * s * c01 + s * s * v0) / abs(b0)


# --------------------------------------------------------------------------- fit_drift
def test_planted_linear_drift():
    y = _linear_series(11)
    r = fit_drift(T, y)
    lin = r["linear"]
    assert r["chosen"] == "linear"
    assert abs(lin["drift_pct_per_h"] - -0.1) < 2 * lin["drift_pct_per_h_err"]
    # against the OLS formula with the scatter estimated from the residuals, and with the true noise
    b1, b0 = np.polyfit(T, y, 1)
    s_hat = math.sqrt(np.sum((y - (b0 + b1 * T)) ** 2) / (T.size - 2))
    assert lin["drift_pct_per_h_err"] == pytest.approx(_ols_drift_err(T, y, s_hat), rel=0.02)
    assert lin["drift_pct_per_h_err"] == pytest.approx(_ols_drift_err(T, y, 5.0), rel=0.15)
    assert lin["level0"] == pytest.approx(1000.0, abs=3 * lin["level0_err"])
    assert lin["n"] == 201 and lin["chi2_red"] is None
    truth = 1 - 0.1 / 100 * 200
    assert abs(r["retained_fraction_end"] - truth) < 3 * r["retained_fraction_end_err"]
    assert (r["t_start_h"], r["t_end_h"]) == (0.0, 200.0)
    assert "delta" in r["uncertainty_method"]


def test_planted_exponential_decay():
    rng = np.random.default_rng(5)
    y = 0.9 + 0.1 * np.exp(-T / 30.0) + rng.normal(0.0, 0.001, T.size)
    r = fit_drift(T, y)
    assert r["chosen"] == "exp1"
    e = r["exp1"]
    assert abs(e["tau_h"] - 30.0) < 3 * e["tau_h_err"]
    assert abs(e["c"] - 0.9) < 3 * e["c_err"] and abs(e["a"] - 0.1) < 3 * e["a_err"]
    truth = (0.9 + 0.1 * math.exp(-200 / 30)) / 1.0
    assert abs(r["retained_fraction_end"] - truth) < 3 * r["retained_fraction_end_err"]
    assert r["exp1"]["aicc"] < r["linear"]["aicc"] - 2


def test_planted_two_exponentials_with_known_sigma():
    rng = np.random.default_rng(0)
    y = 0.8 + 0.1 * np.exp(-T / 5.0) + 0.1 * np.exp(-T / 60.0) + rng.normal(0.0, 0.001, T.size)
    r = fit_drift(T, y, sigma=0.001)
    assert r["chosen"] == "exp2"
    e = r["exp2"]
    assert abs(e["tau1_h"] - 5.0) < 3 * e["tau1_h_err"] and abs(e["tau2_h"] - 60.0) < 3 * e["tau2_h_err"]
    assert e["chi2_red"] == pytest.approx(1.0, abs=0.3)  # sigma given: chi2_red is reported
    truth = (0.8 + 0.1 * math.exp(-40) + 0.1 * math.exp(-200 / 60)) / 1.0
    assert abs(r["retained_fraction_end"] - truth) < 3 * r["retained_fraction_end_err"]


def test_drift_uncertainty_is_honest():
    inside = 0
    for seed in range(100):
        lin = fit_drift(T, _linear_series(1000 + seed))["linear"]
        inside += abs(lin["drift_pct_per_h"] - -0.1) < lin["drift_pct_per_h_err"]
    assert 0.6 <= inside / 100 <= 0.77


def test_nan_samples_dropped_and_short_series():
    y = _linear_series(2)
    y[[3, 50, 120]] = np.nan
    assert fit_drift(T, y)["linear"]["n"] == 198
    r = fit_drift([0.0, 1.0, 2.0], [10.0, 9.0, 8.0])  # 3 points: linear only, exact
    assert r["exp1"] is None and r["exp2"] is None and r["chosen"] == "linear"
    assert r["linear"]["drift_pct_per_h"] == pytest.approx(-10.0)
    assert r["retained_fraction_end"] == pytest.approx(0.8)


@pytest.mark.parametrize("t, y, match", [
    ([0.0, 1.0], [1.0, 1.0], "at least 3"),
    ([0.0, 1.0, 2.0, 3.0], [1.0, np.nan, np.nan, 1.0], "at least 3"),
    ([0.0, 2.0, 1.0, 3.0], [1.0, 1.0, 1.0, 1.0], "strictly increasing"),
    ([0.0, np.nan, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0], "finite time"),
    ([0.0, 1.0, 2.0], [1.0, 1.0], "same length"),
])
def test_fit_drift_bad_inputs(t, y, match):
    with pytest.raises(ValueError, match=match):
        fit_drift(t, y)


# --------------------------------------------------------------------------- flicker
def test_flicker_separates_noise_from_ramp():
    n = 2000
    rng = np.random.default_rng(4)
    y = 1000 * (1 + 0.05 * np.arange(n) / n) + rng.normal(0.0, 10.0, n)  # 1 % noise on a 5 % ramp
    r = flicker(y)
    assert r["flicker_rms_pct"] == pytest.approx(1.0, rel=0.1)
    assert 4.5 < r["drift_range_pct"] < 6.0
    assert 0.6 < r["white_noise_ratio"] < 1.6  # white noise plus a slow ramp: about 1
    walk = 1000 + np.cumsum(rng.normal(0.0, 2.0, n))  # random walk: block means wander far more
    assert flicker(walk)["white_noise_ratio"] > 3


def test_flicker_bad_inputs():
    with pytest.raises(ValueError, match="2 x window"):
        flicker(np.ones(30), window=25)
    with pytest.raises(ValueError, match="NaN"):
        flicker(np.r_[np.ones(60), np.nan])


# --------------------------------------------------------------------------- register
def test_register_recovers_subpixel_shift():
    rng = np.random.default_rng(3)
    ref = 1000 + 100 * ndimage.gaussian_filter(rng.normal(size=(128, 128)), 3.0)
    img = ndimage.shift(ref, (2.3, -1.7), order=3, mode="nearest")
    r = register(ref, img)
    assert np.allclose(r["shift_yx"], (-2.3, 1.7), atol=0.05)
    inner = (slice(8, -8), slice(8, -8))
    assert np.abs(r["aligned"][inner] - ref[inner]).max() < 0.05 * ref.std()
    with pytest.raises(ValueError, match="shape"):
        register(ref, img[:-1])


# --------------------------------------------------------------------------- sharpness
@pytest.fixture(scope="module")
def texture():
    rng = np.random.default_rng(9)
    return 1000 + 100 * ndimage.gaussian_filter(rng.normal(size=(128, 128)), 1.0)


def test_sharpness_blur_exposure_noise(texture):
    blur = sharpness(ndimage.gaussian_filter(texture, 1.5), reference=texture)
    assert blur["relative_sharpness"] + blur["relative_sharpness_err"] < 1
    brighter = sharpness(2 * texture, reference=texture)
    assert abs(brighter["relative_sharpness"] - 1) <= brighter["relative_sharpness_err"] + 1e-9
    assert brighter["ssim"] > 0.99
    noisy = sharpness(texture + np.random.default_rng(1).normal(0, 10, texture.shape), reference=texture)
    assert noisy["ssim"] + noisy["ssim_err"] < 1
    alone = sharpness(texture)
    assert alone["ssim"] is None and alone["relative_sharpness"] is None and alone["n_tiles"] == 16
    # exposure-normalised: the gradient energy of 2 x image equals that of the image
    assert brighter["gradient_energy"] == pytest.approx(alone["gradient_energy"], rel=1e-12)
    assert 0 < alone["gradient_energy_err"] < alone["gradient_energy"]


def test_sharpness_bad_inputs(texture):
    with pytest.raises(ValueError, match="shape"):
        sharpness(texture, reference=texture[:100])
    with pytest.raises(ValueError, match="too small"):
        sharpness(texture[:20, :20])


# --------------------------------------------------------------------------- trend and verdict
def test_trend_exact_linear_values():
    t = np.array([0.0, 50.0, 100.0, 200.0])
    r = trend(t, 40.0 * (1 - 0.0005 * t))  # -0.05 %/h of the first value
    assert r["slope_pct_per_h"] == pytest.approx(-0.05)
    assert r["slope_pct_per_h_err"] == pytest.approx(0.0, abs=1e-9)
    assert r["change_pct"] == pytest.approx(-10.0) and r["n"] == 4
    r = trend(t, 40.0 * (1 - 0.0005 * t), baseline=50.0)
    assert r["slope_pct_per_h"] == pytest.approx(-0.04) and r["change_pct"] == pytest.approx(-28.0)


def test_trend_two_points():
    r = trend([0.0, 100.0], [10.0, 9.0])
    assert r["slope_pct_per_h"] == pytest.approx(-0.1) and r["change_pct"] == pytest.approx(-10.0)
    assert r["slope_pct_per_h_err"] is None and "2 sessions" in r["note"]
    # with given errors the slope's error is propagated from them: sqrt(2) x 1 % / 100 h
    r = trend([0.0, 100.0], [10.0, 9.0], errors=0.1)
    assert r["slope_pct_per_h_err"] == pytest.approx(math.sqrt(2) * 1.0 / 100)


def test_trend_bad_inputs():
    with pytest.raises(ValueError, match="increasing"):
        trend([1.0, 0.0, 2.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="length"):
        trend([1.0], [1.0])


@pytest.mark.parametrize("change, direction, expected", [
    (8.0, "both", "pass"), (8.01, "both", "warn"), (10.0, "both", "warn"), (10.01, "both", "fail"),
    (-10.01, "both", "fail"), (-8.5, "both", "warn"),
    (-50.0, "up", "pass"), (10.01, "up", "fail"), (9.0, "up", "warn"),
    (50.0, "down", "pass"), (-9.0, "down", "warn"), (-10.01, "down", "fail"),
    (float("nan"), "both", "unknown"), (None, "up", "unknown"),
])
def test_verdict_boundaries(change, direction, expected):
    assert verdict(change, 10.0, direction=direction, warn_fraction=0.8) == expected


def test_verdict_bad_inputs():
    with pytest.raises(ValueError, match="direction"):
        verdict(1.0, 10.0, direction="sideways")
    with pytest.raises(ValueError, match="limit_pct"):
        verdict(1.0, 0.0)
