"""Writing outputs: :class:`OutputWriter` (a group written at ``PATH.partial`` and moved into place whole), its
codecs and dimension names, :class:`FrameWriter` (blocks of whole frames through :class:`ChunkEncoder`), and
attributes added to a finished group."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import zarr
import zarr.codecs

from ...errors import OutputExistsError
from .. import outputs
from ..chunks import ChunkEncoder
from .layout import WRITER_ATTR, _whole_frame_layout


def _codecs(codec: str, level: int):
    if codec == "zstd":
        return [zarr.codecs.ZstdCodec(level=level)]
    if codec == "lz4":
        return [zarr.codecs.BloscCodec(cname="lz4", clevel=max(level, 1), shuffle="shuffle")]
    if codec == "bitshuffle-lz4":  # the detector-data standard (HDF5 bitshuffle/LZ4 at synchrotrons), in Blosc
        return [zarr.codecs.BloscCodec(cname="lz4", clevel=max(level, 1), shuffle="bitshuffle")]
    return None


class FrameWriter:
    """A frames array being written (the Zarr array itself for everything but writes): blocks of
    whole chunks go through :class:`ChunkEncoder` where it takes the array, all else through Zarr."""

    def __init__(self, array, root: Path | None = None):
        self._a = array
        self._dir = (Path(root) / array.path) if root is not None else None
        self._encoder = ChunkEncoder.for_array(array, self._dir, _whole_frame_layout(array, self._dir))

    def __setitem__(self, key, value):
        if (self._encoder is not None and isinstance(key, slice) and key.step in (None, 1)
                and isinstance(value, np.ndarray)):
            start, stop, _ = key.indices(self._a.shape[0])
            c = self._encoder.chunk
            whole = (stop - start) // c * c if start % c == 0 and value.shape[:1] == (stop - start,) else 0
            if whole and self._encoder.write(start, start + whole, value[:whole]):
                if whole < stop - start:  # the rest (the array's last, partial chunk): through Zarr
                    self._a[start + whole:stop] = value[whole:]
                return
        self._a[key] = value

    def __getitem__(self, key):
        return self._a[key]

    def __getattr__(self, name):
        if name.startswith("_"):  # not the array's: also what pickle and copy look up before __init__ ran
            raise AttributeError(name)
        return getattr(self._a, name)

    def __reduce__(self):  # to worker processes: the encoder (ctypes, buffers) is made again there
        return _frame_writer, (self._a, self._dir)


def _frame_writer(array, folder):
    w = FrameWriter.__new__(FrameWriter)
    w._a, w._dir = array, folder
    w._encoder = ChunkEncoder.for_array(array, folder, _whole_frame_layout(array, folder))
    return w


def check_output_path(output: str | Path, *, overwrite: bool, inputs=(), kind: str = "zarr") -> Path:
    """Refuse an output that exists (without ``overwrite``), overlaps an input, or would delete what is not ours
    (:func:`pipeline.io.outputs.check_output_path`)."""
    return outputs.check_output_path(output, overwrite=overwrite, inputs=inputs, kind=kind)


_TEMPORARY = re.compile(r".+\.[0-9a-f]{32}\.partial")  # ChunkEncoder.write's temporary chunk files


def _sweep_temporaries(folder: Path) -> int:
    """Delete the temporary chunk files (``NAME.<uuid>.partial``) a kill left in an output being written."""
    n = 0
    for f in Path(folder).rglob("*.partial"):
        if _TEMPORARY.fullmatch(f.name) and f.is_file():
            f.unlink(missing_ok=True)
            n += 1
    return n


def default_dims(name: str, ndim: int) -> tuple:
    """Dimension names of an array the project writes, from its name and rank.

    Frames ``(t, y, x)``; other stacks of frames ``(t_<name>, y, x)`` (darks, flats, edge: their own lengths, so
    that xarray opens a group's arrays as one dataset); maps ``(y, x)``; under ``mtf/`` frequencies ``(f,)`` and
    per-frame curves ``(t,)``; ghost curves ``(t,)``; any other 1D array its own name.
    """
    parts = name.split("/")
    leaf, group = parts[-1], (parts[-2] if len(parts) > 1 else "")
    if ndim == 3:
        return ("t" if leaf == "frames" else f"t_{leaf}", "y", "x")
    if ndim == 2:
        return ("t", "f") if group == "mtf" else ("y", "x")
    if ndim == 1:
        if group == "mtf":
            return ("f",) if leaf.startswith("frequencies") else ("t",)
        return ("t",) if group == "ghost" else (leaf,)
    return tuple(f"d{i}" for i in range(ndim))


class OutputWriter:
    """A new Zarr v3 group written at ``PATH.partial`` and moved to ``PATH`` on :meth:`commit`.

    Holds the output's lock (:class:`pipeline.io.outputs.OutputLock`) from before ``PATH.partial``
    is touched until :meth:`commit` or :meth:`abort`; ``lock``: one the caller already holds (a run,
    which also keeps ``PATH.progress``), released here all the same.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False, inputs=(), resume: bool = False, lock=None):
        self.final = check_output_path(path, overwrite=overwrite, inputs=inputs)
        self.partial = outputs.sidecar(self.final, ".partial")
        own = lock is None
        self.lock = lock if lock is not None else outputs.OutputLock(self.final)
        try:
            if resume and outputs.marked(self.partial):
                self.group = zarr.open_group(str(self.partial), mode="r+")
                return
            if self.partial.exists() or self.partial.is_symlink():
                if not outputs.ours(self.partial):  # checked above too; a folder that appeared since
                    raise OutputExistsError(f"'{self.partial}' exists and was not made by xray-pipeline; move it away")
                shutil.rmtree(self.partial)
            # marked as ours from its first metadata on (a kill before leaves an empty folder, also ours)
            self.partial.mkdir(parents=True)
            self.group = zarr.create_group(str(self.partial), zarr_format=3, attributes={WRITER_ATTR: "xray-pipeline"})
        except BaseException:
            if own:
                self.lock.release()
            raise

    def create(self, name: str, shape, dtype, *, chunks=None, codec: str = "bitshuffle-lz4", level: int = 1,
               fill_value=0, dims=None):
        """Create an array in the output group (chunks default to the whole array); replaces one of that name.

        ``dims``: its dimension names (Zarr v3 ``dimension_names``, what xarray and napari go by); default
        :func:`default_dims`.
        """
        if name in self.group:
            del self.group[name]
        return self.group.create_array(
            name, shape=tuple(shape), dtype=np.dtype(dtype), chunks=tuple(chunks or shape),
            compressors=_codecs(codec, level), fill_value=fill_value,
            dimension_names=tuple(dims) if dims is not None else default_dims(name, len(tuple(shape))),
            config={"write_empty_chunks": True},  # every chunk stored: a missing file means a lost chunk
        )

    def frames_target(self, array) -> FrameWriter:
        """``array`` of this output (a video: chunks of whole frames) for writing block by block; every
        chunk is stored, empty or not (also for an array opened again to resume: Zarr does not keep that
        setting), so a missing chunk file always means a lost chunk."""
        if hasattr(array, "with_config"):
            array = array.with_config({"write_empty_chunks": True})
        return FrameWriter(array, self.partial)

    def write(self, name: str, data, **kw):
        """Create an array holding ``data`` (small arrays: calibration maps, curves)."""
        data = np.asarray(data)
        arr = self.create(name, data.shape, data.dtype, **kw)
        arr[...] = data
        return arr

    def set_attrs(self, attrs: dict, path: str = ""):
        """Update the attributes of the group, or of a subgroup or array at ``path``."""
        node = self.group if not path else (self.group[path] if path in self.group else self.group.require_group(path))
        node.attrs.update(_jsonable(attrs))

    def commit(self) -> Path:
        """Move the finished group into place (an old output is moved aside first and deleted only after); chunk
        files a killed writer left half-written under temporary names go first."""
        try:
            _sweep_temporaries(self.partial)
            return outputs.replace(self.partial, self.final)
        finally:
            self.lock.release()

    def abort(self):
        """Remove the partial output (the final path is untouched)."""
        try:
            shutil.rmtree(self.partial, ignore_errors=True)
        finally:
            self.lock.release()


def _jsonable(obj):
    """Attributes as JSON: NaN and infinities (bare ``NaN``/``Infinity`` are not JSON) as the strings 'nan', 'inf',
    '-inf', also inside NumPy scalars and arrays."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return str(obj)
    return obj


def set_attrs_in_place(path: str | Path, attrs: dict):
    """Add attributes to an existing group the project wrote itself (never an input)."""
    zarr.open_group(str(path), mode="r+").attrs.update(_jsonable(attrs))
