"""The chunk files of arrays of whole frames, read and written by this project's own code in the calling thread.

Zarr decodes each chunk into a buffer of its own on its one event-loop thread and its writes make a fresh
chunk-sized buffer each time; for the arrays this project writes (Zarr v3 in a local folder, chunks of whole
frames, little-endian bytes, then Blosc, Zstd or nothing) these classes do the same work in the calling thread
into buffers it reuses, with the very bytes Zarr reads and writes (tested). The store
(:mod:`pipeline.io.zarr_store`, the only Zarr importer) describes an array's layout; anything else Zarr does.
"""

from __future__ import annotations

import ctypes
import os
import threading
import uuid
from pathlib import Path

import numpy as np

from ..errors import DataError


class ChunkError(DataError):
    """A stored chunk of the input is corrupt or missing (``on_error: skip`` may pass over it)."""

    skippable = True



def _fill(data, dest) -> None:
    """``dest``'s bytes from ``data``, which must be exactly as many (a short chunk is corrupt, not half a block)."""
    got = np.frombuffer(data, np.uint8)
    if got.size != dest.nbytes:
        raise ValueError(f"chunk holds {got.size} bytes, not {dest.nbytes}")
    dest.reshape(-1).view(np.uint8)[...] = got


class _Scratch:
    """One byte buffer per thread, grown to the largest size asked of it and reused: a chunk-sized
    buffer made fresh for every chunk costs the kernel a page fault and a zeroed page for every
    4 KiB of it (see :class:`ChunkEncoder`)."""

    def __init__(self):
        self._local = threading.local()

    def get(self, nbytes: int) -> np.ndarray:
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.size < nbytes:
            buf = self._local.buf = np.empty(max(int(nbytes), 1), np.uint8)
        return buf



