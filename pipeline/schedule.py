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

The same graph runs on Dask's local schedulers (threads, synchronous,
processes) or on a dask.distributed cluster (a running scheduler's address,
or a ``LocalCluster`` / ``dask_cuda.LocalCUDACluster`` started for the run).
On a cluster the tasks run in worker processes: the chain, the reader, the
output array and the ``on_commit`` callback travel to them pickled (once per
worker: they are data nodes of the graph), the states of the stateful stages
travel along the graph's dependencies exactly as on the local schedulers (so
results are bit-identical). With every scheduler ``progress`` is called in the
calling thread (the client) as each block's commit finishes, never in a worker.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import operator
import os
import time
import uuid
from typing import Callable

import dask
import dask.callbacks
import dask.local
import dask.multiprocessing
import dask.threaded
import numpy as np

from .errors import BackendError, ConfigError

LOCAL_SCHEDULERS = ("threads", "synchronous", "processes")
CLUSTERS = ("none", "local", "local-cuda")


def _getter(scheduler: str):
    """The local scheduler's get function (given as a name, Dask imports dask.distributed to look for a client:
    0.2 s of every run's set-up)."""
    if scheduler == "synchronous":
        return dask.local.get_sync
    if scheduler == "processes":
        return dask.multiprocessing.get
    return dask.threaded.get


def _local(scheduler: str) -> str:
    """A local scheduler for small side computations: an address (a cluster) becomes threads."""
    return scheduler if scheduler in LOCAL_SCHEDULERS else "threads"


def is_distributed(scheduler: str = "threads", cluster: str = "none") -> bool:
    """True when the run goes to a dask.distributed cluster rather than a local Dask scheduler.

    Parameters
    ----------
    scheduler : str
        ``threads``, ``synchronous``, ``processes`` or a scheduler address (``tcp://host:8786``).
    cluster : str
        ``none``, ``local`` or ``local-cuda``.

    Returns
    -------
    bool
    """
    return cluster != "none" or scheduler not in LOCAL_SCHEDULERS


def check_execution(scheduler: str = "threads", cluster: str = "none") -> None:
    """Fail early, before any output is created, when the packages a scheduler needs are absent.

    Parameters
    ----------
    scheduler, cluster : str
        As ``execution.scheduler`` and ``execution.cluster``.

    Raises
    ------
    ConfigError
        ``cluster`` is unknown, or a cluster is asked for together with a scheduler other than threads.
    BackendError
        ``dask.distributed`` (or ``dask_cuda`` for ``local-cuda``) cannot be imported; the
        message names the ``pip install`` that fixes it.
    """
    if cluster not in CLUSTERS:
        raise ConfigError(f"execution.cluster '{cluster}' is unknown; use one of {', '.join(CLUSTERS)}")
    if cluster != "none" and scheduler != "threads":
        raise ConfigError(f"execution.cluster: {cluster} starts its own cluster; leave execution.scheduler at "
                          f"threads (it is '{scheduler}')")
    if is_distributed(scheduler, cluster):
        _import_distributed(scheduler, cluster)
    if cluster == "local-cuda":
        _import_local_cuda_cluster()


def _import_distributed(scheduler: str, cluster: str):
    try:
        import distributed
    except ImportError:
        what = f"execution.cluster: {cluster}" if cluster != "none" else f"execution.scheduler: {scheduler}"
        raise BackendError(f"{what} needs dask.distributed, which is not installed; pip install distributed "
                           "(or set execution.scheduler: threads)") from None
    return distributed


def _import_local_cuda_cluster():
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise BackendError("execution.cluster: local-cuda needs dask-cuda, which is not installed; "
                           "pip install dask-cuda (or set execution.cluster: local)") from None
    return LocalCUDACluster


