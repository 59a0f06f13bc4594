"""The run's progress folder: states saved at a bounded cadence, pruning, and a resume from sparse states."""

import pickle

import numpy as np
import pytest
import zarr

import pipeline
from pipeline import api
from pipeline.io.models import save_model
from pipeline.io.checkpoint import Checkpoint


def _saved(ck):
    """The saved states' blocks (of a Checkpoint: once the redundant ones are deleted, in the background)."""
    if isinstance(ck, Checkpoint):
        assert ck.wait_pruned(30)
    folder = ck.dir if isinstance(ck, Checkpoint) else ck
    return sorted(int(f.stem.split("_")[1]) for f in folder.glob("state_*.npz"))


def test_states_saved_every_kth_block_whatever_the_order(tmp_path):
    ck = Checkpoint(tmp_path / "p", state_every=8)
    ck.start({"run": 1})
    states = [np.zeros((4, 4), np.float32), None, np.ones((2, 4, 4), np.float32)]  # 192 bytes
    assert Checkpoint.state_blocks(192, 384, 8) == 4 and Checkpoint.state_blocks(192, 10**9) == 1
    seen = []
    for c in range(12):  # 384 output bytes a block: every ceil(8 * 192 / 384) = 4 blocks
        ck.commit(c, c, c + 1, "x", states, {}, block_bytes=384)
        seen.append(_saved(ck))
    assert seen[0] == [0] and seen[3] == [0] and seen[4] == [4] and seen[11] == [8]  # the newest within the prefix
    restored = ck.states_after(8, 3)
    assert restored[1] is None and np.array_equal(restored[2], states[2])
    ck.commit(17, 17, 18, "x", states, {}, block_bytes=384)  # out of order: not due
    ck.commit(16, 16, 17, "x", states, {}, block_bytes=384)  # out of order: due, kept beyond the prefix
    ck.commit(14, 14, 15, "x", None, {})  # no states: only the marker
    assert _saved(ck) == [8, 16] and (ck.dir / "block_000014.json").is_file()
    ck2 = pickle.loads(pickle.dumps(ck))  # commits also run in other processes: the same decision there
    ck2.commit(12, 12, 13, "x", states, {}, block_bytes=384)
    ck2.commit(13, 13, 14, "x", states, {}, block_bytes=384)
    assert _saved(ck2) == [12, 16]  # the prefix is 0..14 now: 12 is its newest, 8 goes


def test_resume_after_sparse_states_is_bit_identical(tmp_path):
    """A run cut off after its last saved states: the resume recomputes from them, exactly."""
    src = pipeline.simulate(tmp_path / "in.zarr", frames=40, size=(32, 48), seed=4, truth_frames=False)
    model = save_model(tmp_path / "m.json", {"frame_rate_hz": 50.0, "tau_s": [0.02, 0.1], "amplitudes": [0.01, 0.004]})
    over = [f"afterglow.model={model}", "execution.chunk_frames=4", "execution.scheduler=synchronous",
            "denoise.enabled=true", "denoise.method=none"]
    ref = api.run(src, tmp_path / "ref.zarr", overrides=over)
    reference = np.asarray(zarr.open_group(str(ref.output), mode="r")["frames"][:])
    out = tmp_path / "out.zarr"

    class Cut(Exception):
        pass

    commit = Checkpoint.commit
    done = []

    def commit_then_stop(self, c, *a, **k):  # the run dies after its fifth commit (blocks finish in any order)
        commit(self, c, *a, **k)
        done.append(c)
        if len(done) == 5:
            raise Cut

    Checkpoint.commit = commit_then_stop
    try:
        api.run(src, out, overrides=over)
    except Cut:
        pass
    finally:
        Checkpoint.commit = commit
    progress = tmp_path / "out.zarr.progress"
    prefix = -1
    while prefix + 1 in done:
        prefix += 1
    saved = [k for k in _saved(progress) if k <= prefix]
    assert 0 in saved and 1 in done  # block 1 finished, without saved states (every 8th block saves them)
    api.run(src, out, overrides=over, resume=True)
    group = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(group["frames"][:], reference)
    resumed = group.attrs["provenance"]["resumed"]
    assert resumed["from_block"] == max(saved) + 1  # from the newest saved states, not from the start
    assert set(resumed["blocks_kept"]) == set(done)


def test_commits_never_list_the_folder(tmp_path, monkeypatch):
    """A commit looks at its own blocks' files only: listing the folder every commit made long runs quadratic."""
    from pathlib import Path

    ck = Checkpoint(tmp_path / "p", state_every=8)
    ck.start({"run": 1})
    states = [np.ones((2, 4, 4), np.float32)]  # 128 bytes: saved every 4th block of 256 bytes
    real_glob = Path.glob

    def no_glob(self, pattern):
        if self == ck.dir:
            raise AssertionError(f"the progress folder was listed ({pattern})")
        return real_glob(self, pattern)

    monkeypatch.setattr(Path, "glob", no_glob)
    order = [1, 0, 3, 2, 5, 4, 6, 8, 7, 9]  # out of order, as threads and processes finish
    for c in order:
        ck.commit(c, c, c + 1, "x", states, {}, block_bytes=256)
    monkeypatch.setattr(Path, "glob", real_glob)
    assert _saved(ck) == [8]  # 0 and 4 pruned once 8 is within the finished prefix
    assert sorted(ck.markers()) == list(range(10))


