"""The loop that paces the GPU conveyor: host threads read blocks ahead into pinned buffers, the conveyor
uploads, computes and downloads them in order, host threads write them behind; what each side waited is
counted (``conv.waits``)."""

from __future__ import annotations

import inspect
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


#: Most bytes of raw blocks the GPU engine's readers hold ahead of the conveyor.
READ_AHEAD_BYTES = 2 << 30


def run_blocks(conv, source, target, chain=None, *, chunk_frames: int,
                   progress: Callable[[int], None] | None = None, start_block: int = 0,
                   initial_states: list | None = None, skip_write=frozenset(), on_commit: Callable | None = None,
                   skip_errors: bool = False, **_scheduler) -> list[dict]:
    """:func:`pipeline.schedule.process_frames` on the GPU conveyor ``conv``: same arguments, same records.

    Blocks are read ahead and written behind by host threads; the chain's measurements,
    the checksums and ``on_commit`` run in the writing threads, after each block is written.
    ``num_workers`` (if given) is the number of writing threads; the other scheduler
    arguments are ignored (the conveyor runs in this process).
    """
    if chain is not None and chain is not conv.chain:
        raise ValueError("process_frames got another chain than the conveyor was built for")
    chain = conv.chain
    conv.waits = dict.fromkeys(conv.waits, 0.0)
    conv.busy_s = 0.0
    t = int(source.shape[0])
    # the output's chunks are the blocks: buffers and the pinned pool are counted in them (slots sized
    # for 64-frame blocks would pin 16x the memory a 4-frame chunk needs, and the pool would lend
    # only PINNED_OUT_BYTES / (64 frames) blocks: two writers busy, the others idle)
    conv.block_frames = int(chunk_frames)
    starts = list(range(0, t, chunk_frames))
    stateful = conv.lag is not None or bool(conv.stages)
    blocks = [(c, s, min(s + chunk_frames, t)) for c, s in enumerate(starts) if c >= start_block]
    results: list[dict] = []
    if not stateful:  # nothing to carry: blocks already written are not even read
        blocks = _skip_written(blocks, skip_write, progress, results)
    read = _block_reader(conv, source, skip_errors)
    write = _block_writer(conv, target, chain, progress, on_commit)
    infos: dict = {}
    reads: deque = deque()
    writes: deque = deque()
    rpool = ThreadPoolExecutor(max(1, conv.readers), thread_name_prefix="xray-gpu-read")
    writers = max(1, int(_scheduler.get("num_workers") or conv.writers))
    wpool = ThreadPoolExecutor(writers, thread_name_prefix="xray-gpu-write")
    conv._lend_cap = conv.lend_limit(writers)
    ahead = _blocks_ahead(conv, source, chunk_frames)
    ok = False
    began = time.perf_counter()
    try:
        keep = _states_to_keep(conv, on_commit, stateful)
        feed = _feed(conv, blocks, read, rpool, reads, infos, ahead, skip_write)
        for c, out, states in conv.stream(feed, states=initial_states, keep_states=keep, hand_over=True):
            t0, t1, info, read_s = infos.pop(c)
            if out is None:
                results.append(_skipped_record(t0, t1, info, progress, read_s))
                continue
            _write_behind(conv, wpool, writes, writers, results, write, (c, t0, t1, out, info, states, read_s))
        _drain_writes(conv, writes, results)
        ok = True
        # the rest of the conveyor thread's time: its own work (copies into pinned memory, launches)
        conv.busy_s = max(0.0, time.perf_counter() - began - sum(conv.waits.values()))
    finally:
        _shut_down(conv, reads, rpool, wpool, ok)
    expected = t - (starts[start_block] if start_block < len(starts) else t)
    if sum(r["n"] for r in results) != expected:  # pragma: no cover - a conveyor bug
        raise RuntimeError("the GPU engine did not process every block")
    return sorted(results, key=lambda r: r["t0"])


