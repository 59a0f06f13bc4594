"""The GPU conveyor's logic on the CPU: a NumPy stand-in for the device whose streams run out of order.

The fake device queues every copy, kernel and event of a stream and runs the queued work only
when the host waits, picking at random among the streams whose next operation is allowed by
the events recorded so far. A missing wait (a buffer reused before the device is done with it)
then shows up as wrong frames. The fused kernel is its NumPy reference
(pipeline.conveyor.correct_block_reference), tested bit for bit against the CUDA source in
tests/cuda/test_correct_emulated.py; the CuPy stages run on NumPy arrays. So the conveyor's
output must equal the CPU engine's, checksum for checksum.
"""

from __future__ import annotations

import warnings
from collections import deque
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import bent_screen_response
from pipeline import backend, conveyor
from pipeline.config import AfterglowConfig, BadPixelConfig, DenoiseConfig, FlatFieldConfig
from pipeline.conveyor import Conveyor, choose_block_frames, gpu_engine, unsupported_reason
from pipeline.errors import BackendError
from pipeline.conveyor import correct_block_reference
from pipeline.ops.denoise import NoiseModel
from pipeline.ops.flatfield import HOT, Calibration
from pipeline.schedule import process_frames
from pipeline.stages import AfterglowStage, Chain, FlatFieldStage, SpatialDenoiseStage, Storage, TemporalDenoiseStage

H, W = 12, 17


# --------------------------------------------------------------------------- the fake device
class _Event:
    def __init__(self, name):
        self.name = name
        self.recorded = 0  # records enqueued
        self.completed = 0  # records run


class _Stream:
    def __init__(self, name):
        self.name = name
        self.ops: deque = deque()


class FakeKernel:
    """The fused kernel's NumPy reference with the CorrectKernel call interface."""

    def __init__(self, params):
        self.params = params

    def __call__(self, raw, out, state, *, saturation=True, stream=None, scale=1.0, offset=0.0):
        params = self.params if saturation else replace(self.params, saturation=None)
        n = params.n_terms
        st = state if n else np.zeros((0,) + params.frame_shape, np.float32)
        res, _ = correct_block_reference(raw, params, st, out_dtype=out.dtype, scale=scale, offset=offset)
        out[...] = res
        return out

    def saturate(self, raw, out, *, stream=None):
        p = self.params
        if p.saturation is not None:  # saturate_good_* and saturate_bad_*: bad pixels judged by their neighbours
            from pipeline.ops.flatfield import saturation_mask

            heads = ((raw.reshape(raw.shape[0], -1).astype(np.float32) - p.dark) * p.inv).reshape(raw.shape)
            sat = saturation_mask(raw, p.saturation, (p.targets, p.neighbours) if p.targets.size else None, heads)
            if sat is not None:
                out[sat] = np.nan
        return out


class FakeDevice:
    """The CupyDevice interface on NumPy, with lazily and randomly interleaved streams."""

    name = "fake"

    def __init__(self, seed=0, free=1 << 30):
        self.rng = np.random.default_rng(seed)
        self.free = free
        self.streams: list[_Stream] = []
        self.events: list[_Event] = []
        self.allocations = 0
        self.pinned_allocations = 0
        self.log: list = []  # host calls: ("h2d", stream), ("sync", event name)
        self.pinned_ids: set = set()
        self.pinned: list = []

    # memory
    def free_bytes(self):
        return self.free

    def _garbage(self, shape, dtype):
        a = np.empty(shape, dtype)
        a.view(np.uint8)[...] = 0xA5  # never zeros by luck
        return a

    def empty(self, shape, dtype):
        self.allocations += 1
        return self._garbage(shape, dtype)

    def empty_pinned(self, shape, dtype):
        self.pinned_allocations += 1
        a = self._garbage(shape, dtype)
        self.pinned.append(a)  # kept: an address is never reused by a pageable array
        return a

    def is_pinned(self, array):
        """As CupyDevice: any C-contiguous view within a pinned allocation (or an array marked so)."""
        if id(array) in self.pinned_ids:
            return True
        if not isinstance(array, np.ndarray) or not array.flags.c_contiguous or array.size == 0:
            return False
        p = array.ctypes.data
        return any(b.ctypes.data <= p and p + array.nbytes <= b.ctypes.data + b.nbytes for b in self.pinned)

    def upload(self, array):
        return np.array(array, copy=True)

    def download(self, array):
        return np.array(array, copy=True)

    # streams and events
    def stream(self):
        s = _Stream(f"s{len(self.streams)}")
        self.streams.append(s)
        return s

    def event(self):
        e = _Event(f"e{len(self.events)}")
        self.events.append(e)
        return e

    def record(self, event, stream):
        event.recorded += 1
        gen = event.recorded

        def done():
            event.completed = max(event.completed, gen)

        stream.ops.append((None, done))
        self._progress()

    def wait(self, stream, event):
        stream.ops.append(((event, event.recorded), None))
        self._progress()

    def sync(self, event):
        self.log.append(("sync", event.name))
        target = event.recorded
        while event.completed < target:
            self._step(force=True)

    def synchronize(self):
        while any(s.ops for s in self.streams):
            self._step(force=True)

    def _runnable(self):
        out = []
        for s in self.streams:
            if s.ops:
                cond, _ = s.ops[0]
                if cond is None or cond[0].completed >= cond[1]:
                    out.append(s)
        return out

    def _step(self, force=False):
        ready = self._runnable()
        if not ready:
            if force:
                raise RuntimeError("deadlock: the host waits on work that can never run")
            return
        s = ready[self.rng.integers(len(ready))]
        _, fn = s.ops.popleft()
        if fn is not None:
            fn()

    def _progress(self):
        for _ in range(self.rng.integers(0, 3)):  # a little device progress at random moments
            self._step()

    # work
    def h2d(self, dst, src, stream):
        self.log.append(("h2d", stream.name))

        def run():
            dst[...] = src

        stream.ops.append((None, run))
        self._progress()

    def d2h(self, dst, src, stream):
        def run():
            dst[...] = src

        stream.ops.append((None, run))
        self._progress()

    def launch(self, stream, fn):
        stream.ops.append((None, fn))
        self._progress()

    def prepare(self, params):
        return FakeKernel(params)


