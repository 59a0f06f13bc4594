"""Ingest never loses or invents frames: damaged, colour, mislabelled or unreadable inputs are refused in one line."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tifffile
import zarr

import pipeline
from pipeline.errors import DataError

STACK = np.random.default_rng(1).integers(1, 4000, (32, 16, 16)).astype(np.uint16)


def _refused(path, match, **kw):
    """The one-line DataError that ingesting ``path`` raises (nothing is written)."""
    out = path.parent / "o.zarr"
    with pytest.raises(DataError, match=match) as info:
        pipeline.api.ingest(path, out, **kw)
    assert "\n" not in str(info.value)
    assert not out.exists()
    return str(info.value)


def _cut(path, keep):
    """Truncate ``path`` to its first ``keep`` bytes."""
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def _run_with_timeout(code):
    """Run ``code`` in a fresh interpreter that must finish within 30 s (a FIFO opened by mistake blocks forever)."""
    try:
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("ingest hung (it opened a FIFO)")


# 1. truncated multi-page TIFF


@pytest.mark.parametrize("metadata", [{}, None], ids=["shaped", "plain"])
def test_truncated_multipage_tiff_is_refused(tmp_path, metadata):
    p = tmp_path / "half.tif"
    tifffile.imwrite(p, STACK, metadata=metadata)
    _cut(p, p.stat().st_size // 2)
    msg = _refused(p, r"half\.tif.*truncated or damaged.*re-copy")
    if metadata is not None:  # tifffile's own shape metadata says how many pages there were
        assert "1 of the 32 pages" in msg


def test_truncated_tiff_fails_in_one_line_on_the_command_line(tmp_path):
    p = tmp_path / "half.tif"
    tifffile.imwrite(p, STACK)
    _cut(p, p.stat().st_size // 2)
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "ingest", str(p), str(tmp_path / "o.zarr")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "truncated or damaged" in r.stderr, r.stderr


def test_page_data_beyond_the_end_of_the_file_is_refused(tmp_path):
    p = tmp_path / "cut.tif"
    with tifffile.TiffWriter(p) as tw:  # each page's IFD before its data: the chain survives a short cut
        for f in STACK[:4]:
            tw.write(f, contiguous=False)
    _cut(p, p.stat().st_size - 100)
    assert len(tifffile.TiffFile(p).pages) == 4
    _refused(p, r"cut\.tif.*page 3.*past the end of the \d+-byte file.*truncated")


# 2. colour / multi-sample TIFF


@pytest.mark.parametrize("shape,kw", [((64, 64, 3), {"photometric": "rgb"}), ((5, 16, 16, 3), {"photometric": "rgb"}),
                                      ((16, 16, 4), {"photometric": "rgb"})], ids=["rgb", "rgb-stack", "rgba"])
def test_rgb_tiff_is_refused(tmp_path, shape, kw):
    tifffile.imwrite(tmp_path / "x.tif", np.ones(shape, np.uint8), **kw)
    _refused(tmp_path / "x.tif", r"'.*x\.tif' holds RGB images .*single-channel frames: convert them to greyscale")


def test_planar_tiff_is_a_stack_only_when_it_is_greyscale(tmp_path):
    a = STACK[:4]
    tifffile.imwrite(tmp_path / "grey.tif", a, photometric="minisblack", planarconfig="separate")
    assert tifffile.TiffFile(tmp_path / "grey.tif").pages[0].samplesperpixel == 4  # one page of 4 planes
    out = pipeline.api.ingest(tmp_path / "grey.tif", tmp_path / "g.zarr")
    np.testing.assert_array_equal(zarr.open_group(str(out["output"]), mode="r")["frames"][:], a)
    # the same planes labelled RGB are a colour picture, whatever they hold
    tifffile.imwrite(tmp_path / "rgb.tif", a[:3], photometric="rgb", planarconfig="separate")
    _refused(tmp_path / "rgb.tif", r"holds RGB images \(3, 16, 16\).*photometric='minisblack'")


def test_folder_of_rgb_tiffs_is_refused(tmp_path):
    (tmp_path / "seq").mkdir()
    for i in range(3):
        tifffile.imwrite(tmp_path / "seq" / f"f{i}.tif", np.ones((16, 16, 3), np.uint8), photometric="rgb")
    _refused(tmp_path / "seq", r"f0\.tif.*holds RGB images")
    # a colour file amid grey ones is named too
    for i in range(3):
        tifffile.imwrite(tmp_path / "seq" / f"f{i}.tif", STACK[i])
    tifffile.imwrite(tmp_path / "seq" / "f3.tif", np.ones((16, 16, 3), np.uint8), photometric="rgb")
    _refused(tmp_path / "seq", r"f3\.tif.*frame 3.*holds RGB images")


# 3. NXtomo image_key


def _nxtomo(path, key):
    import h5py

    with h5py.File(path, "w") as f:
        f["/entry/instrument/detector/data"] = STACK[: len(key)]
        f["/entry/instrument/detector/image_key"] = np.asarray(key)


def test_image_key_3_frames_are_left_out_and_said(tmp_path):
    key = np.array([2, 1, 3, 0, 0, 3, 3, 0, 1, 2, 0, 3])
    _nxtomo(tmp_path / "s.nxs", key)
    with pytest.warns(UserWarning, match=r"s\.nxs.*4 frames with image_key 3 \(invalid\) are left out"):
        out = pipeline.api.ingest(tmp_path / "s.nxs", tmp_path / "o.zarr")
    g = zarr.open_group(str(out["output"]), mode="r")
    np.testing.assert_array_equal(g["frames"][:], STACK[:12][key == 0])
    np.testing.assert_array_equal(g["flats"][:], STACK[:12][key == 1])
    np.testing.assert_array_equal(g["darks"][:], STACK[:12][key == 2])
    assert g.attrs["image_key_left_out"] == {"3": 4}


def test_no_warning_without_image_key_3(tmp_path):
    _nxtomo(tmp_path / "s.nxs", [2, 1, 0, 0, 0])
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        out = pipeline.api.ingest(tmp_path / "s.nxs", tmp_path / "o.zarr")
    assert not [w for w in said if "image_key" in str(w.message)]
    assert "image_key_left_out" not in zarr.open_group(str(out["output"]), mode="r").attrs


def test_unknown_image_key_values_are_refused(tmp_path):
    _nxtomo(tmp_path / "s.nxs", [2, 1, 0, 0, 4, 4, 0, -1, 3])
    msg = _refused(tmp_path / "s.nxs", r"image_key.*values -1 \(1 frame\), 4 \(2 frames\).*0 projection, 1 flat, "
                                       r"2 dark, 3 invalid")
    assert "s.nxs:/entry/instrument/detector/image_key" in msg


def test_image_key_of_another_length_is_refused(tmp_path):
    import h5py

    with h5py.File(tmp_path / "s.nxs", "w") as f:
        f["/entry/instrument/detector/data"] = STACK[:6]
        f["/entry/instrument/detector/image_key"] = np.array([2, 1, 0, 0, 0])
    _refused(tmp_path / "s.nxs", r"image_key' has 5 entries but .* has 6 frames")


# 4. links and files that are not regular files


def test_link_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "seq").mkdir()
    for i in range(5):
        tifffile.imwrite(tmp_path / "seq" / f"f{i}.tif", STACK[i])
    os.symlink("/etc/passwd", tmp_path / "seq" / "f5.tif")
    _refused(tmp_path / "seq", r"f5\.tif' is a link to '/etc/passwd', outside the folder.*remove the link or copy "
                               r"the file in")


def test_link_within_the_folder_is_followed(tmp_path):
    (tmp_path / "seq" / "store").mkdir(parents=True)
    for i in range(4):
        tifffile.imwrite(tmp_path / "seq" / "store" / f"f{i}.tif", STACK[i])
        os.symlink(f"store/f{i}.tif", tmp_path / "seq" / f"f{i}.tif")
    out = pipeline.api.ingest(tmp_path / "seq", tmp_path / "o.zarr")
    np.testing.assert_array_equal(zarr.open_group(str(out["output"]), mode="r")["frames"][:], STACK[:4])


def test_broken_link_in_the_folder_is_refused(tmp_path):
    (tmp_path / "seq").mkdir()
    tifffile.imwrite(tmp_path / "seq" / "f0.tif", STACK[0])
    os.symlink("gone.tif", tmp_path / "seq" / "f1.tif")
    _refused(tmp_path / "seq", r"f1\.tif' cannot be read as a file.*remove it")


_FIFO_SCRIPT = """
import sys
import pipeline
from pipeline.errors import DataError
try:
    pipeline.api.ingest(sys.argv[1], sys.argv[2])
