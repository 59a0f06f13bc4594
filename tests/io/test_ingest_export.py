"""Ingest and export: every format through the same contract checks, round trips, bad frames named."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr

import pipeline
import pipeline.recordings
from pipeline.errors import DataError

RNG = np.random.default_rng(0)
STACK = RNG.integers(0, 4000, (20, 48, 64)).astype(np.uint16)


def _write(kind, d):
    """A recording of STACK in one field format; returns (path, ingest keyword arguments)."""
    if kind == "tiff":
        tifffile.imwrite(d / "stack.tif", STACK)
        return d / "stack.tif", {}
    if kind == "folder":
        (d / "seq").mkdir()
        for i, f in enumerate(STACK):
            tifffile.imwrite(d / "seq" / f"img_{i}.tif", f)  # natural order: img_2 before img_10
        return d / "seq", {}
    if kind == "raw":
        (d / "cam.raw").write_bytes(b"HEADER--" + STACK.astype("<u2").tobytes())
        return d / "cam.raw", {"raw_dtype": "<u2", "raw_shape": (48, 64), "header": 8}
    if kind == "npy":
        np.save(d / "a.npy", STACK)
        return d / "a.npy", {}
    if kind == "hdf5":
        import h5py

        with h5py.File(d / "plain.h5", "w") as f:
            f["/scan/images"] = STACK
        return d / "plain.h5", {}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["tiff", "folder", "raw", "npy", "hdf5"])
def test_every_source_gives_the_same_dataset(tmp_path, kind):
    src, kw = _write(kind, tmp_path)
    out = pipeline.api.ingest(src, tmp_path / "o.zarr", pixel_pitch_mm=0.02, frame_rate_hz=30, chunk_frames=7, **kw)
    g = zarr.open_group(str(out["output"]), mode="r")
    np.testing.assert_array_equal(g["frames"][:], STACK)
    assert g["frames"].dtype == np.uint16 and g["frames"].chunks[0] == 7
    assert g.attrs["pixel_pitch_mm"] == 0.02 and g.attrs["frame_rate_hz"] == 30


@pytest.mark.parametrize("limit_frames,chunk", [(5, 4), (1, 1), (40, 16)])
def test_chunks_sized_from_the_frame_by_default(tmp_path, monkeypatch, limit_frames, chunk):
    """Without --chunk-frames the stored chunks hold the largest power of two of frames (up to 16) within
    RECORDING_CHUNK_BYTES; the data are the source's, whatever the chunks."""
    frame_bytes = STACK[0].nbytes
    monkeypatch.setattr(pipeline.recordings, "RECORDING_CHUNK_BYTES", limit_frames * frame_bytes)
    assert pipeline.api.recording_chunk_frames(STACK.shape[1:], STACK.dtype) == chunk
    from pipeline.io import zarr_store

    taken = []
    real = zarr_store.ChunkEncoder.write
    monkeypatch.setattr(zarr_store.ChunkEncoder, "write",
                        lambda self, a, b, block: taken.append((a, b, real(self, a, b, block))) or taken[-1][2])
    src, kw = _write("npy", tmp_path)
    out = pipeline.api.ingest(src, tmp_path / "o.zarr", darks=src, **kw)
    g = zarr.open_group(str(out["output"]), mode="r")
    assert g["frames"].chunks == (chunk,) + STACK.shape[1:] and g["darks"].chunks == (chunk,) + STACK.shape[1:]
    np.testing.assert_array_equal(g["frames"][:], STACK)
    np.testing.assert_array_equal(g["darks"][:], STACK)
    with pytest.raises(DataError, match="chunk_frames must be a positive integer"):
        pipeline.api.ingest(src, tmp_path / "bad.zarr", chunk_frames=0, **kw)
    assert not (tmp_path / "bad.zarr").exists()
    # whole chunks a read, all through the pipelines' own chunk writer (the last, partial chunk aside)
    assert all(ok for *_, ok in taken) and sum(b - a for a, b, _ in taken) == 2 * (len(STACK) // chunk * chunk)


def test_recording_chunk_frames_for_camera_sizes():
    """32 MiB chunks: 16 frames of 1024² uint16, 4 of 2048², 1 of 4096² (and of anything larger); float32 half."""
    f = pipeline.api.recording_chunk_frames
    assert [f((s, s), np.uint16) for s in (256, 1024, 2048, 4096, 8192)] == [16, 16, 4, 1, 1]
    assert f((2048, 2048), np.float32) == 2 and f((2000, 3000), np.uint16) == 2 and f((1024, 1024), np.uint16, limit=8) == 8


def test_tiff_round_trip_is_identical(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", STACK)
    pipeline.api.ingest(tmp_path / "in.tif", tmp_path / "s.zarr")
    pipeline.api.export(tmp_path / "s.zarr", tmp_path / "back.tif")
    back = tifffile.imread(tmp_path / "back.tif")
    assert back.dtype == STACK.dtype
    np.testing.assert_array_equal(back, STACK)


def test_nxtomo_image_key_splits_frames_darks_flats(tmp_path):
    import h5py

    key = np.array([2, 2, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 2, 0])  # flats/darks also at the end
    with h5py.File(tmp_path / "scan.nxs", "w") as f:
        f["/entry/instrument/detector/data"] = STACK
        f["/entry/instrument/detector/image_key"] = key
    out = pipeline.api.ingest(tmp_path / "scan.nxs", tmp_path / "n.zarr")
    g = zarr.open_group(str(out["output"]), mode="r")
    np.testing.assert_array_equal(g["frames"][:], STACK[key == 0])
    np.testing.assert_array_equal(g["flats"][:], STACK[key == 1])
    np.testing.assert_array_equal(g["darks"][:], STACK[key == 2])


def test_mp4_ingests_with_the_right_frame_count(tmp_path):
    import imageio.v3 as iio

    video = (STACK[:13] // 16).astype(np.uint8)
    iio.imwrite(tmp_path / "v.mp4", np.repeat(video[..., None], 3, -1), plugin="pyav", codec="libx264", fps=10)
    out = pipeline.api.ingest(tmp_path / "v.mp4", tmp_path / "v.zarr", chunk_frames=4)
    g = zarr.open_group(str(out["output"]), mode="r")
    assert g["frames"].shape == (13, 48, 64)
    assert abs(float(g["frames"][:].mean()) - float(video.mean())) < 3  # lossy codec, same picture


def test_mismatched_frame_is_named(tmp_path):
    (tmp_path / "seq").mkdir()
    for i in range(6):
        tifffile.imwrite(tmp_path / "seq" / f"f{i}.tif", STACK[i] if i != 4 else STACK[i][:40])
    with pytest.raises(DataError, match=r"f4\.tif.*frame 4"):
        pipeline.api.ingest(tmp_path / "seq", tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()
    tifffile.imwrite(tmp_path / "mixed.tif", STACK[0])
    with tifffile.TiffWriter(tmp_path / "mixed.tif", append=True) as tw:
        tw.write(STACK[1].astype(np.float32))
    with pytest.raises(DataError, match="page 1"):
        pipeline.api.ingest(tmp_path / "mixed.tif", tmp_path / "o.zarr")


def test_run_accepts_a_tiff_directly_and_exports_previews(tmp_path):
    sim = pipeline.simulate(tmp_path / "sim.zarr", frames=6, size=(64, 64), truth_frames=False)
    g = zarr.open_group(str(sim), mode="r")
    tifffile.imwrite(tmp_path / "frames.tif", g["frames"][:])
    # the TIFF has no darks/flats: the calibration comes from the simulated dataset
    pipeline.save_calibration(pipeline.calibrate(sim), tmp_path / "cal.zarr")
    res = pipeline.run(tmp_path / "frames.tif", tmp_path / "o.zarr", calibration=tmp_path / "cal.zarr")
    ref = pipeline.run(sim, tmp_path / "ref.zarr", calibration=tmp_path / "cal.zarr")
    np.testing.assert_array_equal(zarr.open_group(str(res.output), mode="r")["frames"][:],
                                  zarr.open_group(str(ref.output), mode="r")["frames"][:])
    assert not (tmp_path / "o.zarr.ingest.zarr").exists()
    for name in ("p.mp4", "p.gif"):
        p = subprocess.run([sys.executable, "-m", "pipeline.cli", "export", str(ref.output), str(tmp_path / name),
                            "--side-by-side"], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert (tmp_path / name).stat().st_size > 1000
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "export", str(ref.output), str(tmp_path / "p.gif")],
                       capture_output=True, text=True)
    assert p.returncode != 0 and "--overwrite" in p.stderr  # never overwritten silently