# --------------------------------------------------------------------------- chains and data
def _calibration(rng):
    dark = rng.uniform(90, 110, (H, W)).astype(np.float32)
    gain = rng.uniform(0.7, 1.3, (H, W)).astype(np.float32)
    bp = np.zeros((H, W), np.uint8)
    bp[rng.random((H, W)) < 0.08] = HOT
    gain[bp != 0] = 1
    return Calibration(dark=dark, gain=gain, flat_level=5000.0, exposure_ratio=1.0, bad_pixels=bp)


class _Mean:
    name = "mean"

    def measure(self, block):
        return {"mean": np.nanmean(block, axis=(1, 2))}


def _chain(rng, *, output="counts", afterglow=True, temporal=False, spatial=False, initial="steady", measure=False,
           storage=None):
    ff = FlatFieldStage(_calibration(rng), FlatFieldConfig(output=output, saturation_level=9000.0,
                                                           bad_pixels=BadPixelConfig(replace=True)), np.uint16)
    stateful, post = [], []
    if afterglow:
        model = SimpleNamespace(amplitudes=np.array([0.02, 0.005]), ratios=np.array([0.4, 0.95]))
        stateful.append(AfterglowStage(model, AfterglowConfig(initial_state=initial)))
    noise = NoiseModel(0.5, 20.0)
    if temporal:
        stateful.append(TemporalDenoiseStage(noise, DenoiseConfig(enabled=True, temporal=True)))
    if spatial:
        post.append(SpatialDenoiseStage(noise, DenoiseConfig(enabled=True, method="median")))
    return Chain(ff, stateful, [_Mean()] if measure else [], post, storage)


def _video(rng, t):
    v = rng.integers(200, 9500, (t, H, W)).astype(np.uint16)  # some above the saturation level 9000
    return v


class _Source:
    """Array-like with read_block, like FrameReader; block 'bad' comes back as NaN float32 (skipped)."""

    def __init__(self, data, bad=()):
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.bad = set(bad)

    def read_block(self, t0, t1, *, skip):
        if t0 in self.bad:
            return np.full((t1 - t0,) + self.shape[1:], np.nan, np.float32), [(t0, t1 - 1, "corrupt")]
        return self.data[t0:t1].copy(), []

    def __getitem__(self, key):
        return self.data[key]


def _target(chain, shape):
    return np.full(shape, -1, chain.storage.numpy_dtype) if chain.storage.dtype != "uint16" else np.full(shape, 7, np.uint16)


def _cpu(chain, source, chunk, **kw):
    target = _target(chain, source.shape)
    commits = {}
    res = process_frames(source, target, chain, chunk_frames=chunk, scheduler="synchronous",
                         on_commit=lambda c, t0, t1, w, s: commits.__setitem__(c, s), **kw)
    return target, res, commits


def _gpu(chain, source, chunk, *, seed=0, depth=2, device=None, **kw):
    dev = device or FakeDevice(seed)
    conv = Conveyor(chain, (H, W), device=dev, block_frames=chunk, depth=depth)
    target = _target(chain, source.shape)
    commits = {}
    res = conv.process_frames(source, target, chain, chunk_frames=chunk, scheduler="threads", num_workers=3,
                              on_commit=lambda c, t0, t1, w, s: commits.__setitem__(c, s), **kw)
    return target, res, commits, conv, dev


def _same_states(a, b):
    assert a.keys() == b.keys()
    for c in a:
        assert len(a[c]) == len(b[c])
        for x, y in zip(a[c], b[c]):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _same_records(r1, r2):
    assert [r["t0"] for r in r1] == [r["t0"] for r in r2]
    for a, b in zip(r1, r2):
        assert a["n"] == b["n"] and a["checksum"] == b["checksum"] and a["skipped_write"] == b["skipped_write"]
        assert a["info"] == b["info"]
        if a["measured"] is not None:
            np.testing.assert_array_equal(a["measured"]["mean"]["mean"], b["measured"]["mean"]["mean"])


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", ["afterglow", "denoise", "attenuation"])
def test_conveyor_equals_cpu_engine(kind, seed):
    rng = np.random.default_rng(seed)
    chain = {
        "afterglow": lambda: _chain(rng, measure=True),
        "denoise": lambda: _chain(rng, temporal=True, spatial=True),
        "attenuation": lambda: _chain(rng, output="attenuation", temporal=True, initial="zero"),
    }[kind]()
    src = _Source(_video(rng, 23))
    ref, res_c, com_c = _cpu(chain, src, 4)
    out, res_g, com_g, _, dev = _gpu(chain, src, 4, seed=seed, depth=2 + seed % 2)
    np.testing.assert_array_equal(out, ref)  # NaN in the same places, every value the same
    assert np.isnan(out).any()
    _same_records(res_g, res_c)
    _same_states(com_g, com_c)
    assert not any(s.ops for s in dev.streams)


