"""Chunking must not change a single bit of the result."""

import contextlib
import numpy as np
import pytest
import zarr

import pipeline
from pipeline.ops.afterglow import add_lag, steady_state


@pytest.fixture(scope="module")
def one_chunk(sim_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "whole.zarr"
    pipeline.run(sim_small, out, overrides=["execution.chunk_frames=48"])
    return zarr.open_group(str(out), mode="r")["frames"][:]


@pytest.mark.parametrize("chunk", [1, 5, 16, 47])
@pytest.mark.parametrize("scheduler", ["threads", "synchronous"])
def test_chunked_equals_one_chunk(sim_small, one_chunk, tmp_path, chunk, scheduler):
    out = tmp_path / "c.zarr"
    res = pipeline.run(sim_small, out, overrides=[f"execution.chunk_frames={chunk}", f"execution.scheduler={scheduler}"])
    got = zarr.open_group(str(out), mode="r")["frames"]
    # stored in chunks a viewer reads (<= 16 frames), whole ones per block: a divisor of the block (47: prime)
    assert got.chunks[0] == max(d for d in range(1, min(chunk, 16) + 1) if chunk % d == 0)
    np.testing.assert_array_equal(got[:], one_chunk)  # bit for bit (NaN == NaN)
    assert res.frames == 48


def test_output_equals_direct_op_on_whole_video(sim_small, one_chunk):
    """The scheduled run equals the op applied to the whole video in memory (second implementation path)."""
    from pipeline.ops.flatfield import correct_frames

    cal = pipeline.calibrate(sim_small)
    raw = zarr.open_group(str(sim_small), mode="r")["frames"][:]
    np.testing.assert_array_equal(correct_frames(raw, cal, saturation_level=65535), one_chunk)


def test_corrected_video_recovers_truth(sim_small, one_chunk):
    """Against the simulator's noise-free truth: no bias, residual at the quantum-noise level."""
    g = zarr.open_group(str(sim_small), mode="r")
    ag = g["truth"].attrs["afterglow"]
    prompt = g["truth/frames"][:]
    # flat-field alone leaves the afterglow in: compare with the lagged truth (steady state before frame 0)
    truth, _ = add_lag(prompt, ag["amplitudes"], ag["ratios_per_frame"],
                       steady_state(prompt[0] * ag["dc_gain"], ag["amplitudes"], ag["ratios_per_frame"]))
    resid = one_chunk - truth
    assert abs(np.nanmean(resid)) < 0.002 * truth.mean()
    raw_rel = np.std(g["frames"][0].astype(float) / truth[0])
    assert np.nanstd(resid / truth) < 0.5 * raw_rel  # gain non-uniformity is gone, noise remains


def test_process_scheduler_equals_threads(sim_small, one_chunk, tmp_path):
    out = tmp_path / "p.zarr"
    pipeline.run(sim_small, out, overrides=["execution.chunk_frames=16", "execution.scheduler=processes",
                                            "execution.num_workers=2"])
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["frames"][:], one_chunk)


class _Slow:
    """A stateful stage far slower than reading: adds the block count so far, 10 ms a block."""

    name = "slow"

    def initial_state(self, block):
        return 0.0

    def __call__(self, block, state):
        import time

        time.sleep(0.01)
        return block + state, state + 1.0


def test_reading_ahead_of_a_slow_stateful_stage_is_bounded():
    """Blocks wait for the time-ordered stage in bounded number: memory does not grow with the video."""
    import threading

    from pipeline.schedule import _read_ahead, process_frames

    class Counting:
        stateful = ()
        measures = ()

        def __init__(self):
            self.lock = threading.Lock()
            self.inflight = self.peak = 0

        def head(self, raw):
            with self.lock:
                self.inflight += 1
                self.peak = max(self.peak, self.inflight)
            return raw.astype(np.float32), None

        def tail(self, payload):
            with self.lock:
                self.inflight -= 1
            return payload[0]

    chain = Counting()
    chain.stateful = [_Slow()]
    src = np.zeros((120, 4, 4), np.uint16)
    out = np.zeros((120, 4, 4), np.float32)
    process_frames(src, out, chain, chunk_frames=2, scheduler="threads", num_workers=2)
    assert out[:, 0, 0].tolist() == np.repeat(np.arange(60.0), 2).tolist()  # states chained in time order
    assert chain.inflight == 0
    assert chain.peak <= _read_ahead("threads", "none", 2) + 1 < 60


