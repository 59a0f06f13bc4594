"""A corpus of damaged inputs, made here, run through every command that reads them: each ends in exit status 2 and
one line naming the file (or key) and the fix, never a traceback, and never an output.

Categories (issue: about 100 of 800 damaged inputs printed a traceback): damaged Zarr metadata in every command,
attributes of the wrong type, absurd config values and a binary config file, damaged files inside a TIFF folder
and odd raw/npy/HDF5 sources for ingest, degenerate exports. The commands run in this process (``cli.main``), so
an exception that is not a one-line error fails the test with its traceback.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
import zarr

import pipeline
from pipeline import cli

CASES: list = []  # (case id, builder(base, tmp) -> (path, [command args with IN/OUT placeholders]), must-mention)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    sim = pipeline.simulate(d / "s.zarr", frames=8, size=(48, 48), chunk_frames=4, truth_frames=False)
    return sim


def _copy(base, tmp, name="d.zarr"):
    dst = tmp / name
    shutil.copytree(base, dst)
    return dst


ZARR_COMMANDS = [["info", "IN"], ["mtf", "IN"], ["calibrate", "IN", "OUT"], ["run", "IN", "OUT", "-q"],
                 ["export", "IN", "OUT.tif"], ["afterglow", "fit", "IN", "--out", "OUT.json"]]


def _meta(edit, where="frames/zarr.json"):
    """A builder: the copy's ``where`` metadata changed by ``edit(dict) -> dict | bytes``."""
    def build(base, tmp):
        d = _copy(base, tmp)
        f = d / where
        doc = json.loads(f.read_text())
        new = edit(doc)
        f.write_bytes(new if isinstance(new, bytes) else json.dumps(new).encode())
        return d, ZARR_COMMANDS
    return build


def _set(doc, key, value):
    doc[key] = value
    return doc


def _codec(doc):
    doc["codecs"] = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "no-such-codec"}]
    return doc


def _chunk_size(value):
    def edit(doc):
        doc["chunk_grid"]["configuration"]["chunk_shape"][0] = value
        return doc
    return edit


def _root_attrs(**attrs):
    def edit(doc):
        doc.setdefault("attributes", {}).update(attrs)
        return doc
    return edit


def _attrs(**attrs):
    """Physical attributes of the wrong type: refused by the commands that use them (info and export only show
    or copy frames, and may succeed)."""
    build = _meta(_root_attrs(**attrs), where="zarr.json")

    def commands(base, tmp):
        d, _ = build(base, tmp)
        return d, [["mtf", "IN"], ["run", "IN", "OUT", "-q"], ["afterglow", "fit", "IN", "--out", "OUT.json"]]
    return commands


METADATA = {
    "not-json": _meta(lambda d: b"{ this is not json"),
    "not-utf8": _meta(lambda d: b"\xff\xfe\x00garbage"),
    "root-not-json": _meta(lambda d: b"[1, 2", where="zarr.json"),
    "negative-shape": _meta(lambda d: _set(d, "shape", [-8, 48, 48])),
    "zero-chunk": _meta(_chunk_size(0)),
    "negative-chunk": _meta(_chunk_size(-4)),
    "unknown-codec": _meta(_codec),
    "fill-value-type": _meta(lambda d: _set(d, "fill_value", "lots")),
    "rate-string": _attrs(frame_rate_hz="fast"),
    "rate-mapping": _attrs(frame_rate_hz={"hz": 50}),
    "pitch-string": _attrs(pixel_pitch_mm="abc"),
    "pitch-list": _attrs(pixel_pitch_mm=[0.1, 0.1]),
}


def _array_as_root(base, tmp):
    """The root's metadata replaced by an array's (a group expected)."""
    d = _copy(base, tmp)
    (d / "zarr.json").write_bytes((d / "frames" / "zarr.json").read_bytes())
    return d, ZARR_COMMANDS


METADATA["array-as-root"] = _array_as_root


def _config_case(text_or_bytes, key=None):
    def build(base, tmp):
        cfg = tmp / "c.yaml"
        cfg.write_bytes(text_or_bytes if isinstance(text_or_bytes, bytes) else text_or_bytes.encode())
        return base, [["run", "IN", "OUT", "--config", cfg, "-q"], ["calibrate", "IN", "OUT", "--config", cfg]]
    return build