except DataError as exc:
    print(exc)
    sys.exit(3)
"""


def _ingest_in_a_child(src, out):
    """``ingest(src, out)`` in a child process with a timeout (a FIFO opened would hang it, failing the test)."""
    return _run_with_timeout(_FIFO_SCRIPT.replace("sys.argv[1], sys.argv[2]", f"{str(src)!r}, {str(out)!r}"))


def test_fifo_is_refused_before_it_is_opened(tmp_path):
    os.mkfifo(tmp_path / "cam.tif")
    r = _ingest_in_a_child(tmp_path / "cam.tif", tmp_path / "o.zarr")
    assert r.returncode == 3, r.stderr
    assert "cam.tif' is a FIFO, not a regular file" in r.stdout


def test_fifo_in_a_folder_is_refused(tmp_path):
    (tmp_path / "seq").mkdir()
    for i in range(3):
        tifffile.imwrite(tmp_path / "seq" / f"f{i}.tif", STACK[i])
    os.mkfifo(tmp_path / "seq" / "f3.tif")
    r = _ingest_in_a_child(tmp_path / "seq", tmp_path / "o.zarr")
    assert r.returncode == 3, r.stderr
    assert "f3.tif' is a FIFO, not a regular file; remove it" in r.stdout


# 5. other truncation and unreadable files


def test_truncated_file_in_a_tiff_folder_is_named(tmp_path):
    (tmp_path / "seq").mkdir()
    for i in range(6):
        tifffile.imwrite(tmp_path / "seq" / f"f{i}.tif", STACK[i])
    p = tmp_path / "seq" / "f3.tif"
    _cut(p, p.stat().st_size // 2)
    _refused(tmp_path / "seq", r"f3\.tif.*frame 3.*truncated")


def test_truncated_npy_is_refused(tmp_path):
    np.save(tmp_path / "a.npy", STACK)
    _cut(tmp_path / "a.npy", (tmp_path / "a.npy").stat().st_size // 2)
    _refused(tmp_path / "a.npy", r"a\.npy': cannot read it as a \.npy array \(ValueError.*numpy\.save")


@pytest.mark.parametrize("how", ["truncated", "not-hdf5"])
def test_damaged_hdf5_is_refused(tmp_path, how):
    import h5py

    p = tmp_path / "s.h5"
    if how == "truncated":
        with h5py.File(p, "w") as f:
            f["/scan/images"] = STACK
        _cut(p, p.stat().st_size // 2)
    else:
        p.write_bytes(b"not an HDF5 file at all" * 100)
    _refused(p, r"s\.h5': cannot open it as HDF5 \(OSError.*re-copy")


def _fake_video(monkeypatch, frames, fail_at):
    """imageio's frame iterator replaced: ``frames`` frames when counted; when read again, it fails at ``fail_at``."""
    import imageio.v3 as iio

    calls = []

    def imiter(path, plugin=None):
        calls.append(path)
        for i in range(frames):
            if len(calls) > 1 and i == fail_at:
                raise RuntimeError("decoder error\nsecond line")
            yield np.full((16, 16, 3), i, np.uint8)

    monkeypatch.setattr(iio, "imiter", imiter)


