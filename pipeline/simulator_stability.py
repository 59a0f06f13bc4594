"""A screen over its life, simulated with known drift: characterisation sessions and long recordings.

:func:`stability_sessions` (sessions of :func:`pipeline.simulator.characterisation` on one screen that ages: light
yield, new bad pixels, blur, afterglow) and :func:`stability_recording` (one open-beam recording under continuous
exposure whose light output drifts), the truths of ``xray-pipeline stability``'s tests and demo.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

import numpy as np

from .ops.afterglow import lag_fraction, step_amplitudes
from .screen import PRESETS
from .simulator import (_STABILITY_DEFECTS, _STABILITY_FLICKER, _STABILITY_NOISE, Simulation, SimulationSpec,
                        _build, _Detector, _ScreenAge, characterisation)


def light_factor(t_h, *, light_drift_pct_per_h: float, light_model: str = "linear", exp_tau_h: float | None = None,
                 exp_floor: float | None = None, match_h: float = 200.0):
    """Relative light yield f(t) of a screen ``t_h`` hours into its life (f(0) = 1); float or array like ``t_h``.

    ``linear``: ``f(t) = 1 + light_drift_pct_per_h / 100 * t``.
    ``exp``: ``f(t) = c + (1 - c) exp(-t / tau)`` (a decay that settles at ``c``), ``tau = exp_tau_h`` (None:
    ``match_h / 4``), ``c = exp_floor`` if given, else the ``c`` for which ``f(match_h)`` equals the linear model's
    value there: ``c = (L - e) / (1 - e)`` with ``L = 1 + light_drift_pct_per_h / 100 * match_h``,
    ``e = exp(-match_h / tau)``.
    """
    t = np.asarray(t_h, dtype=np.float64)
    rate = float(light_drift_pct_per_h) / 100.0
    if light_model == "linear":
        f = 1.0 + rate * t
    elif light_model == "exp":
        tau = match_h / 4.0 if exp_tau_h is None else float(exp_tau_h)
        if not (tau > 0 and math.isfinite(tau)):
            raise ValueError(f"exp_tau_h must be a positive number of hours, not {exp_tau_h!r}")
        if exp_floor is None:
            e = math.exp(-match_h / tau)
            c = (1.0 + rate * match_h - e) / (1.0 - e)
        else:
            c = float(exp_floor)
        f = np.where(t == 0, 1.0, c + (1.0 - c) * np.exp(-t / tau))
    else:
        raise ValueError(f"unknown light_model '{light_model}'; choose linear or exp")
    return float(f) if f.ndim == 0 else f


def _utc(start) -> datetime:
    """``start`` (ISO 8601 text, 'Z' allowed, or a datetime; naive = UTC) in UTC."""
    t = start if isinstance(start, datetime) else datetime.fromisoformat(str(start).replace("Z", "+00:00"))
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _iso_utc(t) -> str:
    """ISO 8601 UTC with 'Z' (whole seconds unless there is a fraction)."""
    return t.isoformat(timespec="seconds" if t.microsecond == 0 else "microseconds").replace("+00:00", "Z")


def _new_defects(spec: SimulationSpec, free: np.ndarray, session: int, n: int):
    """``n`` new bad pixels of session ``session`` among the ``free`` ones (a flat bool mask, updated): flat
    indices, whether each is hot (else dead) and the hot ones' extra dark current."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _STABILITY_DEFECTS, session]))
    pool = np.flatnonzero(free)
    if pool.size < n:
        raise ValueError(f"no room for {n} more bad pixels in session {session}")
    idx = rng.choice(pool, size=n, replace=False)
    hot = rng.random(n) < 0.5
    current = rng.uniform(300.0, 3000.0, n)
    free[idx] = False
    return idx, hot, current


def _session_drift(hours, new_bad_per_session, light_drift_pct_per_h: float, light_model: str,
                   exp_tau_h: float | None, exp_floor: float | None, blur_growth_pct_per_h: float,
                   lag_growth_pct_per_h: float):
    """The checked arguments of :func:`stability_sessions` and the drift they plant.

    Returns
    -------
    times, light, blur, lag : (S,) float64 arrays
        The session times (h), and at each the light yield ``f(t)`` (:func:`light_factor`, ``exp`` matched at
        200 h), the LSF width factor and the afterglow amplitudes' factor.
    """
    times = np.asarray(hours, dtype=np.float64).reshape(-1)
    if times.size == 0 or not np.all(np.isfinite(times)) or times[0] < 0 or np.any(np.diff(times) <= 0):
        raise ValueError("hours must be increasing, finite and >= 0")
    if isinstance(new_bad_per_session, bool) or not isinstance(new_bad_per_session, (int, np.integer)) \
            or new_bad_per_session < 0:
        raise ValueError(f"new_bad_per_session must be a whole number >= 0, not {new_bad_per_session!r}")
    light = np.asarray(light_factor(times, light_drift_pct_per_h=light_drift_pct_per_h, light_model=light_model,
                                    exp_tau_h=exp_tau_h, exp_floor=exp_floor, match_h=200.0)).reshape(-1)
    blur = 1.0 + blur_growth_pct_per_h / 100.0 * times
    lag = 1.0 + lag_growth_pct_per_h / 100.0 * times
    if not (np.all(light > 0) and np.all(blur > 0) and np.all(lag >= 0)):
        raise ValueError("the drift makes the light yield or the blur <= 0 (or the afterglow < 0) within hours")
    return times, light, blur, lag


