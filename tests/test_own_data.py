"""A lab's own recordings in every command: input forms, metadata and its precedence, the characterisation
manifest and its bad forms, config-relative paths, set-attrs, frame ranges, output chunks and the run's summary.

Truths: the frames written to the files (read back bit for bit), tag values written with tifffile/h5py in known
units, and a run of the same frames from a Zarr dataset (a second route to the same numbers).
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
import yaml
import zarr

import pipeline
from pipeline.api import calibrate, load_afterglow
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import DataError, PipelineError
from pipeline.manifest import ingest_manifest

H = W = 48


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    """A small simulated recording (12 frames of 48 x 48, darks, flats) and its frames as files of every form."""
    root = tmp_path_factory.mktemp("own")
    z = root / "rec.zarr"
    pipeline.simulate(z, frames=12, size=(H, W), seed=5, pixel_pitch_mm=0.02, frame_rate_hz=40.0, truth_frames=False)
    g = zarr.open_group(str(z), mode="r")
    frames, darks, flats = (np.asarray(g[n][:]) for n in ("frames", "darks", "flats"))
    forms = root / "forms"
    forms.mkdir()
    (forms / "folder").mkdir()
    for i, f in enumerate(frames):
        tifffile.imwrite(forms / "folder" / f"f{i}.tif", f)
    tifffile.imwrite(forms / "stack.tif", frames)
    tifffile.imwrite(forms / "darks.tif", darks)
    tifffile.imwrite(forms / "flats.tif", flats)
    np.save(forms / "frames.npy", frames)
    frames.astype("<u2").tofile(forms / "frames.raw")
    with h5py.File(forms / "scan.h5", "w") as f:
        f["/entry/data/data"] = frames
        f["/entry/instrument/detector/x_pixel_size"] = 25.0
        f["/entry/instrument/detector/x_pixel_size"].attrs["units"] = "um"
    return {"root": root, "zarr": z, "frames": frames, "darks": darks, "flats": flats, "forms": forms}


FORMS = {
    "folder": ("folder", []),
    "stack": ("stack.tif", []),
    "npy": ("frames.npy", []),
    "raw": ("frames.raw", ["--raw-dtype", "<u2", "--raw-shape", f"{H},{W}"]),
    "hdf5": ("scan.h5::/entry/data/data", []),
}


def _cli(argv, capsys):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_input_form_in_run_equals_the_zarr_run(rec, form, tmp_path, capsys):
    """run on each file form (with --darks/--flats files) == run on the Zarr dataset, bit for bit."""
    name, extra = FORMS[form]
    ref = tmp_path / "ref.zarr"
    rc, _, err = _cli(["run", rec["zarr"], ref, "-q"], capsys)
    assert rc == 0, err
    out = tmp_path / "out.zarr"
    rc, _, err = _cli(["run", rec["forms"] / name, out, "--darks", rec["forms"] / "darks.tif", "--flats",
                       rec["forms"] / "flats.tif", "-q", *extra], capsys)
    assert rc == 0, err
    a = zarr.open_group(str(out), mode="r")["frames"][:]
    b = zarr.open_group(str(ref), mode="r")["frames"][:]
    assert np.array_equal(a, b, equal_nan=True)
    assert not list(tmp_path.glob(".*staged*")) and not (tmp_path / "out.zarr.ingest.zarr").exists()


@pytest.mark.parametrize("form", ["folder", "hdf5"])
def test_every_command_takes_the_files(rec, form, tmp_path, capsys):
    name, extra = FORMS[form]
    src = rec["forms"] / name
    dk, fl = ["--darks", rec["forms"] / "darks.tif"], ["--flats", rec["forms"] / "flats.tif"]
    rc, _, err = _cli(["calibrate", src, tmp_path / "cal.zarr", *dk, *fl, "-q", *extra], capsys)
    assert rc == 0, err
    cal_files = zarr.open_group(str(tmp_path / "cal.zarr"), mode="r")
    rc, _, err = _cli(["calibrate", rec["zarr"], tmp_path / "cal2.zarr", "-q"], capsys)
    assert rc == 0, err
    cal_zarr = zarr.open_group(str(tmp_path / "cal2.zarr"), mode="r")
    for k in ("dark", "gain", "bad_pixels"):
        assert np.array_equal(cal_files[k][:], cal_zarr[k][:])
    rc, out, err = _cli(["info", src, "--json", *extra], capsys)
    assert rc == 0, err
    assert json.loads(out)["arrays"]["frames"]["shape"] == [12, H, W]
    rc, _, err = _cli(["export", src, tmp_path / "frames", "--format", "png", "--frames", "2:8:3", *extra], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "frames").glob("*.png")) == ["frame_00002.png", "frame_00005.png"]
    import imageio.v3 as iio

    assert np.array_equal(iio.imread(tmp_path / "frames" / "frame_00005.png"), rec["frames"][5])
    assert not list(tmp_path.glob(".xray-pipeline-staged-*"))  # the staged copies are gone


SIGMA_PX, PITCH_MM = 1.2, 0.02


@pytest.fixture(scope="module")
def edge_files(tmp_path_factory):
    """A slanted edge (5 degrees) blurred by a Gaussian of 1.2 px, point-sampled: its MTF is exp(-2 pi^2 s^2 f^2)."""
    from scipy.special import erf

    root = tmp_path_factory.mktemp("edge")
    yy, xx = np.mgrid[:64, :64].astype(np.float64)
    d = (xx - 32 - np.tan(np.radians(5.0)) * (yy - 32)) * np.cos(np.radians(5.0))  # signed distance to the edge
    img = 1000 + 3000 * 0.5 * (1 + erf(d / (np.sqrt(2) * SIGMA_PX)))
    frames = np.repeat(np.round(img).astype(np.uint16)[None], 4, axis=0)
    (root / "folder").mkdir()
    for i, f in enumerate(frames):
        tifffile.imwrite(root / "folder" / f"e{i}.tif", f)
    with h5py.File(root / "edge.h5", "w") as f:
        f["/entry/data/data"] = frames
    np.save(root / "edge.npy", frames)
    return root


@pytest.mark.parametrize("name", ["folder", "edge.h5::/entry/data/data", "edge.npy"])
def test_mtf_of_each_form_is_the_analytic_one(edge_files, name, tmp_path, capsys):
    rc, _, err = _cli(["mtf", edge_files / name, "--json", tmp_path / "m.json", "--pixel-pitch", PITCH_MM], capsys)
    assert rc == 0, err
    m = json.loads((tmp_path / "m.json").read_text())
    f50 = np.sqrt(np.log(2) / (2 * np.pi**2 * SIGMA_PX**2)) / PITCH_MM  # lp/mm
    got = np.asarray(m["mtf50_lp_per_mm"], float)
    assert got.shape == (4,) and np.allclose(got, f50, rtol=0.03), (got, f50)


def test_frame_range_selects_exactly_those_frames(rec, tmp_path, capsys):
    rc, _, err = _cli(["ingest", rec["forms"] / "folder", tmp_path / "sub.zarr", "--frames", "1:11:3", "-q"], capsys)
    assert rc == 0, err
    g = zarr.open_group(str(tmp_path / "sub.zarr"), mode="r")
    assert np.array_equal(g["frames"][:], rec["frames"][1:11:3])
    assert g.attrs["frames_selected"] == [1, 11, 3]
    for bad in ("5", "a:b", "3:2", "0:4:0", "20:30"):
        with pytest.raises(DataError, match="--frames"):
            pipeline.ingest(rec["forms"] / "folder", tmp_path / f"x{bad.replace(':', '_')}.zarr", frames=bad)


def _imagej_tiff(path, frames, *, pitch_mm, interval_s):
    tifffile.imwrite(path, frames, imagej=True, resolution=(1 / pitch_mm, 1 / pitch_mm),
                     metadata={"unit": "mm", "finterval": interval_s, "axes": "TYX"})


def test_metadata_precedence_command_line_config_tags(rec, tmp_path, capsys):
    tif = tmp_path / "tagged.tif"
    _imagej_tiff(tif, rec["frames"], pitch_mm=0.05, interval_s=0.01)
    # the file's tags
    d = pipeline.ingest(tif, tmp_path / "a.zarr")
    assert d["metadata"]["pixel_pitch_mm"][0] == pytest.approx(0.05)
    assert d["metadata"]["frame_rate_hz"][0] == pytest.approx(100.0)
    assert "ImageJ" in d["metadata"]["pixel_pitch_mm"][1]
    # the config over the tags, the command line over the config
    cfg = tmp_path / "lab.yaml"
    cfg.write_text(yaml.safe_dump({"input": {"pixel_pitch_mm": 0.03, "frame_rate_hz": 60.0}}))
    dk, fl = ["--darks", rec["forms"] / "darks.tif"], ["--flats", rec["forms"] / "flats.tif"]
    rc, out, err = _cli(["run", tif, tmp_path / "o1.zarr", *dk, *fl, "--config", cfg, "--frame-rate", "70"], capsys)
    assert rc == 0, err
    attrs = zarr.open_group(str(tmp_path / "o1.zarr"), mode="r").attrs
    assert attrs["pixel_pitch_mm"] == pytest.approx(0.03) and attrs["frame_rate_hz"] == pytest.approx(70.0)
    assert "pixel pitch 0.03 mm (from config input.pixel_pitch_mm)" in out
    assert "frame rate 70 Hz (from --frame-rate)" in out
    # OME-XML and NeXus in their own units
    ome = tmp_path / "ome.tif"
    tifffile.imwrite(ome, rec["frames"], ome=True, metadata={"axes": "TYX", "PhysicalSizeX": 20.0, "PhysicalSizeXUnit": "µm",
                                                   "TimeIncrement": 25.0, "TimeIncrementUnit": "ms"})
    d = pipeline.ingest(ome, tmp_path / "b.zarr")
    assert d["metadata"]["pixel_pitch_mm"][0] == pytest.approx(0.02)
    assert d["metadata"]["frame_rate_hz"][0] == pytest.approx(40.0)
    d = pipeline.ingest(rec["forms"] / "scan.h5", tmp_path / "c.zarr")
    assert d["metadata"]["pixel_pitch_mm"][0] == pytest.approx(0.025) and "x_pixel_size" in d["metadata"]["pixel_pitch_mm"][1]
    assert d["missing"] == ["frame_rate_hz"]
    # a 72 dpi TIFF says nothing about the pixels
    plain = tmp_path / "dpi.tif"
    tifffile.imwrite(plain, rec["frames"], resolution=(72, 72), resolutionunit="INCH")
    assert pipeline.ingest(plain, tmp_path / "d.zarr")["missing"] == ["pixel_pitch_mm", "frame_rate_hz"]


def test_a_zarr_dataset_with_metadata_given_is_linked_not_copied_nor_changed(rec, tmp_path, capsys):
    before = dict(zarr.open_group(str(rec["zarr"]), mode="r").attrs)
    rc, out, err = _cli(["run", rec["zarr"], tmp_path / "o.zarr", "--pixel-pitch", "0.04"], capsys)
    assert rc == 0, err
    assert zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["pixel_pitch_mm"] == pytest.approx(0.04)
    assert dict(zarr.open_group(str(rec["zarr"]), mode="r").attrs) == before
    assert rec["zarr"].joinpath("frames").is_dir() and not (tmp_path / "o.zarr.ingest.zarr").exists()


def test_a_missing_frame_rate_names_the_option(rec, tmp_path, capsys):
    model = tmp_path / "model.json"
    from pipeline.io.models import KIND

    model.write_text(json.dumps({"kind": KIND, "tau_s": [0.05], "amplitudes": [0.01], "frame_rate_hz": 40.0,
                                 "step_amplitudes": [0.01], "dc_gain": 1.01}))
    rc, _, err = _cli(["run", rec["forms"] / "stack.tif", tmp_path / "o.zarr", "--darks", rec["forms"] / "darks.tif",
                       "--flats", rec["forms"] / "flats.tif", "--set", f"afterglow.model={model}", "-q"], capsys)
    assert rc == 2  # (-q: a slow machine's progress line is not part of the error)
    assert "--frame-rate" in err and len(err.strip().splitlines()) == 1


def _manifest(tmp_path, rec, **change):
    for name in ("d", "f1", "f2", "e"):
        (tmp_path / name).mkdir(exist_ok=True)
    tifffile.imwrite(tmp_path / "d" / "0.tif", rec["darks"][0])
    tifffile.imwrite(tmp_path / "f1" / "0.tif", rec["flats"][0])
    tifffile.imwrite(tmp_path / "f2" / "0.tif", rec["flats"][1])
    tifffile.imwrite(tmp_path / "e" / "0.tif", rec["frames"][0])
    doc = {"pixel_pitch_mm": 0.02, "beam_quality": "RQA5", "darks": "d/", "flats": {25: "f1/", 50: "f2/"}, "edge": "e/"}
    doc.update(change)
    doc = {k: v for k, v in doc.items() if v is not None}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path / "m.yaml"


@pytest.mark.parametrize("change, words", [
    ({"edge": "nowhere/"}, "nowhere"),
    ({"flats": {25: "f1/"}}, "at least two air-kerma levels"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"edge": None}, "no 'edge'"),
    ({"flats": {"lots": "f1/", 50: "f2/"}}, "not a number"),
])
def test_bad_manifests_are_one_line(rec, tmp_path, capsys, change, words):
    m = _manifest(tmp_path, rec, **change)
    rc, _, err = _cli(["characterise", m, tmp_path / "rep", "-q"], capsys)  # -q: no progress line on a slow machine
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "rep").exists()


def test_manifest_frame_sizes_must_match_and_the_zarr_form_is_the_same(rec, tmp_path, capsys):
    m = _manifest(tmp_path, rec)
    rc, _, err = _cli(["ingest", "--characterisation", m, tmp_path / "c.zarr", "-q"], capsys)
    assert rc == 0, err
    g = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")
    assert sorted(g["flats"].array_keys()) == ["level0", "level1"]
    assert g["flats/level1"].attrs["air_kerma_uGy"] == 50.0
    assert np.array_equal(g["flats/level1"][0], rec["flats"][1]) and g.attrs["pixel_pitch_mm"] == 0.02
    tifffile.imwrite(tmp_path / "f2" / "0.tif", rec["flats"][1][:, :40])
    with pytest.raises(DataError, match="same frame size"):
        ingest_manifest(m, tmp_path / "c2.zarr")


def test_config_paths_are_relative_to_the_yaml(rec, tmp_path):
    sub = tmp_path / "configs"
    sub.mkdir()
    (sub / "lab.yaml").write_text("afterglow:\n  model: models/m.json\n")
    cfg = load_config(sub / "lab.yaml")
    assert cfg.afterglow.model == str(sub / "models" / "m.json")
    # --set values stay relative to the working folder
    cfg = load_config(sub / "lab.yaml", overrides=["afterglow.model=here.json"])
    assert cfg.afterglow.model == "here.json"
    from pipeline.io.zarr_store import open_input

    with pytest.raises(PipelineError, match=str(sub / "models" / "m.json")):
        load_afterglow(load_config(sub / "lab.yaml"), open_input(rec["zarr"]))


def test_set_attrs_fixes_a_dataset_in_place(rec, tmp_path, capsys):
    import shutil

    z = tmp_path / "copy.zarr"
    shutil.copytree(rec["zarr"], z)
    frames = zarr.open_group(str(z), mode="r")["frames"][:]
    rc, out, err = _cli(["set-attrs", z, "pixel_pitch_mm=0.05", "frame_rate_hz=100"], capsys)
    assert rc == 0, err
    g = zarr.open_group(str(z), mode="r")
    assert g.attrs["pixel_pitch_mm"] == 0.05 and g.attrs["frame_rate_hz"] == 100.0
    assert g.attrs["attrs_history"][0] == {**g.attrs["attrs_history"][0], "name": "pixel_pitch_mm", "old": 0.02}
    assert np.array_equal(g["frames"][:], frames)
    for bad, words in (("pixel_pitch_mm=-1", "pixel_pitch_mm"), ("colour=red", "not a recording attribute"),
                       ("frame_rate_hz=fast", "not a number"), ("pixel_pitch_mm", "NAME=VALUE")):
        rc, _, err = _cli(["set-attrs", z, bad], capsys)
        assert rc == 2 and words in err, err
    rc, _, err = _cli(["set-attrs", rec["forms"] / "stack.tif", "pixel_pitch_mm=0.05"], capsys)
    assert rc == 2 and "not a Zarr dataset" in err
    assert zarr.open_group(str(z), mode="r").attrs["pixel_pitch_mm"] == 0.05


def test_output_chunks_are_sized_for_viewers_and_change_no_value(rec, tmp_path):
    a = pipeline.run(rec["zarr"], tmp_path / "a.zarr", overrides=["execution.chunk_frames=8"])
    b = pipeline.run(rec["zarr"], tmp_path / "b.zarr", overrides=["execution.chunk_frames=8", "output.chunk_frames=8"])
    ga, gb = (zarr.open_group(str(p.output), mode="r") for p in (a, b))
    assert ga["frames"].chunks[0] == 8 and gb["frames"].chunks[0] == 8  # 48x48 float32: up to 16, a divisor of 8
    c = pipeline.run(rec["zarr"], tmp_path / "c.zarr", overrides=["execution.chunk_frames=6", "output.chunk_frames=5"])
    gc = zarr.open_group(str(c.output), mode="r")
    assert gc["frames"].chunks[0] == 3  # the largest divisor of the 6-frame blocks not above 5
    d = pipeline.run(rec["zarr"], tmp_path / "d.zarr", overrides=["execution.chunk_frames=12", "output.chunk_frames=5"])
    gd = zarr.open_group(str(d.output), mode="r")
    assert gd["frames"].chunks[0] == 5  # one block: no boundary to fall on
    for g in (gc, gd):
        assert np.array_equal(ga["frames"][:], g["frames"][:], equal_nan=True)


def test_a_run_says_what_it_found(rec, tmp_path, capsys):
    rc, out, err = _cli(["run", rec["zarr"], tmp_path / "o.zarr", "--set", "denoise.enabled=true"], capsys)
    assert rc == 0, err
    cal = calibrate(rec["zarr"], load_config(None))
    n = int(np.count_nonzero(cal.bad_pixels))
    assert f"bad pixels: {n}" in out
    assert "noise model: var = " in out and "reduced the noise" not in out  # 12 frames: too few to measure it
    assert "MiB on disk" in out and "pixel pitch 0.02 mm (from the dataset's attribute)" in out
    rc, out, err = _cli(["run", rec["zarr"], tmp_path / "q.zarr", "-q"], capsys)
    assert rc == 0 and out.count("\n") == 1 and err == ""
    rc, out, err = _cli(["simulate", tmp_path / "s.zarr", "--frames", "2", "--size", "32", "32", "-q"], capsys)
    assert rc == 0 and out == "" and err == ""


def test_a_moving_scene_gets_no_negative_noise_reduction(tmp_path, capsys):
    """The noise reduction is measured from the output's frame-to-frame changes, a static scene assumed: motion
    can only lower it. On the simulator's moving scene the measured figure is far below zero (motion, not noise),
    so the summary says it could not be measured instead of "reduced the noise by -35 dB"; on the same scene held
    still it reports the reduction as before."""
    for name, still in (("moving", None), ("still", 0.0)):
        kw = {} if still is None else {"speed_px_per_frame": still}
        sim = pipeline.simulate(tmp_path / f"{name}.zarr", frames=48, size=(96, 96), truth_frames=False, seed=1, **kw)
        rc, out, err = _cli(["run", sim, tmp_path / f"{name}_out.zarr", "--set", "denoise.enabled=true"], capsys)
        assert rc == 0, err
        line = next(x for x in out.splitlines() if x.startswith("noise model: "))
        if still is None:
            assert "the noise reduction could not be measured" in line and "reduced the noise by" not in line
        else:
            assert "denoising reduced the noise by " in line and "could not be measured" not in line
            assert float(line.split("reduced the noise by ")[1].split(" dB")[0]) > 3.0


def test_the_reported_noise_reduction_equals_the_long_run_variance_ratio(tmp_path):
    """The summary's denoise gain (the noise model against the output's frame-to-frame noise from two lags of its
    last 40 frames) against a truth that needs neither the noise model nor the filter's memory: on a long static
    recording, each pixel's variance over 192 frames in the corrected input and in the denoised output, averaged
    over the pixels (the output's memory, about 3 frames, lowers its variance estimate by ~2 %: 0.08 dB)."""
    sim = pipeline.simulate(tmp_path / "s.zarr", frames=256, size=(128, 128), quanta_per_pixel=100,
                            counts_per_quantum=80.0, afterglow_amplitudes=(0.0,), afterglow_tau_s=(0.01,),
                            speed_px_per_frame=0.0, truth_frames=False, seed=3)
    raw = pipeline.run(sim, tmp_path / "raw.zarr")
    dn = pipeline.run(sim, tmp_path / "dn.zarr", overrides=["denoise.enabled=true"])

    def pooled_variance(run):
        f = zarr.open_group(str(run.output), mode="r")["frames"][64:].astype(np.float64)
        return float(np.nanmean(np.var(f, axis=0, ddof=1)))

    truth_db = 10 * np.log10(pooled_variance(raw) / pooled_variance(dn))
    reported = dn.findings["denoise_gain_db"]
    assert truth_db > 5.0  # the temporal filter and the guided default do reduce the noise
    assert abs(reported - truth_db) < 0.5, (reported, truth_db)
    assert "denoise_gain_db" not in raw.findings  # no denoiser, no noise model: nothing claimed