def _skipped_record(t0, t1, info, progress, read_s=None) -> dict:
    """The record of a block not written (written before the run resumed); its frames count as progress."""
    if progress is not None:
        progress(t1 - t0)
    return {"n": t1 - t0, "t0": t0, "measured": None, "checksum": None, "info": info, "skipped_write": True,
            "seconds": {} if read_s is None else {"read": read_s}}


def _skip_written(blocks, skip_write, progress, results) -> list:
    """Without state to carry: the records of the blocks already written into ``results``; the others to run."""
    for c, t0, t1 in blocks:
        if c in skip_write:
            results.append(_skipped_record(t0, t1, {"t0": t0, "t1": t1, "skipped": [], "nonfinite": 0}, progress))
    return [b for b in blocks if b[0] not in skip_write]


def _block_reader(conv, source, skip_errors: bool) -> Callable:
    """``read(t0, t1) -> (raw, info, seconds)``: frames ``t0:t1`` of ``source``, into a pinned block of ``conv``
    where the source can read into one."""
    src_dtype = np.dtype(getattr(source, "dtype", np.float32))
    pooled = src_dtype in (np.dtype(np.uint16), np.dtype(np.float32))  # what the kernels take as it is
    into = pooled and hasattr(source, "read_block") and "out" in inspect.signature(source.read_block).parameters

    def read(t0, t1):
        start = time.perf_counter()
        info = {"t0": t0, "t1": t1, "skipped": [], "nonfinite": 0}
        # a pinned block to read into (uploaded from directly: no copy on the conveyor's thread, and no
        # fresh host array a block)
        buf = conv._take_in(src_dtype)[: t1 - t0] if pooled else None
        if hasattr(source, "read_block"):
            raw, bad = (source.read_block(t0, t1, skip=skip_errors, out=buf) if into
                        else source.read_block(t0, t1, skip=skip_errors))
            info["skipped"] = [list(s) for s in bad]
        else:
            raw = np.asarray(source[t0:t1])
        if raw.dtype.kind == "f":
            nonfinite = int(raw.size - np.count_nonzero(np.isfinite(raw)))
            skipped_px = sum((b - a + 1) for a, b, _ in info["skipped"]) * int(np.prod(raw.shape[1:]))
            info["nonfinite"] = nonfinite - skipped_px
        if raw.dtype not in (np.dtype(np.uint16), np.dtype(np.float32)):
            raw = raw.astype(np.float32)
        if buf is not None and raw is not buf:
            if raw.dtype == buf.dtype and raw.shape == buf.shape:  # a source that cannot read into it
                np.copyto(buf, raw)
                raw = buf
            else:  # frames skipped as NaN (float32 in a uint16 run): staged by the slot instead
                conv._give_in(buf)
        return raw, info, time.perf_counter() - start

    return read


def _block_writer(conv, target, chain, progress, on_commit) -> Callable:
    """``write(c, t0, t1, out, info, states, read_s) -> record``: a block stored into ``target``, measured,
    checksummed and committed; its pinned block goes back to ``conv``."""
    from .io.checkpoint import block_checksum

    storage = conv.storage
    if conv.out_dtype != storage.numpy_dtype:
        raise ValueError(f"the conveyor hands back {conv.out_dtype} frames but the run stores {storage.dtype}; "
                         "build it without out_dtype")

    def write(c, t0, t1, out, info, states, read_s):
        try:
            return _write(c, t0, t1, out, info, states, read_s)
        finally:
            conv.release(out)  # the pinned block goes back to the conveyor

    def _write(c, t0, t1, out, info, states, read_s):
        start = time.perf_counter()
        target[t0:t1] = out
        stored_at = time.perf_counter()
        measured = chain.measure(storage.decode(out)) if getattr(chain, "measures", None) else None
        if storage.packed:
            info = {**info, "at_limit": storage.at_limit(out)}
        written = {"n": t1 - t0, "t0": t0, "measured": measured, "checksum": block_checksum(out), "info": info,
                   "skipped_write": False, "seconds": {"read": read_s, "write": stored_at - start}}
        if progress is not None:
            progress(t1 - t0)
        if on_commit is not None:
            on_commit(c, t0, t1, written, list(states) if states is not None else [])
        written["seconds"]["record"] = time.perf_counter() - stored_at
        return written

    return write


