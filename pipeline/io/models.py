"""Afterglow model files: MODEL.json (+ optional MODEL.amplitudes.npy per-pixel map)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CalibrationError, OutputExistsError

KIND = "xray-pipeline afterglow model"


@dataclass(frozen=True)
class AfterglowModel:
    """A loaded, validated afterglow model."""

    path: Path
    frame_rate_hz: float
    tau_s: tuple[float, ...]
    amplitudes: np.ndarray  # (N,) or (N, H, W)
    info: dict

    @property
    def ratios(self) -> np.ndarray:
        return np.exp(-1.0 / (self.frame_rate_hz * np.asarray(self.tau_s)))


def save_model(path: str | Path, document: dict, *, amplitude_map: np.ndarray | None = None, overwrite=False,
               inputs=()) -> Path:
    """Write MODEL.json (and the amplitude map beside it, if any), both or neither.

    Refuses to overwrite without ``overwrite``, and to write over one of ``inputs`` (what the model
    was fitted from) or over anything but a file (:class:`pipeline.io.outputs.FileSet`).
    """
    from .outputs import FileSet

    p = Path(path)
    side = p.with_suffix(".amplitudes.npy")
    names = [p.name] + ([side.name] if amplitude_map is not None else [])
    files = FileSet(p.parent, names, overwrite=overwrite, inputs=inputs)
    doc = dict(document, kind=KIND)
    with files:
        if amplitude_map is not None:
            np.save(files.path(side.name), np.asarray(amplitude_map, dtype=np.float32))
            doc["amplitude_map"] = side.name
        files.path(p.name).write_text(json.dumps(doc, indent=2) + "\n")
    return p


def load_model(path: str | Path, frame_shape=None) -> AfterglowModel:
    """Read and validate MODEL.json; errors name the file and the bad field."""
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"afterglow model '{p}' does not exist; make one with 'xray-pipeline afterglow fit'")
    try:
        doc = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"afterglow model '{p}' is not valid JSON ({exc}); refit it") from None
    if doc.get("kind") != KIND:
        raise CalibrationError(f"'{p}' is not an afterglow model made by 'xray-pipeline afterglow fit'")
    try:
        fr = float(doc["frame_rate_hz"])
        tau = [float(t) for t in doc["tau_s"]]
        amps = np.asarray([float(a) for a in doc["amplitudes"]], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise CalibrationError(f"afterglow model '{p}' lacks a valid {exc}; refit it") from None
    if not (fr > 0 and math.isfinite(fr)):
        raise CalibrationError(f"afterglow model '{p}': frame_rate_hz must be a positive number, got {fr}")
    if len(tau) != amps.size or not 1 <= amps.size <= 8:
        raise CalibrationError(f"afterglow model '{p}': amplitudes and tau_s must pair up (1-8 terms)")
    if not all(t > 0 and math.isfinite(t) for t in tau):
        raise CalibrationError(f"afterglow model '{p}': time constants must be positive, got {tau}")
    if not np.all(np.isfinite(amps)) or np.any(amps < 0):
        raise CalibrationError(f"afterglow model '{p}': amplitudes must be finite and >= 0, got {amps.tolist()}")
    amplitudes = amps
    if doc.get("amplitude_map"):
        side = p.parent / doc["amplitude_map"]
        if not side.is_file():
            raise CalibrationError(f"afterglow model '{p}' names amplitude map '{side}', which is missing")
        amap = np.load(side)
        if amap.ndim != 3 or amap.shape[0] != amps.size:
            raise CalibrationError(f"amplitude map '{side}' has shape {amap.shape}; expected ({amps.size}, H, W)")
        if frame_shape is not None and tuple(amap.shape[1:]) != tuple(frame_shape):
            raise CalibrationError(f"amplitude map '{side}' is for {tuple(amap.shape[1:])} frames, "
                                   f"the data are {tuple(frame_shape)}; refit on a matching calibration")
        if not np.all(np.isfinite(amap)) or np.any(amap < 0):
            raise CalibrationError(f"amplitude map '{side}' has negative or NaN values; refit it")
        amplitudes = amap.astype(np.float32)
    return AfterglowModel(p, fr, tuple(tau), amplitudes, doc)
