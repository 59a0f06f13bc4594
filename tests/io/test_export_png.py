"""Export to PNG: a folder of 16-bit frames (exact, or windowed with window.json), a frame range for every format,
and the 8-bit contact sheet (raw above processed); outputs replaced only where export wrote them."""

import json

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr

import pipeline
from pipeline.errors import OutputExistsError, PipelineError

T, H, W = 6, 32, 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("png")
    src = pipeline.simulate(d / "in.zarr", frames=T, size=(H, W), seed=1)
    out = pipeline.run(src, d / "out.zarr", {"execution": {"scheduler": "synchronous"}}).output
    # a plain float group with NaN (no provenance)
    vals = np.random.default_rng(2).normal(10, 3, (T, H, W)).astype(np.float32)
    vals[2, 3, 4] = np.nan
    g = zarr.open_group(str(d / "float.zarr"), mode="w")
    g.create_array("frames", shape=vals.shape, dtype=vals.dtype, chunks=(2, H, W))[:] = vals
    return {"src": src, "out": out, "float": d / "float.zarr"}


def _zarr(path):
    return zarr.open_group(str(path), mode="r")["frames"][:]


def _pngs(folder):
    return sorted(p.name for p in folder.glob("*.png"))


def test_uint16_frames_round_trip_exactly(data, tmp_path):
    p = pipeline.export(data["src"], tmp_path / "raw", format="png")
    want = _zarr(data["src"])
    assert want.dtype == np.uint16
    assert _pngs(p) == [f"frame_{i:05d}.png" for i in range(T)]
    for i in range(T):
        got = iio.imread(p / f"frame_{i:05d}.png")
        assert got.dtype == np.uint16 and got.shape == (H, W)
        np.testing.assert_array_equal(got, want[i])
    assert not (p / "window.json").exists() and p.summary["exact"] and p.summary["frames"] == list(range(T))
    assert not list(tmp_path.glob(".*"))  # no temporary folder left beside it


def test_float_frames_map_through_the_recorded_window(data, tmp_path):
    p = pipeline.export(data["float"], tmp_path / "f", format="png")
    rec = json.loads((p / "window.json").read_text())
    vals = _zarr(data["float"])
    ok = vals[np.isfinite(vals)].astype(np.float64)
    np.testing.assert_allclose(rec["window"], np.percentile(ok, [0.5, 99.5]))  # over all the exported frames
    lo, hi = rec["window"]
    assert p.summary["window"] == [lo, hi]
    for i in (0, 2):
        code = iio.imread(p / f"frame_{i:05d}.png")
        assert code.dtype == np.uint16
        want = np.rint(np.clip((vals[i].astype(np.float64) - lo) / (hi - lo), 0, 1) * 65535)
        want[np.isnan(vals[i])] = 0
        np.testing.assert_array_equal(code, want)
    assert iio.imread(p / "frame_00002.png")[3, 4] == 0  # NaN -> 0
    v = float(vals[1, 5, 6])  # one pixel through the formula, and back within one code
    c = int(iio.imread(p / "frame_00001.png")[5, 6])
    assert c == round(min(max((v - lo) / (hi - lo), 0), 1) * 65535)
    if 0 < c < 65535:
        assert abs(lo + c / 65535 * (hi - lo) - v) <= (hi - lo) / 65535
    # a given window is used as it is
    q = pipeline.export(data["out"], tmp_path / "g", format="png", window=(0.0, 10000.0))
    assert json.loads((q / "window.json").read_text())["window"] == [0.0, 10000.0]
    out = _zarr(data["out"])[0].astype(np.float64)
    np.testing.assert_array_equal(iio.imread(q / "frame_00000.png"),
                                  np.rint(np.clip(out / 10000.0, 0, 1) * 65535))


def test_frame_range_selects_exactly_those_frames(data, tmp_path):
    cases = [((1, 6, 2), [1, 3, 5]), (slice(-2, None), [4, 5]), ("::3", [0, 3]), ((2, 100), [2, 3, 4, 5])]
    for k, (sel, idx) in enumerate(cases):
        p = pipeline.export(data["src"], tmp_path / f"r{k}", format="png", frames=sel)
        assert _pngs(p) == [f"frame_{i:05d}.png" for i in idx], sel
        assert p.summary["frames"] == idx
    t = pipeline.export(data["out"], tmp_path / "r.tif", frames=(1, 5, 3))  # every format
    np.testing.assert_array_equal(tifffile.imread(t), _zarr(data["out"])[[1, 4]])
    assert t.summary["frames"] == [1, 4]
    g = pipeline.export(data["src"], tmp_path / "r.gif", frames="2:5")
    assert g.summary["frames"] == [2, 3, 4] and iio.imread(g).shape[0] == 3


def test_contact_sheet_tiles_raw_above_processed(data, tmp_path):
    p = pipeline.export(data["out"], tmp_path / "s.png")
    sheet = iio.imread(p)
    gap = 2
    assert sheet.dtype == np.uint8
    assert sheet.shape == (4 * H + 3 * gap, 4 * W + 3 * gap)  # 6 frames: 2 rows of 4, each raw + processed
    assert p.summary["frames"] == list(range(T)) and p.summary["grid"] == [4, 4]
    assert p.summary["raw"] == str(data["src"].resolve()) or p.summary["raw"] == str(data["src"])
    for c in range(4):  # frames 0..3: raw row 0, processed row 1
        raw, proc = sheet[:H, c * (W + gap):][:, :W], sheet[H + gap : 2 * H + gap, c * (W + gap):][:, :W]
        assert not np.array_equal(raw, proc)
    assert (sheet[H : H + gap] == 255).all()  # the separator
    # no raw input (a recording): one row per selection; sheet_frames over the range, evenly spaced
    q = pipeline.export(data["src"], tmp_path / "q.png", sheet_frames=3, frames=(0, 6))
    assert q.summary["raw"] is None and q.summary["frames"] == [0, 2, 5]
    assert iio.imread(q).shape == (H, 3 * W + 2 * gap)
    with pytest.raises(PipelineError, match="side-by-side"):
        pipeline.export(data["src"], tmp_path / "z.png", side_by_side=True)


def test_existing_outputs_are_refused_or_replaced_only_where_export_wrote_them(data, tmp_path):
    p = pipeline.export(data["src"], tmp_path / "f", format="png")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        pipeline.export(data["src"], tmp_path / "f", format="png")
    pipeline.export(data["src"], tmp_path / "f", format="png", frames=(4, 6), overwrite=True)
    assert _pngs(p) == ["frame_00004.png", "frame_00005.png"]  # the old folder replaced whole
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    for ow in (False, True):
        with pytest.raises(OutputExistsError):
            pipeline.export(data["src"], user, format="png", overwrite=ow)
    assert (user / "notes.txt").read_text() == "keep" and _pngs(user) == []
    with pytest.raises(OutputExistsError):  # never the input itself
        pipeline.export(data["src"], data["src"], format="png", overwrite=True)
    (tmp_path / "s.png").write_bytes(b"x")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        pipeline.export(data["src"], tmp_path / "s.png")
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("sel", [(7, None, None), (0, 6, 0), (0, 6, -1), "5:2", "a:b", "3", (1.5, 3)])
def test_a_bad_frame_range_is_one_line_naming_the_option(data, tmp_path, sel):
    for dest, kw in ((tmp_path / "f", {"format": "png"}), (tmp_path / "f.tif", {}), (tmp_path / "f.png", {})):
        with pytest.raises(PipelineError, match="--frames") as e:
            pipeline.export(data["src"], dest, frames=sel, **kw)
        assert "\n" not in str(e.value)
        assert not dest.exists()