def test_blocks_are_recycled_only_when_asked(sim_small, tmp_path):
    """An in-memory Zarr store without a compressor keeps views of written arrays: recycling must be opt-in."""
    from zarr.storage import MemoryStore

    from pipeline.config import RunConfig
    from pipeline.io.zarr_store import open_input
    from pipeline.schedule import process_frames
    from pipeline.stages import build_chain

    ds = open_input(sim_small)
    cal = pipeline.calibrate(sim_small)
    chain = build_chain(RunConfig(), cal, ds.frames.dtype)
    t, h, w = ds.shape
    ref = np.zeros((t, h, w), np.float32)
    process_frames(ds.reader(), ref, chain, chunk_frames=4, scheduler="synchronous")
    mem = zarr.create_array(store=MemoryStore(), shape=(t, h, w), chunks=(4, h, w), dtype="float32",
                            compressors=None)
    process_frames(ds.reader(), mem, chain, chunk_frames=4, scheduler="synchronous")
    np.testing.assert_array_equal(mem[:], ref)


@pytest.mark.parametrize("scheduler", ["threads", "synchronous"])
def test_time_account_counts_each_activity_once(scheduler):
    """Each block's seconds: its sleeps in reading, a stateful stage and writing, counted once and where they happen."""
    import time

    from pipeline.api import time_account
    from pipeline.schedule import process_frames

    class SlowSource:
        def __init__(self, data):
            self.data, self.shape, self.dtype = data, data.shape, data.dtype

        def read_block(self, t0, t1, *, skip):
            time.sleep(0.02)
            return self.data[t0:t1].copy(), []

    class SlowTarget:
        def __init__(self, shape):
            self.data = np.zeros(shape, np.float32)

        def __setitem__(self, key, value):
            time.sleep(0.03)
            self.data[key] = value

    class Chain:
        measures = ()
        stateful = [_Slow()]

        def head(self, raw):
            return raw.astype(np.float32), None

        def tail(self, payload):
            return payload[0]

    src = SlowSource(np.ones((20, 3, 3), np.uint16))
    out = SlowTarget(src.shape)
    start = time.perf_counter()
    res = process_frames(src, out, Chain(), chunk_frames=2, scheduler=scheduler, num_workers=2)
    wall = time.perf_counter() - start
    assert out.data[:, 0, 0].tolist() == np.repeat(np.arange(1.0, 11.0), 2).tolist()
    threads = 1 if scheduler == "synchronous" else 2
    acc = time_account(res, wall, threads=threads)
    for key, sleep in (("read_s", 0.02), ("stages_s", 0.01), ("write_s", 0.03)):
        assert 10 * sleep <= acc[key] < 10 * sleep + 0.25, (key, acc)
    busy = acc["read_s"] + acc["stages_s"] + acc["write_s"] + acc["record_s"]
    assert busy <= threads * wall * 1.05  # thread-seconds fit in the threads' time
    assert all(set(r["info"]) == {"t0", "t1", "skipped", "nonfinite"} for r in res)  # the seconds left it


class _IntoSource:
    """read_block(out=) into the caller's buffer; remembers every buffer it was given."""

    def __init__(self, data):
        self.data, self.shape, self.dtype = data, data.shape, data.dtype
        self.buffers: dict = {}

    def read_block(self, t0, t1, *, skip, out=None):
        if out is None:
            return self.data[t0:t1].copy(), []
        self.buffers[id(out)] = out  # kept alive: ids stay unique
        out[...] = self.data[t0:t1]
        return out, []


