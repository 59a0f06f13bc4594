"""Detector figures of merit against analytic truths: NNPS of white Poisson noise, DQE of an ideal
blurred counting screen (and with read noise, the cascaded model), linearity exponent."""

import functools
import math

import numpy as np
import pytest

from pipeline.ops.characterise import dqe, fit_linearity, linearize, fit_pixel_response, nnps
from pipeline.ops.mtf import slanted_edge_mtf
from pipeline.simulator import pixel_esf

PITCH = 0.05  # mm


def test_nnps_of_white_poisson_noise_is_its_analytic_level():
    rng = np.random.default_rng(1)
    n_mean = 4000.0  # quanta per pixel: q K = n / pixel area
    flats = rng.poisson(n_mean, (40, 768, 768)).astype(np.float32)
    want = PITCH * PITCH / n_mean  # 1 / (q K_a) in mm^2
    r = nnps(flats, PITCH)
    for key in ("nnps_horizontal_mm2", "nnps_vertical_mm2"):
        got = np.asarray(r[key])
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, rtol=0.05)
    # an imposed 2D quadratic non-uniformity (multiplicative, like heel effect and vignetting) is removed
    yy, xx = np.mgrid[0:768, 0:768]
    shade = 1 + 0.25 * ((xx - 300) / 768) ** 2 + 0.15 * ((yy - 500) / 768) ** 2 + 0.1 * (xx - 384) / 768
    r2 = nnps(flats * shade.astype(np.float32), PITCH)
    np.testing.assert_allclose(np.asarray(r2["nnps_mm2"]), want, rtol=0.06)
    # without the detrending the shading would dominate the lowest frequencies
    assert np.asarray(r2["nnps_mm2"])[0] < 2 * want


