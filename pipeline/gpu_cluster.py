"""Stages on each dask.distributed worker's GPU (``--cluster local-cuda --device gpu``): :class:`DeviceChain`."""

from __future__ import annotations

import os
import threading

import numpy as np

from .errors import BackendError
from .gpu_device import _device_stage


def _upload(array):
    from .backend import to_device

    return to_device(array)


def _check_worker_gpu() -> None:
    """Raise, naming this worker, where it has no usable GPU (once per process, before its device copies)."""
    from .backend import gpu_unavailable_reason

    reason = gpu_unavailable_reason()
    if reason:
        import socket

        raise BackendError(f"execution.device=gpu: the worker on {socket.gethostname()} (pid {os.getpid()}) has no "
                           f"usable GPU: {reason}; give every worker CuPy and a GPU, or use --device cpu")


def _download(array):
    from .backend import to_host

    return to_host(array)


class DeviceChain:
    """A :class:`pipeline.stages.Chain` whose stages run on the GPU of whichever process calls them.

    For dask.distributed runs with ``execution.device: gpu`` (``--cluster local-cuda``: one worker
    per GPU). The CPU engine's graph is unchanged: every task uploads its block, runs the same
    stages (CuPy ops and the kernels of ``cuda/denoise.cu``) on its worker's GPU and hands a host
    array on, so the states that cross blocks travel between workers as on the CPU, the
    time-ordered stages run one block after another, and the rest (flat field, spatial
    denoisers, tail) spreads over the GPUs. Each process makes its device copies of the
    calibration and models once; measurements and the storage code run on the host.
    ``upload``/``download`` default to CuPy's (tests pass NumPy copies to run it without a GPU).
    """

    def __init__(self, chain, upload=None, download=None):
        self.chain = chain
        self.upload = upload or _upload
        self.download = download or _download
        self.stateful = [_DeviceStateful(self, i) for i in range(len(chain.stateful))]
        self._local = None
        self._lock = threading.Lock()

    def __getstate__(self):  # device copies and locks are per process
        state = dict(self.__dict__)
        state["_local"], state["_lock"] = None, None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    flatfield = property(lambda self: self.chain.flatfield)
    post = property(lambda self: self.chain.post)
    measures = property(lambda self: self.chain.measures)
    storage = property(lambda self: self.chain.storage)
    names = property(lambda self: self.chain.names)

    def on_device(self):
        """This process's copy of the chain with its arrays on the device (made once)."""
        with self._lock:
            if self._local is None:
                import copy

                if self.upload is _upload:
                    _check_worker_gpu()

                from .stages import AfterglowStage

                c = self.chain
                ff = _device_stage(c.flatfield, self.upload) if c.flatfield is not None else None
                stateful = []
                for stage in c.stateful:
                    if isinstance(stage, AfterglowStage) and np.ndim(stage.amplitudes) > 1:  # a per-pixel map
                        stage = copy.copy(stage)
                        stage.amplitudes = self.upload(np.asarray(stage.amplitudes, np.float32))
                    stateful.append(stage)
                self._local = (ff, stateful, list(c.post))
            return self._local

    def head(self, raw):
        ff = self.on_device()[0]
        if ff is None:
            return raw.astype(np.float32), None
        block, mask = ff.head(self.upload(np.ascontiguousarray(raw)))
        return self.download(block), (None if mask is None else self.download(mask))

    def tail(self, payload):
        block, mask = payload[0], payload[1]
        ff, _, post = self.on_device()
        if not post and ff is None:
            return block if block.dtype == np.float32 else block.astype(np.float32)
        b = self.upload(block)
        for stage in post:
            b = stage(b)
        if ff is not None:
            b = ff.tail(b, None if mask is None else self.upload(mask))
        out = self.download(b)
        return out if out.dtype == np.float32 else out.astype(np.float32)

    def measure(self, block):
        return self.chain.measure(block)

    def __dask_tokenize__(self):
        return ("device-chain", id(self))


class _DeviceStateful:
    """Stage ``i`` of a :class:`DeviceChain`'s time-ordered stages: host block and state in, host out."""

    stateful = True

    def __init__(self, owner: DeviceChain, i: int):
        self.owner, self.i = owner, i
        self.name = getattr(owner.chain.stateful[i], "name", "stage")

    def initial_state(self, block):
        return self.owner.chain.stateful[self.i].initial_state(block)  # on the host, from the first frame

    def __call__(self, block, state):
        o = self.owner
        stage = o.on_device()[1][self.i]
        b, s = stage(o.upload(block), None if state is None else o.upload(np.asarray(state)))
        return o.download(b), (None if s is None else o.download(s))


# --------------------------------------------------------------------------- for api.run
