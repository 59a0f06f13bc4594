"""Dask scheduling: the only module that imports dask.

One Dask graph per run. For block ``c`` (``chunk_frames`` frames along T):

    head[c]      read the raw block, stateless stages       (parallel)
    sf[i][c]     stateful stage i: needs head/sf[i-1][c] and its own state of block c-1
    write[c]     tail stages, write into the output's own chunk c    (parallel)

Only the stateful recursion (a few multiply-adds per pixel and frame) runs in
time order; reading, decoding, flat-field, tail stages, encoding and writing
stay parallel. This was chosen over "zero-state blocks in parallel, then a
linear fix-up" because the fix-up needs a second pass over every block (the
upstream stages computed twice, or the output re-read), while the ordered
recursion costs little: see benchmarks/results/afterglow_cpu.md.

Each output chunk is written by exactly one task (output chunks = blocks), so
no two tasks ever touch the same Zarr chunk. Memory stays bounded by a few
blocks per worker whatever the length of the video.
"""

from __future__ import annotations

import operator
from typing import Callable

import dask
import dask.local
import dask.multiprocessing
import dask.threaded
import numpy as np


def _getter(scheduler: str):
    if scheduler == "synchronous":
        return dask.local.get_sync
    if scheduler == "processes":
        return dask.multiprocessing.get
    return dask.threaded.get


def _head(source, chain, t0, t1, skip_errors):
    """Read a block and run the stateless head stages; a unreadable block becomes NaN when skipping errors."""
    info = {"t0": t0, "t1": t1, "skipped": [], "nonfinite": 0}
    if hasattr(source, "read_block"):
        raw, skipped = source.read_block(t0, t1, skip=skip_errors)
        info["skipped"] = [list(s) for s in skipped]
    else:
        raw = source[t0:t1]
    if raw.dtype.kind == "f":
        nonfinite = int(raw.size - np.count_nonzero(np.isfinite(raw)))
        skipped_px = sum((b - a + 1) for a, b, _ in info["skipped"]) * int(np.prod(raw.shape[1:]))
        info["nonfinite"] = nonfinite - skipped_px
    block, mask = chain.head(raw)
    return block, mask, info


def _stateful(stage, payload, state):
    block, mask, info = payload  # unreadable frames are NaN: the stages carry on over them
    state = stage.initial_state(block) if state is None else _copy(state)
    block, state = stage(block, state)
    return (block, mask, info), state


def _copy(state):
    return state.copy() if hasattr(state, "copy") else state


def _write(chain, target, payload, t0, t1, progress, skip_write):
    block, mask, info = payload
    if skip_write:  # already written by an earlier (interrupted) run and verified
        if progress is not None:
            progress(t1 - t0)
        return {"n": t1 - t0, "t0": t0, "measured": None, "checksum": None, "info": info, "skipped_write": True}
    out = chain.tail((block, mask))
    target[t0:t1] = out
    measured = chain.measure(out) if getattr(chain, "measures", None) else None
    from .io.checkpoint import checksum

    digest = checksum(np.asarray(out, dtype=np.float32))
    if progress is not None:
        progress(t1 - t0)
    return {"n": t1 - t0, "t0": t0, "measured": measured, "checksum": digest, "info": info, "skipped_write": False}


def _commit(on_commit, c, t0, t1, written, *states):
    if on_commit is not None and not written["skipped_write"]:
        on_commit(c, t0, t1, written, list(states))
    return written


def _collect(results):
    return results