@functools.lru_cache(maxsize=1)
def _blurred_quanta(eta, n_incident, sigma_px, frames, size, seed):
    """Absorbed quanta (binomial thinning of Poisson = Poisson(eta n)), blurred by the LSF and pixel aperture
    (made once for both read-noise cases; read-only)."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    h = np.exp(-2 * (math.pi * sigma_px) ** 2 * (fx**2 + fy**2)) * np.sinc(fx) * np.sinc(fy)
    out = np.empty((frames, size, size), np.float32)
    for k in range(frames):
        quanta = rng.poisson(eta * n_incident, (size, size)).astype(np.float64)
        out[k] = np.real(np.fft.ifft2(np.fft.fft2(quanta) * h))
    out.flags.writeable = False
    return out


def _screen(eta, n_incident, sigma_px, read_noise=0.0, frames=48, size=768, seed=3):
    """:func:`_blurred_quanta` plus Gaussian read noise of ``read_noise`` (its own random stream)."""
    out = _blurred_quanta(eta, n_incident, sigma_px, frames, size, seed)
    if read_noise:
        out = out + np.random.default_rng(seed + 1).normal(0, read_noise, out.shape).astype(np.float32)
    return out


def _edge_mtf(sigma_px, angle=3.0):
    t = math.radians(angle)
    yy, xx = np.mgrid[0:200, 0:160]
    d = (xx - 80.3) * math.cos(t) - (yy - 100) * math.sin(t)
    img = 1000 * pixel_esf(d, math.cos(t), math.sin(t), sigma_px, 0.0, 1.0)
    return slanted_edge_mtf(img)


@pytest.mark.parametrize("read_noise", [0.0, 12.0])
def test_dqe_of_an_ideal_blurred_counting_screen(read_noise):
    eta, n_inc, sigma = 0.5, 1000.0, 0.8  # MTF(Nyquist) ~ 0.06: aliasing negligible
    flats = _screen(eta, n_inc, sigma, read_noise)
    # the default (Welch) method, Hann-tapered ROIs: the IEC square ROIs leak low-frequency power into the steep fall
    r = nnps(flats, PITCH)
    m = _edge_mtf(sigma)
    f = np.asarray(r["frequencies_lp_per_mm"])
    mtf_at = np.interp(f * PITCH, m.frequencies_cy_per_px, m.mtf[0])
    assert np.interp(0.5, m.frequencies_cy_per_px, m.mtf[0]) < 0.1
    q_k = n_inc / PITCH**2  # incident quanta per mm^2
    got = dqe(mtf_at, r["nnps_horizontal_mm2"], 1.0, q_k)  # K_a = 1, q = q_k
    # from the third bin: the region's quadratic detrending lowers the NNPS of the lowest two (a known bias)
    sel = (f <= 0.8 * 0.5 / PITCH) & (f > 2.5 / (256 * PITCH))
    # cascaded model: DQE = eta H^2 / (H^2 + sigma_r^2 / (eta n)) with H the presampled MTF
    want = eta * mtf_at**2 / (mtf_at**2 + read_noise**2 / (eta * n_inc))
    np.testing.assert_allclose(got[sel], want[sel], rtol=0.06)
    if read_noise == 0:
        np.testing.assert_allclose(got[sel], eta, rtol=0.06)
    else:
        assert got[sel][-1] < 0.8 * eta  # read noise costs DQE where the MTF is low
    # the IEC method (square ROIs) agrees where the noise spectrum is not steep, up to half Nyquist
    iec = dqe(mtf_at, nnps(flats, PITCH, method="iec")["nnps_horizontal_mm2"], 1.0, q_k)
    low = sel & (f <= 0.5 * 0.5 / PITCH)
    np.testing.assert_allclose(iec[low], want[low], rtol=0.06)


def test_linearity_exponent_recovered():
    k = np.array([5.0, 10, 20, 40, 80, 160])
    r = fit_linearity(k, 37.0 * k**1.12)
    assert r["power_law"]["exponent_p"] == pytest.approx(1.12, rel=0.01)
    assert r["linear"]["r2"] < 1.0


def test_pixel_response_linearises_a_nonlinear_screen():
    rng = np.random.default_rng(0)
    k = np.array([10.0, 20, 40, 80, 160])
    c = rng.uniform(9, 11, (8, 8))
    p = rng.uniform(1.0, 1.2, (8, 8))  # a different super-linear exponent in every pixel
    stacks = np.stack([c * kk**p for kk in k])
    coeffs = fit_pixel_response(k, stacks)
    lin = linearize(stacks, coeffs, reference_slope=10.0)
    np.testing.assert_allclose(lin, 10.0 * k[:, None, None] * np.ones((1, 8, 8)), rtol=1e-4)
    mid = linearize(c * 55.0**p, coeffs, reference_slope=10.0)  # between the levels too
    np.testing.assert_allclose(mid, 550.0, rtol=1e-4)


def test_multi_point_gain_in_the_pipeline(tmp_path):
    """A super-linear screen: with the per-pixel response from `characterise`, a run's output is linear in dose."""
    import zarr

    import pipeline

    cal = pipeline.api.simulate_characterisation(tmp_path / "c.zarr", size=(128, 128), response_exponent=1.15,
                                                 n_flats=4, n_edge=2, step_frames=30)
    pipeline.api.characterise(cal, tmp_path / "rep")
    g = zarr.open_group(str(cal), mode="r")
    # a "video" of the flat levels: with the response, the corrected mean is proportional to air kerma
    levels = sorted(((a.attrs["air_kerma_uGy"], name) for name, a in g["flats"].arrays()))
    vid = zarr.open_group(str(tmp_path / "v.zarr"), mode="w")
    vid.create_array("frames", data=np.concatenate([g["flats"][n][:2] for _, n in levels]))
    vid.create_array("darks", data=g["darks"][:])
    ref = [n for k, n in levels if k == g.attrs["reference_kerma_uGy"]][0]
    vid.create_array("flats", data=g["flats"][ref][:])
    vid.attrs.update(dict(g.attrs))
    means = {}
    for tag, extra in (("lin", [f"flatfield.response={tmp_path / 'rep' / 'pixel_response.npy'}"]), ("raw", [])):
        pipeline.run(tmp_path / "v.zarr", tmp_path / f"{tag}.zarr", overrides=extra)
        out = zarr.open_group(str(tmp_path / f"{tag}.zarr"), mode="r")["frames"][:]
        means[tag] = np.array([np.nanmean(out[2 * i : 2 * i + 2, 32:96, 32:96]) for i in range(len(levels))])
    k = np.array([kk for kk, _ in levels])
    lin_p = np.polyfit(np.log(k), np.log(means["lin"]), 1)[0]
    raw_p = np.polyfit(np.log(k), np.log(means["raw"]), 1)[0]
    assert raw_p == pytest.approx(1.15, abs=0.02)  # without it, the screen's super-linearity stays
    assert lin_p == pytest.approx(1.0, abs=0.02)