class _WholeFrameChunks:
    """The chunk files of an array with chunks of whole frames (:func:`_whole_frame_layout`), handled by
    this project's own code in the calling thread; :meth:`for_array` gives None where Zarr must do it."""

    def __init__(self, array, folder: Path):
        self.folder = Path(folder)
        self.shape = tuple(int(v) for v in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.chunk = int(array.chunks[0])
        self.frame_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self._key = array.metadata.encode_chunk_key
        self._scratch = _Scratch()  # a chunk's compressed bytes, in a buffer the calling thread reuses

    def _path(self, i: int) -> Path:
        """The file of chunk ``i`` along T."""
        return self.folder / self._key((i,) + (0,) * (len(self.shape) - 1))

    @classmethod
    def for_array(cls, array, folder: Path | None, layout: tuple | None):
        """The handler for ``array`` stored in ``folder`` with ``layout`` (the store's description of its chunks:
        ``(kind, compressor)``, kind None, 'blosc', 'zstd' or 'other'; None: not whole frames in a local folder),
        or None where Zarr must read or write it."""
        try:
            return None if layout is None else cls._plan(array, folder, layout)
        except Exception:  # a layout or codec version this code does not know (a future chunk grid, ...): Zarr
            return None

    @classmethod
    def _plan(cls, array, folder, layout):
        raise NotImplementedError


class ChunkDecoder(_WholeFrameChunks):
    """Chunks of whole frames read and decompressed in the calling thread, straight into the block.

    A read through Zarr's API decodes each chunk into a buffer of its own and copies it into a new
    result on Zarr's single event-loop thread; this costs a third of the CPU (benchmarks/results/
    io_cpu.md, one thread, a 2048 x 2048 uint16 frame in bitshuffle-lz4: 3.5 user + 1.4 system ms
    into a new array, 3.6 + 0.6 into a reused one, against 5.3 + 5.9 through Zarr) and nothing of
    it waits on that one thread.
    It takes what this project writes, the common case: Zarr v3 in a local folder, chunks of whole
    frames, no shards or filters, little-endian bytes, then Blosc, Zstd or no compression.
    :meth:`for_array` returns None for anything else (Zarr reads it). A missing chunk file reads
    as the fill value, as in Zarr; a chunk that does not decode raises.
    """

    #: Most bytes of decoded chunks kept for the blocks that take only part of one (at least two chunks; 0: none
    #: kept, every such block decodes its chunk again, as benchmarks/bench_io.py compares).
    PARTIAL_CACHE_BYTES = 1 << 30

    def __init__(self, array, folder: Path, decode, decode_part=None):
        super().__init__(array, folder)
        self.fill = array.fill_value
        self._decode = decode
        # blocks smaller than the input's chunks (a 2048^2 run's 4-frame blocks of the 16-frame chunks simulate and
        # ingest wrote before they sized chunks from the frame, or other tools write): a Blosc chunk decompresses
        # only the part a block needs (c-blosc's getitem: the blocks of the compressed buffer that hold it); a
        # chunk of another codec is decoded once and the blocks are served from it, instead of decoding it again
        # for every block. Entries go once all their frames were served, or oldest first beyond the limit.
        self._decode_part = decode_part
        chunk_bytes = max(1, self.chunk * self.frame_bytes)
        self._keep = max(2, self.PARTIAL_CACHE_BYTES // chunk_bytes) if self.PARTIAL_CACHE_BYTES > 0 else 0
        self._parts: dict = {}  # chunk index -> _DecodedChunk, oldest first
        self._parts_lock = threading.Lock()

    @classmethod
    def _plan(cls, array, folder, layout):
        from numcodecs import Zstd, blosc

        kind, comp = layout
        decode_part = None  # partial decompression: Blosc only
        if kind is None:
            decode = _fill
        elif kind == "blosc":
            chunk_bytes = int(array.chunks[0]) * int(np.prod(array.shape[1:])) * np.dtype(array.dtype).itemsize

            def check(data):
                # the Blosc header (bytes 4-7: decompressed size, 12-15: compressed size, little-endian):
                # decompress refuses a dest too small, not a chunk too short (that would leave frames unset)
                if (len(data) < 16 or int.from_bytes(data[4:8], "little") != chunk_bytes
                        or int.from_bytes(data[12:16], "little") != len(data)):
                    raise ValueError(f"chunk is not a Blosc buffer of {chunk_bytes} bytes")

            def decode(data, dest):
                check(data)
                blosc.decompress(data, dest)

            getitem = _blosc_getitem()
            if getitem is not None:
                def decode_part(data, offset: int, dest) -> bool:
                    # only the Blosc blocks that hold bytes offset..offset + dest.nbytes of the chunk are decompressed;
                    # False (nothing done) where that would not pay or cannot be: a part that does not start and end
                    # on a Blosc item; Blosc blocks so large that the part and the two blocks it may cut into are
                    # not less than the whole chunk; offsets past c-blosc's int
                    check(data)
                    typesize, blocksize = data[3], int.from_bytes(data[8:12], "little")
                    if (not typesize or offset % typesize or dest.nbytes % typesize or not dest.flags.c_contiguous
                            or dest.nbytes + 2 * blocksize >= chunk_bytes or offset + dest.nbytes >= 2**31):
                        return False
                    src = np.frombuffer(data, np.uint8)
                    got = getitem(src.ctypes.data, offset // typesize, dest.nbytes // typesize, dest.ctypes.data)
                    if got != dest.nbytes:
                        raise ValueError(f"chunk part does not decode (c-blosc: {got})")
                    return True
        elif kind == "zstd":
            zstd = Zstd(level=int(comp.level))

            def decode(data, dest):
                _fill(zstd.decode(data), dest)  # its size checked (a frame need not state it)
        else:
            return None
        return cls(array, Path(folder), decode, decode_part)

    def read(self, start: int, stop: int, out=None) -> np.ndarray:
        """Frames start..stop-1, into ``out`` (a C-contiguous array of their shape and dtype) or a new array."""
        c, frame = self.chunk, self.shape[1:]
        if out is None:
            out = np.empty((stop - start,) + frame, self.dtype)
        for i in range(start // c, (stop - 1) // c + 1):
            a, b = i * c, (i + 1) * c  # the chunk as stored: full size, also past the array's end
            lo, hi = max(a, start), min(b, stop)
            if lo == a and hi == b:
                self._decode_chunk(i, out[a - start : b - start])
            elif self._decode_part is not None and self._decode_frames(i, lo - a, out[lo - start : hi - start]):
                pass
            elif self._keep:
                self._served(i, lo - a, hi - a, out[lo - start : hi - start])
            else:
                buf = np.empty((c,) + frame, self.dtype)
                self._decode_chunk(i, buf)
                out[lo - start : hi - start] = buf[lo - a : hi - a]
        return out

    def _decode_chunk(self, i: int, dest) -> None:
        try:
            data = self._read_file(self._path(i))
        except FileNotFoundError:
            dest[...] = self.fill
        else:
            self._decode(data, dest)

    def _decode_frames(self, i: int, first: int, dest) -> bool:
        """Frames first.. of chunk ``i`` (as many as ``dest`` holds), decompressing only their part of it;
        False where this chunk's layout does not allow it (nothing written)."""
        try:
            data = self._read_file(self._path(i))
        except FileNotFoundError:
            dest[...] = self.fill
            return True
        return self._decode_part(data, first * self.frame_bytes, dest)

    def _served(self, i: int, lo: int, hi: int, dest) -> None:
        """Frames lo..hi-1 of chunk ``i`` into ``dest``, from the chunk decoded once for all its blocks."""
        with self._parts_lock:
            entry = self._parts.get(i)
            owner = entry is None
            if owner:
                entry = self._parts[i] = _DecodedChunk(min(self.chunk, self.shape[0] - i * self.chunk))
                while len(self._parts) > self._keep:  # oldest first (a reader waiting on one keeps its own reference)
                    self._parts.pop(next(iter(self._parts)))
        if owner:
            try:
                buf = np.empty((self.chunk,) + self.shape[1:], self.dtype)
                self._decode_chunk(i, buf)
                entry.frames = buf
            except BaseException as exc:
                entry.error = exc
                with self._parts_lock:
                    if self._parts.get(i) is entry:  # the next read tries again
                        del self._parts[i]
                raise
            finally:
                entry.ready.set()
        else:
            entry.ready.wait()
            if entry.error is not None:
                raise ChunkError(f"chunk {i} did not decode ({type(entry.error).__name__})") from entry.error
        dest[...] = entry.frames[lo:hi]
        with self._parts_lock:
            entry.served += hi - lo
            if entry.served >= entry.expected and self._parts.get(i) is entry:
                del self._parts[i]  # every frame of it was served once: a run reads each frame once

    def _read_file(self, path: Path) -> memoryview:
        """The file's bytes, in this thread's scratch buffer (valid until its next read)."""
        with open(path, "rb", buffering=0) as f:
            n = os.fstat(f.fileno()).st_size
            view = memoryview(self._scratch.get(n))[:n]
            got = 0
            while got < n:
                k = f.readinto(view[got:])
                if not k:
                    break
                got += k
        return view[:got]


class _DecodedChunk:
    """A chunk decoded for the blocks that each take part of it (:meth:`ChunkDecoder._served`)."""

    def __init__(self, expected: int):
        self.ready = threading.Event()
        self.frames = None
        self.error: BaseException | None = None
        self.served = 0  # frames handed out
        self.expected = expected  # frames of it inside the array


def _blosc_getitem():
    """c-blosc's ``blosc_getitem`` (decompresses only the blocks that hold a range of items; thread-safe: no
    global state) from numcodecs' library, through ctypes (which lets go of the GIL); None where not exported."""
    try:
        from numcodecs import blosc

        fn = ctypes.CDLL(blosc.__file__).blosc_getitem
    except (ImportError, OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    return fn


def _blosc_compress_ctx():
    """c-blosc's ``blosc_compress_ctx`` from the library numcodecs ships (its Blosc codec: the one Zarr
    uses), through ctypes (which lets go of the GIL for the call); None where it is not exported."""
    try:
        from numcodecs import blosc

        fn = ctypes.CDLL(blosc.__file__).blosc_compress_ctx
    except (ImportError, OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p,
                   ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
    return fn


_BLOSC_SHUFFLE = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
_BLOSC_MAX_OVERHEAD = 16
_BLOSC_MAX_BUFFERSIZE = 2**31 - 1 - _BLOSC_MAX_OVERHEAD


class ChunkEncoder(_WholeFrameChunks):
    """Chunks of whole frames compressed in the calling thread and stored as Zarr's own chunk files.

    Zarr's write compresses through numcodecs, whose encode returns a fresh buffer the size of the
    chunk each time, every page of which the kernel faults in and zeroes: writing 2048^2 float32
    frames in chunks of 4 with one thread took 9.2 user + 18.2 system CPU-ms a frame through Zarr,
    9.2 + 6.3 here (benchmarks/results/io_cpu.md). Here c-blosc compresses into a buffer each thread
    reuses, with Zarr's parameters, so the file holds the very bytes Zarr writes (tested), written
    the way Zarr writes them (a temporary file renamed into place). It takes the arrays this
    project writes (:func:`_whole_frame_layout`: a local Zarr v3 folder, chunks of whole frames)
    compressed with Blosc or not at all; :meth:`for_array` returns None for anything else, and
    Zarr writes it.
    """

    def __init__(self, array, folder: Path, compress):
        super().__init__(array, folder)
        self._compress = compress  # (C-contiguous block) -> bytes-like, None: store the bytes as they are

    @classmethod
    def _plan(cls, array, folder, layout):
        kind, comp = layout
        if kind is None:
            return cls(array, Path(folder), None)
        if kind != "blosc":
            return None
        fn = _blosc_compress_ctx()
        itemsize = np.dtype(array.dtype).itemsize
        nbytes = int(np.prod(array.chunks)) * itemsize
        if fn is None or nbytes > _BLOSC_MAX_BUFFERSIZE:
            return None
        cname = getattr(comp.cname, "value", comp.cname).encode()
        shuffle = _BLOSC_SHUFFLE[getattr(comp.shuffle, "value", comp.shuffle)]
        typesize = int(comp.typesize or itemsize)
        clevel, blocksize = int(comp.clevel), int(comp.blocksize or 0)
        enc = cls(array, Path(folder), None)
        scratch = enc._scratch  # not enc: a closure over it would be a reference cycle, its buffers kept till a GC

        def compress(block):
            dest = scratch.get(block.nbytes + _BLOSC_MAX_OVERHEAD)
            n = fn(clevel, shuffle, typesize, block.nbytes, block.ctypes.data, dest.ctypes.data, dest.size, cname,
                   blocksize, 1)
            if n <= 0:
                raise RuntimeError(f"Blosc could not compress a chunk of {block.nbytes} bytes (code {n})")
            return memoryview(dest)[:n]

        enc._compress = compress
        return enc

    def write(self, start: int, stop: int, block) -> bool:
        """Store frames start..stop-1 (whole chunks, a C-contiguous array of the array's dtype); False,
        writing nothing, where they are not whole chunks (the caller gives them to Zarr)."""
        c, frame = self.chunk, self.shape[1:]
        if (start % c or (stop - start) % c or not 0 <= start < stop <= self.shape[0]
                or not isinstance(block, np.ndarray) or block.dtype != self.dtype or not block.flags.c_contiguous
                or block.shape != (stop - start,) + frame):
            return False
        for i in range(start // c, stop // c):
            part = block[i * c - start:(i + 1) * c - start]
            data = memoryview(part).cast("B") if self._compress is None else self._compress(part)
            path = self._path(i)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return True