def process_frames(
    source,
    target,
    chain,
    *,
    chunk_frames: int,
    scheduler: str = "threads",
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    start_block: int = 0,
    initial_states: list | None = None,
    skip_write: set | frozenset = frozenset(),
    on_commit: Callable | None = None,
    skip_errors: bool = False,
) -> list[dict]:
    """Run ``chain`` over ``source`` block by block and write every block into ``target``.

    Parameters
    ----------
    source : array-like (T, H, W)
        Supports slicing (e.g. :class:`pipeline.io.zarr_store.FrameReader`).
    target : writable array-like (T, H, W)
        Pre-created with chunks ``(chunk_frames, H, W)``.
    chain : object
        ``head(raw) -> (block, mask)``, ``stateful`` (list of stages) and
        ``tail((block, mask)) -> block`` (see :class:`pipeline.stages.Chain`).
        A plain callable ``block -> block`` is accepted too.
    progress : callable, optional
        Called with the number of frames of each block once it is written.
    start_block, initial_states : optional
        Resume: begin at this block with these states of the stateful stages.
    skip_write : set of int
        Blocks already in ``target`` (their stateful stages still run, to carry the state).
    on_commit : callable, optional
        ``on_commit(c, t0, t1, written, states)`` after block ``c`` is written: record progress.
    skip_errors : bool
        A block whose reading fails with a skippable error becomes NaN (recorded) instead of failing.

    Returns
    -------
    list of dict, one per processed block: ``t0``, ``n``, ``measured``, ``checksum``, ``info``.
    """
    if not hasattr(chain, "head"):
        chain = _Plain(chain)
    t = source.shape[0]
    tok = dask.base.tokenize(id(chain), id(source), id(target), chunk_frames, start_block)
    dsk: dict = {}
    commits = []
    stages = list(chain.stateful)
    starts = list(range(0, t, chunk_frames))
    for c in range(start_block, len(starts)):
        t0 = starts[c]
        t1 = min(t0 + chunk_frames, t)
        prev = (f"head-{tok}", c)
        dsk[prev] = (_head, source, chain, t0, t1, skip_errors)
        state_keys = []
        for i, stage in enumerate(stages):
            key = (f"sf{i}-{tok}", c)
            if c > start_block:
                state_prev = (f"state{i}-{tok}", c - 1)
            else:
                state_prev = initial_states[i] if initial_states is not None else None
            dsk[key] = (_stateful, stage, prev, state_prev)
            dsk[(f"state{i}-{tok}", c)] = (operator.getitem, key, 1)
            dsk[(f"payload{i}-{tok}", c)] = (operator.getitem, key, 0)
            prev = (f"payload{i}-{tok}", c)
            state_keys.append((f"state{i}-{tok}", c))
        wkey = (f"write-{tok}", c)
        dsk[wkey] = (_write, chain, target, prev, t0, t1, progress, c in skip_write)
        ckey = (f"commit-{tok}", c)
        dsk[ckey] = (_commit, on_commit, c, t0, t1, wkey, *state_keys)
        commits.append(ckey)
    dsk[f"total-{tok}"] = (_collect, commits)
    kw = {}
    if num_workers and scheduler != "synchronous":
        kw["num_workers"] = num_workers
    results = _getter(scheduler)(dsk, f"total-{tok}", **kw)
    expected = t - (starts[start_block] if start_block < len(starts) else t)
    if sum(r["n"] for r in results) != expected:  # pragma: no cover - a scheduler contract violation
        raise RuntimeError("not every block was processed")
    return sorted(results, key=lambda r: r["t0"])


class _Plain:
    """Adapter: a block function as a chain without state."""

    stateful = ()
    measures = ()

    def __init__(self, fn):
        self.fn = fn

    def head(self, raw):
        return self.fn(raw), None

    def tail(self, payload):
        return payload[0]


def frame_statistics(source, *, statistic: str = "mean", with_std: bool = False, block_frames: int = 8,
                     scheduler: str = "threads"):
    """Per-pixel statistic over axis 0 of a (N, H, W) stack, streamed in blocks.

    Returns ``(stat_map, std_map_or_None)`` as float32 NumPy arrays. ``median``
    needs the whole stack of each pixel; it is computed in spatial tiles.
    """
    import dask.array as da

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


def frame_means(source, *, block_frames: int = 16, scheduler: str = "threads", roi=None) -> np.ndarray:
    """Mean of every frame (optionally over ``roi = (y0, y1, x0, x1)``), streamed: (T,) float64."""
    import dask.array as da

    n, h, w = source.shape
    x = da.from_array(source, chunks=(min(block_frames, n), h, w), asarray=False, lock=False,
                      meta=np.empty((0, 0, 0), dtype=source.dtype))
    if roi is not None:
        y0, y1, x0, x1 = roi
        x = x[:, y0:y1, x0:x1]
    return np.asarray(x.astype(np.float64).mean(axis=(1, 2)).compute(scheduler=scheduler))