def stability_sessions(
    spec: SimulationSpec,
    *,
    hours=(0, 50, 100, 150, 200),
    light_drift_pct_per_h: float = -0.05,
    light_model: str = "linear",
    exp_tau_h: float | None = None,
    exp_floor: float | None = None,
    new_bad_per_session: int = 5,
    blur_growth_pct_per_h: float = 0.0,
    lag_growth_pct_per_h: float = 0.0,
    start="2026-01-01T00:00:00Z",
    **characterisation_kw,
) -> list[dict]:
    """Characterisations of one screen over its life (the 200-hour stability test), with the drift known.

    One :func:`characterisation` dict per session time ``t`` in ``hours`` (increasing, >= 0), all of the same
    screen (the seed's gain map, dark maps and baseline defects), each with its own noise (the first session
    draws exactly as :func:`characterisation` does; session ``i`` >= 1 from its own streams). At time ``t``:

    - light yield ``f(t)`` (:func:`light_factor`, ``exp`` matched at 200 h): ``counts_per_quantum`` times
      f(t). The screen gives fewer light photons per absorbed X-ray; the X-rays and their Poisson noise are
      unchanged, so the signal drops by f(t) while the quantum noise in X-ray units (SNR, NNPS, DQE) stays
      (the camera's read and dark noise, in counts, weigh a little more).
    - ``new_bad_per_session`` new bad pixels in each session after the first (dead, or hot with 300-3000
      counts of dark current, half and half; among the baseline's good pixels; seeded); they stay.
    - LSF width times ``b(t) = 1 + blur_growth_pct_per_h / 100 * t`` (core sigma and tail length):
      ``MTF_t(f) = MTF_0(b f)``, so MTF20 divides by b(t).
    - afterglow amplitudes times ``1 + lag_growth_pct_per_h / 100 * t`` (time constants unchanged).

    Each dict has ``attrs["acquired_at"]`` = ``start`` + t (ISO 8601 UTC, 'Z') and, besides the truth of
    :func:`characterisation` (its ``bad_pixels``, ``mtf_lsf``, ``mtf_edge`` and ``afterglow`` those of the aged
    screen), truth ``time_h``, ``light_factor``, ``blur_factor``, ``afterglow_factor``, ``new_bad_pixels``
    ([y, x] of every pixel bad now and good in the first session, in order of appearance),
    ``mtf20_cy_per_px`` (of the screen's LSF MTF), ``lag_first_frame`` (falling step, fraction of the steady
    signal) and ``stability`` (the model's parameters). ``characterisation_kw`` go to :func:`characterisation`.
    """
    times, light, blur, lag = _session_drift(hours, new_bad_per_session, light_drift_pct_per_h, light_model, exp_tau_h,
                                             exp_floor, blur_growth_pct_per_h, lag_growth_pct_per_h)
    t0 = _utc(start)
    preset = PRESETS[spec.preset]
    amps = preset.afterglow_amplitudes if spec.afterglow_amplitudes is None else spec.afterglow_amplitudes
    taus = preset.afterglow_tau_s if spec.afterglow_tau_s is None else spec.afterglow_tau_s
    free = _Detector(spec).bad.reshape(-1) == 0
    dead, hot, hot_current, appeared = [], [], [], []
    model = {"light_model": light_model, "light_drift_pct_per_h": light_drift_pct_per_h, "exp_tau_h": exp_tau_h,
             "exp_floor": exp_floor, "match_h": 200.0, "blur_growth_pct_per_h": blur_growth_pct_per_h,
             "lag_growth_pct_per_h": lag_growth_pct_per_h, "new_bad_per_session": int(new_bad_per_session),
             "start": _iso_utc(t0)}
    sessions = []
    for i, t in enumerate(times):
        if i and new_bad_per_session:
            idx, is_hot, current = _new_defects(spec, free, i, int(new_bad_per_session))
            dead += [int(k) for k in idx[~is_hot]]
            hot += [int(k) for k in idx[is_hot]]
            hot_current += [float(c) for c in current[is_hot]]
            appeared += [int(k) for k in idx]
        screen = _ScreenAge(blur=float(blur[i]), dead=tuple(dead), hot=tuple(hot), hot_current=tuple(hot_current),
                            noise_key=None if i == 0 else (int(spec.seed), _STABILITY_NOISE, i))
        changed = {"counts_per_quantum": spec.counts_per_quantum * float(light[i])}
        if lag[i] != 1.0:
            changed.update(afterglow_amplitudes=tuple(float(a) * float(lag[i]) for a in amps),
                           afterglow_tau_s=tuple(float(x) for x in taus))
        d = characterisation(replace(spec, **changed), _screen=screen, **characterisation_kw)
        ag = d["truth"]["afterglow"]
        first = lag_fraction(0.0, step_amplitudes(ag["amplitudes"], ag["ratios_per_frame"]), ag["tau_s"])
        d["attrs"]["acquired_at"] = _iso_utc(t0 + timedelta(hours=float(t)))
        d["truth"].update(
            time_h=float(t), light_factor=float(light[i]), blur_factor=float(blur[i]), afterglow_factor=float(lag[i]),
            new_bad_pixels=[[k // spec.width, k % spec.width] for k in appeared],
            mtf20_cy_per_px=preset.mtf20_lp_per_mm * spec.pixel_pitch_mm / float(blur[i]),
            lag_first_frame=float(first), session_index=i, stability=dict(model),
        )
        sessions.append(d)
    return sessions


@dataclass
class StabilityRecording(Simulation):
    """A :class:`Simulation` of a drifting screen; ``timestamps_s``: each frame's time (s), or None."""

    timestamps_s: np.ndarray | None = None


def stability_recording(
    spec: SimulationSpec,
    *,
    hours: float = 2.0,
    light_drift_pct_per_h: float = -1.0,
    light_model: str = "linear",
    exp_tau_h: float | None = None,
    exp_floor: float | None = None,
    flicker_pct: float = 0.0,
    frame_times: bool = False,
) -> StabilityRecording:
    """One long open-beam (flat-field) recording under continuous exposure, the screen's light yield drifting.

    ``spec.frames`` frames spread uniformly over ``hours``: frame k is taken at ``t_k = k * hours * 3600 /
    frames`` s, so the frame rate (``attrs["frame_rate_hz"]``, and the spec's, which sets the afterglow's
    per-frame ratios) is ``frames / (hours * 3600)`` Hz. The scene is open (no object; ``scene``, ``speed`` of
    ``spec`` overridden). Frame k's light yield (counts per absorbed quantum, as in :func:`stability_sessions`:
    the quantum noise in X-ray units unchanged) is ``f(t_k) * (1 + flicker_pct / 100 * n_k)``,
    f from :func:`light_factor` (``exp`` matched at the recording's end, ``match_h = hours``), n_k standard
    normal (seeded by ``spec.seed``). Darks and flats as :func:`build` gives them (flats at f = 1, no flicker);
    truth frames (if ``spec.truth_frames``) carry the per-frame factor.

    Returns a :class:`StabilityRecording` (a :class:`Simulation`: ``attrs``, ``darks``, ``flats``,
    ``truth_maps``, ``truth_attrs``, ``iter_chunks()``) whose ``truth_maps`` add ``time_h``, ``light_drift``
    (f(t_k)), ``flicker`` (the multiplicative factor), ``light_factor`` (their product, the yield applied) and,
    with ``frame_times``, ``frame_times_s`` (also ``timestamps_s``); ``truth_attrs["stability"]``: the model.
    """
    hours = float(hours)
    if not (hours > 0 and math.isfinite(hours)):
        raise ValueError(f"hours must be a positive number, not {hours!r}")
    if not (0 <= flicker_pct < 25):
        raise ValueError(f"flicker_pct must lie in [0, 25), not {flicker_pct!r}")
    n = spec.frames
    rate = n / (hours * 3600.0)
    t_s = np.arange(n, dtype=np.float64) * (hours * 3600.0 / n)
    drift = np.asarray(light_factor(t_s / 3600.0, light_drift_pct_per_h=light_drift_pct_per_h,
                                    light_model=light_model, exp_tau_h=exp_tau_h, exp_floor=exp_floor,
                                    match_h=hours), dtype=np.float64).reshape(-1)
    flicker = np.ones(n)
    if flicker_pct:
        rng = np.random.default_rng(np.random.SeedSequence([int(spec.seed), _STABILITY_FLICKER]))
        flicker = np.maximum(1.0 + flicker_pct / 100.0 * rng.standard_normal(n), 0.0)
    if not np.all(drift > 0):
        raise ValueError("the drift makes the light yield <= 0 within the recording")
    applied = (drift * flicker).astype(np.float32)
    rec_spec = replace(spec, scene="open", speed_px_per_frame=0.0, frame_rate_hz=rate)
    sim = _build(rec_spec, light_per_frame=applied, cls=StabilityRecording)
    sim.truth_maps.update(time_h=t_s / 3600.0, light_drift=drift, flicker=flicker,
                          light_factor=applied.astype(np.float64))
    if frame_times:
        sim.truth_maps["frame_times_s"] = t_s
        sim.timestamps_s = t_s
    sim.truth_attrs["stability"] = {
        "light_model": light_model, "light_drift_pct_per_h": light_drift_pct_per_h, "exp_tau_h": exp_tau_h,
        "exp_floor": exp_floor, "match_h": hours, "flicker_pct": flicker_pct, "hours": hours,
        "frame_rate_hz": rate, "note": "frame k at k / frame_rate_hz s; its light yield (counts per quantum) "
                                       "times truth/light_factor[k]; darks and flats at the start (factor 1)",
    }
    return sim