@contextlib.contextmanager
def distributed_client(scheduler: str = "threads", cluster: str = "none", num_workers: int | None = None):
    """A ``distributed.Client`` for the run; a cluster started here is shut down on exit.

    Parameters
    ----------
    scheduler : str
        A scheduler address (``tcp://host:8786``) to connect to, when ``cluster`` is ``none``.
    cluster : {'none', 'local', 'local-cuda'}
        ``local``: a ``distributed.LocalCluster`` of ``num_workers`` worker processes on this
        machine; ``local-cuda``: a ``dask_cuda.LocalCUDACluster`` with one worker per GPU
        (``num_workers``: how many GPUs).
    num_workers : int, optional
        Workers of a cluster started here; None: the cluster's default (by cores or GPUs).

    Yields
    ------
    distributed.Client

    Raises
    ------
    BackendError
        A package is missing, or the scheduler at the address cannot be reached.
    """
    distributed = _import_distributed(scheduler, cluster)
    # no dashboard; the scheduler's small HTTP server (health checks) on a free local port, not 8787. Worker logs
    # are silenced: a failing block's error reaches the caller as the exception, not also as a logged traceback
    quiet = {"dashboard_address": None, "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"},
             "silence_logs": logging.CRITICAL}
    with contextlib.ExitStack() as stack:
        if cluster == "local":
            target = stack.enter_context(distributed.LocalCluster(n_workers=num_workers, processes=True, **quiet))
        elif cluster == "local-cuda":
            kw = {"n_workers": num_workers} if num_workers else {}
            target = stack.enter_context(_import_local_cuda_cluster()(**quiet, **kw))
        else:
            target = scheduler
        try:
            client = distributed.Client(target)
        except (OSError, TimeoutError) as exc:
            raise BackendError(f"cannot reach the Dask scheduler at '{scheduler}' ({type(exc).__name__}); start it "
                               "('dask scheduler') or fix execution.scheduler") from None
        yield stack.enter_context(client)


def _progress_callback(progress, commit_keys):
    """A Dask local-scheduler callback calling ``progress(n)`` in this thread as each commit task finishes."""
    if progress is None:
        return contextlib.nullcontext()
    keys = set(commit_keys)

    def posttask(key, result, dsk, state, worker_id):
        if key in keys:
            progress(result["n"])

    return dask.callbacks.Callback(posttask=posttask)


def _run_distributed(dsk, keys, *, scheduler, cluster, num_workers, progress):
    """Compute ``keys`` of ``dsk`` on a dask.distributed cluster; ``progress`` as each key finishes.

    The chain (with its calibration maps) is a data node of the graph, not scattered data: a
    worker that dies takes no unrecoverable copy with it. The graph can then exceed Dask's 10 MB
    large-graph warning; it is sent once, so that warning is raised to 1 GiB for this call.
    """
    distributed = _import_distributed(scheduler, cluster)
    with distributed_client(scheduler, cluster, num_workers) as client:
        with dask.config.set({"distributed.admin.large-graph-warning-threshold": "1GiB"}):
            futures = client.get(dsk, keys, sync=False)
        results = []
        try:
            for future, result in distributed.as_completed(futures, with_results=True):
                if future.status != "finished":  # cancelled by the cluster (not an error of a block)
                    raise BackendError(f"the Dask cluster dropped this run's blocks "
                                       f"({getattr(result, 'reason', None) or 'cancelled'}); check that its "
                                       "scheduler and workers are up, then rerun with --resume")
                results.append(result)
                if progress is not None:
                    progress(result["n"])
        except distributed.KilledWorker as exc:
            raise BackendError(f"Dask workers died while running this run's blocks ({exc.allowed_failures + 1} tries, "
                               f"last on {exc.last_worker.address}); out of memory? lower execution.chunk_frames or "
                               "give the workers more memory") from None
        finally:
            if len(results) < len(futures):  # an error or Ctrl-C: stop the rest (they are not needed)
                client.cancel(futures)
        return results


def _read_ahead(scheduler: str, cluster: str, num_workers: int | None) -> int:
    """Blocks that may be read before the oldest unwritten one is written (memory: about this many blocks)."""
    if is_distributed(scheduler, cluster):
        return 4 * max(num_workers or 2, 2)
    return (num_workers or os.cpu_count() or 1) + 1


