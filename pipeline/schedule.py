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
    """Apply ``block_fn`` to every block of ``chunk_frames`` frames and write it into ``target``.

    Each Dask task reads one block, runs the stage chain on it and writes the
    result into its own chunk of ``target``; no two tasks touch the same chunk.

    Parameters
    ----------
    source : array-like (T, H, W)
        Supports slicing (e.g. :class:`pipeline.io.zarr_store.FrameReader`).
    target : writable array-like (T, H, W)
        Pre-created with chunks ``(chunk_frames, H, W)``.
    block_fn : callable
        Pure function of one (t, H, W) block returning the (t, H, W) result.
    progress : callable, optional
        Called with the number of frames of each block once it is written.
    """
    t, h, w = source.shape
    x = da.from_array(source, chunks=(chunk_frames, h, w), asarray=False, lock=False,
                      meta=np.empty((0, 0, 0), dtype=source.dtype))

    def run_block(block, block_info=None):
        t0, t1 = block_info[0]["array-location"][0]
        target[t0:t1] = block_fn(block)
        if progress is not None:
            progress(t1 - t0)
        return np.ones((1, 1, 1), dtype=np.int8)

    name = f"xray-stages-{dask.base.tokenize(x.name, block_fn, target.shape)}"
    done = x.map_blocks(run_block, dtype=np.int8, chunks=((1,) * x.numblocks[0], (1,), (1,)), name=name,
                        meta=np.empty((0, 0, 0), dtype=np.int8))
    kw = {"scheduler": scheduler}
    if num_workers and scheduler != "synchronous":
        kw["num_workers"] = num_workers
    total = int(done.sum().compute(**kw))
    if total != x.numblocks[0]:  # pragma: no cover - a dask contract violation
        raise RuntimeError(f"only {total} of {x.numblocks[0]} blocks were written")


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