@pytest.mark.parametrize("storage", [Storage("uint16", 20.0, 500.0), Storage("float16"), Storage("uint16", 1.0, 0.0)])
def test_conveyor_equals_cpu_engine_in_packed_storage(storage):
    """output.dtype float16/uint16: encoded on the device, downloaded at 2 bytes per pixel, bit-identical to the CPU
    engine's encoding; measurements on the decoded values, 'at_limit' counts in the records."""
    rng = np.random.default_rng(5)
    chain = _chain(rng, temporal=True, measure=True, storage=storage)
    src = _Source(_video(rng, 13))
    ref, res_c, com_c = _cpu(chain, src, 4)
    out, res_g, com_g, conv, _ = _gpu(chain, src, 4)
    assert out.dtype == ref.dtype == storage.numpy_dtype and conv.out_dtype == storage.numpy_dtype
    np.testing.assert_array_equal(out, ref)
    _same_records(res_g, res_c)
    _same_states(com_g, com_c)
    exact, _ = chain(src.data)  # the float32 values (the whole video as one block: the blocks chain exactly)
    np.testing.assert_array_equal(ref, storage.encode(exact))
    fin = np.isfinite(exact)
    with np.errstate(over="ignore", invalid="ignore"):
        if storage.dtype == "uint16":
            code = np.rint(exact.astype(np.float64) * storage.scale + storage.offset)
            ends = int(np.sum(fin & ((code <= 1) | (code >= 65535))))
        else:
            ends = int(np.sum(fin & np.isinf(exact.astype(np.float16))))
    assert sum(r["info"]["at_limit"] for r in res_c) == ends
    assert ends > 0 or storage.dtype == "float16"  # uint16 here clips (bright pixels at scale 20, dim ones at 1)
    m = np.concatenate([r["measured"]["mean"]["mean"] for r in res_c])
    np.testing.assert_allclose(m, np.nanmean(storage.decode(storage.encode(exact)), axis=(1, 2)), rtol=1e-6)


def test_buffers_allocated_once_for_any_length():
    counts = []
    for t in (5, 37):
        rng = np.random.default_rng(1)
        chain = _chain(rng, temporal=True)
        _, _, _, conv, dev = _gpu(chain, _Source(_video(rng, t)), 3)
        # pinned output blocks: one per slot plus those lent to the writers at once, never one per block;
        # pinned input blocks: those read ahead plus those in the slots
        assert 1 <= conv.pinned_out_allocations <= conv.depth + conv.lend_limit()
        assert 1 <= conv.pinned_in_allocations <= conv.readers + 1 + conv.depth + 1
        counts.append((dev.allocations, dev.pinned_allocations - conv.pinned_out_allocations
                       - conv.pinned_in_allocations, conv.allocations))
        assert not conv._out_lent  # every block came back
    assert counts[0] == counts[1]
    assert counts[0][2] == 1


def test_upload_of_next_block_is_queued_before_waiting_for_a_download():
    rng = np.random.default_rng(2)
    chain = _chain(rng)
    _, _, _, conv, dev = _gpu(chain, _Source(_video(rng, 20)), 2)
    downloaded = {s.downloaded.name for s in conv._slots}
    seq = [k for k, name in dev.log if k == "h2d" or (k == "sync" and name in downloaded)]
    # depth 2: two uploads are queued before the host first waits for a download, then they alternate
    assert seq[:3] == ["h2d", "h2d", "sync"]
    assert seq.count("h2d") == 10
    for i in range(len(seq) - 1):
        assert not (seq[i] == "sync" and seq[i + 1] == "sync" and i < len(seq) - 3)


def test_states_chain_across_blocks_and_resume():
    rng = np.random.default_rng(3)
    chain = _chain(rng, temporal=True)
    src = _Source(_video(rng, 17))
    ref, _, com_c = _cpu(chain, src, 3)
    # resume after block 2 with its saved states; blocks 3 and 4 were already written (skip_write)
    out, res_g, com_g, _, _ = _gpu(chain, src, 3, start_block=3, initial_states=com_c[2], skip_write={3, 4})
    np.testing.assert_array_equal(out[15:], ref[15:])  # written after the skipped blocks
    assert (out[:15] == -1).all()  # blocks before the start and the skipped ones untouched
    assert [r["skipped_write"] for r in res_g] == [True, True, False]
    _same_states({5: com_g[5]}, {5: com_c[5]})


def test_stateless_skipped_blocks_are_not_read():
    rng = np.random.default_rng(4)
    chain = _chain(rng, afterglow=False)
    src = _Source(_video(rng, 10), bad={4})  # block 1 unreadable, but already written: never read
    out, res, _, _, _ = _gpu(chain, src, 4, skip_write={1})
    ref, _, _ = _cpu(chain, _Source(src.data), 4)
    np.testing.assert_array_equal(out[:4], ref[:4])
    np.testing.assert_array_equal(out[8:], ref[8:])
    assert [r["skipped_write"] for r in res] == [False, True, False]


