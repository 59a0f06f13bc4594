"""A characterisation manifest: the lab's files for ``characterise``, named in one YAML file.

.. code-block:: yaml

    pixel_pitch_mm: 0.05
    frame_rate_hz: 100
    beam_quality: RQA5          # or q_per_uGy_mm2: 29653
    reference_kerma_uGy: 100
    darks: darks/               # TIFF folder or file, HDF5 (file.h5::/entry/data/data), raw, npy, video
    flats:                      # air kerma in uGy -> files
      25: flats_25uGy/
      50: flats_50uGy/
      100: flats_100uGy/
    edge: edge/
    afterglow_step: step/       # optional: beam on to steady state, then off
    acquired_at: 2026-11-02T09:30:00Z   # optional: when (for stability trends)

Paths are relative to the manifest's folder. :func:`read_manifest` checks it (unknown key, missing file, fewer
than two kerma levels; each a one-line error); :func:`ingest_manifest` writes the Zarr characterisation dataset
``characterise`` reads (the layout ``simulate --characterisation`` writes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import validate
from .errors import DataError

_KEYS = {"pixel_pitch_mm", "frame_rate_hz", "beam_quality", "q_per_uGy_mm2", "reference_kerma_uGy", "darks",
         "flats", "edge", "afterglow_step", "acquired_at", "raw_dtype", "raw_shape", "header"}


@dataclass(frozen=True)
class Manifest:
    """A checked manifest: absolute paths, kerma levels in ascending order, the attributes for the dataset."""

    path: Path
    darks: str
    flats: tuple  # ((kerma_uGy, path), ...) ascending
    edge: str
    afterglow_step: str | None
    attrs: dict
    raw: dict


def is_manifest(path) -> bool:
    """A ``.yaml``/``.yml`` file: a manifest, not a dataset."""
    p = Path(path)
    return p.suffix.lower() in (".yaml", ".yml") and not p.is_dir()


def _where(folder: Path, value, key: str, manifest: Path) -> str:
    """A manifest's file entry resolved against its folder (``file.h5::/dataset`` keeps its dataset); refused in
    one line when the file is not there."""
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise DataError(f"manifest '{manifest}': '{key}' must be a path (TIFF folder or file, HDF5, raw, npy), "
                        f"not {value!r}")
    text = str(value)
    file, sep, inner = text.partition("::")
    p = Path(file).expanduser()
    p = p if p.is_absolute() else folder / p
    if not p.exists():
        raise DataError(f"manifest '{manifest}': '{key}' names '{p}', which does not exist; fix the path (relative "
                        "paths are relative to the manifest's folder)")
    return str(p) + (sep + inner if sep else "")


def read_manifest(path) -> Manifest:
    """The checked manifest at ``path`` (see the module docstring)."""
    from .config import read_yaml
    from .errors import ConfigError

    p = Path(path)
    try:
        data = read_yaml(p)
    except ConfigError as exc:
        raise DataError(str(exc).replace("config file", "manifest")) from None
    unknown = sorted(set(map(str, data)) - _KEYS)
    if unknown:
        raise DataError(f"manifest '{p}': unknown key '{unknown[0]}'; the keys are {', '.join(sorted(_KEYS))}")
    for need in ("pixel_pitch_mm", "darks", "flats", "edge"):
        if data.get(need) is None:
            raise DataError(f"manifest '{p}' has no '{need}'; add it (see 'xray-pipeline characterise --help')")
    folder = p.resolve().parent
    flats = data["flats"]
    if not isinstance(flats, dict):
        raise DataError(f"manifest '{p}': 'flats' must map air kerma in uGy to files, e.g. '25: flats_25uGy/'")
    levels = []
    for k, v in flats.items():
        kerma = validate.positive_finite(_number(k, p), f"manifest '{p}' flats key {k!r}", unit="uGy", upper=1e9,
                                         fix="key each flat series by its air kerma in uGy")
        levels.append((kerma, _where(folder, v, f"flats.{k}", p)))
    if len({k for k, _ in levels}) < 2:
        raise DataError(f"manifest '{p}': 'flats' needs at least two air-kerma levels for linearity, not {len(levels)}")
    attrs = {k: data[k] for k in ("pixel_pitch_mm", "frame_rate_hz", "beam_quality", "q_per_uGy_mm2",
                                   "reference_kerma_uGy") if data.get(k) is not None}
    if data.get("acquired_at") is not None:
        attrs["acquired_at"] = str(data["acquired_at"])
    attrs = {**attrs, **validate.dataset_attrs(attrs, f"manifest '{p}'")}
    raw = {"raw_dtype": data.get("raw_dtype"), "header": int(data.get("header") or 0),
           "raw_shape": tuple(data["raw_shape"]) if data.get("raw_shape") else None}
    step = data.get("afterglow_step")
    return Manifest(p, _where(folder, data["darks"], "darks", p), tuple(sorted(levels)),
                    _where(folder, data["edge"], "edge", p),
                    _where(folder, step, "afterglow_step", p) if step is not None else None, attrs, raw)


def _number(k, p: Path) -> float:
    try:
        return float(k)
    except (TypeError, ValueError):
        raise DataError(f"manifest '{p}': flats key {k!r} is not a number; key each flat series by its air kerma "
                        "in uGy") from None


def ingest_manifest(manifest, output, *, overwrite: bool = False, progress=None, marker: dict | None = None) -> Path:
    """Write the Zarr characterisation dataset for ``manifest`` (a path or :class:`Manifest`) at ``output``."""
    from .io import zarr_store
    from .io.ingest import open_sources, storage_dtype

    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    parts = [("darks", m.darks, {})]
    parts += [(f"flats/level{i}", f, {"air_kerma_uGy": float(k)}) for i, (k, f) in enumerate(m.flats)]
    parts += [("edge", m.edge, {})] + ([("afterglow_step", m.afterglow_step, {})] if m.afterglow_step else [])
    srcs, shape = [], None
    for name, f, attrs in parts:
        file, _, inner = f.partition("::")
        src = open_sources(file, dataset=inner or None, **m.raw)["frames"]
        if shape is None:
            shape = tuple(src.shape[1:])
        elif tuple(src.shape[1:]) != shape:
            raise DataError(f"manifest '{m.path}': '{f}' holds {tuple(src.shape[1:])} frames but '{m.darks}' holds "
                            f"{shape}; every series must have the same frame size")
        srcs.append((name, src, attrs))
    writer = zarr_store.OutputWriter(output, overwrite=overwrite,
                                     inputs=[m.path] + [f.partition("::")[0] for _, f, _ in parts])
    try:
        for name, src, attrs in srcs:
            n, h, w = src.shape
            arr = writer.create(name, src.shape, storage_dtype(src.dtype), chunks=(min(8, n), h, w))
            for t0 in range(0, n, 8):
                arr[t0:min(n, t0 + 8)] = np.asarray(src.read(t0, min(n, t0 + 8))).astype(arr.dtype, copy=False)
                if progress is not None:
                    progress(min(n, t0 + 8) - t0)
            if attrs:
                writer.set_attrs(attrs, name)
        writer.set_attrs({**m.attrs, "source": str(m.path.resolve()), **(marker or {})})
    except BaseException:
        writer.abort()
        raise
    return writer.commit()


def frame_count(manifest: Manifest) -> int:
    """Frames the manifest's files hold (for a progress bar)."""
    from .io.ingest import open_sources

    n = 0
    for f in [manifest.darks, manifest.edge] + [f for _, f in manifest.flats] + [manifest.afterglow_step]:
        if f:
            file, _, inner = f.partition("::")
            n += open_sources(file, dataset=inner or None, **manifest.raw)["frames"].shape[0]
    return n