CONFIGS = {
    "binary-config": _config_case(bytes(range(256)) * 4),
    "window-huge": _config_case("flatfield:\n  bad_pixels:\n    window: 100001\n"),
    "gaussian-huge": _config_case("denoise:\n  enabled: true\n  method: gaussian\n  gaussian_sigma: 1.0e6\n"),
    "median-huge": _config_case("denoise:\n  enabled: true\n  method: median\n  median_size: 100001\n"),
    "bilateral-huge": _config_case("denoise:\n  enabled: true\n  method: bilateral\n  bilateral_sigma_spatial: 1e5\n"),
    "window-frame": _config_case("flatfield:\n  bad_pixels:\n    window: 101\n"),  # within the cap, above 48 px
}


def _ingest(build_src):
    def build(base, tmp):
        src = build_src(base, tmp)
        return src, [["ingest", "IN", "OUT"], ["run", "IN", "OUT", "-q"]]
    return build


def _frames(base):
    return zarr.open_group(str(base), mode="r")["frames"][:]


def _folder_with(extra):
    def make(base, tmp):
        d = tmp / "seq"
        d.mkdir()
        for i, f in enumerate(_frames(base)):
            tifffile.imwrite(d / f"f{i:02d}.tif", f)
        extra(d)
        return d
    return make


def _truncate(p):
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def _raw(name, data, dtype):
    def make(base, tmp):
        p = tmp / name
        p.write_bytes(data)
        return p
    return make


def _npy_object(base, tmp):
    p = tmp / "o.npy"
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return p


def _npy_truncated(base, tmp):
    p = tmp / "t.npy"
    np.save(p, _frames(base))
    _truncate(p)
    return p


def _h5_group(base, tmp):
    import h5py

    p = tmp / "g.h5"
    with h5py.File(p, "w") as f:
        f.create_group("entry/data")
    return p


def _h5_dataset_is_group(base, tmp):
    import h5py

    p = tmp / "n.h5"
    with h5py.File(p, "w") as f:
        f["entry/data/data"] = _frames(base)
    return p, [["ingest", "IN", "OUT", "--dataset", "/entry/data"], ["ingest", "IN", "OUT", "--dataset", "/nope"]]


def _empty_tiff(base, tmp):
    p = tmp / "e.tif"
    p.write_bytes(b"")
    return p


INGEST = {
    "folder-truncated-tiff": _ingest(_folder_with(lambda d: _truncate(d / "f03.tif"))),
    "folder-not-a-tiff": _ingest(_folder_with(lambda d: (d / "f04.tif").write_text("not a tiff"))),
    "folder-stray-readme": _ingest(_folder_with(lambda d: (d / "README").write_text("notes"))),
    "empty-tiff": _ingest(_empty_tiff),
    "raw-empty": _ingest(_raw("e.raw", b"", "<u2")),
    "npy-object": _ingest(_npy_object),
    "npy-truncated": _ingest(_npy_truncated),
    "hdf5-group": _ingest(_h5_group),
}


def _raw_cases():
    def zero_dtype(base, tmp):
        p = tmp / "z.raw"
        p.write_bytes(b"\0" * 64)
        return p, [["ingest", "IN", "OUT", "--raw-dtype", "V0", "--raw-shape", "4,4"],
                   ["ingest", "IN", "OUT", "--raw-dtype", "<u2", "--raw-shape", "0,4"]]

    def empty(base, tmp):
        p = tmp / "e.raw"
        p.write_bytes(b"")
        return p, [["ingest", "IN", "OUT", "--raw-dtype", "<u2", "--raw-shape", "4,4"]]
    return {"raw-zero-dtype": zero_dtype, "raw-empty-file": empty}


INGEST.update(_raw_cases())
INGEST["hdf5-dataset-is-a-group"] = _h5_dataset_is_group