def _head(source, chain, t0, t1, skip_errors, into, *after):
    """Read a block and run the stateless head stages; a unreadable block becomes NaN when skipping errors.

    ``into``: ``source.read_block`` takes ``out`` (:func:`_reads_into`, decided once a run)."""
    start = time.perf_counter()
    info = {"t0": t0, "t1": t1, "skipped": [], "nonfinite": 0}
    buf = None
    if hasattr(source, "read_block"):
        pool = getattr(chain, "pool", None)
        if pool is not None and into:  # into a reused buffer: no fresh pages every block
            buf = pool.take((t1 - t0,) + tuple(source.shape[1:]), source.dtype)
            raw, skipped = source.read_block(t0, t1, skip=skip_errors, out=buf)
        else:
            raw, skipped = source.read_block(t0, t1, skip=skip_errors)
        info["skipped"] = [list(s) for s in skipped]
    else:
        raw = source[t0:t1]
    if raw.dtype.kind == "f":
        nonfinite = int(raw.size - np.count_nonzero(np.isfinite(raw)))
        skipped_px = sum((b - a + 1) for a, b, _ in info["skipped"]) * int(np.prod(raw.shape[1:]))
        info["nonfinite"] = nonfinite - skipped_px
    read = time.perf_counter()
    block, mask = chain.head(raw)
    if buf is not None and raw is buf and not any(np.may_share_memory(a, buf) for a in (block, mask) if a is not None):
        chain.pool.give(buf)  # the head made its own arrays: the raw block is free for the next read
    info[SECONDS] = {"read": read - start, "stages": time.perf_counter() - read}
    return block, mask, info


def _reads_into(source) -> bool:
    """Whether ``source.read_block`` takes ``out`` (a buffer to read the block into)."""
    try:
        return "out" in inspect.signature(source.read_block).parameters
    except (TypeError, ValueError):
        return False


SECONDS = "_seconds"  # the block's thread-seconds so far, carried in its info from task to task


def _add_seconds(info, key, since):
    sec = info.get(SECONDS)
    if sec is not None:
        sec[key] = sec.get(key, 0.0) + time.perf_counter() - since


def _stateful(chain, i, payload, state):
    # the stage through the chain (a data node: shipped once per worker, with whatever it keeps per process)
    from .stages import gaps_of, run_stateful

    stage = chain.stateful[i]
    block, mask, info = payload  # unreadable frames: NaN, and the stage restarts after them
    start = time.perf_counter()
    block, state = run_stateful(stage, block, None if state is None else _copy(state), gaps_of(info, info["t0"]))
    _add_seconds(info, "stages", start)
    return (block, mask, info), state


def _copy(state):
    return state.copy() if hasattr(state, "copy") else state


def _write(chain, target, payload, t0, t1, skip_write, recycle=False):
    block, mask, info = payload
    seconds = info.get(SECONDS) or {}
    info = {k: v for k, v in info.items() if k != SECONDS}
    if skip_write:  # already written by an earlier (interrupted) run and verified
        return {"n": t1 - t0, "t0": t0, "measured": None, "checksum": None, "info": info, "skipped_write": True,
                "seconds": seconds}
    start = time.perf_counter()
    out = chain.tail((block, mask))
    storage = getattr(chain, "storage", None)
    stored = storage.encode(out) if storage is not None else out
    written = time.perf_counter()
    target[t0:t1] = stored
    stored_at = time.perf_counter()
    if getattr(chain, "measures", None):  # on what is stored: what a reader of the output measures
        measured = chain.measure(storage.decode(stored) if storage is not None else stored)
    else:
        measured = None
    if storage is not None and storage.packed:
        info = {**info, "at_limit": storage.at_limit(stored)}
    from .io.checkpoint import block_checksum

    digest = block_checksum(np.asarray(stored))
    if recycle and hasattr(chain, "recycle"):  # written (copied: the caller vouches), measured and summed
        chain.recycle(out)
    seconds = {**seconds, "stages": seconds.get("stages", 0.0) + written - start, "write": stored_at - written,
               "record": time.perf_counter() - stored_at}
    return {"n": t1 - t0, "t0": t0, "measured": measured, "checksum": digest, "info": info, "skipped_write": False,
            "seconds": seconds}