def test_video_failing_mid_way_names_the_frame(tmp_path, monkeypatch):
    (tmp_path / "v.mp4").write_bytes(b"")
    _fake_video(monkeypatch, 10, fail_at=5)
    _refused(tmp_path / "v.mp4", r"v\.mp4': frame 5 cannot be decoded \(RuntimeError: decoder error\).*re-encode",
             chunk_frames=4)


def test_video_ending_early_is_refused(tmp_path, monkeypatch):
    import imageio.v3 as iio

    (tmp_path / "v.mp4").write_bytes(b"")
    real = []

    def imiter(path, plugin=None):  # 10 frames counted, 7 delivered when read
        real.append(path)
        yield from (np.full((16, 16), i, np.uint8) for i in range(10 if len(real) == 1 else 7))

    monkeypatch.setattr(iio, "imiter", imiter)
    _refused(tmp_path / "v.mp4", r"v\.mp4': frame 7 cannot be decoded \(the video ends after 7 frames", chunk_frames=4)


def test_read_delivers_exactly_the_frames_claimed(tmp_path):
    """Whatever goes wrong inside a source's read is a DataError, and a short block is never passed on."""
    from pipeline.io.ingest import open_sources

    np.save(tmp_path / "a.npy", STACK)
    src = open_sources(tmp_path / "a.npy")["frames"]
    np.testing.assert_array_equal(src.read(30, 32), STACK[30:])
    with pytest.raises(DataError, match=r"a\.npy': frames 30-33 gave 2 frames, not 4"):
        src.read(30, 34)


def test_truncation_is_heard_where_tifffile_is_silenced(tmp_path):
    """The break in the chain of pages is found from tifffile's log, even where its log level hides it."""
    import logging

    p = tmp_path / "half.tif"
    tifffile.imwrite(p, STACK, metadata=None)
    _cut(p, p.stat().st_size // 2)
    log = logging.getLogger("tifffile")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        _refused(p, r"half\.tif' is truncated or damaged: only 1 page could be read")
    finally:
        log.setLevel(level)
    assert log.level == level
