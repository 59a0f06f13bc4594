"""Zarr v3 storage: this package is the only place that imports zarr.

Data contract (a Zarr v3 group)
-------------------------------
``frames``  (T, H, W) uint16 or float32, the camera video, chunked along T.
``darks``   (Nd, H, W) beam-off frames (optional when a calibration is given).
``flats``   (Nf, H, W) open-beam frames (optional when a calibration is given).
attributes ``pixel_pitch_mm`` and ``frame_rate_hz``.

Inputs are always opened read-only. Outputs are written into ``OUT.partial``
and renamed to ``OUT`` only when complete, so an interrupted run never leaves
a half-written ``OUT`` and an existing ``OUT`` survives until the new one is whole.

Submodules, in import order (each imports only those before it): :mod:`.layout` (groups opened and checked, an
array's chunk layout, who wrote a group), :mod:`.reading` (:class:`FrameReader`, :func:`open_input`),
:mod:`.writing` (:class:`OutputWriter`, :class:`FrameWriter`), :mod:`.groups` (whole groups by path). The names
below are this package's interface: import them from here.
"""

from __future__ import annotations

from ...errors import CalibrationError, DataError, OutputExistsError, brief
from ..chunks import ChunkDecoder, ChunkEncoder, ChunkError
from .groups import (CALIBRATION_ARRAYS, describe, load_calibration, open_group_readonly, read_array, read_attrs,
                     read_frame)
from .layout import WRITER_ATTR, loop_thread_cpu_s, written_by_us
from .reading import (FRAME_DTYPES, MISSING_RULES, Decoded, FrameReader, InputDataset, checked, checked_frames,
                      decoded_frames, open_input, read_checked)
from .writing import FrameWriter, OutputWriter, check_output_path, default_dims, set_attrs_in_place

__all__ = [
    "CALIBRATION_ARRAYS", "FRAME_DTYPES", "MISSING_RULES", "WRITER_ATTR",
    "CalibrationError", "ChunkDecoder", "ChunkEncoder", "ChunkError", "DataError", "Decoded", "FrameReader",
    "FrameWriter", "InputDataset", "OutputExistsError", "OutputWriter",
    "brief", "check_output_path", "checked", "checked_frames", "decoded_frames", "default_dims", "describe",
    "load_calibration", "loop_thread_cpu_s", "open_group_readonly", "open_input", "read_array", "read_attrs",
    "read_checked", "read_frame", "set_attrs_in_place", "written_by_us",
]