def _commit(on_commit, c, t0, t1, written, *states):
    if on_commit is not None and not written["skipped_write"]:
        start = time.perf_counter()
        on_commit(c, t0, t1, written, list(states))
        sec = written.get("seconds")
        if sec is not None:  # a new dict: the write task's result may be shared
            written = {**written, "seconds": {**sec, "record": sec.get("record", 0.0) + time.perf_counter() - start}}
    return written


def _collect(results):
    return results


def _graph(source, target, chain, *, chunk_frames: int, ahead: int | None, start_block: int, initial_states,
           skip_write, on_commit, skip_errors: bool, recycle: bool):
    """The run's Dask graph: per block a head (read and stateless stages), the stateful stages in time order (each
    block's state after the previous one's), the write and the commit. With stateful stages the blocks leave in
    time order; reading ahead is useful, but unbounded it fills memory with blocks waiting for their turn: block
    ``c`` is read only once block ``c - ahead`` is written. Returns ``(graph, commit keys, token)``."""
    t = source.shape[0]
    tok = dask.base.tokenize(id(chain), id(source), id(target), chunk_frames, start_block, uuid.uuid4().hex)
    # the shared objects are data nodes: a cluster ships each once per worker, not once per task
    dsk: dict = {f"chain-{tok}": chain, f"source-{tok}": source, f"target-{tok}": target,
                 f"on-commit-{tok}": on_commit}
    chain_k, source_k, target_k, on_commit_k = (f"chain-{tok}", f"source-{tok}", f"target-{tok}",
                                                f"on-commit-{tok}")
    commits = []
    stages = list(chain.stateful)
    into = hasattr(source, "read_block") and _reads_into(source)
    starts = list(range(0, t, chunk_frames))
    for c in range(start_block, len(starts)):
        t0 = starts[c]
        t1 = min(t0 + chunk_frames, t)
        prev = (f"head-{tok}", c)
        after = [(f"write-{tok}", c - ahead)] if ahead and c - ahead >= start_block else []
        dsk[prev] = (_head, source_k, chain_k, t0, t1, skip_errors, into, *after)
        state_keys = []
        for i, stage in enumerate(stages):
            key = (f"sf{i}-{tok}", c)
            if c > start_block:
                state_prev = (f"state{i}-{tok}", c - 1)
            else:
                state_prev = initial_states[i] if initial_states is not None else None
            dsk[key] = (_stateful, chain_k, i, prev, state_prev)
            dsk[(f"state{i}-{tok}", c)] = (operator.getitem, key, 1)
            dsk[(f"payload{i}-{tok}", c)] = (operator.getitem, key, 0)
            prev = (f"payload{i}-{tok}", c)
            state_keys.append((f"state{i}-{tok}", c))
        wkey = (f"write-{tok}", c)
        dsk[wkey] = (_write, chain_k, target_k, prev, t0, t1, c in skip_write, recycle)
        ckey = (f"commit-{tok}", c)
        dsk[ckey] = (_commit, on_commit_k, c, t0, t1, wkey, *state_keys)
        commits.append(ckey)
    return dsk, commits, tok


def _run_local(dsk: dict, commits: list, tok: str, *, scheduler: str, num_workers, progress) -> list:
    """The graph on one of Dask's local schedulers, ``progress`` called in this thread as blocks commit."""
    dsk[f"total-{tok}"] = (_collect, commits)
    kw = {}
    if num_workers and scheduler != "synchronous":
        kw["num_workers"] = num_workers
    with _progress_callback(progress, commits):
        return _getter(scheduler)(dsk, f"total-{tok}", **kw)


def _checked_run(scheduler: str, cluster: str, target, chain):
    """:func:`process_frames`'s execution settings checked against ``target``: whether the run is distributed,
    and the chain (a plain callable wrapped as one)."""
    check_execution(scheduler, cluster)
    remote = is_distributed(scheduler, cluster)
    if (remote or scheduler == "processes") and type(target) is np.ndarray:  # a memmap is fine
        raise ConfigError("an in-memory output array cannot be written from other processes; use a Zarr array "
                          "or execution.scheduler: threads")
    return remote, (chain if hasattr(chain, "head") else _Plain(chain))


