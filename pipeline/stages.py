"""Stage adapters: a config section plus an op become the pieces the scheduler runs.

A run is a :class:`Chain` of three phases per block of frames:

* ``head(raw)``: stateless, parallel over blocks: dark, gain, bad pixels (linear
  output: counts or transmission) and the saturation mask of the raw block;
* stateful stages, in time order: ``stage(block, state) -> (block, state)`` with
  ``stage.initial_state(block)`` for the first block (afterglow);
* ``tail(payload)``: stateless, parallel: saturated pixels to NaN, -log.

The afterglow inverse needs dark-subtracted, linear data and finite values, so
it sits between head and tail. Bad pixels are replaced before it (their raw
values would feed garbage into the recursion) and saturation is marked after
it (NaN would poison the state forever).
"""

from __future__ import annotations

import os
import threading

import numpy as np

from .config import AfterglowConfig, FlatFieldConfig, RunConfig
from .errors import ConfigError
from .ops.afterglow import remove_lag, steady_state
from .ops.denoise import NoiseModel, denoise_spatial, temporal_filter
from .ops.flatfield import (Calibration, correct_frames, flat_field_and_bad_pixels, inverse_gain, neighbour_table,
                             to_attenuation)
from .ops.mtf import auto_n_fft, slanted_edge_mtf
from .io.packing import DEFAULT_OFFSET, DEFAULT_SCALE, at_limit, cf_attributes, decode, encode


class FlatFieldStage:
    """Dark, gain, bad pixels, saturation and output mode from :class:`FlatFieldConfig`.

    The saturation mask of a block (``head``'s second value, applied to NaN in ``tail``) is
    :func:`pipeline.ops.flatfield.saturation_mask`: ``raw >= saturation`` for the pixels not
    replaced; a replaced bad pixel only where more than half of the good neighbours of its median
    are saturated, never because of its own raw value (a hot pixel stuck at 65535).
    """

    name = "flatfield"

    def __init__(self, calibration: Calibration, cfg: FlatFieldConfig, input_dtype, response=None):
        self.cal = calibration
        self.cfg = cfg
        self.response = response
        dt = np.dtype(input_dtype)
        if cfg.saturation_level is not None:
            self.saturation = float(cfg.saturation_level)
        elif dt.kind in "ui":
            self.saturation = float(np.iinfo(dt).max)
        else:
            self.saturation = None
        if cfg.saturated == "keep":
            self.saturation = None
        self.table = neighbour_table(calibration.bad_pixels) if cfg.bad_pixels.replace else None
        linear = "counts" if cfg.output == "counts" else "transmission"
        scale = 1.0 if linear == "counts" else calibration.exposure_ratio * calibration.flat_level
        self.inv_gain = inverse_gain(calibration.gain, scale) if response is None else None

    def head(self, raw, out=None):
        """Linear correction of a raw block and its saturation mask (None: nothing saturated; see the class)."""
        from .ops.flatfield import saturation_mask

        if self.response is None and isinstance(raw, np.ndarray):
            # dark, gain, bad pixels and the saturation count in one pass (Numba where available)
            # the bad pixels' saturation by their neighbours (never by their own raw value: a hot pixel stuck at
            # full scale) from the same pass
            flags = (np.empty((raw.shape[0], self.table[0].size), bool)
                     if self.table is not None and self.saturation is not None else None)
            out, n_sat = flat_field_and_bad_pixels(raw, self.cal.dark, self.inv_gain, self.table,
                                                   saturation=self.saturation, out=out, saturated_bad=flags)
            mask = (saturation_mask(raw, self.saturation, self.table, out, count=n_sat, bad_saturated=flags)
                    if n_sat else None)
            if raw.dtype.kind == "f":  # +-Inf input pixels become NaN, like NaN ones
                bad = ~np.isfinite(out)
                if bad.any():
                    out[bad] = np.nan
            return out, mask
        linear = "counts" if self.cfg.output == "counts" else "transmission"
        out = correct_frames(raw, self.cal, output=linear, replace=self.cfg.bad_pixels.replace, table=self.table,
                             saturation_level=None, response=self.response, inv_gain=self.inv_gain)
        # NaN compares False: one NaN pixel does not hide the saturated ones; bad pixels judged by their neighbours
        mask = saturation_mask(raw, self.saturation, self.table, out)
        if raw.dtype.kind == "f":  # +-Inf input pixels become NaN, like NaN ones
            bad = ~np.isfinite(out)
            if bad.any():
                out[bad] = np.nan
        return out, mask

    def tail(self, block, mask):
        if mask is not None:
            block[mask] = np.nan
        if self.cfg.output == "attenuation":
            to_attenuation(block, out=block)
        return block


