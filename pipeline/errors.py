"""Error types of the pipeline.

Every error subclasses a built-in (so ``except ValueError`` still works) and
its message is one line that names the offending thing and says what to change.
The command line prints that line and exits non-zero, without a traceback.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigError(PipelineError, ValueError):
    """A configuration key is unknown, mistyped or out of range."""


class DataError(PipelineError, ValueError):
    """An input dataset is missing, malformed or inconsistent."""


class CalibrationError(PipelineError, ValueError):
    """Calibration data (darks, flats, saved calibration) is missing or unusable."""


class OutputExistsError(PipelineError, FileExistsError):
    """The output path exists and overwriting was not asked for."""


class BackendError(PipelineError, RuntimeError):
    """The requested compute backend (e.g. CuPy on a GPU) is not usable."""


class NotAvailableError(PipelineError, NotImplementedError):
    """A reserved feature (config section) that this version does not provide yet."""


class RunInterrupted(PipelineError):
    """A run was stopped (Ctrl-C); its finished blocks are kept for ``--resume``."""


class AlreadyComplete(PipelineError):
    """``--resume`` was asked for an output that is already complete."""


def brief(exc: BaseException, limit: int = 160) -> str:
    """``exc`` for a one-line message: its type and the first line of its text, shortened to ``limit``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:limit]}" if text else type(exc).__name__
