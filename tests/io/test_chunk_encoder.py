"""The output writer's own chunk encoder (whole-frame chunks, compressed into a reused buffer) against Zarr.

The truth is Zarr itself: the same blocks written through Zarr's API into an array created alike
must give the same chunk files, byte for byte, and read back through Zarr as the data.
"""

import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pipeline.io import chunks, zarr_store
from pipeline.io.zarr_store import ChunkEncoder, FrameWriter, OutputWriter

T, H, W, C = 12, 24, 20, 4


def _pair(tmp_path, codec, dtype, *, shape=(T, H, W), chunks=(C, H, W)):
    """Two arrays created alike in two outputs: one for Zarr's writes, one for the FrameWriter's."""
    outs = []
    for name in ("zarr", "ours"):
        w = OutputWriter(tmp_path / f"{name}-{codec}-{np.dtype(dtype).name}.zarr")
        a = w.create("frames", shape, dtype, chunks=chunks, codec=codec, level=1)
        outs.append((w, a))
    return outs


def _data(dtype, shape=(T, H, W), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.poisson(300, shape).astype(np.float64) / (300.0 if np.dtype(dtype).kind == "f" else 1.0)
    x[0, :3, :3] = 0  # some runs for the compressor to find
    return x.astype(dtype)


def _chunk_files(w, a):
    root = w.partial / a.path
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != "zarr.json"}


@pytest.mark.parametrize("codec", ["bitshuffle-lz4", "lz4", "none"])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float16])
def test_chunk_files_are_the_bytes_zarr_writes(tmp_path, codec, dtype):
    (wz, az), (wo, ao) = _pair(tmp_path, codec, dtype)
    data = _data(dtype)
    fw = wo.frames_target(ao)
    assert isinstance(fw._encoder, ChunkEncoder)
    for t0 in range(0, T, C):
        az[t0:t0 + C] = data[t0:t0 + C]
        assert fw._encoder.write(t0, t0 + C, np.ascontiguousarray(data[t0:t0 + C]))  # taken, not passed on
    zf, of = _chunk_files(wz, az), _chunk_files(wo, ao)
    assert sorted(zf) == sorted(of) and len(of) == T // C
    for k in zf:
        assert zf[k] == of[k], f"chunk {k} differs from Zarr's"
    np.testing.assert_array_equal(np.asarray(ao[...]), data)


def test_blocks_that_are_not_whole_chunks_go_through_zarr(tmp_path):
    shape = (T + 2, H, W)  # a short last chunk
    (_, _), (wo, ao) = _pair(tmp_path, "bitshuffle-lz4", np.float32, shape=shape)
    data = _data(np.float32, shape)
    fw = wo.frames_target(ao)
    enc = fw._encoder
    assert not enc.write(T, T + 2, data[T:])  # the short last chunk: Zarr pads it with the fill value
    assert not enc.write(2, 6, data[2:6])  # not aligned with the chunks
    assert not enc.write(0, 4, np.asfortranarray(data[0:4]))  # not C-contiguous
    assert not enc.write(0, 4, data[0:4].astype(np.float64))  # another dtype
    fw[0:2] = data[0:2]  # the FrameWriter passes each of those to Zarr
    fw[2:6] = data[2:6]
    fw[6:T] = data[6:T]
    fw[T:] = data[T:]
    np.testing.assert_array_equal(np.asarray(ao[...]), data)


