"""The GPU conveyor's device (CuPy, or a NumPy stand-in in tests: the same methods) and its slots: the
pinned and device buffers and the events of one block in flight."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .kernels import CorrectionParameters


# --------------------------------------------------------------------------- the device
class CupyDevice:
    """The conveyor's view of the current CUDA device, through CuPy (from :func:`pipeline.backend.cupy_module`).

    Everything the conveyor asks of a device is here, so a NumPy stand-in can take its place in tests.
    """

    def __init__(self):
        from .backend import cupy_module

        self.cp = cupy_module()
        props = self.cp.cuda.runtime.getDeviceProperties(self.cp.cuda.Device().id)
        name = props["name"]
        self.name = name.decode() if isinstance(name, bytes) else str(name)

    # memory
    def free_bytes(self) -> int:
        free, _total = self.cp.cuda.runtime.memGetInfo()
        return int(free) + int(self.cp.get_default_memory_pool().free_bytes())

    def empty(self, shape, dtype):
        return self.cp.empty(shape, dtype)

    def empty_pinned(self, shape, dtype):
        dtype = np.dtype(dtype)
        n = int(np.prod(shape))
        mem = self.cp.cuda.alloc_pinned_memory(max(n * dtype.itemsize, 1))
        return np.frombuffer(mem, dtype, n).reshape(shape)

    def is_pinned(self, array) -> bool:
        """True for a C-contiguous NumPy array in page-locked memory (uploaded without a staging copy)."""
        if not isinstance(array, np.ndarray) or not array.flags.c_contiguous or array.size == 0:
            return False
        try:
            attrs = self.cp.cuda.runtime.pointerGetAttributes(array.ctypes.data)
            return attrs.type == self.cp.cuda.runtime.memoryTypeHost
        except Exception:
            return False

    def upload(self, array):
        return self.cp.asarray(array)

    def download(self, array) -> np.ndarray:
        return self.cp.asnumpy(array)

    # streams and events
    def stream(self):
        return self.cp.cuda.Stream(non_blocking=True)

    def event(self):
        return self.cp.cuda.Event(block=False, disable_timing=True)

    def record(self, event, stream):
        event.record(stream)

    def wait(self, stream, event):
        stream.wait_event(event)

    def sync(self, event):
        event.synchronize()

    def synchronize(self):
        self.cp.cuda.Device().synchronize()

    # work
    def h2d(self, dst, src, stream):
        dst.set(src, stream=stream)

    def d2h(self, dst, src, stream):
        src.get(stream=stream, out=dst, blocking=False)

    def launch(self, stream, fn: Callable[[], None]):
        """Run ``fn`` (kernel launches, CuPy operations) with ``stream`` as the current stream."""
        with stream:
            fn()

    def prepare(self, params: CorrectionParameters):
        from .kernels import CorrectKernel

        return CorrectKernel(params)


class _Slot:
    """One set of buffers and events of the conveyor."""

    def __init__(self, dev, frames: int, frame_shape, out_dtype, state_shapes):
        shape = (frames,) + tuple(frame_shape)
        self.dev, self.shape = dev, shape
        self.pin_in: dict = {}
        self.dev_in: dict = {}
        self.work = dev.empty(shape, np.float32)
        self.dev_out = self.work if np.dtype(out_dtype) == np.float32 else dev.empty(shape, out_dtype)
        self.pin_out = None  # a pinned output block from the conveyor's pool, taken when a block is fetched
        self.snap = [dev.empty(s, np.float32) for s in state_shapes]
        self.pin_snap = [dev.empty_pinned(s, np.float32) for s in state_shapes]
        self.uploaded, self.computed, self.downloaded = dev.event(), dev.event(), dev.event()
        self.key = None
        self.n = 0
        self.fetch = False
        self.snapped = False

    def inputs(self, dtype):
        """The device input of ``dtype`` (a float32 block in a uint16 run: frames skipped as NaN), made once."""
        dtype = np.dtype(dtype)
        if dtype not in self.dev_in:
            self.dev_in[dtype] = self.dev.empty(self.shape, dtype)
        return self.dev_in[dtype]

    def staging(self, dtype):
        """A pinned buffer to copy a block that is not in pinned memory into, made once (where needed)."""
        dtype = np.dtype(dtype)
        if dtype not in self.pin_in:
            self.pin_in[dtype] = self.dev.empty_pinned(self.shape, dtype)
        return self.pin_in[dtype]


def _device_stage(ff, up):
    """A copy of a :class:`pipeline.stages.FlatFieldStage` whose arrays ``up`` moved to the device (for its CuPy head)."""
    import copy
    import dataclasses

    stage = copy.copy(ff)
    cal = ff.cal
    stage.cal = dataclasses.replace(cal, dark=up(np.asarray(cal.dark, np.float32)),
                                    gain=up(np.asarray(cal.gain, np.float32)))
    if ff.response is not None:
        stage.response = up(np.asarray(ff.response, np.float32))
    if ff.inv_gain is not None:
        stage.inv_gain = up(np.asarray(ff.inv_gain, np.float32))
    if ff.table is not None:
        stage.table = tuple(up(np.asarray(a)) for a in ff.table)
    return stage


# --------------------------------------------------------------------------- a GPU per cluster worker