def test_skipped_frames_as_nan_float_blocks():
    """Blocks with skipped frames come as NaN float32 blocks (the float32 kernel takes them). With stateful stages
    the CPU engine restarts their states after a gap (pipeline.stages.run_stateful), which the GPU engine does not:
    there it refuses on_error skip, and this chain is stateless."""
    rng = np.random.default_rng(5)
    stateful = _chain(rng, temporal=True)
    skip = SimpleNamespace(scheduler="threads", cluster="none", on_error="skip")
    assert "CPU engine" in unsupported_reason(stateful, np.uint16, skip)
    assert unsupported_reason(stateful, np.uint16, SimpleNamespace(scheduler="threads", cluster="none",
                                                                   on_error="fail")) is None
    chain = _chain(rng, afterglow=False, spatial=True)
    assert unsupported_reason(chain, np.uint16, skip) is None
    src = _Source(_video(rng, 16), bad={4, 12})
    ref, res_c, _ = _cpu(chain, src, 4, skip_errors=True)
    out, res_g, _, conv, _ = _gpu(chain, src, 4, skip_errors=True)
    np.testing.assert_array_equal(out, ref)
    _same_records(res_g, res_c)
    assert [r["info"]["skipped"] for r in res_g][1] == [[4, 7, "corrupt"]]
    assert any(np.dtype(np.float32) in s.dev_in for s in conv._slots)  # the float32 kernel took those blocks


def test_stream_float16_and_pinned_inputs():
    rng = np.random.default_rng(6)
    chain = _chain(rng)
    dev = FakeDevice(6)
    conv = Conveyor(chain, (H, W), device=dev, block_frames=4, out_dtype=np.float16)
    video = _video(rng, 12)
    blocks = [video[i:i + 4].copy() for i in range(0, 12, 4)]
    for b in blocks[1:]:
        dev.pinned_ids.add(id(b))  # uploaded without the staging copy
    states, outs = None, []
    for key, out, st in conv.stream(((i, b, True) for i, b in enumerate(blocks)), keep_states=True):
        outs.append(out.copy())
        assert out.dtype == np.float16 and len(st) == 1
    want = []
    for b in blocks:
        o, states = chain(b.copy(), states)
        want.append(o.astype(np.float16))
    for o, w in zip(outs, want):
        np.testing.assert_array_equal(o, w)


def test_block_frames_from_free_memory():
    p = 2048 * 2048
    n = choose_block_frames((2048, 2048), free_bytes=8 * 2**30, n_terms=3)
    assert 1 <= n <= 64
    assert choose_block_frames((2048, 2048), free_bytes=80 * 2**30) == 64  # the cap
    assert choose_block_frames((2048, 2048), free_bytes=80 * 2**30, requested=5) == 5
    plain = choose_block_frames((2048, 2048), free_bytes=8 * 2**30)
    with_response = choose_block_frames((2048, 2048), free_bytes=8 * 2**30, response=True)
    assert with_response * (2 * 6 + 36) * 2048 * 2048 <= 4 * 2**30 < plain * (2 * 6 + 36) * 2048 * 2048
    small = choose_block_frames((2048, 2048), free_bytes=200 * 2**20)
    assert small * 2 * p * 6 <= 100 * 2**20
    with pytest.raises(BackendError, match="not enough for a block of one 2048 x 2048 frame"):
        choose_block_frames((2048, 2048), free_bytes=2**20)


class _Odd:
    name = "odd"
    stateful = True


@pytest.mark.parametrize("kind", ["afterglow", "denoise"])
def test_conveyor_with_a_per_pixel_response_equals_cpu_engine(kind):
    """flatfield.response (a non-linear screen): the head runs as the ops on device copies of the stage's arrays."""
    rng = np.random.default_rng(11)
    chain = _chain(rng, temporal=kind == "denoise", spatial=kind == "denoise", measure=True)
    coeffs = bent_screen_response(rng, H, W)
    chain.flatfield.response = coeffs
    chain.flatfield.inv_gain = None
    src = _Source(_video(rng, 11))
    ref, res_c, com_c = _cpu(chain, src, 4)
    out, res_g, com_g, conv, _ = _gpu(chain, src, 4)
    assert conv.ff_dev is not None and conv.ff_dev.response is not coeffs
    np.testing.assert_array_equal(out, ref)
    assert np.isnan(out).any() and np.isfinite(out).mean() > 0.5
    _same_records(res_g, res_c)
    _same_states(com_g, com_c)
    plain = _chain(np.random.default_rng(11), temporal=kind == "denoise", spatial=kind == "denoise")
    assert not np.allclose(_cpu(plain, src, 4)[0], ref, equal_nan=True)  # the response changed the result


def test_unsupported_chains_and_auto_fallback(monkeypatch):
    rng = np.random.default_rng(7)
    chain = _chain(rng)
    assert unsupported_reason(chain, np.uint16) is None
    assert "uint16 or float32" in unsupported_reason(chain, np.int32)
    chain.stateful.append(_Odd())
    assert "stage 'odd' has no GPU version" in unsupported_reason(chain, np.uint16)
    with pytest.raises(BackendError, match=r"^execution.device=gpu: stage 'odd' has no GPU .*; use --device cpu or auto$"):
        gpu_engine(chain, np.uint16, (H, W), requested="gpu", device=FakeDevice())
    backend._said.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            assert gpu_engine(chain, np.uint16, (H, W), requested="auto", device=FakeDevice()) == (None, "cpu")
    assert len(caught) == 1 and "runs on the CPU: stage 'odd'" in str(caught[0].message)
    chain.stateful.pop()
    dist = SimpleNamespace(scheduler="tcp://h:8786", cluster="none")
    assert "dask.distributed" in unsupported_reason(chain, np.uint16, dist)
    engine, dev = gpu_engine(chain, np.uint16, (H, W), requested="auto", device=FakeDevice())
    assert isinstance(engine, Conveyor) and dev == "gpu"


