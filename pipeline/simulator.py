"""Physics-based synthetic scintillator-detector video with ground truth.

Chain (one frame ``k``)::

    scene (slanted edge, line-pair bars, sliding circuit board)
      -> X-ray fluence q * (1 - absorbance)            [quanta / pixel]
      -> Poisson quanta
      -> scintillator blur (Gaussian core + exponential scatter tail)
      -> afterglow (multi-exponential lag, exact recursion)
      -> camera: pixel gain (shading, PRNU, defects) * counts_per_quantum
         + dark offset + dark current (shot noise) + read noise
      -> uint16 with saturation

The static scene (edge and bars) is rendered in closed form: each pixel holds
the exact integral, over its area, of the scene convolved with the line-spread
function (LSF). For a straight edge at angle theta the system MTF is therefore
known exactly::

    MTF(f) = MTF_lsf(f) * |sinc(f cos theta) * sinc(f sin theta)|

with ``MTF_lsf(f) = (1 - w) exp(-2 pi^2 sigma^2 f^2) + w / (1 + (2 pi lambda f)^2)``.

The mean image is exact; the quantum noise is drawn at that mean rate and
blurred with the same (discrete) MTF, so its variance is
``q * sum(h^2)`` per pixel before the afterglow and the camera. The afterglow
state starts at the steady state of frame 0 (the scene was static before the
recording started), so flats and a static scene carry the DC lag gain
``1 + sum_n a_n r_n / (1 - r_n)`` with ``r_n = exp(-1 / (frame_rate * tau_n))``.

This module is pure NumPy/SciPy; it yields arrays and metadata and knows
nothing of Zarr (``pipeline.api.simulate`` writes them). The scene is rendered
by :mod:`pipeline.simulator_scene`.

:mod:`pipeline.simulator_stability` (``stability_sessions``, ``stability_recording``) simulates a screen over its
life with a known drift (light yield, new bad pixels, blur, afterglow; see their docstrings and ``light_factor``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Iterator

import numpy as np
import scipy.fft as sfft

from .ops.afterglow import add_lag, dc_gain, ratios_from_tau
from .ops.afterglow import steady_state as lag_steady_state
from .ops.flatfield import DEAD, HOT, NOISY, OVER, UNDER
from .screen import (PRESETS, ScintillatorPreset, _g1_g2, _solve_sigma, lsf_mtf, pixel_esf,  # noqa: F401
                     system_mtf_edge)
from .simulator_scene import _Scene


# --------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class SimulationSpec:
    """Everything that defines a simulated recording (all defaults documented in the README)."""

    preset: str = "eu-gc"
    frames: int = 64
    height: int = 256
    width: int = 256
    seed: int = 0
    pixel_pitch_mm: float = 0.01
    frame_rate_hz: float = 50.0
    quanta_per_pixel: float = 1000.0
    counts_per_quantum: float = 8.0
    n_darks: int = 20
    n_flats: int = 20
    edge_angle_deg: float = 5.0
    edge_transmission: float = 0.1
    bar_transmission: float = 0.2
    speed_px_per_frame: float = 1.0
    read_noise: float = 3.0
    dark_offset: float = 100.0
    dark_offset_spread: float = 2.0
    dark_current: float = 5.0
    prnu: float = 0.02
    shading: float = 0.15
    bad_fraction: float = 0.0005
    truth_frames: bool = True
    chunk_frames: int = 16
    scene: str = "default"
    noise: bool = True
    response_exponent: float = 1.0
    response_reference: float | None = None
    beam_off_frame: int | None = None
    ramp_frames: int = 0
    afterglow_amplitudes: tuple[float, ...] | None = None
    afterglow_tau_s: tuple[float, ...] | None = None
    # extra camera defects, none by default (a seed's recording is unchanged without them); truth/bad_pixels
    # marks each. stuck_high: pixels reading 65535 in every frame, darks and flats included (HOT); stuck_low:
    # pixels reading 0 always (DEAD); cluster_defects: 3 x 3 blocks of dead pixels (DEAD); column_defects:
    # column segments of a quarter to the whole height, alternately dead (DEAD) and hot (HOT, dark current
    # 300-3000 counts). More than 1 % of the pixels stuck high saturates the flats (calibration refuses them).
    stuck_high: int = 0
    stuck_low: int = 0
    cluster_defects: int = 0
    column_defects: int = 0

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset '{self.preset}'; choose one of {', '.join(PRESETS)}")
        if self.frames < 1 or self.height < 32 or self.width < 32:
            raise ValueError("need frames >= 1 and a frame size of at least 32 x 32 pixels")
        if not 0 < self.edge_angle_deg < 45:
            raise ValueError("edge_angle_deg must lie in (0, 45)")
        if self.scene not in ("default", "open"):
            raise ValueError(f"unknown scene '{self.scene}'; choose default or open")
        if (self.afterglow_amplitudes is None) != (self.afterglow_tau_s is None):
            raise ValueError("give afterglow amplitudes and time constants together")
        if self.afterglow_amplitudes is not None:
            if len(self.afterglow_amplitudes) != len(self.afterglow_tau_s) or not self.afterglow_amplitudes:
                raise ValueError("afterglow amplitudes and time constants must pair up")
            if any(not (a >= 0) for a in self.afterglow_amplitudes) or any(not (t > 0) for t in self.afterglow_tau_s):
                raise ValueError("afterglow amplitudes must be >= 0 and time constants > 0")
        for name in ("stuck_high", "stuck_low", "cluster_defects", "column_defects"):
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
                raise ValueError(f"{name} must be a whole number >= 0, not {n!r}")
        if self.stuck_high + self.stuck_low > self.height * self.width // 2:
            raise ValueError("stuck_high + stuck_low must leave at least half of the pixels working")
        if self.column_defects > self.width // 2:
            raise ValueError(f"column_defects must be at most half the width ({self.width // 2})")

    def beam(self, k: int) -> float:
        """Relative beam intensity of frame k (1 = on; a linear ramp down to 0 at beam_off_frame)."""
        if self.beam_off_frame is None or k < self.beam_off_frame - self.ramp_frames:
            return 1.0
        if k >= self.beam_off_frame:
            return 0.0
        return (self.beam_off_frame - k) / (self.ramp_frames + 1.0)


@dataclass
class Simulation:
    """A simulated recording: metadata, calibration frames, truth and a frame generator."""

    spec: SimulationSpec
    attrs: dict
    darks: np.ndarray
    flats: np.ndarray
    truth_maps: dict
    truth_attrs: dict
    _frames_fn: object = field(repr=False, default=None)

    def iter_chunks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """Yield ``(start, raw_uint16_block, truth_block_or_None)`` in time order."""
        return self._frames_fn()


class _Detector:
    """Fixed per-recording detector state: pixel gain, dark maps, defects, blur filter."""

    def __init__(self, spec: SimulationSpec):
        self.spec = spec
        p = PRESETS[spec.preset]
        pitch = spec.pixel_pitch_mm
        self.sigma = p.sigma_mm / pitch
        self.w = p.tail_weight
        self.lam = p.tail_length_mm / pitch
        amps = p.afterglow_amplitudes if spec.afterglow_amplitudes is None else spec.afterglow_amplitudes
        taus = p.afterglow_tau_s if spec.afterglow_tau_s is None else spec.afterglow_tau_s
        self.a = np.asarray(amps, dtype=np.float64)
        self.tau = np.asarray(taus, dtype=np.float64)
        self.r = ratios_from_tau(self.tau, spec.frame_rate_hz)
        self.lag_gain = float(dc_gain(self.a, self.r))
        h, w = spec.height, spec.width
        ss = np.random.SeedSequence(spec.seed)
        # the fifth stream places the extra defects: the first four (and so a seed's recording) stay what they were
        (self.ss_layout, self.ss_darks, self.ss_flats, self.ss_frames, ss_defects) = ss.spawn(5)
        rng = np.random.default_rng(self.ss_layout)

        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        rr2 = ((yy - (h - 1) / 2) / (h / 2)) ** 2 + ((xx - (w - 1) / 2) / (w / 2)) ** 2
        gain = (1.0 - spec.shading * rr2 / 2.0) * (1.0 + spec.prnu * rng.standard_normal((h, w)))
        offset = spec.dark_offset + spec.dark_offset_spread * rng.standard_normal((h, w))
        current = np.full((h, w), spec.dark_current)
        read = np.full((h, w), spec.read_noise)
        bad = np.zeros((h, w), dtype=np.uint8)
        n_each = int(round(spec.bad_fraction * h * w))
        picks = (rng.choice(h * w, size=5 * n_each, replace=False).reshape(5, n_each) if n_each
                 else np.zeros((5, 0), int))
        flat_gain, flat_cur = gain.reshape(-1), current.reshape(-1)
        flat_read, flat_bad = read.reshape(-1), bad.reshape(-1)
        flat_gain[picks[0]] = 0.0
        flat_bad[picks[0]] = DEAD
        flat_gain[picks[1]] *= rng.uniform(0.2, 0.55, n_each)
        flat_bad[picks[1]] = UNDER
        flat_gain[picks[2]] *= rng.uniform(1.6, 2.5, n_each)
        flat_bad[picks[2]] = OVER
        flat_cur[picks[3]] += rng.uniform(300.0, 3000.0, n_each)
        flat_bad[picks[3]] = HOT
        flat_read[picks[4]] *= rng.uniform(8.0, 15.0, n_each)
        flat_bad[picks[4]] = NOISY
        self.stuck_index, self.stuck_value = self._extra_defects(spec, np.random.default_rng(ss_defects), gain,
                                                                 current, bad)
        self.gain = gain.astype(np.float32)
        self.offset = offset.astype(np.float32)
        self.current = current.astype(np.float32)
        self.read = read.astype(np.float32)
        self.bad = bad
        self.mean_good_gain = float(self.gain[bad == 0].mean(dtype=np.float64))
        self._set_blur()

    def _set_blur(self):
        """The blur filter and the noise power factor from ``sigma``, ``w`` and ``lam`` (pixels)."""
        h, w = self.spec.height, self.spec.width
        fy = sfft.fftfreq(h)[:, None]
        fx = sfft.rfftfreq(w)[None, :]
        rho = np.sqrt(fy * fy + fx * fx)
        self.blur_tf = lsf_mtf(rho, self.sigma, self.w, self.lam).astype(np.float32)
        # sum of squared kernel weights = mean |H|^2 over the full (two-sided) grid
        full = lsf_mtf(np.sqrt(sfft.fftfreq(h)[:, None] ** 2 + sfft.fftfreq(w)[None, :] ** 2), self.sigma, self.w,
                       self.lam)
        self.noise_power = float(np.mean(full**2))

    @staticmethod
    def _extra_defects(spec: SimulationSpec, rng, gain, current, bad):
        """Clusters, columns and stuck pixels (``spec``'s counts) into the maps, in place; returns the stuck
        pixels' flat indices and raw values (the camera writes these over every frame)."""
        h, w = bad.shape
        for _ in range(spec.cluster_defects):  # 3 x 3 dead blocks, anywhere in the frame
            y, x = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
            gain[y : y + 3, x : x + 3] = 0.0
            bad[y : y + 3, x : x + 3] |= DEAD
        cols = rng.choice(w, size=spec.column_defects, replace=False) if spec.column_defects else ()
        for i, x in enumerate(cols):  # segments of h/4 .. h rows, dead and hot in turn
            n = int(rng.integers(max(1, h // 4), h + 1))
            y = int(rng.integers(0, h - n + 1))
            if i % 2 == 0:
                gain[y : y + n, x] = 0.0
                bad[y : y + n, x] |= DEAD
            else:
                current[y : y + n, x] += rng.uniform(300.0, 3000.0, n)
                bad[y : y + n, x] |= HOT
        n_stuck = spec.stuck_high + spec.stuck_low
        if not n_stuck:
            return np.zeros(0, np.int64), np.zeros(0, np.uint16)
        free = np.flatnonzero(bad.reshape(-1) == 0)  # on working pixels: each stuck pixel is one defect
        index = rng.choice(free, size=n_stuck, replace=False).astype(np.int64)
        value = np.zeros(n_stuck, np.uint16)
        value[: spec.stuck_high] = 65535
        flat_bad = bad.reshape(-1)
        flat_bad[index[: spec.stuck_high]] |= HOT
        flat_bad[index[spec.stuck_high :]] |= DEAD
        return index, value

    # --- pieces of the chain
    def blur(self, stack: np.ndarray) -> np.ndarray:
        """Blur (..., H, W) with the scintillator MTF (periodic, float32)."""
        spec = sfft.rfft2(stack, workers=-1)
        spec *= self.blur_tf
        return sfft.irfft2(spec, s=stack.shape[-2:], workers=-1).astype(np.float32, copy=False)

    def quanta(self, mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Blurred light (in quanta) for a stack of noise-free blurred fluence images."""
        if not self.spec.noise:
            return mean.copy()
        lam = np.maximum(mean, 0.0)
        noise = rng.poisson(lam).astype(np.float32)
        noise -= lam
        return mean + self.blur(noise)

    def lag(self, x: np.ndarray, state: np.ndarray) -> np.ndarray:
        return add_lag(x, self.a, self.r, state, out=x)[0]

    def steady_state(self, x0: np.ndarray) -> np.ndarray:
        """Lag state of a scene ``x0`` that has been static for a long time."""
        return lag_steady_state(np.float32(self.lag_gain) * x0, self.a, self.r)

    def camera(self, light: np.ndarray, rng: np.random.Generator, yield_factor=None) -> np.ndarray:
        """Light (quanta) -> raw uint16 counts with gain, dark, noise and saturation.

        ``yield_factor``: (frames,) float32 light yield of each frame relative to ``counts_per_quantum`` (a
        drifting screen; :func:`stability_recording`), or None.
        """
        p = self.spec.response_exponent
        if p != 1.0:  # a non-linear light yield, pixel by pixel: light * (light / reference)^(p - 1)
            ref = self.spec.response_reference or self.spec.quanta_per_pixel * self.lag_gain
            light = light * (np.maximum(light, 0) / np.float32(ref)) ** np.float32(p - 1.0)
        if yield_factor is not None:
            light = light * yield_factor[:, None, None]
        sig = light * (self.gain * np.float32(self.spec.counts_per_quantum))
        sig += self.offset
        # dark-current shot noise (Gaussian, variance = mean) plus read noise
        sig += self.current
        if self.spec.noise:
            sig += rng.standard_normal(sig.shape, dtype=np.float32) * np.sqrt(self.current + self.read**2)
        np.rint(sig, out=sig)
        np.clip(sig, 0, 65535, out=sig)
        raw = sig.astype(np.uint16)
        if self.stuck_index.size:  # stuck pixels read their value whatever the light (darks and flats too)
            raw.reshape(-1, raw.shape[-2] * raw.shape[-1])[:, self.stuck_index] = self.stuck_value
        return raw


def build(spec: SimulationSpec) -> Simulation:
    """Prepare a simulated recording (calibration frames now, video frames lazily)."""
    return _build(spec)


def _build(spec: SimulationSpec, screen: _ScreenAge | None = None, light_per_frame=None,
           cls: type = Simulation) -> Simulation:
    """:func:`build`, with an aged screen (``screen``), a per-frame light yield (``light_per_frame``, (frames,)
    float32, frames only: not the darks and flats) and the class of the result."""
    det = _Detector(spec)
    if screen is not None:
        screen.apply(det)
    scene = _Scene(spec, det)
    q = np.float32(spec.quanta_per_pixel)
    preset = PRESETS[spec.preset]
    darks, flats = _calibration_frames(spec, det, q)
    truth_scale = np.float32(spec.counts_per_quantum * det.mean_good_gain)
    frames_fn = _frame_source(spec, det, scene, q, truth_scale, light_per_frame)
    truth_maps = _truth_maps(spec, det, preset)
    truth_attrs = _truth_attrs(spec, det, scene, preset, float(q * truth_scale))
    attrs = {
        "pixel_pitch_mm": spec.pixel_pitch_mm,
        "frame_rate_hz": spec.frame_rate_hz,
        "source": f"xray-pipeline simulator, preset {spec.preset}, seed {spec.seed}",
    }
    return cls(spec, attrs, darks, flats, truth_maps, truth_attrs, frames_fn)


def _calibration_frames(spec: SimulationSpec, det: _Detector, q):
    """The darks (no beam) and the flats (open beam at steady state), each from its own random stream."""
    h, w = spec.height, spec.width
    darks = det.camera(np.zeros((spec.n_darks, h, w), np.float32), np.random.default_rng(det.ss_darks))
    rng_f = np.random.default_rng(det.ss_flats)
    open_beam = np.full((spec.n_flats, h, w), q, dtype=np.float32)
    light = det.quanta(open_beam, rng_f)
    det.lag(light, det.steady_state(np.full((h, w), q, np.float32)))
    flats = det.camera(light, rng_f)
    return darks, flats


def _frame_source(spec: SimulationSpec, det: _Detector, scene: _Scene, q, truth_scale, light_per_frame=None):
    """The video's frame generator: ``frames_fn() -> iter((start, raw block, truth block or None))``.

    Each chunk's random stream is spawned now; the frames are made when iterated (the next chunk's quanta drawn in a
    thread while this one is lagged and read out). ``light_per_frame``: (frames,) float32 light yield of each
    frame (the camera's counts per quantum and the truth frames scaled by it), or None.
    """
    h, w = spec.height, spec.width
    open_scene = spec.scene == "open"

    def static_mean(n):
        if open_scene:
            return np.full((n, h, w), q, dtype=np.float32)
        return np.broadcast_to(q * (1 - scene.static), (n, h, w)).astype(np.float32)

    chunk = max(1, spec.chunk_frames)
    starts = list(range(0, spec.frames, chunk))
    seeds = det.ss_frames.spawn(len(starts))

    def mean_block(start):
        n = min(chunk, spec.frames - start)
        m = static_mean(n)
        if not open_scene:
            moving = np.stack([scene.board(start + i, spec.speed_px_per_frame, (h, w)) for i in range(n)])
            m -= q * det.blur(moving)
        beam = np.array([spec.beam(start + i) for i in range(n)], dtype=np.float32)
        if np.any(beam != 1):
            m *= beam[:, None, None]
        return m

    def pre_lag(i):
        start = starts[i]
        rng = np.random.default_rng(seeds[i])
        mean = mean_block(start)
        return start, mean, det.quanta(mean, rng), rng

    def frames_fn():
        first = mean_block(0)[0]
        state = det.steady_state(first)
        with ThreadPoolExecutor(max_workers=2) as pool:
            pending = [pool.submit(pre_lag, i) for i in range(min(2, len(starts)))]
            nxt = len(pending)
            while pending:
                start, mean, light, rng = pending.pop(0).result()
                if nxt < len(starts):
                    pending.append(pool.submit(pre_lag, nxt))
                    nxt += 1
                det.lag(light, state)
                lpf = None if light_per_frame is None else light_per_frame[start : start + light.shape[0]]
                raw = det.camera(light, rng, lpf)
                truth = None
                if spec.truth_frames:
                    truth = mean * truth_scale
                    if lpf is not None:
                        truth *= lpf[:, None, None]
                yield start, raw, truth

    return frames_fn


def _truth_maps(spec: SimulationSpec, det: _Detector, preset) -> dict:
    """The detector's true maps and MTFs (``truth/`` arrays of the recording)."""
    f = np.linspace(0.0, 2.0, 4097)
    return {
        "gain": det.gain,
        "dark_offset": det.offset,
        "dark_current": det.current,
        "read_noise": det.read,
        "bad_pixels": det.bad,
        "mtf_frequencies_cy_per_px": f,
        "mtf_lsf": preset.mtf(f / spec.pixel_pitch_mm),
        "mtf_edge": system_mtf_edge(f, preset, spec.pixel_pitch_mm, spec.edge_angle_deg),
    }


def _truth_attrs(spec: SimulationSpec, det: _Detector, scene: _Scene, preset, open_level: float) -> dict:
    """The truth's attributes: the spec, the preset, the afterglow model, the scene and what the truth frames mean."""
    return {
        "spec": asdict(spec),
        "preset": {**asdict(preset), "sigma_mm": preset.sigma_mm},
        "mtf20_lsf_lp_per_mm": preset.mtf20_lp_per_mm,
        "afterglow": {"amplitudes": list(map(float, det.a)), "tau_s": list(map(float, det.tau)),
                      "ratios_per_frame": list(map(float, det.r)), "dc_gain": det.lag_gain,
                      "initial_state": "steady state of frame 0"},
        "noise_power_factor": det.noise_power,
        "bad_pixel_classes": {"dead": DEAD, "hot": HOT, "noisy": NOISY, "over": OVER, "under": UNDER},
        "frames_meaning": "noise-free, lag-free expected output of a perfect correction (flat-field and afterglow) "
                          "in 'counts' mode: counts_per_quantum * mean(good pixel gain) * blurred fluence; "
                          "flat-field alone gives the lagged version (ops.afterglow.add_lag from the steady state)",
        "open_level": open_level,
        "scene": spec.scene,
        "mean_good_gain": det.mean_good_gain,
        **scene.attrs,
    }


def with_overrides(spec: SimulationSpec, **kw) -> SimulationSpec:
    """A copy of ``spec`` with some fields changed (validated again)."""
    return replace(spec, **kw)


# --------------------------------------------------------------------------- characterisation
BEAM_Q_PER_UGY_MM2 = {"RQA3": 20673.0, "RQA5": 29653.0, "RQA7": 32490.0, "RQA9": 31077.0}


def characterisation(
    spec: SimulationSpec,
    *,
    kerma_ugy=(25.0, 50.0, 100.0, 200.0, 400.0),
    reference_index: int = 2,
    absorption: float = 0.6,
    beam_quality: str = "RQA5",
    response_exponent: float = 1.0,
    n_flats: int = 16,
    n_edge: int = 8,
    step_frames: int = 120,
    _screen: _ScreenAge | None = None,
) -> dict:
    """A detector characterisation recording with known truth.

    Flat series at several air-kerma levels (quanta per pixel = absorption x q x K x pixel area,
    ``q`` of the beam quality), edge frames and a falling-step series at the reference level,
    darks. With ``response_exponent`` p != 1 the screen's light output goes as (absorbed quanta)^p
    (super-linear radioluminescence for p > 1), normalised at the reference level.

    Returns ``{"darks", "flats": [(kerma, stack), ...], "edge", "afterglow_step", "attrs", "truth"}``.
    ``_screen`` (private): the screen aged (:func:`stability_sessions`).
    """
    q = BEAM_Q_PER_UGY_MM2[beam_quality]
    area = spec.pixel_pitch_mm**2
    ref_quanta = absorption * q * kerma_ugy[reference_index] * area

    def quanta(k):
        return absorption * q * k * area

    def frames_of(**kw):
        sim = _build(replace(spec, truth_frames=False, **kw), _screen)
        return sim, np.concatenate([b for _, b, _ in sim.iter_chunks()])

    flats = []
    base = None
    spec = replace(spec, response_exponent=response_exponent, response_reference=ref_quanta)
    for k in kerma_ugy:
        sim, stack = frames_of(scene="open", frames=n_flats, quanta_per_pixel=quanta(k), speed_px_per_frame=0.0)
        if base is None:
            base = sim
        flats.append((float(k), stack))
    _, edge = frames_of(frames=n_edge, quanta_per_pixel=ref_quanta, speed_px_per_frame=0.0)
    _, step = frames_of(scene="open", frames=step_frames, quanta_per_pixel=ref_quanta, beam_off_frame=step_frames // 3)
    preset = PRESETS[spec.preset]
    f = np.linspace(0.0, 2.0, 4097)
    # an LSF b times wider is the screen seen with a pixel b times smaller: MTF_b(f) = MTF(b f)
    pitch = spec.pixel_pitch_mm / (1.0 if _screen is None else _screen.blur)
    truth = {
        "absorption": absorption, "response_exponent": response_exponent, "q_per_uGy_mm2": q,
        "mtf_frequencies_cy_per_px": f, "mtf_lsf": preset.mtf(f / pitch),
        "mtf_edge": system_mtf_edge(f, preset, pitch, spec.edge_angle_deg),
        "afterglow": dict(base.truth_attrs["afterglow"]),
        "bad_pixels": base.truth_maps["bad_pixels"],
        "note": "DQE(0) of an ideal counting screen is the absorption; the blur correlates quantum noise "
                "and camera noise lowers DQE at high frequency",
    }
    attrs = {
        "pixel_pitch_mm": spec.pixel_pitch_mm, "frame_rate_hz": spec.frame_rate_hz, "beam_quality": beam_quality,
        "reference_kerma_uGy": float(kerma_ugy[reference_index]), "kind": "xray-pipeline characterisation",
        "source": f"xray-pipeline simulator, preset {spec.preset}, seed {spec.seed}",
    }
    return {"darks": base.darks, "flats": flats, "edge": edge, "afterglow_step": step, "attrs": attrs,
            "truth": truth}


# --------------------------------------------------------------------------- stability (a screen over its life)
# entropy tags of the stability streams (after the seed): a seed's build and characterisation never draw from them
_STABILITY_NOISE, _STABILITY_DEFECTS, _STABILITY_FLICKER = 0x5AB0, 0x5AB1, 0x5AB2


@dataclass(frozen=True)
class _ScreenAge:
    """A screen at one stability session: what changed since the baseline, applied to a fresh detector.

    ``blur``: LSF width factor (core sigma and tail length); ``dead`` / ``hot``: flat pixel indices of the new
    defects (``hot_current``: their extra dark current, counts); ``noise_key``: entropy of the session's own
    darks, flats and frames streams (None: the spec's own, as :func:`build` draws them).
    """

    blur: float = 1.0
    dead: tuple = ()
    hot: tuple = ()
    hot_current: tuple = ()
    noise_key: tuple | None = None

    def apply(self, det: _Detector) -> None:
        if self.blur != 1.0:
            det.sigma *= self.blur
            det.lam *= self.blur
            det._set_blur()
        if self.dead:
            idx = np.asarray(self.dead, np.int64)
            det.gain.reshape(-1)[idx] = 0.0
            det.bad.reshape(-1)[idx] |= DEAD
        if self.hot:
            idx = np.asarray(self.hot, np.int64)
            det.current.reshape(-1)[idx] += np.asarray(self.hot_current, np.float32)
            det.bad.reshape(-1)[idx] |= HOT
        if self.dead or self.hot:
            det.mean_good_gain = float(det.gain[det.bad == 0].mean(dtype=np.float64))
        if self.noise_key is not None:  # a fresh SeedSequence each time: every build of a session draws alike
            det.ss_darks, det.ss_flats, det.ss_frames = np.random.SeedSequence(list(self.noise_key)).spawn(3)
