"""Stage adapters: a config section plus an op become a block function.

A block function takes one (t, H, W) block of raw frames and returns the
(t, H, W) float32 result. Stages here are stateless across blocks; stages
with state that crosses blocks (afterglow, temporal filters) will carry it
explicitly.
"""

from __future__ import annotations

import numpy as np

from .config import FlatFieldConfig, RunConfig
from .errors import NotAvailableError
from .ops.flatfield import Calibration, correct_frames, neighbour_table


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
        self.table = neighbour_table(calibration.bad_pixels) if cfg.bad_pixels.replace else None

    def __call__(self, block):
        return correct_frames(
            block,
            self.cal,
            output=self.cfg.output,
            replace=self.cfg.bad_pixels.replace,
            table=self.table,
            saturation_level=self.saturation,
            mark_saturated=self.cfg.saturated == "nan",
        )

    def __dask_tokenize__(self):
        return (self.name, id(self))


class Chain:
    """Stages applied in order to a block; the result is float32."""

    def __init__(self, stages):
        self.stages = list(stages)

    def __call__(self, block):
        out = block
        for stage in self.stages:
            out = stage(out)
        if out.dtype != np.float32:
            out = out.astype(np.float32)
        return out

    def __dask_tokenize__(self):
        return ("chain", tuple(id(s) for s in self.stages))

    @property
    def names(self):
        return [getattr(s, "name", type(s).__name__) for s in self.stages]


def build_chain(config: RunConfig, calibration: Calibration | None, input_dtype) -> Chain:
    """The stage chain the config asks for (reserved sections raise :class:`NotAvailableError`)."""
    for section in ("afterglow", "denoise", "mtf"):
        if getattr(config, section).enabled:
            raise NotAvailableError(
                f"config section '{section}' is reserved but not available in this version; set {section}.enabled: false"
            )
    stages = []
    if config.flatfield.enabled:
        stages.append(FlatFieldStage(calibration, config.flatfield, input_dtype))
    return Chain(stages)