def test_auto_without_cupy_says_why_once():
    if backend.gpu_unavailable_reason() is None:
        pytest.skip("a GPU is usable here")
    rng = np.random.default_rng(8)
    backend._said.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert backend.resolve_device("auto") == "cpu"
        assert backend.resolve_device("auto") == "cpu"
        assert gpu_engine(_chain(rng), np.uint16, (H, W), requested="auto") == (None, "cpu")
    assert len(caught) == 2  # the device's reason once, the engine's (CuPy missing, same words) once
    with pytest.raises(BackendError, match="execution.device=gpu but CuPy is not installed"):
        backend.resolve_device("gpu")


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_api_run_through_the_conveyor(tmp_path, monkeypatch, dtype):
    """execution.device=gpu end to end with the fake device: the same output as the CPU engine."""
    import zarr

    import pipeline

    src = pipeline.simulate(tmp_path / "sim.zarr", frames=12, size=(32, 40), seed=1)
    over = {"execution": {"chunk_frames": 5}, "flatfield": {"output": "transmission"}, "output": {"dtype": dtype}}
    cpu = pipeline.run(src, tmp_path / "cpu.zarr", over)
    monkeypatch.setattr(backend, "gpu_unavailable_reason", lambda: None)
    monkeypatch.setattr(conveyor, "CupyDevice", lambda: FakeDevice(3))
    gpu = pipeline.run(src, tmp_path / "gpu.zarr", over, overrides=["execution.device=gpu"])
    a = zarr.open_group(str(cpu.output), mode="r")
    b = zarr.open_group(str(gpu.output), mode="r")
    np.testing.assert_array_equal(np.asarray(b["frames"]), np.asarray(a["frames"]))
    assert b["frames"].dtype == np.dtype(dtype) and dict(b["frames"].attrs) == dict(a["frames"].attrs)
    assert b.attrs["provenance"]["device"] == "gpu"
    acc = gpu.time_account
    assert set(acc["gpu_waits_s"]) == {"reads", "device", "writers"} and acc["bound_by"] in {*acc["gpu_waits_s"], "conveyor"}
    assert acc["read_s"] > 0 and acc["write_s"] > 0 and set(acc["threads"]) == {"readers", "writers"}
    assert a.attrs["provenance"]["device"].startswith("cpu")


# --------------------------------------------------------------------------- the kernel's arguments
def _signature(name):
    """Parameter types of an extern "C" kernel of cuda/correct.cu (the macro's list for correct_*)."""
    import re
    from pathlib import Path

    src = (Path(__file__).resolve().parents[1] / "cuda" / "correct.cu").read_text()
    if name.startswith("correct_"):
        body = re.search(r"#define XRAY_CORRECT_KERNEL\(NAME, TIN, TOUT, FLOAT_IN, CODE, V\)\s*\\\s*extern \"C\" __global__ "
                         r"void NAME\((.*?)\)", src, re.DOTALL).group(1)
        tin = {"u16": "unsigned short", "f32": "float"}[name.split("_")[1]]
        tout = {"f16": "unsigned short", "c16": "unsigned short", "f32": "float"}[name.split("_")[2]]
        body = body.replace("TIN", tin).replace("TOUT", tout)
    elif name.startswith("bad_heads_"):
        body = re.search(r"#define XRAY_BAD_HEADS_KERNEL\(NAME, TIN, K\)\s*\\\s*extern \"C\" __global__ "
                         r"void NAME\((.*?)\)", src, re.DOTALL).group(1)
        body = body.replace("TIN", {"u16": "unsigned short", "f32": "float"}[name.split("_")[2]])
    else:
        body = re.search(rf"__global__ void {name}\((.*?)\)", src, re.DOTALL).group(1)
    params = [" ".join(p.replace("\\", " ").split()) for p in body.split(",")]
    return [p.rsplit(" ", 1)[0].replace(" *", "*") for p in params]


_C = {"unsigned short": np.uint16, "float": np.float32, "int": np.int32, "long long": np.int64}


def _check_args(sig, args):
    assert len(sig) == len(args), (sig, args)
    for ctype, arg in zip(sig, args):
        if ctype.endswith("*"):
            base = ctype.replace("const ", "").rstrip("*").strip()
            if isinstance(arg, np.ndarray):
                assert arg.dtype == _C[base] and arg.flags.c_contiguous, (ctype, arg.dtype)
            else:
                assert isinstance(arg, np.uint64) and arg == 0, (ctype, arg)  # NULL
        else:
            assert type(arg) is _C[ctype], (ctype, type(arg))


@pytest.mark.parametrize("raw_dtype,out_dtype,n_terms,bad", [
    (np.uint16, np.float32, 2, True), (np.uint16, np.float16, 0, False), (np.float32, np.float32, 3, False),
    (np.float32, np.float16, 1, True), (np.uint16, np.uint16, 2, True), (np.float32, np.uint16, 0, False)])
