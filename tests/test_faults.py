"""Runs that survive faults: SIGKILL at random points then --resume (bit-identical), corrupt or missing
input chunks (named, or skipped and recorded), the input never modified."""

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import pipeline
from pipeline.io.models import save_model

ARGS = ["--set", "denoise.enabled=true", "--set", "denoise.method=none", "--chunk-frames", "2", "-q"]


def _cli(*args):
    return [sys.executable, "-m", "pipeline.cli", *map(str, args)]


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    src = pipeline.simulate(d / "in.zarr", frames=320, size=(192, 192), quanta_per_pixel=300, truth_frames=False)
    model = save_model(d / "m.json", {"frame_rate_hz": 50.0, "tau_s": [0.015, 0.12], "amplitudes": [0.01, 0.003]})
    args = [*ARGS, "--set", f"afterglow.model={model}"]
    t0 = time.perf_counter()
    p = subprocess.run(_cli("run", src, d / "ref.zarr", *args), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return src, args, d / "ref.zarr", time.perf_counter() - t0


def _kill_after(proc, progress: Path, k: int) -> None:
    """SIGKILL ``proc`` once its progress folder records ``k`` finished blocks (or it has ended)."""
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if progress.is_dir() and sum(1 for _ in progress.glob("block_*.json")) >= k:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_is_bit_identical(video, tmp_path):
    src, args, ref, clean_s = video
    before = _tree_digest(src)
    reference = zarr.open_group(str(ref), mode="r")["frames"][:]
    rng = np.random.default_rng(2026)
    resumed_mid_run = 0
    for trial in range(6):
        out = tmp_path / f"o{trial}.zarr"
        progress = Path(str(out) + ".progress")
        k = int(rng.integers(0, 150))  # killed once k of the 160 blocks are recorded: mid-run on any machine's load
        proc = subprocess.Popen(_cli("run", src, out, *args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _kill_after(proc, progress, k)
        proc.wait()
        resumed_mid_run += Path(str(out) + ".progress").exists()
        p = subprocess.run(_cli("run", src, out, *args, "--resume"), capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        got = zarr.open_group(str(out), mode="r")["frames"][:]
        np.testing.assert_array_equal(got, reference)
        assert not Path(str(out) + ".partial").exists() and not Path(str(out) + ".progress").exists()
    assert resumed_mid_run >= 5  # the kills landed while blocks were being written
    assert _tree_digest(src) == before  # the input is never touched


def _damage(src: Path, tmp: Path, how: str) -> Path:
    import shutil

    dst = tmp / f"{how}.zarr"
    shutil.copytree(src, dst)
    chunk = dst / "frames" / "c" / "3" / "0" / "0"  # frames 48-63 (16-frame chunks)
    if how == "corrupt":
        data = bytearray(chunk.read_bytes())
        data[10:40] = b"\x00" * 30
        chunk.write_bytes(bytes(data))
    else:
        chunk.unlink()
    return dst


@pytest.mark.parametrize("how", ["corrupt", "missing"])
def test_bad_input_chunk_named_or_skipped(video, tmp_path, how):
    src = _damage(video[0], tmp_path, how)
    before = _tree_digest(src)
    p = subprocess.run(_cli("run", src, tmp_path / "o.zarr", "-q"), capture_output=True, text=True)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "frames 48-" in p.stderr and "on_error" in p.stderr
    p = subprocess.run(_cli("run", src, tmp_path / "s.zarr", "--on-error", "skip", "-q", "--set",
                            "afterglow.model=" + str(video[0].parent / "m.json")), capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    frames = g["frames"][:]
    skipped = g.attrs["skipped_frames"]
    assert [s[:2] for s in skipped] == [[48, 63]]
    assert np.isnan(frames[48:64]).all() and np.isfinite(frames[:48]).mean() > 0.99 and np.isfinite(frames[64:]).mean() > 0.99
    assert _tree_digest(src) == before


def test_nonfinite_input_pixels_counted(tmp_path):
    src = pipeline.simulate(tmp_path / "f.zarr", frames=8, size=(64, 64), truth_frames=False)
    g = zarr.open_group(str(src), mode="r+")
    raw = g["frames"][:].astype(np.float32)
    raw[2, 5, 5] = np.nan
    raw[3, 6, 6] = np.inf
    del g["frames"]
    g.create_array("frames", data=raw, chunks=(4, 64, 64))
    with pytest.warns(UserWarning, match="2 NaN/Inf pixels"):
        res = pipeline.run(src, tmp_path / "o.zarr")
    assert res.nonfinite_input_pixels == 2
    out = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert out.attrs["provenance"]["nonfinite_input_pixels"] == 2


def test_resume_may_use_another_scheduler_and_worker_count(video, tmp_path):
    # scheduling does not change the result, so it is not part of the run's fingerprint
    src, args, ref, clean_s = video
    out = tmp_path / "o.zarr"
    proc = subprocess.Popen(_cli("run", src, out, *args, "--set", "execution.num_workers=2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_after(proc, Path(str(out) + ".progress"), 60)
    p = subprocess.run(_cli("run", src, out, *args, "--resume", "--scheduler", "synchronous"), capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["frames"][:],
                                  zarr.open_group(str(ref), mode="r")["frames"][:])