def _blocks_ahead(conv, source, chunk_frames: int) -> int:
    """How many blocks the readers hold ahead of the conveyor (at most :data:`READ_AHEAD_BYTES` of them)."""
    block_bytes = chunk_frames * int(np.prod(conv.frame_shape)) * np.dtype(getattr(source, "dtype", np.float32)).itemsize
    return max(2, min(conv.readers + 1, READ_AHEAD_BYTES // max(block_bytes, 1)))


def _states_to_keep(conv, on_commit, stateful: bool):
    """The conveyor's ``keep_states``: the states a checkpointing ``on_commit`` will save (or all, or none)."""
    keep = on_commit is not None and stateful
    block_bytes = getattr(on_commit, "block_bytes", None)
    if keep and block_bytes:  # only the states the checkpoint will save (the others: a wasted download)
        from .io.checkpoint import Checkpoint

        every = Checkpoint.state_blocks(sum(4 * int(np.prod(s)) for s in conv.state_shapes), block_bytes)
        keep = (lambda c: c % every == 0) if every > 1 else True
    return keep


def _feed(conv, blocks, read, rpool, reads, infos, ahead: int, skip_write):
    """Yield ``(c, raw, write?)`` in order for the conveyor, ``ahead`` blocks read in advance (each block's
    ``(t0, t1, info, read seconds)`` into ``infos``; the pending reads in ``reads``)."""
    queue = iter(blocks)
    for b in queue:
        reads.append((b, rpool.submit(read, b[1], b[2])))
        if len(reads) >= ahead:
            break
    while reads:
        (c, t0, t1), fut = reads.popleft()
        nxt = next(queue, None)
        if nxt is not None:
            reads.append((nxt, rpool.submit(read, nxt[1], nxt[2])))
        waited = time.perf_counter()
        raw, info, read_s = fut.result()
        conv.waits["reads"] += time.perf_counter() - waited
        infos[c] = (t0, t1, info, read_s)
        yield c, raw, c not in skip_write


def _write_behind(conv, wpool, writes, writers: int, results, write, job) -> None:
    """Hand a computed block ``job = (c, t0, t1, out, info, states, read_s)`` to a writing thread; wait while more
    than two writes per thread are pending (their records into ``results``)."""
    try:  # written straight from the pinned block (no host copy); write() gives it back
        writes.append(wpool.submit(write, *job))
    except BaseException:
        conv.release(job[3])
        raise
    waited = time.perf_counter()
    while len(writes) > 2 * writers:
        results.append(writes.popleft().result())
    conv.waits["writers"] += time.perf_counter() - waited


def _drain_writes(conv, writes, results) -> None:
    """Wait for the last blocks' writes (their records into ``results``)."""
    waited = time.perf_counter()
    while writes:  # the last blocks' writes
        results.append(writes.popleft().result())
    conv.waits["writers"] += time.perf_counter() - waited


def _shut_down(conv, reads, rpool, wpool, ok: bool) -> None:
    """Cancel the pending reads, stop both thread pools (writes already started finish) and forget the pinned
    blocks that cancelled reads and writes will never give back."""
    for _, fut in reads:
        fut.cancel()
    rpool.shutdown(wait=True, cancel_futures=True)
    wpool.shutdown(wait=True, cancel_futures=not ok)  # writes already started finish
    with conv._out_cv:  # blocks of cancelled writes never come back: forget them
        conv._out_lent.clear()
        conv._out_cv.notify_all()
    with conv._in_lock:  # nor do those of cancelled reads
        conv._in_lent.clear()
