"""The CPU (Numba) kernels under their historical names: they live in :mod:`pipeline.cpu`, one module per family.

Kept so that ``from pipeline import jit`` and ``jit.disabled()`` keep working; new code imports from
:mod:`pipeline.cpu` directly.
"""

from __future__ import annotations

from .cpu import available, disabled  # noqa: F401
from .cpu.afterglow import remove_lag_into  # noqa: F401
from .cpu.denoise import nl_means_into, temporal_into  # noqa: F401
from .cpu.flatfield import correct_into, flat_field_into, median_filter_into, replace_bad_into  # noqa: F401
from .cpu.quantise import code_u16_into  # noqa: F401
from .cpu.stats import argsort_f32, moments_into, nanmedian_f32  # noqa: F401