class AfterglowStage:
    """Exact lag removal with a fitted model; the lag state crosses blocks."""

    name = "afterglow"
    stateful = True

    def __init__(self, model, cfg: AfterglowConfig):
        self.model = model
        self.amplitudes = model.amplitudes
        self.ratios = model.ratios
        self.mode = cfg.initial_state

    def initial_state(self, block):
        if self.mode == "steady":
            return steady_state(np.nan_to_num(block[0]), self.amplitudes, self.ratios)
        return np.zeros((len(self.ratios),) + tuple(block.shape[1:]), dtype=np.float32)

    def __call__(self, block, state):
        bad = ~np.isfinite(block)
        if bad.any():  # a NaN input pixel: treated as no signal in the recursion, NaN in the output
            block[bad] = 0
        out, state = remove_lag(block, self.amplitudes, self.ratios, state, out=block)
        if bad.any():
            out[bad] = np.nan
        return out, state


class BeamStage:
    """Beam-intensity normalisation (:mod:`pipeline.ops.beam`). Stateless, but it sits among the stateful stages:
    after the afterglow removal (the lag of earlier frames follows their own beam) and before the temporal filter
    (a flicker would read as motion). Its state is always None."""

    name = "beam"
    stateful = True

    def __init__(self, region, reference: float):
        self.region = tuple(int(v) for v in region)
        self.reference = float(reference)

    def initial_state(self, block):
        return None

    def __call__(self, block, state):
        from .ops.beam import normalise_beam

        out, _ = normalise_beam(block, region=self.region, reference=self.reference, out=block)
        return out, None


class TemporalDenoiseStage:
    """Motion-adaptive recursive filter; the previous estimate crosses blocks."""

    name = "denoise-temporal"
    stateful = True

    def __init__(self, noise: NoiseModel, cfg):
        self.noise = noise
        self.cfg = cfg

    def initial_state(self, block):
        return None

    def __call__(self, block, state):
        return temporal_filter(block, state, noise=self.noise, gain_min=self.cfg.temporal_gain_min,
                               threshold=self.cfg.temporal_threshold, smooth=self.cfg.temporal_smooth,
                               hold=self.cfg.temporal_hold, out=block)


class SpatialDenoiseStage:
    """One spatial denoiser per frame (optionally inside the GAT)."""

    name = "denoise-spatial"

    def __init__(self, noise: NoiseModel, cfg):
        self.noise = noise
        self.cfg = cfg
        self.params = cfg.model_dump()

    def __call__(self, block):
        return denoise_spatial(block, self.cfg.method, noise=self.noise, anscombe=self.cfg.anscombe, params=self.params)