def test_kernel_arguments_match_the_cuda_signature(monkeypatch, raw_dtype, out_dtype, n_terms, bad):
    """CorrectKernel's launches against the parameter lists in cuda/correct.cu (count, order of types, NULL)."""
    from pipeline import kernels

    calls = []

    class _Fn:
        def __init__(self, name):
            self.name = name

        def __call__(self, grid, block, args):
            calls.append((self.name, grid, block, args))

    fake_cp = SimpleNamespace(asarray=np.asarray, zeros=np.zeros, empty=np.empty, float32=np.float32,
                              float16=np.float16, uint16=np.uint16)
    monkeypatch.setattr(backend, "cupy_module", lambda: fake_cp)
    monkeypatch.setattr(kernels, "get_kernel", lambda module, fn, defines=(): _Fn(fn))
    rng = np.random.default_rng(9)
    bp = (rng.random((H, W)) < 0.1).astype(np.uint8) if bad else np.zeros((H, W), np.uint8)
    from pipeline.ops.flatfield import neighbour_table

    targets, nb = neighbour_table(bp)
    params = kernels.correction_parameters((H, W), dark=np.zeros((H, W)), inv=np.ones((H, W)), targets=targets,
                                           neighbours=nb, amplitudes=np.full(n_terms, 0.01),
                                           ratios=np.full(n_terms, 0.5), saturation=100.0)
    k = kernels.CorrectKernel(params)
    raw = np.zeros((3, H, W), raw_dtype)
    out = np.zeros((3, H, W), out_dtype)
    k(raw, out, np.zeros((n_terms, H, W), np.float32))
    k.saturate(raw, np.zeros((3, H, W), np.float32))
    if bad:  # first the bad pixels' replacement values: one thread per bad pixel and frame, into k._bad
        bname, bgrid, bblock, bargs = calls.pop(0)
        cols = nb.shape[1]  # the median in registers for narrow tables
        width = "_k8" if cols <= 8 else "_k24" if cols <= 24 else ""
        assert bname == f"bad_heads_{'u16' if raw_dtype == np.uint16 else 'f32'}{width}"
        _check_args(_signature(bname), bargs)
        n_bad = targets.size
        assert bgrid[0] * bblock[0] >= 3 * n_bad > (bgrid[0] - 1) * bblock[0]
        assert bargs[-1] is k._bad and k._bad.size >= 3 * n_bad and bargs[5] == n_bad
    (name, grid, block, args), *after = calls
    if bad:
        assert args[6] is k._bad and args[7] == targets.size  # the main kernel reads the same buffer
        # then the bad pixels' saturation by their neighbours: after the main kernel, and after saturate_good_*
        (mname, mgrid, mblock, margs), (sname, sgrid, _, sargs), (bname2, bgrid2, _, bargs2) = after
        suffix = {np.float16: "f16", np.uint16: "c16"}.get(out_dtype, "f32")
        tin = 'u16' if raw_dtype == np.uint16 else 'f32'
        assert mname == f"saturate_bad_{tin}_{suffix}" and bname2 == f"saturate_bad_{tin}_f32"
        for nm, a in ((mname, margs), (bname2, bargs2)):
            _check_args(_signature(nm), a)
            assert a[5] is k.targets and (k.targets == targets).all()
        assert mgrid[0] * mblock[0] >= 3 * targets.size
        assert sname == f"saturate_good_{tin}"
    else:
        ((sname, sgrid, _, sargs),) = after
        assert sname == f"saturate_{'u16' if raw_dtype == np.uint16 else 'f32'}"
    suffix = {np.float16: "f16", np.uint16: "c16"}.get(out_dtype, "f32")
    lanes = 4 if (H * W) % 4 == 0 else 1  # four pixels a thread where the frame size allows (aligned NumPy buffers)
    assert name == f"correct_{'u16' if raw_dtype == np.uint16 else 'f32'}_{suffix}" + ("_v4" if lanes == 4 else "")
    _check_args(_signature(name), args)
    assert grid[0] * block[0] >= H * W // lanes > (grid[0] - 1) * block[0]
    _check_args(_signature(sname), sargs)
    assert sgrid[0] * block[0] >= 3 * H * W


def test_correction_parameters_checks_and_source_lookup(monkeypatch, tmp_path):
    from pipeline import kernels

    with pytest.raises(ValueError, match="up to 4 afterglow terms"):
        kernels.correction_parameters((H, W), amplitudes=np.ones(5), ratios=np.full(5, 0.5))
    with pytest.raises(ValueError, match=r"amplitudes must have shape \(2,\) or \(2, 12, 17\)"):
        kernels.correction_parameters((H, W), amplitudes=np.ones((2, H, W + 1)), ratios=np.full(2, 0.5))
    with pytest.raises(ValueError, match="dark and inv must have the frame shape"):
        kernels.correction_parameters((H, W), dark=np.zeros((H + 1, W)))
    p = kernels.correction_parameters((H, W), targets=np.array([5]), neighbours=np.array([[4, 6, -1]]))
    assert p.slot[5] == 0 and (np.delete(p.slot, 5) == -1).all() and p.neighbours.dtype == np.int32
    assert not p.nonfinite_to_nan and p.n_terms == 0
    assert kernels.cuda_source("correct").name == "correct.cu"
    (tmp_path / "correct.cu").write_text("// elsewhere")
    monkeypatch.setenv("XRAY_PIPELINE_CUDA_DIR", str(tmp_path))
    assert kernels.cuda_source("correct") == tmp_path / "correct.cu"
    with pytest.raises(BackendError, match="CUDA source 'nothing.cu' not found"):
        kernels.cuda_source("nothing")


class _SlowTarget:
    """An output that takes its time to store a block and checks that nothing changes under it meanwhile."""

    def __init__(self, shape, dtype, rng):
        self.data = np.full(shape, -1, dtype)
        self.rng = rng
        self.torn = 0

    def __setitem__(self, key, value):
        import time

        before = np.array(value)
        time.sleep(float(self.rng.uniform(0, 0.01)))
        self.torn += int(not np.array_equal(before, value, equal_nan=True))  # the block changed while lent
        self.data[key] = value


