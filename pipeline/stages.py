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

import numpy as np

from .config import AfterglowConfig, FlatFieldConfig, RunConfig
from .errors import ConfigError, NotAvailableError
from .ops.afterglow import remove_lag, steady_state
from .ops.flatfield import Calibration, correct_frames, neighbour_table, to_attenuation


class FlatFieldStage:
    """Dark, gain, bad pixels, saturation and output mode from :class:`FlatFieldConfig`."""

    name = "flatfield"

    def __init__(self, calibration: Calibration, cfg: FlatFieldConfig, input_dtype):
        self.cal = calibration
        self.cfg = cfg
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

    def head(self, raw):
        linear = "counts" if self.cfg.output == "counts" else "transmission"
        out = correct_frames(raw, self.cal, output=linear, replace=self.cfg.bad_pixels.replace, table=self.table,
                             saturation_level=None)
        mask = None
        if self.saturation is not None:
            mask = raw >= self.saturation
            if not mask.any():
                mask = None
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
            return steady_state(block[0], self.amplitudes, self.ratios)
        return np.zeros((len(self.ratios),) + tuple(block.shape[1:]), dtype=np.float32)

    def __call__(self, block, state):
        return remove_lag(block, self.amplitudes, self.ratios, state, out=block)


class Chain:
    """head -> stateful stages (in time order) -> tail, on blocks of frames."""

    def __init__(self, flatfield: FlatFieldStage | None, stateful=()):
        self.flatfield = flatfield
        self.stateful = list(stateful)

    def head(self, raw):
        if self.flatfield is None:
            return raw.astype(np.float32), None
        return self.flatfield.head(raw)

    def tail(self, payload):
        block, mask = payload
        if self.flatfield is not None:
            block = self.flatfield.tail(block, mask)
        return block if block.dtype == np.float32 else block.astype(np.float32)

    def __call__(self, raw, states=None):
        """Whole chain on one block (``states``: list per stateful stage, None = initial)."""
        block, mask = self.head(raw)
        states = list(states) if states is not None else [None] * len(self.stateful)
        for i, stage in enumerate(self.stateful):
            st = stage.initial_state(block) if states[i] is None else states[i]
            block, states[i] = stage(block, st)
        return self.tail((block, mask)), states

    def __dask_tokenize__(self):
        return ("chain", id(self))

    @property
    def names(self):
        out = [self.flatfield.name] if self.flatfield is not None else []
        return out + [s.name for s in self.stateful]


def build_chain(config: RunConfig, calibration: Calibration | None, input_dtype, afterglow_model=None) -> Chain:
    """The stage chain the config asks for (reserved sections raise :class:`NotAvailableError`)."""
    for section in ("denoise", "mtf"):
        if getattr(config, section).enabled:
            raise NotAvailableError(
                f"config section '{section}' is reserved but not available in this version; set {section}.enabled: false"
            )
    ff = FlatFieldStage(calibration, config.flatfield, input_dtype) if config.flatfield.enabled else None
    stateful = []
    if afterglow_model is not None:
        if ff is None:
            raise ConfigError("afterglow.model needs flatfield.enabled: true (dark subtraction must come first)")
        stateful.append(AfterglowStage(afterglow_model, config.afterglow))
    return Chain(ff, stateful)
