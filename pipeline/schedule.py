"""Dask scheduling: the only module that imports dask.

Frames are read from the input in blocks of ``chunk_frames`` along T, each
block goes through the stage chain, and the result is stored into a
pre-created Zarr array whose chunks are exactly those blocks, so no two tasks
ever write into the same Zarr chunk. Memory stays bounded by a few blocks per
worker thread whatever the length of the video.
"""

from __future__ import annotations

from typing import Callable

import dask
import dask.array as da
import numpy as np
from dask.callbacks import Callback


class _Progress(Callback):
    """Counts finished blocks of one named layer and reports frames done."""

    def __init__(self, layer: str, block_frames: list[int], report: Callable[[int], None]):
        super().__init__()
        self.layer = layer
        self.sizes = block_frames
        self.report = report

    def _posttask(self, key, result, dsk, state, worker_id):
        if isinstance(key, tuple) and key and key[0] == self.layer:
            self.report(self.sizes[key[1]])


def process_frames(
    source,
    target,
    block_fn: Callable[[np.ndarray], np.ndarray],
    *,
    chunk_frames: int,
    scheduler: str = "threads",
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Apply ``block_fn`` to every block of ``chunk_frames`` frames and store into ``target``.

    Parameters
    ----------
    source : array-like (T, H, W)
        Supports slicing (e.g. :class:`pipeline.io.zarr_store.FrameReader`).
    target : writable array-like (T, H, W)
        Pre-created with chunks ``(chunk_frames, H, W)``.
    block_fn : callable
        Pure function of one (t, H, W) block returning the (t, H, W) result.
    progress : callable, optional
        Called with the number of frames of each finished block.
    """
    t, h, w = source.shape
    x = da.from_array(source, chunks=(chunk_frames, h, w), asarray=False, lock=False,
                      meta=np.empty((0, 0, 0), dtype=source.dtype))
    name = f"xray-stages-{dask.base.tokenize(x.name, block_fn)}"
    y = x.map_blocks(block_fn, dtype=np.float32, name=name, meta=np.empty((0, 0, 0), dtype=np.float32))
    sizes = list(y.chunks[0])
    kw = {"scheduler": scheduler}
    if num_workers and scheduler != "synchronous":
        kw["num_workers"] = num_workers
    cb = _Progress(name, sizes, progress) if progress else None
    if cb is not None:
        with cb:
            da.store(y, target, lock=False, compute=True, **kw)
    else:
        da.store(y, target, lock=False, compute=True, **kw)


def frame_statistics(source, *, statistic: str = "mean", with_std: bool = False, block_frames: int = 8,
                     scheduler: str = "threads"):
    """Per-pixel statistic over axis 0 of a (N, H, W) stack, streamed in blocks.

    Returns ``(stat_map, std_map_or_None)`` as float32 NumPy arrays. ``median``
    needs the whole stack of each pixel; it is computed in spatial tiles.
    """
    n, h, w = source.shape
    x = da.from_array(source, chunks=(min(block_frames, n), h, w), asarray=False, lock=False,
                      meta=np.empty((0, 0, 0), dtype=source.dtype)).astype(np.float64)
    if statistic == "median":
        tile = max(1, int(8 * 2**20 // max(1, n * w * 8)))
        stat = da.median(x.rechunk((n, min(tile, h), w)), axis=0)
    else:
        stat = x.mean(axis=0)
    std = x.std(axis=0, ddof=1) if (with_std and n > 1) else None
    if std is not None:
        stat, std = dask.compute(stat, std, scheduler=scheduler)
        return stat.astype(np.float32), std.astype(np.float32)
    (stat,) = dask.compute(stat, scheduler=scheduler)
    return stat.astype(np.float32), None