def test_output_blocks_lent_to_slow_writers_come_back_unchanged(monkeypatch):
    """Blocks written straight from pinned memory: never reused while a writer holds them, at most
    lend_limit() lent at once, recycled (a handful of allocations for 30 blocks), equal to the CPU engine."""
    import pipeline.conveyor as conveyor_mod

    rng = np.random.default_rng(8)
    chain = _chain(rng, temporal=True)
    src = _Source(_video(rng, 61))
    ref, *_ = _cpu(chain, src, 2)
    conv = Conveyor(chain, (H, W), device=FakeDevice(3), block_frames=2)
    monkeypatch.setattr(conveyor_mod, "PINNED_OUT_BYTES", 3 * 2 * H * W * 4)  # three blocks
    assert conv.lend_limit(4) == 3
    peak = []
    lend = conv._lend

    def watched(slot):
        out = lend(slot)
        peak.append(len(conv._out_lent))
        return out

    conv._lend = watched
    target = _SlowTarget(src.shape, np.float32, np.random.default_rng(0))
    conv.process_frames(src, target, chain, chunk_frames=2, num_workers=4)
    assert target.torn == 0 and max(peak) <= 3 and not conv._out_lent
    assert conv.pinned_out_allocations <= conv.depth + 3
    np.testing.assert_array_equal(target.data, ref)


def test_a_failed_write_gives_its_blocks_back(monkeypatch):
    rng = np.random.default_rng(9)
    chain = _chain(rng)
    src = _Source(_video(rng, 30))
    conv = Conveyor(chain, (H, W), device=FakeDevice(4), block_frames=3)

    class Broken(_SlowTarget):
        def __setitem__(self, key, value):
            if key.start >= 9:
                raise OSError("disk full")
            super().__setitem__(key, value)

    with pytest.raises(OSError, match="disk full"):
        conv.process_frames(src, Broken(src.shape, np.float32, rng), chain, chunk_frames=3, num_workers=2)
    assert not conv._out_lent
    target = np.full(src.shape, -1, np.float32)  # the same conveyor runs again, with every block back
    conv.process_frames(src, target, chain, chunk_frames=3, num_workers=2)
    ref, *_ = _cpu(chain, src, 3)
    np.testing.assert_array_equal(target, ref)


def test_states_downloaded_only_for_the_blocks_whose_states_are_saved():
    """With the checkpoint's cadence (on_commit.block_bytes), the conveyor snapshots every k-th block only."""
    from pipeline.io.checkpoint import Checkpoint

    rng = np.random.default_rng(12)
    chain = _chain(rng, temporal=True)
    src = _Source(_video(rng, 23))
    ref, _, commits_c = _cpu(chain, src, 2)
    conv = Conveyor(chain, (H, W), device=FakeDevice(5), block_frames=2)
    state_bytes = sum(4 * int(np.prod(s)) for s in conv.state_shapes)  # lag (2) + temporal (2) frames
    block_bytes = 8 * state_bytes // 3 + 1  # states every third block
    assert Checkpoint.state_blocks(state_bytes, block_bytes) == 3
    commits = {}

    def on_commit(c, t0, t1, written, states):
        commits[c] = states

    on_commit.block_bytes = block_bytes
    target = np.full(src.shape, -1, np.float32)
    conv.process_frames(src, target, chain, chunk_frames=2, on_commit=on_commit)
    np.testing.assert_array_equal(target, ref)
    assert sorted(commits) == list(range(12))
    assert sorted(c for c in commits if commits[c]) == [0, 3, 6, 9]  # the others got no states (not downloaded)
    for c in (0, 3, 6, 9):
        for a, b in zip(commits[c], commits_c[c]):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_kernel_lanes_setting_is_checked(monkeypatch):
    from pipeline import kernels

    fake_cp = SimpleNamespace(asarray=np.asarray, zeros=np.zeros, empty=np.empty, float32=np.float32)
    monkeypatch.setattr(backend, "cupy_module", lambda: fake_cp)
    monkeypatch.setattr(kernels, "get_kernel", lambda module, fn, defines=(): fn)
    params = kernels.correction_parameters((H, W))
    monkeypatch.setenv("XRAY_PIPELINE_KERNEL_LANES", "two")
    with pytest.raises(ValueError, match=r"XRAY_PIPELINE_KERNEL_LANES\) must be 1 or 4, not 'two'"):
        kernels.CorrectKernel(params)
    assert kernels.CorrectKernel(params, lanes=1).lanes == 1
    monkeypatch.setenv("XRAY_PIPELINE_KERNEL_LANES", "1")
    assert kernels.CorrectKernel(params).lanes == 1
    monkeypatch.delenv("XRAY_PIPELINE_KERNEL_LANES")
    assert kernels.CorrectKernel(params).lanes == 4  # 12 x 17 pixels: a multiple of 4


class _CountingTarget(_SlowTarget):
    """A slow target that records how many writes run at once; the first writes wait (up to 2 s) until
    ``want`` of them run together, so the peak does not depend on how fast this machine is."""

    def __init__(self, *a, want=1):
        super().__init__(*a)
        import threading

        self.cv = threading.Condition()
        self.now = self.peak = 0
        self.want = want

    def __setitem__(self, key, value):
        with self.cv:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.cv.notify_all()
            self.cv.wait_for(lambda: self.peak >= self.want, timeout=2.0)
        try:
            super().__setitem__(key, value)
        finally:
            with self.cv:
                self.now -= 1