def process_frames(
    source,
    target,
    chain,
    *,
    chunk_frames: int,
    scheduler: str = "threads",
    cluster: str = "none",
    num_workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    start_block: int = 0,
    initial_states: list | None = None,
    skip_write: set | frozenset = frozenset(),
    on_commit: Callable | None = None,
    skip_errors: bool = False,
    recycle: bool = False,
) -> list[dict]:
    """Run ``chain`` over ``source`` block by block and write every block into ``target``.

    Parameters
    ----------
    source : array-like (T, H, W)
        Supports slicing (e.g. :class:`pipeline.io.zarr_store.FrameReader`).
    target : writable array-like (T, H, W)
        Pre-created with chunks of whole frames, ``chunk_frames`` a multiple of their frames (each block writes whole
        chunks of its own).
    chain : object
        ``head(raw) -> (block, mask)``, ``stateful`` (list of stages) and ``tail((block, mask)) -> block`` (see
        :class:`pipeline.stages.Chain`). A plain callable ``block -> block`` is accepted too.
    chunk_frames : int
        Frames per block.
    scheduler : str
        ``threads``, ``synchronous`` or ``processes`` (Dask's local schedulers), or the address of a running
        dask.distributed scheduler (``tcp://host:8786``).
    cluster : {'none', 'local', 'local-cuda'}
        Start a dask.distributed cluster for this call (see :func:`distributed_client`); then ``scheduler`` must be
        ``threads`` (it is not used).
    num_workers : int, optional
        Threads or processes of a local scheduler, or workers of a cluster started here.
    progress : callable, optional
        Called with the number of frames of each block once it is written and committed. It is called in the calling
        thread (never in a worker, so it need not pickle or be thread-safe).
    start_block, initial_states : optional
        Resume: begin at this block with these states of the stateful stages.
    skip_write : set of int
        Blocks already in ``target`` (their stateful stages still run, to carry the state).
    on_commit : callable, optional
        ``on_commit(c, t0, t1, written, states)`` after block ``c`` is written: record progress. On a cluster it runs in
        a worker process (it must pickle; files it writes must be on a filesystem the workers share).
    skip_errors : bool
        A block whose reading fails with a skippable error becomes NaN (recorded) instead of failing.
    recycle : bool
        Hand each written block back to the chain for reuse (no page faults for a fresh buffer). Only for targets that
        copy what is written (files: Zarr on disk, memmaps); an in-memory Zarr store without a compressor keeps a view
        of the caller's array.

    Returns
    -------
    list of dict, one per processed block: ``t0``, ``n``, ``measured``, ``checksum``, ``info``, and
    ``seconds``: the thread-seconds the block spent being read (``read``: decompression), in the
    stages and the storage encoding (``stages``), written (``write``: compression and storing) and
    recorded (``record``: measurements, checksum, ``on_commit``).
    """
    remote, chain = _checked_run(scheduler, cluster, target, chain)
    t = source.shape[0]
    dsk, commits, tok = _graph(source, target, chain, chunk_frames=chunk_frames, ahead=(
        _read_ahead(scheduler, cluster, num_workers) if list(chain.stateful) else None), start_block=start_block,
        initial_states=initial_states, skip_write=skip_write, on_commit=on_commit, skip_errors=skip_errors,
        recycle=recycle)
    starts = list(range(0, t, chunk_frames))
    if remote:
        results = _run_distributed(dsk, commits, scheduler=scheduler, cluster=cluster, num_workers=num_workers,
                                   progress=progress)
    else:
        results = _run_local(dsk, commits, tok, scheduler=scheduler, num_workers=num_workers, progress=progress)
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
    Calibration-sized work: a scheduler address runs it here with threads.
    """
    scheduler = _local(scheduler)
    n, h, w = source.shape
    if statistic == "mean" and _exact_moments(source.dtype, n):
        return _integer_mean_std(source, with_std, scheduler, block_frames)
    import dask.array as da  # (0.9 s to import: only where the float path needs it)

    raw = da.from_array(source, chunks=(min(block_frames, n), h, w), asarray=False, lock=False,
                        meta=np.empty((0, 0, 0), dtype=source.dtype))
    x = raw.astype(np.float64)
    if statistic == "median":
        tile = max(1, int(8 * 2**20 // max(1, n * w * 8)))
        stat = da.median(x.rechunk((n, min(tile, h), w)), axis=0)
    else:
        stat = x.mean(axis=0)
    std = x.std(axis=0, ddof=1) if (with_std and n > 1) else None
    if std is not None:
        stat, std = dask.compute(stat, std, scheduler=_getter(scheduler))
        return stat.astype(np.float32), std.astype(np.float32)
    (stat,) = dask.compute(stat, scheduler=_getter(scheduler))
    return stat.astype(np.float32), None


def _exact_moments(dtype, n: int) -> bool:
    """True when the per-pixel sums of ``n`` frames of ``dtype`` and of their squares, and n * sum of squares,
    fit int64."""
    dt = np.dtype(dtype)
    if dt.kind not in "ui" or dt.itemsize > 2:
        return False
    big = max(abs(int(np.iinfo(dt).min)), int(np.iinfo(dt).max))
    return n * n * big * big < 2**62


def _block_moments(block):
    """(1, 2, H, W) int64: the sum of a block's frames and the sum of their squares, exactly."""
    from . import jit

    block = np.ascontiguousarray(block)
    out = np.zeros((1, 2) + block.shape[1:], np.int64)
    if not jit.moments_into(block, out[0, 0], out[0, 1]):
        wide = block.astype(np.int64)
        out[0, 0] = wide.sum(axis=0)
        wide *= wide
        out[0, 1] = wide.sum(axis=0)
    return out


