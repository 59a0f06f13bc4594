"""The Python API: simulate, calibrate, run, info, and the rest of what the command line does.

Everything the command line does goes through these functions, so scripts
get the same behaviour (and the same one-line errors) as the CLI::

    import pipeline
    pipeline.simulate("sim.zarr", frames=64, size=(256, 256))
    result = pipeline.run("sim.zarr", "out.zarr", {"flatfield": {"output": "transmission"}})
    print(result.frames_per_second)

The functions live in the modules of their step (:mod:`pipeline.recordings`, :mod:`pipeline.calibration`,
:mod:`pipeline.runner`, :mod:`pipeline.measure`, :mod:`pipeline.demo`, :mod:`pipeline.characterisation`);
this module gathers them in one place.
"""

from __future__ import annotations

from .calibration import calibrate, load_afterglow, load_calibration, load_response, save_calibration
from .characterisation import characterise, simulate_characterisation
from .demo import demo
from .errors import PipelineError
from .measure import fit_afterglow, ghost_report, measure_mtf, mtf_plot_path
from .recordings import (RECORDING_CHUNK_BYTES, export, info, ingest, recording_chunk_frames, set_dataset_attrs,
                         simulate)
from .runner import RunPlan, RunResult, choose_chunk_frames, plan_run, run, time_account

__all__ = ["RunResult", "RunPlan", "run", "plan_run", "time_account", "simulate", "calibrate", "save_calibration",
           "set_dataset_attrs",
           "load_calibration", "load_afterglow", "load_response", "info", "ingest", "export", "fit_afterglow",
           "measure_mtf", "ghost_report", "mtf_plot_path", "demo", "characterise", "simulate_characterisation",
           "choose_chunk_frames", "recording_chunk_frames", "RECORDING_CHUNK_BYTES", "PipelineError"]