def test_blocks_of_a_run_are_its_chunks_so_every_writer_gets_one(monkeypatch):
    """A conveyor sized for large blocks (what api.run builds) running a video in small chunks: its
    buffers shrink to the chunk, so the pinned pool lends enough blocks for all the writers at once
    (a pool counted in 64-frame blocks lent two 4-frame chunks and left the other writers idle)."""
    import pipeline.conveyor as conveyor_mod

    rng = np.random.default_rng(13)
    chain = _chain(rng)
    src = _Source(_video(rng, 40))
    ref, *_ = _cpu(chain, src, 2)
    monkeypatch.setattr(conveyor_mod, "PINNED_OUT_BYTES", 16 * 2 * H * W * 4)  # 16 blocks of 2 frames
    conv = Conveyor(chain, (H, W), device=FakeDevice(6))  # sized from the free memory: 64 frames
    assert conv.block_frames == 64
    conv.process_frames(src, np.full(src.shape, -1, np.float32), chain, chunk_frames=8, num_workers=4)  # and reused
    target = _CountingTarget(src.shape, np.float32, np.random.default_rng(1), want=6)
    conv.process_frames(src, target, chain, chunk_frames=2, num_workers=6)
    np.testing.assert_array_equal(target.data, ref)
    assert conv._slots[0].shape[0] == 2 and conv.lend_limit(6) == 14
    assert target.peak == 6  # every writer busy at once (a pool counted in 64-frame blocks allowed 2, in 8-frame 4)


class _SlowSource(_Source):
    def __init__(self, data, delay):
        super().__init__(data)
        self.delay = delay

    def read_block(self, t0, t1, *, skip):
        import time

        time.sleep(self.delay)
        return super().read_block(t0, t1, skip=skip)


class _SleepyTarget:
    def __init__(self, shape, delay):
        self.data = np.full(shape, -1, np.float32)
        self.delay = delay

    def __setitem__(self, key, value):
        import time

        time.sleep(self.delay)
        self.data[key] = value


@pytest.mark.parametrize("slow, writers", [("reads", 1), ("writers", 1), ("writers", 8)])
def test_conveyor_says_what_it_waited_on(slow, writers):
    """The conveyor's waits name the slow side (slow reads or slow writes), and the blocks' seconds add up."""
    from pipeline.api import time_account

    rng = np.random.default_rng(14)
    chain = _chain(rng)
    video = _video(rng, 24)
    src = _SlowSource(video, 0.03 if slow == "reads" else 0.0)
    target = _SleepyTarget(video.shape, 0.03 if slow == "writers" else 0.0)
    conv = Conveyor(chain, (H, W), device=FakeDevice(7), block_frames=2, readers=1, writers=writers)
    import time

    began = time.perf_counter()
    res = conv.process_frames(src, target, chain, chunk_frames=2, num_workers=writers)
    wall = time.perf_counter() - began
    ref, *_ = _cpu(chain, _Source(video), 2)
    np.testing.assert_array_equal(target.data, ref)
    acc = time_account(res, 1.0, threads={"readers": 1, "writers": 1}, waits=conv.waits, busy_s=conv.busy_s)
    assert acc["bound_by"] == slow
    assert 0 < acc["gpu_busy_s"] and sum(conv.waits.values()) + conv.busy_s <= wall  # the thread's time, split
    assert conv.waits[slow] > (0.2 if writers == 1 else 0.03)  # 12 blocks of 30 ms (with 8 writers: the last ones)
    key = "read_s" if slow == "reads" else "write_s"
    assert 12 * 0.03 <= acc[key] < 12 * 0.03 + 0.5  # every block's sleep, counted once


class _IntoSource(_Source):
    """A source that reads into the caller's buffer (as FrameReader.read_block(out=)), a little slowly."""

    def __init__(self, data, rng):
        super().__init__(data)
        self.rng = rng
        self.into = 0

    def read_block(self, t0, t1, *, skip, out=None):
        import time

        time.sleep(float(self.rng.uniform(0, 0.003)))
        if out is None:
            return super().read_block(t0, t1, skip=skip)
        out[...] = self.data[t0:t1]
        self.into += 1
        return out, []


@pytest.mark.parametrize("into", [True, False])
def test_blocks_are_read_into_recycled_pinned_blocks(into):
    """The readers fill the conveyor's pinned blocks (read into, or copied into in the reading thread), the
    slots upload from them without a staging copy, and a block is reused only once its upload has run
    (the fake device runs uploads late and out of order: an early reuse would change the output)."""
    rng = np.random.default_rng(15)
    chain = _chain(rng, temporal=True)
    video = _video(rng, 81)
    src = _IntoSource(video, np.random.default_rng(2)) if into else _Source(video)
    conv = Conveyor(chain, (H, W), device=FakeDevice(9), block_frames=2, readers=3)
    target = np.full(video.shape, -1, np.float32)
    conv.process_frames(src, target, chain, chunk_frames=2)
    ref, *_ = _cpu(chain, _Source(video), 2)
    np.testing.assert_array_equal(target, ref)
    assert not any(slot.pin_in for slot in conv._slots)  # nothing staged: every block was pinned already
    assert conv.pinned_in_allocations <= conv.readers + 1 + conv.depth + 1 < 41  # recycled, not one a block
    assert not conv._in_lent and len(conv._in_free) == conv.pinned_in_allocations
    if into:
        assert src.into == 41
