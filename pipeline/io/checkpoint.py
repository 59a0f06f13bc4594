"""Run progress on disk, so a killed run can resume: one marker per finished block, lag states, fingerprint.

Layout (a folder ``OUT.progress`` beside ``OUT.partial``, removed when the run completes)::

    run.json              fingerprint of the run (config, input identity, calibration checksum, chunking)
    block_000012.json     written only after block 12 is in the output: frame range, checksum, measurements
    state_000012.npz      states of the stateful stages after block 12 (the newest within the finished
                          prefix is kept; later ones until the prefix reaches them)

States are saved for every k-th block only, k such that the output between two is at least
:data:`STATE_EVERY` times their size (:meth:`Checkpoint.state_blocks`; at 2048 x 2048 with afterglow
and the temporal filter they are 64 MB, as much as a 4-frame float32 block: saving them with every
block doubled the bytes written). A resume restarts after the newest saved states within the finished prefix and recomputes the blocks
after it (their finished outputs are not written again), so it stays bit-identical.

Every file is written to a temporary name and renamed, so a marker is either whole or absent.
Markers are not synced one by one; older states are deleted only after a sync of the filesystem
(in a background thread), so a crash can cost the blocks since the last sync, never the state a
resume needs. A marker whose block no longer reads back as checksummed, and a state file that does
not load, count as absent.
"""

from __future__ import annotations

import bisect
import ctypes
import json
import math
import os
import shutil
import threading
import uuid
import zlib
from pathlib import Path

import numpy as np


try:  # CRC-32C in hardware (SSE4.2/ARMv8 CRC): a dependency of Zarr's; its pure-Python fallback is far too slow
    import google_crc32c as _crc32c

    if getattr(_crc32c, "implementation", "c") != "c":
        _crc32c = None
except ImportError:  # pragma: no cover - Zarr requires it
    _crc32c = None

#: the blocks' checksum, recorded in run fingerprints: progress made with another cannot be verified
CHECKSUM = "crc32c" if _crc32c is not None else "crc32"
#: Output bytes between two saved states, in units of the states' size.
STATE_EVERY = 8


def legacy_checksum(block) -> str:
    """The BLAKE2b-128 checksum of releases before the CRC-32 (to accept calibrations saved by them)."""
    import hashlib

    a = np.ascontiguousarray(block).view(np.uint8).reshape(-1)
    return hashlib.blake2b(a, digest_size=16).hexdigest()


def checksum(block) -> str:
    """Checksum of an array's bytes: their CRC-32 and length (calibrations, responses, fingerprints).

    It detects torn or corrupted data, not tampering; a 128-bit BLAKE2b-128 cost 4.5 ms per
    1024 x 1024 float32 frame, CRC-32 1.0 ms (benchmarks/results/codecs_cpu.md).
    """
    a = np.ascontiguousarray(block).view(np.uint8).reshape(-1)
    return f"{zlib.crc32(a):08x}-{a.size:x}"


def block_checksum(block) -> str:
    """Checksum of a written block's bytes (as stored), for ``--resume``: :data:`CHECKSUM` and length.

    CRC-32C where its hardware instruction is there (13 GB/s against zlib's CRC-32 at 4 GB/s on
    this machine: the per-block checksum was 13 % of a flat-field run's thread time at 1024^2),
    else CRC-32. Only progress markers hold it: a run's fingerprint names the one it used.
    """
    a = np.ascontiguousarray(block).view(np.uint8).reshape(-1)
    if CHECKSUM == "crc32c":
        ro = a.view()
        ro.flags.writeable = False  # the extension reads a read-only buffer without copying it
        return f"{_crc32c.value(ro):08x}-{a.size:x}"
    return checksum(block)


def states_checksum(arrays: dict) -> str:
    """One checksum over saved states (names, dtypes, shapes and bytes), recorded in the block's marker."""
    parts = []
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        parts.append(f"{k}:{a.dtype.str}:{a.shape}:{block_checksum(a)}")
    return checksum(np.frombuffer(";".join(parts).encode(), np.uint8))


def path_stamp(path) -> dict:
    """Identity of a file or folder's contents as the filesystem sees them, for ``--resume``.

    For every regular file under ``path`` (links followed): its name, size, inode and modification
    and change times in ns. Rewriting, replacing or adding any file changes it; reading does not.
    Returns ``{"files": n, "bytes": total, "digest": ...}``.
    """
    p = Path(path)
    rows, total = [], 0
    files = [p] if not p.is_dir() else sorted(q for q in p.rglob("*") if q.name != ".xray-pipeline")
    for q in files:
        try:
            st = q.stat()
        except OSError:
            continue
        if not q.is_file():
            continue
        total += st.st_size
        rows.append(f"{q.relative_to(p) if q != p else q.name}\0{st.st_size}\0{st.st_ino}\0{st.st_mtime_ns}"
                    f"\0{st.st_ctime_ns}")
    return {"files": len(rows), "bytes": total,
            "digest": checksum(np.frombuffer("\n".join(rows).encode(), np.uint8))}


