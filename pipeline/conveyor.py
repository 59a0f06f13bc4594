"""The GPU engine: blocks of frames through a host <-> device conveyor.

For every block of frames (``execution.device: gpu``, or ``auto`` with a working GPU)::

    host   read (threads, ahead) -> copy into a pinned buffer
    upload stream    pinned -> device                                   (H2D copy engine)
    compute stream   fused kernel: flat field, bad pixels, afterglow,   (SMs)
                     saturation (cuda/correct.cu); then the CuPy stages
                     (temporal and spatial denoisers, saturation mask,
                     attenuation) when configured
    download stream  device -> pinned                                   (D2H copy engine)
    host   write straight from the pinned block, checksum, measure, commit (threads, behind; the
           block goes back to the conveyor's pool once written)

Buffers come in ``depth`` slots (2: double buffering), each with its pinned input, device input,
device output and pinned output buffers and three events (uploaded, computed, downloaded). Block
``c`` uses slot ``c % depth``; its upload waits until the compute of block ``c - depth`` has
read that slot's device input, its compute waits for its upload and for the download of block
``c - depth`` out of that slot's device output, its download waits for its compute. The host
enqueues block ``c`` and only then waits for block ``c - depth + 1``'s download, so the upload
of block ``c + 1``, the compute of block ``c`` and the download of block ``c - 1`` overlap.
Every buffer is allocated once (for the largest block) and reused: no allocation in the steady
state (the CuPy denoisers use CuPy's memory pool).

The afterglow state stays on the device between blocks (the kernel updates it in place); the
states are copied out (a device-to-device snapshot, then a download beside the frames) only
where a checkpoint needs them. The fused kernel's output is bit-identical to the CPU chain
(``tests/cuda/test_correct_emulated.py``); the CuPy stages agree with their NumPy versions to
float32 rounding (``tests/gpu``).

In named parts: :mod:`pipeline.gpu_device` (the device object and the slots: pinned and device buffers,
events), this module (the :class:`Conveyor`: blocks through the slots in order, its kernels and stages),
:mod:`pipeline.gpu_pacing` (the loop that paces readers, the conveyor and writers) and
:mod:`pipeline.gpu_cluster` (:class:`DeviceChain`, the stages on each cluster worker's GPU).

Every piece of the conveyor's logic talks to the GPU through a small device object
(:class:`CupyDevice`), so ``tests/test_conveyor.py`` runs it on the CPU with a NumPy device whose
streams run out of order wherever the events allow, to check the ordering.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from .backend import say_once
from .errors import BackendError
from .kernels import CorrectionParameters, array_address, correction_parameters

#: Largest block (frames) the conveyor picks by itself, and the share of free GPU memory it may take.
MAX_BLOCK_FRAMES = 64
MEMORY_FRACTION = 0.5
from .gpu_pacing import READ_AHEAD_BYTES  # noqa: E402,F401 (the pacing loop's: readers ahead of the conveyor)
#: Most bytes of pinned output blocks handed to the writing threads at once (:meth:`Conveyor.process_frames`).
PINNED_OUT_BYTES = 1 << 30


# --------------------------------------------------------------------------- the chain on a GPU
def unsupported_reason(chain, input_dtype, execution=None) -> str | None:
    """Why the GPU engine cannot run ``chain`` on frames of ``input_dtype`` (None: it can)."""
    from .stages import AfterglowStage, SpatialDenoiseStage, TemporalDenoiseStage

    if execution is not None:
        sched, cluster = str(getattr(execution, "scheduler", "threads")), getattr(execution, "cluster", "none")
        if cluster != "none" or "://" in sched:
            return "the GPU engine runs in this process, not on a dask.distributed scheduler or cluster"
    if not all(hasattr(chain, a) for a in ("flatfield", "stateful", "post", "measures")):
        return "the GPU engine runs a pipeline.stages.Chain"
    if execution is not None and getattr(execution, "on_error", "fail") == "skip" and list(chain.stateful):
        # a skipped frame restarts the afterglow and temporal states (pipeline.stages.run_stateful): CPU engine only
        return "execution.on_error: skip with afterglow or the temporal filter runs on the CPU engine"
    dt = np.dtype(input_dtype)
    if dt not in (np.dtype(np.uint16), np.dtype(np.float32)):
        return f"the GPU engine reads uint16 or float32 frames, not {dt}"
    stateful = list(chain.stateful)
    for i, stage in enumerate(stateful):
        if isinstance(stage, AfterglowStage):
            if i != 0:
                return "the afterglow stage must come first"
            if len(np.atleast_1d(stage.ratios)) > 4:
                return "the GPU engine's afterglow takes up to 4 terms"
        elif not isinstance(stage, TemporalDenoiseStage):
            return f"stage '{getattr(stage, 'name', type(stage).__name__)}' has no GPU version"
    for stage in chain.post:
        if not isinstance(stage, SpatialDenoiseStage):
            return f"stage '{getattr(stage, 'name', type(stage).__name__)}' has no GPU version"
    return None


def parameters_from_chain(chain, frame_shape) -> CorrectionParameters:
    """The fused kernel's parameters for the head and afterglow stages of ``chain``.

    The inverse gain is the stage's own (``inv_gain``; otherwise computed as
    :func:`pipeline.ops.flatfield.inverse_gain` does it: ``float32(1) / (gain * float32(scale))``,
    scale 1 for counts, ``exposure_ratio * flat_level`` for transmission and attenuation), the
    bad-pixel table is the stage's own, the saturation level the stage's (None: ``saturated: keep``),
    so the kernel sees exactly what the CPU chain uses.
    """
    from .backend import to_host
    from .stages import AfterglowStage

    ff = chain.flatfield
    kw: dict = {}
    if ff is not None:
        cal = ff.cal
        kw["dark"] = to_host(cal.dark)
        inv = getattr(ff, "inv_gain", None)  # the stage's own, computed once per run
        if inv is None:
            scale = 1.0 if ff.cfg.output == "counts" else cal.exposure_ratio * cal.flat_level
            gain = np.asarray(to_host(cal.gain), np.float32)
            with np.errstate(over="ignore", divide="ignore"):  # a subnormal gain: Inf, as flat_field gives it
                inv = (np.float32(1) / (gain if scale == 1.0 else gain * np.float32(scale))).astype(np.float32)
        kw["inv"] = inv
        if ff.table is not None:
            kw["targets"], kw["neighbours"] = ff.table
        kw["saturation"] = ff.saturation
    stateful = list(chain.stateful)
    lag = stateful[0] if stateful and isinstance(stateful[0], AfterglowStage) else None
    if lag is not None:
        kw["amplitudes"], kw["ratios"] = lag.amplitudes, lag.ratios
    return correction_parameters(frame_shape, nonfinite_to_nan=lag is not None, **kw)


def choose_block_frames(frame_shape, *, free_bytes: int, input_itemsize: int = 2, out_itemsize: int = 4,
                        n_terms: int = 0, depth: int = 2, denoise: bool = False, response: bool = False,
                        requested: int | None = None, cap: int = MAX_BLOCK_FRAMES,
                        fraction: float = MEMORY_FRACTION) -> int:
    """Frames per block that fit ``fraction`` of ``free_bytes`` of GPU memory: ``requested``, or ``cap`` if None, or fewer.

    Per slot and frame: the device input, the float32 working output (and a float16 output);
    fixed: the maps, the afterglow state and its snapshots, and (with denoisers) a working
    set of float64 frames and per-frame copies; with a per-pixel ``response``, the CuPy head's
    block-sized temporaries (about 9 float32 blocks alive at once). Raises :class:`BackendError`
    if not even one frame fits.
    """
    p = int(np.prod(frame_shape))
    per_frame = depth * p * (input_itemsize + 4 + (out_itemsize if out_itemsize != 4 else 0))
    if denoise:
        per_frame += 2 * 4 * p  # the spatial denoiser's new block and its stabilised copy
    if response:
        per_frame += 9 * 4 * p  # linearize's and correct_frames' temporaries, the mask
    fixed = p * 4 * (3 + n_terms * (1 + depth) + (2 * (1 + depth) + 12 if denoise else 0))
    budget = int(fraction * free_bytes) - fixed
    fit = budget // per_frame if budget > 0 else 0
    if fit < 1:
        need = (fixed + per_frame) / fraction / 2**20
        raise BackendError(f"the GPU has {free_bytes / 2**20:.0f} MiB free, not enough for a block of one "
                           f"{' x '.join(map(str, frame_shape))} frame (about {need:.0f} MiB); free GPU memory or "
                           "run with --device cpu")
    return int(max(1, min(fit, requested if requested else cap)))


# --------------------------------------------------------------------------- the fused kernel's specification
def correct_block_reference(raw, params: CorrectionParameters, state, *, out_dtype=np.float32, scale: float = 1.0,
                            offset: float = 0.0):
    """The fused kernel's computation with the NumPy ops (its specification; slow).

    Parameters
    ----------
    raw : ndarray (T, H, W) uint16 or float32
    params : CorrectionParameters
    state : ndarray (N, H, W) float32
        Afterglow state before the block, updated in place to the state after it.
    out_dtype : float32, float16 or uint16
        uint16: the storage code with ``scale`` and ``offset`` (:func:`pipeline.io.packing.encode`).

    Returns
    -------
    out : ndarray (T, H, W) of ``out_dtype``
    state : the same ``state``
    """
    from .kernels import _check_dtypes
    from .ops.afterglow import remove_lag
    from .ops.flatfield import replace_bad_pixels, saturation_mask
    from .io.packing import encode

    raw_dtype, out_dtype = _check_dtypes(raw.dtype, out_dtype)
    t, p = raw.shape[0], params.n_pixels
    r2 = np.asarray(raw).reshape(t, p)
    v = np.empty((t, p), np.float32)
    v[...] = r2
    v -= params.dark
    v *= params.inv
    if params.targets.size:
        replace_bad_pixels(v.reshape(t, 1, p), params.targets, params.neighbours, out=v.reshape(t, 1, p))
    finite = np.isfinite(v)
    x = np.where(finite, v, np.float32(0))
    if params.n_terms:
        amps = params.amplitudes.reshape(params.n_terms, 1, p) if params.amplitudes.ndim > 1 else params.amplitudes
        st = state.reshape(params.n_terms, 1, p)
        remove_lag(x.reshape(t, 1, p), amps, params.ratios, st, out=x.reshape(t, 1, p))
    to_nan = raw_dtype.kind == "f" or params.nonfinite_to_nan
    o = np.where(finite, x, np.float32(np.nan) if to_nan else v)
    # the saturation mask as FlatFieldStage's: a bad pixel by its neighbours, never by its own raw value
    table = (params.targets, params.neighbours) if params.targets.size else None
    sat = saturation_mask(np.asarray(raw), params.saturation, table, v.reshape(raw.shape))
    if sat is not None:
        o[sat.reshape(t, p)] = np.nan
    if out_dtype == np.uint16:
        return encode(o, "uint16", scale=scale, offset=offset).reshape(raw.shape), state
    return o.astype(out_dtype).reshape(raw.shape), state



from .gpu_device import CupyDevice, _Slot, _device_stage  # noqa: F401 (the device and the slots: their own module)


class Conveyor:
    """Runs a :class:`pipeline.stages.Chain` on the GPU, block after block, uploads and downloads overlapped.

    Parameters
    ----------
    chain : pipeline.stages.Chain
        Head (flat field, bad pixels, saturation), afterglow, temporal and spatial denoisers,
        attenuation; see :func:`unsupported_reason` for what it cannot take.
    frame_shape : tuple of int
        (H, W).
    device : object, optional
        The device (default :class:`CupyDevice` on the current GPU).
    block_frames : int, optional
        Largest block; default: what fits the free GPU memory (:func:`choose_block_frames`).
    out_dtype : float32, float16 or uint16, optional
        Frames handed back; default: the chain's storage type (``output.dtype``). float16 and
        uint16 halve the download; uint16 is the chain's scaled code (:mod:`pipeline.io.packing`).
    depth : int
        Buffer slots: 2 (double buffering) or more.
    readers, writers : int
        Host threads reading (decompressing) blocks ahead and writing (compressing) finished blocks
        (:meth:`process_frames`); default: half the cores reading, all of them writing, at least 2 each.
        The codecs, not the GPU, set the pace of a Zarr-to-Zarr run, and compressing a float32
        output costs more than decompressing the uint16 input: the writers get as many threads as a
        CPU copy would use (on a 16-core H200 node, with 8 readers and 8 writers, a flat-field run went
        at 0.66 of the CPU engine's pace). At most :data:`READ_AHEAD_BYTES` of raw blocks are read ahead.
    """

    def __init__(self, chain, frame_shape, *, device=None, block_frames: int | None = None, out_dtype=None,
                 depth: int = 2, readers: int | None = None, writers: int | None = None):
        from .stages import AfterglowStage, Storage

        if depth < 2:
            raise ValueError("depth must be at least 2 (double buffering)")
        self.storage = getattr(chain, "storage", None) or Storage()
        self.out_dtype = np.dtype(out_dtype) if out_dtype is not None else self.storage.numpy_dtype
        if self.out_dtype not in (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.uint16)):
            raise ValueError(f"out_dtype must be float32, float16 or uint16, not {self.out_dtype}")
        self.chain = chain
        self.frame_shape = tuple(int(v) for v in frame_shape)
        self.dev = device if device is not None else CupyDevice()
        self.params = parameters_from_chain(chain, self.frame_shape)
        self.kernel = self.dev.prepare(self.params)
        ff = chain.flatfield
        # a per-pixel response (a non-linear screen): the head runs as the CuPy ops on a device copy of the stage
        self.ff_dev = _device_stage(ff, self.dev.upload) if ff is not None and ff.response is not None else None
        stateful = list(chain.stateful)
        self.lag = stateful[0] if stateful and isinstance(stateful[0], AfterglowStage) else None
        self.stages = stateful[1:] if self.lag is not None else stateful  # CuPy stages with a state
        self.post = list(chain.post)
        cores = os.cpu_count() or 2
        self.depth = int(depth)
        self.readers = int(readers) if readers else max(2, cores // 2)
        self.writers = int(writers) if writers else max(2, cores)
        n = self.params.n_terms
        self.state_shapes = ([(n,) + self.frame_shape] if self.lag is not None else []) + \
            [(2,) + self.frame_shape for _ in self.stages]  # temporal_filter's (estimate, gain)
        if block_frames is None:
            block_frames = self.fit_block_frames(MAX_BLOCK_FRAMES)
        self.block_frames = int(block_frames)
        self.s_up, self.s_compute, self.s_down = self.dev.stream(), self.dev.stream(), self.dev.stream()
        self._slots: list[_Slot] = []
        self._frames = 0
        self.allocations = 0  # slot (re)allocations: 1 for a whole run
        # pinned output blocks: each slot downloads into one; handed over (process_frames) they come back
        # through release() once written, so the host never copies them out and nothing is allocated per block
        self._out_free: list = []
        self._out_lent: dict = {}  # address -> buffer, lent to the writers
        self._out_cv = threading.Condition()
        self.pinned_out_allocations = 0
        self._lend_cap = self.lend_limit()
        # pinned input blocks the readers read into (process_frames): uploaded from directly, back once uploaded
        self._in_free: list = []
        self._in_lent: dict = {}  # address -> block
        self._in_lock = threading.Lock()
        self.pinned_in_allocations = 0
        #: seconds the conveyor's thread waited, since the last process_frames began, on the readers, the
        #: device and the writers (a pinned block to download into, or room in the writers' queue): what
        #: it waits on most sets the pace
        self.waits = {"reads": 0.0, "device": 0.0, "writers": 0.0}
        self.busy_s = 0.0  #: and the time it spent working itself (the last whole process_frames)

    # ----------------------------------------------------------------- sizing
    def fit_block_frames(self, requested: int, input_dtype=np.uint16) -> int:
        """``requested`` frames per block, or fewer where the free GPU memory asks for it."""
        return choose_block_frames(self.frame_shape, free_bytes=self.dev.free_bytes(),
                                   input_itemsize=np.dtype(input_dtype).itemsize,
                                   out_itemsize=self.out_dtype.itemsize, n_terms=self.params.n_terms,
                                   depth=self.depth, denoise=bool(self.stages or self.post),
                                   response=self.ff_dev is not None, requested=requested)

    def _ensure_slots(self, frames: int):
        if frames != self._frames or not self._slots:
            if self._slots:
                self.dev.synchronize()
            self._slots = [_Slot(self.dev, frames, self.frame_shape, self.out_dtype, self.state_shapes)
                           for _ in range(self.depth)]
            self._frames = frames
            self.allocations += 1
            with self._out_cv:
                self._out_free = []  # blocks of the old size are dropped (those lent out too, when they come back)
            with self._in_lock:
                self._in_free = []

    def _out_shape(self):
        return (self.block_frames,) + self.frame_shape  # the slots' size, once stream() has (re)made them

    def lend_limit(self, writers: int | None = None) -> int:
        """Most pinned output blocks lent out at once: enough for the writers' queue, at most PINNED_OUT_BYTES."""
        block = max(1, int(np.prod(self._out_shape())) * self.out_dtype.itemsize)
        return int(max(2, min(2 * (writers or self.writers) + 2, PINNED_OUT_BYTES // block)))

    def _take_out(self):
        """A pinned output block for a slot: a returned one, or a new one (only until the pool is full)."""
        with self._out_cv:
            if self._out_free:
                return self._out_free.pop()
        self.pinned_out_allocations += 1
        return self.dev.empty_pinned(self._out_shape(), self.out_dtype)

    def _lend(self, slot: _Slot):
        """Hand the slot's output block over (the slot takes another for its next download)."""
        buf = slot.pin_out
        waited = time.perf_counter()
        with self._out_cv:
            while len(self._out_lent) >= self._lend_cap:  # the writers hold enough: wait for one back
                self._out_cv.wait()
            self._out_lent[array_address(buf)] = buf
        self.waits["writers"] += time.perf_counter() - waited
        slot.pin_out = None
        return buf

    def _take_in(self, dtype):
        """A pinned input block for a reader: a returned one, or a new one (as many as are in flight at once)."""
        shape = (self.block_frames,) + self.frame_shape
        dtype = np.dtype(dtype)
        with self._in_lock:  # the free blocks have the slots' shape (_give_in and _ensure_slots see to it)
            self._in_free = [b for b in self._in_free if b.dtype == dtype]  # another source's: let them go
            buf = self._in_free.pop() if self._in_free else None
            if buf is None:
                self.pinned_in_allocations += 1
        if buf is None:
            buf = self.dev.empty_pinned(shape, dtype)
        with self._in_lock:
            self._in_lent[array_address(buf)] = buf
        return buf

    def _give_in(self, raw) -> None:
        """Take back a pinned input block (any view of it from its start); anything else is ignored."""
        if not isinstance(raw, np.ndarray) or raw.size == 0:
            return
        with self._in_lock:
            buf = self._in_lent.pop(array_address(raw), None)
            if buf is not None and buf.shape == (self.block_frames,) + self.frame_shape:
                self._in_free.append(buf)

    def release(self, out) -> None:
        """Give back a block handed out by :meth:`stream` with ``hand_over=True`` (any view of it from its start)."""
        with self._out_cv:
            buf = self._out_lent.pop(array_address(out), None)
            if buf is not None and buf.shape == self._out_shape():
                self._out_free.append(buf)
            self._out_cv.notify_all()

    # ----------------------------------------------------------------- the conveyor
    def stream(self, blocks: Iterable, *, states=None, keep_states: bool | Callable = False,
               hand_over: bool = False) -> Iterator:
        """Correct blocks in order; uploads, computes and downloads overlap.

        Parameters
        ----------
        blocks : iterable of ``(key, raw, fetch)``
            ``raw`` (n, H, W) uint16 or float32 with ``n <= block_frames``; ``fetch`` False: run
            the block for its states only (nothing downloaded). A C-contiguous ``raw`` in pinned
            memory is uploaded from directly: it must not change until its block comes out.
        states : list, optional
            States of the stateful stages before the first block (host arrays; None entries:
            the stages' initial states from the first frame).
        keep_states : bool or callable
            Also hand out the states after every fetched block (host copies); a callable of the
            block's key says for which (the others hand out None).
        hand_over : bool
            ``out`` stays valid after the next item: the caller owns it until it passes it to
            :meth:`release` (at most :meth:`lend_limit` blocks at once; the conveyor waits for one back).

        Yields
        ------
        key, out, states
            ``out``: (n, H, W) of ``out_dtype``, a view of pinned memory valid until the next
            item is asked for (copy it to keep it); None when not fetched. ``states``: list of
            host arrays, or None.
        """
        self._ensure_slots(self.block_frames)
        dev, depth = self.dev, self.depth
        self._states = None if states is None else [None if s is None else dev.upload(np.asarray(s, np.float32))
                                                    for s in states]
        pending: deque = deque()
        try:
            for c, (key, raw, fetch) in enumerate(blocks):
                if c == 0:
                    self._initial_states(raw)
                self._submit(self._slots[c % depth], key, raw, bool(fetch), keep_states)
                pending.append(self._slots[c % depth])
                if len(pending) >= depth:
                    yield self._finish(pending.popleft(), keep_states, hand_over)
            while pending:
                yield self._finish(pending.popleft(), keep_states, hand_over)
        finally:
            dev.synchronize()  # nothing left in flight on buffers the caller may reuse

    def _initial_states(self, raw):
        """States before the first block: given, or the stages' own from the head of its first frame."""
        have = self._states or [None] * (int(self.lag is not None) + len(self.stages))
        if self.lag is not None and have[0] is None:
            head0, _ = self.chain.head(np.asarray(raw[:1]))
            have[0] = self.dev.upload(np.ascontiguousarray(self.lag.initial_state(head0), np.float32))
        self._states = have  # the denoisers start from None (their own initial state)

    def _submit(self, slot: _Slot, key, raw, fetch: bool, keep_states: bool):
        dev = self.dev
        n = int(raw.shape[0])
        if tuple(raw.shape[1:]) != self.frame_shape or not 0 < n <= self._frames:
            raise ValueError(f"a block must be (1..{self._frames}, {', '.join(map(str, self.frame_shape))}), "
                             f"not {tuple(raw.shape)}")
        d_all = slot.inputs(raw.dtype)
        dev.sync(slot.uploaded)  # block c - depth is uploaded: the pinned input is free
        if dev.is_pinned(raw):  # read into the conveyor's pinned blocks (process_frames), or given so
            src = raw
        else:
            src = slot.staging(raw.dtype)[:n]
            np.copyto(src, raw)
        d_in = d_all[:n]
        dev.wait(self.s_up, slot.computed)  # block c - depth's compute has read the device input
        dev.h2d(d_in, src, self.s_up)
        dev.record(slot.uploaded, self.s_up)
        dev.wait(self.s_compute, slot.uploaded)
        dev.wait(self.s_compute, slot.downloaded)  # block c - depth's output (and states) are downloaded
        snap = fetch and bool(keep_states(key) if callable(keep_states) else keep_states)
        slot.snapped = snap
        dev.launch(self.s_compute, lambda: self._compute(slot, d_in, n, snap))
        dev.record(slot.computed, self.s_compute)
        slot.key, slot.n, slot.fetch, slot.raw = key, n, fetch, raw  # raw: alive until its upload is done
        if fetch:
            if slot.pin_out is None:
                slot.pin_out = self._take_out()
            dev.wait(self.s_down, slot.computed)
            dev.d2h(slot.pin_out[:n], slot.dev_out[:n], self.s_down)
            if snap:
                for s, p in zip(slot.snap, slot.pin_snap):
                    dev.d2h(p, s, self.s_down)
            dev.record(slot.downloaded, self.s_down)

    def _compute(self, slot: _Slot, d_in, n: int, snap: bool):
        """Everything a block needs on the device (runs with the compute stream current)."""
        ff = self.chain.flatfield
        denoise = bool(self.stages or self.post)
        packed = self.out_dtype != np.dtype(np.float32)
        # the kernel writes float16 or the uint16 code itself where nothing follows it
        direct = packed and not denoise and (ff is None or ff.cfg.output != "attenuation") and self.ff_dev is None
        work = slot.dev_out[:n] if direct else slot.work[:n]
        lag_state = self._states[0] if self.lag is not None else None
        mask = None
        if self.ff_dev is None:  # the fused kernel: head and afterglow in one pass (saturation too, if nothing follows)
            self.kernel(d_in, work, lag_state, saturation=not denoise, scale=self.storage.scale,
                        offset=self.storage.offset)
            block = work
        else:  # the same stages as the CPU chain, as CuPy ops
            block, mask = self.ff_dev.head(d_in)
            if self.lag is not None:
                block, self._states[0] = self.lag(block, lag_state)
        first = 1 if self.lag is not None else 0
        for i, stage in enumerate(self.stages):
            block, self._states[first + i] = stage(block, self._states[first + i])
        for stage in self.post:
            block = stage(block)
        if denoise or self.ff_dev is not None:
            if block is not work:
                work[...] = block
                block = work
            if self.ff_dev is None:
                self.kernel.saturate(d_in, block)  # after the denoisers, as the CPU chain's tail
        if ff is not None:
            block = (self.ff_dev or ff).tail(block, mask)  # the mask (if not done), attenuation; in place
        if slot.dev_out is not slot.work and not direct:  # float16 (rounded to nearest) or the uint16 code
            from .io.packing import encode

            encode(block, self.out_dtype.name, scale=self.storage.scale, offset=self.storage.offset,
                   out=slot.dev_out[:n])
        if snap:
            for dst, s in zip(slot.snap, self._states):
                dst[...] = s

    def _finish(self, slot: _Slot, keep_states: bool, hand_over: bool = False):
        waited = time.perf_counter()
        self.dev.sync(slot.downloaded if slot.fetch else slot.computed)
        self.waits["device"] += time.perf_counter() - waited
        self._give_in(slot.raw)  # uploaded: a pinned block the readers read into goes back to them
        slot.raw = None
        if not slot.fetch:
            return slot.key, None, None
        states = [p.copy() for p in slot.pin_snap] if keep_states and slot.snapped else None
        out = self._lend(slot) if hand_over else slot.pin_out
        return slot.key, out[: slot.n], states

    # ----------------------------------------------------------------- a whole run
    def process_frames(self, source, target, chain=None, *, chunk_frames: int,
                       progress: Callable[[int], None] | None = None, start_block: int = 0,
                       initial_states: list | None = None, skip_write=frozenset(), on_commit: Callable | None = None,
                       skip_errors: bool = False, **_scheduler) -> list[dict]:
        """:func:`pipeline.schedule.process_frames` on the GPU: same arguments, same records
        (:func:`pipeline.gpu_pacing.run_blocks`: readers ahead, this conveyor, writers behind)."""
        from .gpu_pacing import run_blocks

        return run_blocks(self, source, target, chain, chunk_frames=chunk_frames, progress=progress,
                          start_block=start_block, initial_states=initial_states, skip_write=skip_write,
                          on_commit=on_commit, skip_errors=skip_errors, **_scheduler)



from .gpu_cluster import DeviceChain  # noqa: E402,F401 (stages on each cluster worker's GPU)


def gpu_engine(chain, input_dtype, frame_shape, *, requested: str = "gpu", execution=None, device=None):
    """The GPU engine for ``chain``, or why not.

    Parameters
    ----------
    chain : pipeline.stages.Chain
    input_dtype : dtype of the input frames
    frame_shape : (H, W)
    requested : {'gpu', 'auto'}
        ``execution.device``: ``gpu`` raises :class:`BackendError` (one line, saying why) where
        the engine cannot run this chain; ``auto`` then says why once and falls back to the CPU.
    execution : ExecutionConfig, optional
        Its scheduler and cluster (a dask.distributed run stays on the CPU engine).
    device : object, optional
        A device for :class:`Conveyor` (default: the current GPU).

    Returns
    -------
    (Conveyor or None, 'gpu' or 'cpu')
    """
    reason = unsupported_reason(chain, input_dtype, execution)
    if reason is None:
        try:
            return Conveyor(chain, frame_shape, device=device), "gpu"
        except BackendError as exc:
            reason = str(exc)
        except Exception as exc:  # a CUDA/nvrtc error: the GPU does not work for us
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no message'}"
    if requested == "gpu":
        raise BackendError(f"execution.device=gpu: {reason}; use --device cpu or auto")
    say_once(f"execution.device=auto runs on the CPU: {reason}")
    return None, "cpu"


__all__ = ["MAX_BLOCK_FRAMES", "Conveyor", "CupyDevice", "DeviceChain", "choose_block_frames", "correct_block_reference",
           "gpu_engine", "parameters_from_chain",
           "unsupported_reason"]