def _read_moments(source, t0: int, t1: int):
    return _block_moments(np.asarray(source[t0:t1]))[0]


def _add_moments(parts):
    total = parts[0].copy()
    for p in parts[1:]:
        total += p
    return total


def _integer_mean_std(source, with_std: bool, scheduler: str, block_frames: int):
    """Mean and (ddof=1) standard deviation of integer frames from exact int64 sums: one pass, no float64 copies.

    The mean is the exact sum over n, so it equals NumPy's float64 mean; the variance is
    (n * sum(x^2) - sum(x)^2) / (n (n - 1)) with an exact integer numerator (NumPy's two-pass
    float64 result differs from it by float64 rounding only). A plain Dask graph (block sums, then their total:
    integer sums, so the order does not matter), not dask.array (whose import alone costs 0.9 s).
    """
    n = source.shape[0]
    step = max(1, min(block_frames, n))
    keys = [("moments", t0) for t0 in range(0, n, step)]
    dsk = {k: (_read_moments, source, k[1], min(k[1] + step, n)) for k in keys}
    dsk["moments-total"] = (_add_moments, keys)
    sums = _getter(scheduler)(dsk, "moments-total")
    s1, s2 = sums[0], sums[1]
    mean = (s1 / n).astype(np.float32)
    if not (with_std and n > 1):
        return mean, None
    num = n * s2 - s1 * s1  # exact: n^2 * the population variance, >= 0
    return mean, np.sqrt(num / float(n * (n - 1))).astype(np.float32)


def frame_means(source, *, block_frames: int = 16, scheduler: str = "threads", roi=None) -> np.ndarray:
    """Mean of every frame (optionally over ``roi = (y0, y1, x0, x1)``), streamed: (T,) float64."""
    import dask.array as da

    scheduler = _local(scheduler)

    n, h, w = source.shape
    x = da.from_array(source, chunks=(min(block_frames, n), h, w), asarray=False, lock=False,
                      meta=np.empty((0, 0, 0), dtype=source.dtype))
    if roi is not None:
        y0, y1, x0, x1 = roi
        x = x[:, y0:y1, x0:x1]
    return np.asarray(x.astype(np.float64).mean(axis=(1, 2)).compute(scheduler=_getter(scheduler)))