def _export_cases():
    def tiny(base, tmp):
        g = zarr.open_group(str(tmp / "one.zarr"), mode="w", zarr_format=3)
        g.create_array("frames", data=np.ones((3, 1, 1), np.float32))
        g.create_array("empty", shape=(0, 8, 8), dtype=np.float32)
        return tmp / "one.zarr", [["export", "IN", "OUT.mp4"], ["export", "IN", "OUT.gif"],
                                  ["export", "IN", "OUT.tif", "--array", "empty"],
                                  ["export", "IN", "OUT.mp4", "--array", "empty"]]

    def fps(base, tmp):
        return base, [["export", "IN", "OUT.gif", "--fps", "1e-9"], ["export", "IN", "OUT.mp4", "--fps", "1e-9"]]
    return {"export-1x1-or-empty": tiny, "export-tiny-fps": fps}


EXPORTS = _export_cases()

ALL = {**METADATA, **CONFIGS, **INGEST, **EXPORTS}
# what a degenerate export may do instead of failing: write a valid file (1x1 frames are still frames)
MAY_SUCCEED = {("folder-stray-readme", 0), ("folder-stray-readme", 1)}  # a TIFF folder is its .tif files


@pytest.mark.parametrize("case", sorted(ALL))
def test_damaged_input_is_one_line_never_a_traceback(base, tmp_path, capsys, case):
    src, commands = ALL[case](base, tmp_path)
    for i, args in enumerate(commands):
        out = tmp_path / f"out{i}"
        argv = [str(src) if a == "IN" else str(out) + a[3:] if isinstance(a, str) and a.startswith("OUT") else str(a)
                for a in args]
        capsys.readouterr()
        rc = cli.main(argv)  # an exception other than the pipeline's one-line errors fails here, with its traceback
        err = capsys.readouterr().err.strip().splitlines()
        if (case, i) in MAY_SUCCEED and rc == 0:
            continue
        errors = [ln for ln in err if ln.startswith("error: ") or ln.startswith("Error: ")]
        assert rc == 2 and len(errors) == 1 and len(err) <= 2, (case, argv, rc, err)  # (a usage line may precede)
        assert not any(p.name.startswith(f"out{i}") for p in tmp_path.iterdir()), (case, argv)  # no output left


def test_corpus_covers_every_category():
    assert len(METADATA) >= 12 and len(CONFIGS) >= 6 and len(INGEST) >= 10 and len(EXPORTS) >= 2


def test_mtf_flags_skipped_frames_and_measures_the_rest(tmp_path):
    """A run's output with frames skipped as NaN: 'mtf' flags those frames and measures the others, as the run's
    own MTF stage does (it failed outright before)."""
    sim = pipeline.simulate(tmp_path / "s.zarr", frames=12, size=(128, 128), chunk_frames=4, truth_frames=False)
    (sim / "frames" / "c" / "1" / "0" / "0").unlink()  # frames 4-7
    out = pipeline.run(sim, tmp_path / "o.zarr", overrides=["execution.on_error=skip"]).output
    d = pipeline.api.measure_mtf(out, block_frames=6)
    m20 = np.asarray(d["mtf20_cy_per_px"], dtype=float)
    assert np.isnan(m20[4:8]).all() and np.isfinite(m20[:4]).all() and np.isfinite(m20[8:]).all()
    assert all(d["result"].flags[i] == ["nonfinite_roi"] for i in range(4, 8))
    e = capture_cli(["export", str(out), str(tmp_path / "x.gif"), "--side-by-side"])
    assert e[0] == 2 and "frames 4-" in e[1] and "s.zarr/frames" in e[1]  # the raw input's lost chunk named, in one line


def capture_cli(argv):
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1, lines
    return rc, lines[0]


def test_device_auto_fallback_is_one_warning_line(tmp_path):
    from conftest import run_cli

    sim = pipeline.simulate(tmp_path / "s.zarr", frames=4, size=(48, 48), truth_frames=False)
    p = run_cli("run", sim, tmp_path / "o.zarr", "--device", "auto", "-q")
    assert p.returncode == 0, p.stderr
    lines = p.stderr.strip().splitlines()
    assert all(ln.startswith("warning: ") for ln in lines) and "RuntimeWarning" not in p.stderr
    assert "/" not in "".join(ln.split("(")[0] for ln in lines if "runs on the CPU" in ln)  # no source path
