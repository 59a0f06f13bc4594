"""xray-pipeline: processing of dynamic (video-rate) X-ray imaging with scintillator detectors.

Importing the package is cheap: it pulls in neither CuPy nor Dask. The public
functions load their machinery on first use::

    import pipeline
    pipeline.simulate("sim.zarr", frames=64)
    pipeline.run("sim.zarr", "out.zarr")
"""

from __future__ import annotations

from ._version import __version__
from .errors import PipelineError

_API = {"run", "simulate", "calibrate", "save_calibration", "load_calibration", "info", "RunResult", "ingest",
        "export", "fit_afterglow", "measure_mtf", "demo"}


def __getattr__(name):
    if name == "api":
        import importlib

        return importlib.import_module(".api", __name__)
    if name in _API:
        from . import api

        return getattr(api, name)
    if name in ("RunConfig", "load_config"):
        from . import config

        return getattr(config, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


__all__ = sorted(_API | {"RunConfig", "load_config", "PipelineError", "__version__"})