class MTFStage:
    """Per-frame slanted-edge MTF in a fixed ROI of the corrected frames (a measurement: frames pass unchanged)."""

    name = "mtf"

    def __init__(self, roi, cfg):
        self.roi = tuple(int(v) for v in roi)
        self.cfg = cfg
        y0, y1, x0, x1 = self.roi
        self.n_fft = auto_n_fft(max(y1 - y0, x1 - x0), cfg.oversample)

    def measure(self, block):
        """Dict of per-frame arrays: mtf (t, F), mtf50/20/10 and angle (t,) in cycles/pixel, flags."""
        y0, y1, x0, x1 = self.roi
        rois = block[:, y0:y1, x0:x1]
        finite = np.isfinite(rois).all(axis=(1, 2))
        t = block.shape[0]
        out = {"flags": [["nonfinite_roi"] if not ok else [] for ok in finite]}
        res = None
        if finite.any():
            try:
                res = slanted_edge_mtf(rois[finite], window=self.cfg.window, oversample=self.cfg.oversample,
                                       f_max=self.cfg.f_max_cy_per_px, n_fft=self.n_fft)
            except ValueError as exc:
                out["flags"] = [[f"mtf_failed: {exc}"] for _ in range(t)]
        f = np.arange(self.n_fft // 2 + 1) / (self.n_fft / self.cfg.oversample)
        f = f[f <= self.cfg.f_max_cy_per_px + 1e-12]
        out["frequencies_cy_per_px"] = f
        mtf = np.full((t, f.size), np.nan)
        cross = {lv: np.full(t, np.nan) for lv in (0.5, 0.2, 0.1)}
        angle = np.full(t, np.nan)
        if res is not None:
            idx = np.nonzero(finite)[0]
            mtf[idx] = res.mtf
            for lv in cross:
                cross[lv][idx] = res.crossings_cy_per_px[lv]
            angle[idx] = res.angle_deg
            for j, i in enumerate(idx):
                out["flags"][i] = res.flags[j]
        out.update(mtf=mtf, mtf50=cross[0.5], mtf20=cross[0.2], mtf10=cross[0.1], angle_deg=angle)
        return out


def run_stateful(stage, block, state, gaps=()):
    """``stage`` over a block whose frames ``gaps`` (``[(a, b), ...]``, frames a..b-1 of the block) were not read.

    The frames of a gap stay NaN, and the state restarts after it: the next frame read starts the
    stage afresh (``stage.initial_state`` of the frames after the gap, as at frame 0), so the frames
    after a gap are what a run of the recording starting there gives, and nothing is carried over
    the frames that are not known (the temporal filter would repeat the last frame through them,
    the lag model would decay through them as if the beam were off). Decided frame by frame, so
    any chunking gives the same result. Returns ``(block, state)``; a block that ends in a gap
    returns ``None`` (the next block starts afresh).
    """
    if not gaps:
        st = stage.initial_state(block) if state is None else state
        return stage(block, st)
    n = block.shape[0]
    cut = sorted((max(0, int(a)), min(n, int(b))) for a, b in gaps if min(n, int(b)) > max(0, int(a)))
    pos = 0
    for a, b in cut + [(n, n)]:
        if a > pos:  # frames pos..a-1 were read
            part = block[pos:a]
            st = stage.initial_state(part) if state is None else state
            out, state = stage(part, st)
            if out is not part:
                block[pos:a] = out
        if b > a:
            block[a:b] = np.nan
            state = None
        pos = max(pos, b)
    return block, state


def gaps_of(info, t0: int) -> list:
    """The unread frames a block's read recorded (``info['skipped']``: inclusive ranges) as block offsets."""
    return [(int(a) - t0, int(b) + 1 - t0) for a, b, *_ in (info or {}).get("skipped") or ()]


class BlockPool:
    """Block buffers reused from block to block, shared by the scheduler's threads.

    A fresh 64 MiB array costs more in page faults than the flat field written into it (the
    kernel zeroes every page first: 5-8 ms for 32 MiB on this VM): the scheduler reads raw blocks
    into buffers from here and hands each back once the head has used it, and each written block
    once it is stored (:meth:`Chain.recycle`), and the next block reuses them. It keeps at most
    ``keep`` buffers of each shape and dtype: as many as were in flight at once, so it adds
    nothing to the run's peak memory.
    """

    def __init__(self, keep: int | None = None):
        self.keep = keep if keep is not None else max(4, 2 * (os.cpu_count() or 1))
        self._free: list = []
        self._lock = threading.Lock()

    def take(self, shape, dtype=np.float32):
        shape, dtype = tuple(shape), np.dtype(dtype)
        with self._lock:
            for i, a in enumerate(self._free):
                if a.shape == shape and a.dtype == dtype:
                    return self._free.pop(i)
        return np.empty(shape, dtype)

    def give(self, a) -> None:
        if isinstance(a, np.ndarray) and a.base is None and a.flags.c_contiguous and a.flags.writeable:
            with self._lock:
                same = sum(1 for b in self._free if b.shape == a.shape and b.dtype == a.dtype)
                if same < self.keep and all(b is not a for b in self._free):
                    self._free.append(a)


class Storage:
    """How finished blocks are stored (:mod:`pipeline.io.packing`): float32, float16, or scaled uint16.

    Measurements are made on what is stored (``decode(encode(block))``), so that they are what a
    reader of the output would measure, and the same on every engine.
    """

    name = "storage"

    def __init__(self, dtype: str = "float32", scale: float = 1.0, offset: float = 0.0):
        self.dtype, self.scale, self.offset = str(dtype), float(scale), float(offset)

    @property
    def numpy_dtype(self):
        return np.dtype(self.dtype)

    @property
    def packed(self) -> bool:
        """True where storing changes the values (anything but float32)."""
        return self.dtype != "float32"

    def encode(self, block, out=None):
        return encode(block, self.dtype, scale=self.scale, offset=self.offset, out=out)

    def decode(self, stored):
        return decode(stored, scale=self.scale, offset=self.offset)

    def at_limit(self, stored) -> int:
        """Stored values at the ends of the type's range (0 for float32: not counted)."""
        return at_limit(stored) if self.packed else 0

    def attributes(self) -> dict:
        return cf_attributes(self.dtype, scale=self.scale, offset=self.offset)


class Chain:
    """head -> stateful stages (in time order) -> tail, on blocks of frames; then measurements."""

    def __init__(self, flatfield: FlatFieldStage | None, stateful=(), measures=(), post=(),
                 storage: Storage | None = None):
        self.flatfield = flatfield
        self.stateful = list(stateful)
        self.measures = list(measures)
        self.post = list(post)
        self.storage = storage if storage is not None else Storage()
        self.pool = BlockPool()

    def __getstate__(self):  # a pool (and its lock) is per process
        state = dict(self.__dict__)
        state.pop("pool", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.pool = BlockPool()

    def recycle(self, block) -> None:
        """Hand a block that is written and no longer referenced back for reuse by a later head."""
        self.pool.give(block)

    def measure(self, block):
        """Measurements of a finished block: {stage name: dict of per-frame arrays}."""
        return {m.name: m.measure(block) for m in self.measures}

    def head(self, raw):
        if self.flatfield is None:
            return raw.astype(np.float32), None
        if isinstance(raw, np.ndarray):
            return self.flatfield.head(raw, out=self.pool.take(raw.shape))
        return self.flatfield.head(raw)

    def tail(self, payload):
        block, mask = payload[0], payload[1]
        for stage in self.post:
            block = stage(block)
        if self.flatfield is not None:
            block = self.flatfield.tail(block, mask)
        return block if block.dtype == np.float32 else block.astype(np.float32)

    def __call__(self, raw, states=None, *, gaps=()):
        """Whole chain on one block (``states``: list per stateful stage, None = initial; ``gaps``: see
        :func:`run_stateful`)."""
        block, mask = self.head(raw)
        states = list(states) if states is not None else [None] * len(self.stateful)
        for i, stage in enumerate(self.stateful):
            block, states[i] = run_stateful(stage, block, states[i], gaps)
        return self.tail((block, mask)), states

    def __dask_tokenize__(self):
        return ("chain", id(self))

    @property
    def names(self):
        out = [self.flatfield.name] if self.flatfield is not None else []
        return out + [s.name for s in self.stateful] + [p.name for p in self.post] + [m.name for m in self.measures]


def build_chain(config: RunConfig, calibration: Calibration | None, input_dtype, afterglow_model=None,
                mtf_roi=None, noise: NoiseModel | None = None, response=None, beam_reference: float | None = None
                ) -> Chain:
    """The stage chain the config asks for (``beam_reference``: the beam stage's level, once it is known)."""
    ff = FlatFieldStage(calibration, config.flatfield, input_dtype, response) if config.flatfield.enabled else None
    stateful = []
    if afterglow_model is not None:
        if ff is None:
            raise ConfigError("afterglow.model needs flatfield.enabled: true (dark subtraction must come first)")
        stateful.append(AfterglowStage(afterglow_model, config.afterglow))
    if config.beam.enabled and beam_reference is not None:
        if ff is None:
            raise ConfigError("beam.enabled needs flatfield.enabled: true (the region's mean must be dark-subtracted)")
        stateful.append(BeamStage(config.beam.region, beam_reference))
    post = []
    dn = config.denoise
    if dn.enabled and noise is not None:
        if dn.temporal:
            stateful.append(TemporalDenoiseStage(noise, dn))
        if dn.method != "none":
            post.append(SpatialDenoiseStage(noise, dn))
    measures = [MTFStage(mtf_roi, config.mtf)] if config.mtf.enabled and mtf_roi is not None else []
    o = config.output
    mode = config.flatfield.output if ff is not None else "counts"
    storage = Storage(o.dtype, o.scale if o.scale is not None else DEFAULT_SCALE[mode],
                      o.offset if o.offset is not None else DEFAULT_OFFSET[mode])
    return Chain(ff, stateful, measures, post, storage)