@pytest.mark.parametrize("scheduler", ["threads", "synchronous"])
def test_raw_blocks_are_read_into_reused_buffers(scheduler):
    """The CPU engine reads each block into a buffer the head has finished with: a few buffers serve the video."""
    from pipeline.schedule import process_frames
    from pipeline.stages import Chain

    rng = np.random.default_rng(1)
    src = _IntoSource(rng.integers(0, 4000, (96, 8, 6)).astype(np.uint16))
    out = np.zeros(src.shape, np.float32)
    process_frames(src, out, Chain(None), chunk_frames=4, scheduler=scheduler, num_workers=2, recycle=True)
    np.testing.assert_array_equal(out, src.data.astype(np.float32))
    assert 1 <= len(src.buffers) <= (2 if scheduler == "synchronous" else 8) < 24  # 24 blocks


def test_a_raw_block_the_head_keeps_is_not_reused():
    """A head that returns (a view of) its raw block keeps it: the next read must not land in it."""
    from pipeline.schedule import process_frames
    from pipeline.stages import Chain

    class KeepsRaw(Chain):
        def head(self, raw):
            return raw[:, ::1], None  # a view of the raw block, handed on

        def tail(self, payload):
            return payload[0]

    rng = np.random.default_rng(2)
    src = _IntoSource(rng.uniform(0, 1, (64, 8, 6)).astype(np.float32))
    out = np.zeros(src.shape, np.float32)
    process_frames(src, out, KeepsRaw(None), chunk_frames=4, scheduler="threads", num_workers=2, recycle=True)
    np.testing.assert_array_equal(out, src.data)
    assert len(src.buffers) == 16  # one buffer a block: none given back while the head's view of it lived


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8])
@pytest.mark.parametrize("numba", [True, False])
def test_frame_statistics_integer_frames_against_numpy(dtype, numba):
    # exact int64 sums: the mean is NumPy's float64 mean; the std NumPy's two-pass float64 one to its rounding.
    # Values near the dtype's ends (squares near 2^32) and a block size that does not divide the frames.
    from pipeline import jit
    from pipeline.schedule import frame_statistics

    info = np.iinfo(dtype)
    rng = np.random.default_rng(1)
    stack = rng.integers(info.min, int(info.max) + 1, (21, 13, 17)).astype(dtype)
    stack[:, 0, 0] = info.max  # zero variance
    ctx = jit.disabled() if not numba else contextlib.nullcontext()
    with ctx:
        mean, std = frame_statistics(stack, with_std=True, block_frames=8, scheduler="threads")
    ref_mean = stack.mean(axis=0, dtype=np.float64)
    ref_std = stack.std(axis=0, dtype=np.float64, ddof=1)
    assert mean.dtype == std.dtype == np.float32
    np.testing.assert_array_equal(mean, ref_mean.astype(np.float32))
    np.testing.assert_allclose(std, ref_std, rtol=1e-6, atol=0)
    assert std[0, 0] == 0.0
    mean1, none = frame_statistics(stack[:1], with_std=True)  # one frame: no std
    assert none is None
    np.testing.assert_array_equal(mean1, stack[0].astype(np.float32))


def test_frame_statistics_exact_only_where_int64_holds():
    from pipeline.schedule import _exact_moments

    assert _exact_moments(np.uint16, 30_000) and not _exact_moments(np.uint16, 40_000)
    assert not _exact_moments(np.uint32, 2) and not _exact_moments(np.float32, 2)
    assert _exact_moments(np.uint8, 1_000_000)


def test_frame_statistics_big_endian_frames():
    # Zarr hands chunks back in their stored byte order: the Numba kernel declines those, NumPy sums them
    from pipeline.schedule import frame_statistics

    stack = np.arange(4 * 8 * 8, dtype=">u2").reshape(4, 8, 8)
    mean, std = frame_statistics(stack, with_std=True)
    np.testing.assert_array_equal(mean, stack.mean(axis=0, dtype=np.float64).astype(np.float32))
    np.testing.assert_allclose(std, stack.std(axis=0, dtype=np.float64, ddof=1), rtol=1e-6)