@pytest.mark.parametrize("case", ["zstd", "spatial chunks"])
def test_other_layouts_are_written_by_zarr(tmp_path, case):
    codec, chunks = ("zstd", (C, H, W)) if case == "zstd" else ("bitshuffle-lz4", (C, H // 2, W))
    (_, _), (wo, ao) = _pair(tmp_path, codec, np.uint16, chunks=chunks)
    fw = wo.frames_target(ao)
    assert fw._encoder is None
    data = _data(np.uint16)
    for t0 in range(0, T, C):
        fw[t0:t0 + C] = data[t0:t0 + C]
    np.testing.assert_array_equal(np.asarray(ao[...]), data)


def test_without_c_blosc_zarr_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(chunks, "_blosc_compress_ctx", lambda: None)
    (_, _), (wo, ao) = _pair(tmp_path, "bitshuffle-lz4", np.float32)
    fw = wo.frames_target(ao)
    assert fw._encoder is None
    data = _data(np.float32)
    fw[0:C] = data[0:C]
    np.testing.assert_array_equal(np.asarray(ao[0:C]), data[0:C])


def test_threads_writing_at_once_each_use_their_own_buffer(tmp_path):
    n = 48
    (_, _), (wo, ao) = _pair(tmp_path, "bitshuffle-lz4", np.float32, shape=(n, H, W))
    data = _data(np.float32, (n, H, W), seed=3)
    fw = wo.frames_target(ao)
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda t0: fw.__setitem__(slice(t0, t0 + C), np.ascontiguousarray(data[t0:t0 + C])),
                    range(0, n, C)))
    np.testing.assert_array_equal(np.asarray(ao[...]), data)


def test_a_failed_write_leaves_the_old_chunk_and_no_temporary_file(tmp_path, monkeypatch):
    (_, _), (wo, ao) = _pair(tmp_path, "bitshuffle-lz4", np.uint16)
    data = _data(np.uint16)
    fw = wo.frames_target(ao)
    fw[0:C] = data[0:C]
    before = _chunk_files(wo, ao)

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(chunks.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        fw[0:C] = data[C:2 * C]
    monkeypatch.undo()
    assert _chunk_files(wo, ao) == before  # the old chunk whole, nothing else left beside it
    np.testing.assert_array_equal(np.asarray(ao[0:C]), data[0:C])


def test_a_writer_pickles_to_worker_processes(tmp_path):
    (_, _), (wo, ao) = _pair(tmp_path, "bitshuffle-lz4", np.uint16)
    fw = pickle.loads(pickle.dumps(wo.frames_target(ao)))
    assert isinstance(fw, FrameWriter) and isinstance(fw._encoder, ChunkEncoder)
    data = _data(np.uint16)
    fw[C:2 * C] = data[C:2 * C]
    assert fw.shape == (T, H, W) and fw.chunks == (C, H, W)  # everything else is the array's
    np.testing.assert_array_equal(np.asarray(ao[C:2 * C]), data[C:2 * C])


def test_every_chunk_is_stored_also_in_an_array_opened_again(tmp_path):
    """Resuming opens the output again, and Zarr forgets write_empty_chunks: the writer stores empty chunks anyway."""
    import zarr

    w = OutputWriter(tmp_path / "out.zarr")
    w.create("frames", (T + 2, H, W), np.float32, chunks=(C, H, W), fill_value=np.nan)
    again = OutputWriter(tmp_path / "out.zarr", resume=True, lock=w.lock)  # (one writer per output: its lock)
    fw = again.frames_target(again.group["frames"])
    empty = np.full((C, H, W), np.nan, np.float32)
    fw[0:C] = empty  # through the encoder
    fw[T:T + 2] = empty[:2]  # the short last chunk, through Zarr
    root = again.partial / "frames"
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != "zarr.json")
    assert names == ["c/0/0/0", f"c/{T // C}/0/0"]
    assert np.isnan(np.asarray(zarr.open_array(str(root))[...])).all()


def test_a_dropped_writer_frees_its_buffers_at_once(tmp_path):
    """No reference cycle: each thread's chunk-sized buffer goes with the writer, not at some later GC."""
    import gc
    import weakref

    (_, _), (wo, ao) = _pair(tmp_path, "bitshuffle-lz4", np.float32)
    fw = wo.frames_target(ao)
    fw[0:C] = _data(np.float32)[0:C]
    gone = weakref.ref(fw._encoder)
    gc.disable()
    try:
        del fw
        assert gone() is None
    finally:
        gc.enable()
