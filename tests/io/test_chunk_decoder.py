"""The input reader's own chunk decoder (whole-frame chunks, decompressed in the reading thread) against Zarr."""

import numpy as np
import pytest
import zarr

from pipeline.io import chunks, zarr_store
from pipeline.io.zarr_store import ChunkDecoder, ChunkError, FrameReader


def _array(tmp_path, codec, dtype, *, shape=(11, 6, 5), chunks=(4, 6, 5), fill_value=0, **kw):
    g = zarr.open_group(str(tmp_path / f"{codec}-{np.dtype(dtype).name}.zarr"), mode="w", zarr_format=3)
    comp = {"zstd": [zarr.codecs.ZstdCodec(level=3)], "none": None,
            "bitshuffle-lz4": [zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle")],
            "lz4": [zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")],
            "gzip": [zarr.codecs.GzipCodec(level=1)]}[codec]
    a = g.create_array("frames", shape=shape, dtype=dtype, chunks=chunks, compressors=comp, fill_value=fill_value,
                       **kw)
    rng = np.random.default_rng(0)
    data = (rng.uniform(0, 4000, shape)).astype(dtype)
    a[...] = data
    return g, a, data


def _reader(g, a):
    return FrameReader(a, "test", root=g.store.root, check_missing=True)  # as for this project's own data


@pytest.mark.parametrize("codec", ["bitshuffle-lz4", "lz4", "zstd", "none"])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_every_block_reads_as_zarr_reads_it(tmp_path, codec, dtype):
    g, a, data = _array(tmp_path, codec, dtype)
    r = _reader(g, a)
    assert isinstance(r._decoder, ChunkDecoder)
    for start in range(11):
        for stop in range(start + 1, 12):  # aligned, unaligned, spanning chunks, the short last chunk
            got, bad = r.read_block(start, stop, skip=False)
            assert bad == [] and got.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(got, data[start:stop])


def test_the_decoder_reads_not_zarr(tmp_path, monkeypatch):
    """Blocks come from the decoder (Zarr's read path is not called); Zarr stays the fallback for what it cannot read."""
    g, a, data = _array(tmp_path, "bitshuffle-lz4", np.uint16)
    r = _reader(g, a)

    def no_zarr(*args, **kw):
        raise AssertionError("read through Zarr")

    monkeypatch.setattr(zarr.Array, "__getitem__", no_zarr)
    np.testing.assert_array_equal(r.read_block(2, 10, skip=False)[0], data[2:10])


@pytest.mark.parametrize("case", ["spatial chunks", "gzip", "sharded", "zarr v2"])
def test_other_layouts_are_read_by_zarr(tmp_path, case):
    if case == "spatial chunks":
        g, a, data = _array(tmp_path, "zstd", np.uint16, chunks=(4, 3, 5))
    elif case == "gzip":
        g, a, data = _array(tmp_path, "gzip", np.uint16)
    elif case == "sharded":
        g, a, data = _array(tmp_path, "zstd", np.uint16, chunks=(2, 6, 5), shards=(4, 6, 5))
    else:
        g = zarr.open_group(str(tmp_path / "v2.zarr"), mode="w", zarr_format=2)
        data = np.arange(11 * 6 * 5, dtype=np.uint16).reshape(11, 6, 5)
        a = g.create_array("frames", shape=data.shape, dtype=data.dtype, chunks=(4, 6, 5))
        a[...] = data
    r = _reader(g, a)
    assert r._decoder is None
    np.testing.assert_array_equal(r.read_block(3, 9, skip=False)[0], data[3:9])


def test_missing_and_corrupt_chunks_as_with_zarr(tmp_path):
    g, a, data = _array(tmp_path, "bitshuffle-lz4", np.uint16, fill_value=7)
    r = _reader(g, a)
    folder = r._dir
    (folder / a.metadata.encode_chunk_key((1, 0, 0))).unlink()  # frames 4-7
    r.check_missing = False  # data from a tool that leaves empty chunks out: the fill value, as Zarr reads it
    got = r.read_block(0, 11, skip=False)[0]
    np.testing.assert_array_equal(got, np.asarray(a[0:11]))
    assert (got[4:8] == 7).all() and np.array_equal(got[8:], data[8:])
    r.check_missing = True  # the project's own data: a missing chunk is a lost chunk
    with pytest.raises(ChunkError, match="frames 4-7 .*chunk file missing"):
        r.read_block(0, 11, skip=False)
    key = folder / a.metadata.encode_chunk_key((2, 0, 0))  # frames 8-10
    key.write_bytes(key.read_bytes()[:40])  # torn
    with pytest.raises(ChunkError, match="frames 8-10 .*does not decode"):
        r.read_block(8, 11, skip=False)
    got, bad = r.read_block(0, 11, skip=True)
    assert [b[:2] for b in bad] == [(4, 7), (8, 10)] and np.isnan(got[4:]).all()
    np.testing.assert_array_equal(got[:4], data[:4])


def test_pickled_reader_decodes_too(tmp_path):
    import pickle

    g, a, data = _array(tmp_path, "zstd", np.float32)
    r = pickle.loads(pickle.dumps(_reader(g, a)))
    assert isinstance(r._decoder, ChunkDecoder)
    np.testing.assert_array_equal(r.read_block(1, 11, skip=False)[0], data[1:11])


def test_packed_outputs_read_back_as_values_through_zarr(tmp_path):
    """A float16/uint16 output opened as an input reads its decoded values (the decoder leaves those to Zarr)."""
    import pipeline

    sim = pipeline.simulate(tmp_path / "sim.zarr", frames=6, size=(32, 40), seed=2)
    res = pipeline.run(sim, tmp_path / "u16.zarr", overrides=["output.dtype=uint16"])
    ds = zarr_store.open_input(res.output)
    r = ds.reader()
    assert r._decoder is None and r.dtype == np.float32
    np.testing.assert_array_equal(r.read_block(0, 6, skip=False)[0], np.asarray(ds.frames[0:6]))


@pytest.mark.parametrize("decoder", [True, False])
def test_blocks_read_into_the_callers_buffer(tmp_path, decoder):
    """out=: the block lands in the caller's (pinned) buffer, through the decoder or through Zarr."""
    g, a, data = _array(tmp_path, "bitshuffle-lz4", np.uint16)
    r = _reader(g, a)
    if not decoder:
        r._decoder = None
    buf = np.full((20, 6, 5), 9, np.uint16)
    got, bad = r.read_block(3, 10, skip=False, out=buf[:7])
    assert bad == [] and got.ctypes.data == buf.ctypes.data
    np.testing.assert_array_equal(buf[:7], data[3:10])
    assert (buf[7:] == 9).all()
    with pytest.raises(ValueError, match="out must be a C-contiguous uint16 array of shape"):
        r.read_block(3, 10, skip=False, out=buf[:6])
    (r._dir / a.metadata.encode_chunk_key((1, 0, 0))).unlink()
    got, bad = r.read_block(3, 10, skip=True, out=buf[:7])  # unreadable frames: a new NaN float32 block
    assert got.dtype == np.float32 and bad and np.isnan(got[1:5]).all()


@pytest.mark.parametrize("codec", ["bitshuffle-lz4", "zstd", "none"])
def test_a_chunk_of_the_wrong_size_is_corrupt(tmp_path, codec):
    """A chunk that decompresses to fewer frames than a chunk holds is refused (as by Zarr), never half-filled."""
    from numcodecs import Zstd, blosc

    g, a, data = _array(tmp_path, codec, np.uint16)
    r = _reader(g, a)
    small = np.full((2, 6, 5), 1234, np.uint16)  # 2 of a chunk's 4 frames
    payload = {"bitshuffle-lz4": lambda: blosc.compress(small.tobytes(), b"lz4", 1, blosc.BITSHUFFLE, 2),
               "zstd": lambda: Zstd(3).encode(small), "none": small.tobytes}[codec]()
    (r._dir / a.metadata.encode_chunk_key((1, 0, 0))).write_bytes(payload)
    with pytest.raises(ChunkError, match="frames 4-7 .*does not decode"):
        r.read_block(0, 8, skip=False, out=np.full((8, 6, 5), 4242, np.uint16))


def _counting(r, monkeypatch, name="_decode"):
    """Count the calls of r's decoder's ``name`` (whole chunks: _decode; parts of Blosc chunks: _decode_part)."""
    calls = []
    dec = r._decoder
    inner = getattr(dec, name)

    def counted(*args):
        calls.append(args[-1].shape[0])
        return inner(*args)

    monkeypatch.setattr(dec, name, counted)
    return calls


def _blocks_in_threads(r, t, block=4):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        return np.concatenate(list(pool.map(lambda s: r.read_block(s, min(s + block, t), skip=False)[0],
                                            range(0, t, block))))


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_blocks_smaller_than_blosc_chunks_decompress_only_their_part(tmp_path, monkeypatch, dtype):
    """4-frame blocks of 16-frame Blosc chunks (a 2048^2 run of simulated data): c-blosc's getitem decompresses
    each block's part; no chunk is decompressed whole, none is kept."""
    g, a, data = _array(tmp_path, "bitshuffle-lz4", dtype, shape=(70, 96, 130), chunks=(16, 96, 130))
    r = _reader(g, a)
    assert r._decoder._decode_part is not None
    whole = _counting(r, monkeypatch)
    parts = _counting(r, monkeypatch, "_decode_part")
    np.testing.assert_array_equal(_blocks_in_threads(r, 70), data)
    assert whole == [] and sorted(parts) == [2] + [4] * 17  # the last block: frames 68-69
    assert r._decoder._parts == {}
    for start, stop in ((1, 3), (15, 17), (3, 37), (69, 70)):  # odd parts, across chunks
        np.testing.assert_array_equal(r.read_block(start, stop, skip=False)[0], data[start:stop])


def test_blocks_smaller_than_other_chunks_decode_each_chunk_once(tmp_path, monkeypatch):
    """A codec without partial decoding (Zstd): one decode a chunk, not one a block, from many threads at once;
    every chunk dropped once its frames were served."""
    g, a, data = _array(tmp_path, "zstd", np.uint16, shape=(70, 6, 5), chunks=(16, 6, 5))
    r = _reader(g, a)
    assert r._decoder._decode_part is None
    calls = _counting(r, monkeypatch)
    np.testing.assert_array_equal(_blocks_in_threads(r, 70), data)
    assert len(calls) == 5  # chunks 0-4 (the last one holds 6 frames)
    assert r._decoder._parts == {}  # nothing kept after the run


def test_partial_cache_is_bounded_and_reads_stay_right(tmp_path, monkeypatch):
    """Chunks read only in part (never every frame) are dropped oldest first beyond the limit, and read again."""
    g, a, data = _array(tmp_path, "zstd", np.float32, shape=(64, 6, 5), chunks=(8, 6, 5))
    r = _reader(g, a)
    dec = r._decoder
    dec._keep = 2
    calls = _counting(r, monkeypatch)
    for s in range(0, 64, 8):  # the first half of every chunk only
        np.testing.assert_array_equal(r.read_block(s, s + 4, skip=False)[0], data[s:s + 4])
        assert len(dec._parts) <= 2
    assert len(calls) == 8
    np.testing.assert_array_equal(r.read_block(4, 8, skip=False)[0], data[4:8])  # chunk 0 was dropped: decoded again
    assert len(calls) == 9
    np.testing.assert_array_equal(r.read_block(60, 64, skip=False)[0], data[60:64])  # chunk 7 was kept
    assert len(calls) == 9 and 7 not in dec._parts  # and now served whole: gone


@pytest.mark.parametrize("codec", ["bitshuffle-lz4", "zstd"])
def test_a_partial_chunk_that_does_not_decode_fails_every_reader_and_is_tried_again(tmp_path, codec):
    from concurrent.futures import ThreadPoolExecutor

    g, a, data = _array(tmp_path, codec, np.uint16, shape=(32, 6, 5), chunks=(16, 6, 5))
    r = _reader(g, a)
    path = r._decoder._path(0)
    good = path.read_bytes()
    path.write_bytes(good[:40])  # torn
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(r.read_block, s, s + 4, skip=False) for s in range(0, 16, 4)]
    for f in futures:
        with pytest.raises(ChunkError, match="chunk does not decode"):
            f.result()
    assert r._decoder._parts == {}
    path.write_bytes(good)  # restored: read again, not a remembered failure
    np.testing.assert_array_equal(r.read_block(4, 8, skip=False)[0], data[4:8])


@pytest.mark.parametrize("cname_shuffle", [("lz4", "bitshuffle"), ("lz4", "shuffle"), ("zstd", "noshuffle")])
def test_parts_of_chunks_of_many_blosc_blocks(tmp_path, cname_shuffle):
    """Chunks big enough that Blosc splits them into many blocks: any range of frames, block edges inside
    frames, decompresses to Zarr's values."""
    cname, shuffle = cname_shuffle
    g = zarr.open_group(str(tmp_path / "big.zarr"), mode="w", zarr_format=3)
    a = g.create_array("frames", shape=(40, 96, 130), dtype=np.float32, chunks=(16, 96, 130),
                       compressors=[zarr.codecs.BloscCodec(cname=cname, clevel=1, shuffle=shuffle)], fill_value=0)
    data = np.random.default_rng(1).normal(100, 10, a.shape).astype(np.float32)
    a[...] = data
    r = _reader(g, a)
    dec = r._decoder
    raw = bytes(dec._read_file(dec._path(0)))
    assert int.from_bytes(raw[8:12], "little") * 8 < 16 * 96 * 130 * 4  # more than 8 Blosc blocks a chunk
    for start, stop in ((0, 1), (1, 2), (5, 11), (15, 17), (3, 29), (33, 40), (39, 40)):
        np.testing.assert_array_equal(r.read_block(start, stop, skip=False)[0], data[start:stop])


@pytest.mark.parametrize("kw", [dict(typesize=4), dict(blocksize=16 * 20 * 30 * 2)])
def test_blosc_chunks_unfit_for_partial_decompression_use_the_decoded_chunk(tmp_path, monkeypatch, kw):
    """A Blosc typesize that does not divide a frame's bytes (the part would not start on an item), or Blosc blocks
    as large as the chunk (a part would decompress it all): the chunk is decoded once for its blocks instead,
    into the reader's own buffers, not through Zarr's fallback (a review found that path taken for every block)."""
    g = zarr.open_group(str(tmp_path / "odd.zarr"), mode="w", zarr_format=3)
    a = g.create_array("frames", shape=(40, 20, 15), dtype=np.uint16, chunks=(16, 20, 15), fill_value=0,
                       compressors=[zarr.codecs.BloscCodec(cname="lz4", clevel=1, shuffle="shuffle", **kw)])
    data = np.random.default_rng(2).integers(0, 4000, a.shape).astype(np.uint16)
    a[...] = data
    r = _reader(g, a)
    whole = _counting(r, monkeypatch)

    def no_zarr(*args, **kwargs):
        raise AssertionError("read through Zarr")

    monkeypatch.setattr(zarr.Array, "__getitem__", no_zarr)
    for s in range(0, 40, 4):
        out = np.empty((min(s + 4, 40) - s, 20, 15), np.uint16)
        got = r.read_block(s, s + out.shape[0], skip=False, out=out)[0]
        assert got is out
        np.testing.assert_array_equal(got, data[s:s + out.shape[0]])
    assert len(whole) == 3 and r._decoder._parts == {}


def test_without_blosc_getitem_blosc_chunks_are_decoded_once(tmp_path, monkeypatch):
    """A numcodecs whose library does not export blosc_getitem (the symbol is private): Blosc chunks are decoded
    whole, once for their blocks, with the same values."""
    monkeypatch.setattr(chunks, "_blosc_getitem", lambda: None)
    g, a, data = _array(tmp_path, "bitshuffle-lz4", np.uint16, shape=(70, 6, 5), chunks=(16, 6, 5))
    r = _reader(g, a)
    assert r._decoder is not None and r._decoder._decode_part is None
    calls = _counting(r, monkeypatch)
    np.testing.assert_array_equal(_blocks_in_threads(r, 70), data)
    assert len(calls) == 5