def _atomic_write(path: Path, data: bytes, *, durable: bool = True):
    """``data`` into ``path`` whole or not at all (a temporary file renamed); ``durable``: synced to disk first.

    A block's marker is not synced as it is written: the block's data files are not either, and
    ``--resume`` trusts a marker only where the stored bytes still match its checksum (a file torn by
    a crash fails that, and the block is redone). A sync a block, one ext4 journal commit each, cost
    a flat-field run at 2048^2 (4-frame blocks) 6 of its 20 system-ms a frame on this VM. What a
    crash must not do is take the blocks a newer saved state stands for while the older states are
    already deleted: the pruner syncs the filesystem before it deletes (:func:`_delete_after_sync`).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


class Checkpoint:
    """Markers of finished blocks and the stateful stages' states."""

    def __init__(self, folder: str | Path, *, state_every: float = STATE_EVERY):
        self.dir = Path(folder)
        self.state_every = float(state_every)
        # what this process knows of the folder, shared by the copies of this checkpoint (threads, pickled
        # copies in worker processes): a new Checkpoint (a new run or resume) starts from nothing
        self._token = uuid.uuid4().hex

    @staticmethod
    def state_blocks(state_bytes: int, block_bytes: int, state_every: float = STATE_EVERY) -> int:
        """Blocks between two saved states: the states of blocks 0, k, 2k, ... are saved (k >= 1).

        ``block_bytes``: a (full) block's output. Decided from the block index alone, so every
        process of a run (cluster workers, Dask's process scheduler) and the GPU engine, which
        downloads the states of those blocks only, agree whatever order the blocks finish in.
        """
        if block_bytes <= 0:
            return 1
        return max(1, math.ceil(state_every * state_bytes / block_bytes))

    # --- set-up
    def start(self, fingerprint: dict):
        from .outputs import make_marked, ours

        if self.dir.exists() or self.dir.is_symlink():
            if not ours(self.dir):  # never a folder of the user's (the output's checks refuse it before)
                raise FileExistsError(f"'{self.dir}' was not made by xray-pipeline; move it away")
            shutil.rmtree(self.dir)
        make_marked(self.dir, "progress")
        _atomic_write(self.dir / "run.json", json.dumps(fingerprint, sort_keys=True).encode())

    def has_fingerprint(self) -> bool:
        """True when a whole fingerprint was written (a kill during :meth:`start` leaves none)."""
        try:
            json.loads((self.dir / "run.json").read_text())
            return True
        except (OSError, ValueError):
            return False

    def stored_fingerprint(self) -> dict | None:
        """The fingerprint of the interrupted run, or None."""
        try:
            return json.loads((self.dir / "run.json").read_text())
        except (OSError, ValueError):
            return None

    def matches(self, fingerprint: dict) -> bool:
        f = self.dir / "run.json"
        if not f.is_file():
            return False
        try:
            return json.loads(f.read_text()) == json.loads(json.dumps(fingerprint, sort_keys=True))
        except (OSError, json.JSONDecodeError):
            return False

    # --- per block
    def commit(self, c: int, t0: int, t1: int, digest_block: str, states, extra: dict | None, *,
               block_bytes: int | None = None):
        """Record block ``c`` as finished (after its data is written), with the states after it where due.

        ``block_bytes``: a full block's output size, for the cadence of saved states
        (:meth:`state_blocks`; None: save them with every block).
        """
        present = states is not None and any(s is not None for s in states)
        if present:
            size = sum(int(np.asarray(s).nbytes) for s in states if s is not None)
            present = block_bytes is None or c % self.state_blocks(size, block_bytes, self.state_every) == 0
        digest = None
        if present:
            buf = {f"s{i}": np.asarray(s) for i, s in enumerate(states) if s is not None}
            buf["present"] = np.array([s is not None for s in states])
            digest = states_checksum(buf)
            tmp = self.dir / f".state_{c:06d}.{os.getpid()}.tmp.npz"
            np.savez(tmp, **buf)
            os.replace(tmp, self.dir / f"state_{c:06d}.npz")
            known = self._known()
            with known.lock:  # a block committed again behind the walk (a retried task, a resume): track it too
                if c <= known.prefix and c not in known.states:
                    bisect.insort(known.states, c)
        doc = {"block": c, "t0": t0, "t1": t1, "checksum": digest_block, "extra": extra or {}, "states_checksum": digest}
        _atomic_write(self.dir / f"block_{c:06d}.json", json.dumps(doc, default=_jsonable).encode(), durable=False)
        self._prune()

    def markers(self) -> dict[int, dict]:
        out = {}
        for f in self.dir.glob("block_*.json"):
            try:
                d = json.loads(f.read_text())
                out[int(d["block"])] = d
            except (OSError, ValueError, KeyError):
                continue
        return out

    def states_after(self, c: int, n: int):
        """States of the ``n`` stateful stages after block ``c`` (None if not saved, or not as saved).

        A state file counts only where its arrays match the checksum its block's marker recorded:
        one torn by a crash or altered since is as if not saved (the resume steps back to an earlier one).
        """
        f = self.dir / f"state_{c:06d}.npz"
        if not f.is_file():
            return None
        try:
            want = json.loads((self.dir / f"block_{c:06d}.json").read_text()).get("states_checksum")
            with np.load(f, allow_pickle=False) as z:
                buf = {k: z[k] for k in z.files}
            if want is None or states_checksum(buf) != want:
                return None
            present = buf["present"]
            return [buf[f"s{i}"] if present[i] else None for i in range(n)]
        except Exception:
            return None

    def _known(self) -> "_Known":
        with _KNOWN_LOCK:
            return _KNOWN.setdefault((str(self.dir), self._token), _Known())

    def _prune(self):
        """Keep the newest states within the finished prefix (what a resume needs) and any after it.

        Amortised O(1) a commit: the prefix only grows (markers are never removed during a run), so
        each process looks at each block's files once (globbing the folder at every commit made a
        long run quadratic; benchmarks/bench_io.py times a commit at 1 000 and 4 000 blocks).
        """
        known = self._known()
        with known.lock:
            p = known.prefix
            while (self.dir / f"block_{p + 1:06d}.json").is_file():
                p += 1
                if (self.dir / f"state_{p:06d}.npz").is_file():  # written before its marker
                    known.states.append(p)
            known.prefix = p
            old, known.states = known.states[:-1], known.states[-1:]
            if not old:
                return
            known.doomed.extend(old)
            if known.pruning:  # the running pruner takes these too, after a sync of its own
                return
            known.pruning = True
            known.idle.clear()
        threading.Thread(target=_delete_after_sync, args=(self.dir, known), daemon=True,
                         name="xray-pipeline-prune").start()

    def wait_pruned(self, timeout: float | None = None) -> bool:
        """Wait until the states found redundant so far are deleted (they go in a background thread)."""
        return self._known().idle.wait(timeout)

    def remove(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        with _KNOWN_LOCK:
            _KNOWN.pop((str(self.dir), self._token), None)


class _Known:
    """A process's view of a progress folder: the finished prefix and the saved states within it."""

    def __init__(self):
        self.lock = threading.Lock()
        self.prefix = -1
        self.states: list[int] = []
        self.doomed: list[int] = []  # states a newer one within the prefix made redundant, not yet deleted
        self.pruning = False
        self.idle = threading.Event()
        self.idle.set()


def _delete_after_sync(folder: Path, known: _Known) -> None:
    """Delete the redundant states once everything written before is on disk.

    Neither the markers nor the output's chunks are synced as they are written; until they reach the
    disk, a crash (power, kernel) could take the blocks up to the newer state with it while the
    deletion of the older ones survived, leaving a resume nothing to start from but block 0. One
    sync of the filesystem (``syncfs``: the markers, the newer state and, on the same filesystem, the
    output) before each round of deletions rules that out; it runs here, in the background, once per
    saved state at most, so the blocks never wait on the disk.
    """
    try:
        while True:
            with known.lock:
                doomed, known.doomed = known.doomed, []
                if not doomed:  # done: in the same hold of the lock as the check, so nothing is left behind
                    known.pruning = False
                    known.idle.set()
                    return
            _sync_filesystem(folder)
            for k in doomed:
                try:
                    (folder / f"state_{k:06d}.npz").unlink()
                except FileNotFoundError:  # another process pruned it, or the run finished and removed the folder
                    pass
    except BaseException:  # whatever it was, a later commit starts a new pruner for what is left
        with known.lock:
            known.pruning = False
            known.idle.set()
        raise


def _sync_filesystem(folder: Path) -> None:
    """What was written to ``folder``'s filesystem so far, on disk (Linux ``syncfs``; elsewhere ``sync``)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # the folder is gone (the run finished): nothing to keep
        return
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) == 0:
            return
    except (OSError, AttributeError):
        pass
    finally:
        os.close(fd)
    if hasattr(os, "sync"):
        os.sync()


_KNOWN: dict = {}
_KNOWN_LOCK = threading.Lock()


def _jsonable(o):
    if isinstance(o, np.ndarray):
        if o.dtype.kind == "f":
            obj = o.astype(object)
            obj[~np.isfinite(o)] = None
            return obj.tolist()
        return o.tolist()
    if isinstance(o, (np.floating, float)):
        v = float(o)
        return v if np.isfinite(v) else None
    if isinstance(o, np.integer):
        return int(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