def test_a_block_committed_again_behind_the_prefix_is_pruned_too(tmp_path):
    """A retried task or a resume commits a block again after the walk passed it: its new states are pruned as well."""
    ck = Checkpoint(tmp_path / "p", state_every=8)
    ck.start({"run": 1})
    states = [np.ones((2, 4, 4), np.float32)]  # 128 bytes: every block's states are due at 1 024 bytes a block
    for c in range(4):
        ck.commit(c, c, c + 1, "x", states, {}, block_bytes=1024)
    assert _saved(ck) == [3]
    ck.commit(1, 1, 2, "x", states, {}, block_bytes=1024)  # again: older than 3, within the prefix
    assert _saved(ck) == [3]
    for c in range(4, 7):
        ck.commit(c, c, c + 1, "x", states, {}, block_bytes=1024)
    assert _saved(ck) == [6]


def _crc32c_reference(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): the textbook definition."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_block_checksum_is_crc32c_of_the_stored_bytes():
    from pipeline.io.checkpoint import CHECKSUM, block_checksum, checksum

    assert _crc32c_reference(b"123456789") == 0xE3069283  # the standard check value
    block = np.random.default_rng(3).random((3, 5, 7)).astype(np.float32)
    digest = block_checksum(block)
    if CHECKSUM == "crc32c":
        assert digest == f"{_crc32c_reference(block.tobytes()):08x}-{block.nbytes:x}"
    else:  # without the hardware CRC-32C extension: the CRC-32 of checksum()
        assert digest == checksum(block)
    flipped = block.copy()
    flipped.reshape(-1).view(np.uint8)[100] ^= 4  # one bit
    assert block_checksum(flipped) != digest
    assert block_checksum(block[:, ::-1]) == block_checksum(np.ascontiguousarray(block[:, ::-1]))
    assert block.flags.writeable  # read through a read-only view, the caller's array untouched


def test_markers_are_not_synced_the_run_record_is(tmp_path, monkeypatch):
    """One journal commit a block bought nothing: resume trusts a marker only where the stored bytes match it."""
    import json
    import os

    from pipeline.io import checkpoint

    synced = []
    real = os.fsync
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    ck = Checkpoint(tmp_path / "p")
    ck.start({"run": 1})
    assert len(synced) == 1  # the run's fingerprint: written once, synced
    for c in range(5):
        ck.commit(c, 2 * c, 2 * c + 2, f"{c:08x}-10", None, {})
    assert len(synced) == 1
    assert sorted(ck.markers()) == [0, 1, 2, 3, 4]  # written whole all the same (a temporary file renamed)
    assert not [p for p in (tmp_path / "p").iterdir() if p.name.endswith(".tmp")]
    assert json.loads((tmp_path / "p" / "block_000003.json").read_text())["t0"] == 6


def test_redundant_states_go_only_after_a_sync_of_the_filesystem(tmp_path, monkeypatch):
    """Markers and blocks are not synced as they are written: an older state is deleted only once a sync has
    put the newer one's blocks on disk (else a crash could leave a resume nothing to start from)."""
    import threading

    from pipeline.io import checkpoint

    gate, events = threading.Event(), []

    def slow_sync(folder):
        events.append(("sync", sorted(p.name for p in folder.glob("state_*.npz"))))
        assert gate.wait(10)

    monkeypatch.setattr(checkpoint, "_sync_filesystem", slow_sync)
    ck = Checkpoint(tmp_path / "p", state_every=8)
    ck.start({"run": 1})
    states = [np.ones((2, 4, 4), np.float32)]  # due with every block at 1 024 bytes a block
    for c in range(3):
        ck.commit(c, c, c + 1, "x", states, {}, block_bytes=1024)  # no waiting on the disk here
    assert not ck.wait_pruned(0.2)  # the pruner waits on the sync
    assert sorted(p.name for p in ck.dir.glob("state_*.npz"))[0] == "state_000000.npz"  # nothing deleted yet
    gate.set()
    assert _saved(ck) == [2]
    assert events and "state_000000.npz" in events[0][1]  # the first sync came before its deletion


@pytest.mark.parametrize("torn", ["chunk", "state"])
def test_a_resume_steps_over_a_torn_chunk_or_state(tmp_path, torn):
    """After a crash, files that never reached the disk come back empty: the resume redoes those blocks."""
    import zarr

    model = save_model(tmp_path / "m.json", {"frame_rate_hz": 50.0, "tau_s": [0.02, 0.1], "amplitudes": [0.01, 0.004]})
    src = pipeline.simulate(tmp_path / "in.zarr", frames=48, size=(32, 48), seed=4, truth_frames=False)
    over = [f"afterglow.model={model}", "execution.chunk_frames=4", "execution.scheduler=synchronous",
            "denoise.enabled=true", "denoise.method=none"]
    ref = api.run(src, tmp_path / "ref.zarr", overrides=over)
    reference = np.asarray(zarr.open_group(str(ref.output), mode="r")["frames"][:])

    class Cut(Exception):
        pass

    commit, done = Checkpoint.commit, []

    def cut(self, c, *a, **k):
        commit(self, c, *a, **k)
        done.append(c)
        if len(done) == 10:
            self.wait_pruned(30)
            raise Cut

    out = tmp_path / "out.zarr"
    Checkpoint.commit = cut
    try:
        with pytest.raises(Cut):
            api.run(src, out, overrides=over)
    finally:
        Checkpoint.commit = commit
    prog, part = tmp_path / "out.zarr.progress", tmp_path / "out.zarr.partial"
    if torn == "state":  # the state a resume would start from: the newest within the finished prefix
        prefix = -1
        while prefix + 1 in done:
            prefix += 1
        usable = [p for p in prog.glob("state_*.npz") if int(p.stem.split("_")[1]) <= prefix]
        assert usable
        max(usable).write_bytes(b"")
    else:
        (part / "frames" / "c" / "9" / "0" / "0").write_bytes(b"")  # the newest block
    res = api.run(src, out, overrides=over, resume=True)
    g = zarr.open_group(str(res.output), mode="r")
    np.testing.assert_array_equal(np.asarray(g["frames"][:]), reference)
