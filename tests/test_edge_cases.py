"""Edge cases found in review: each was a wrong result, a traceback or a dead end before."""

import numpy as np
import pytest
import tifffile
import zarr

import pipeline
from conftest import one_line as _one_line
from conftest import run_cli


def test_resume_on_a_complete_output_with_a_stale_progress_folder(sim_small, tmp_path):
    out = tmp_path / "o.zarr"
    pipeline.run(sim_small, out)
    from pipeline.io.outputs import mark

    stale = tmp_path / "o.zarr.progress"
    stale.mkdir()  # a folder of the user's at that name is never deleted
    (stale / "notes.txt").write_text("mine")
    p = run_cli("run", sim_small, out, "--resume")
    assert p.returncode == 2 and "not made by xray-pipeline" in p.stderr and (stale / "notes.txt").is_file()
    (stale / "notes.txt").unlink()
    mark(stale, "progress")  # as if killed after the final move, before the clean-up
    p = run_cli("run", sim_small, out, "--resume")
    assert p.returncode == 0 and "nothing to resume" in p.stdout
    assert not stale.exists()


def test_cli_run_on_a_tiff_recording(tmp_path):
    sim = pipeline.simulate(tmp_path / "s.zarr", frames=4, size=(64, 64), truth_frames=False)
    tifffile.imwrite(tmp_path / "rec.tif", zarr.open_group(str(sim), mode="r")["frames"][:], photometric="minisblack")
    pipeline.save_calibration(pipeline.calibrate(sim), tmp_path / "cal.zarr")
    p = run_cli("run", tmp_path / "rec.tif", tmp_path / "o.zarr", "--calibration", tmp_path / "cal.zarr", "-q")
    assert p.returncode == 0, p.stderr
    prov = zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["provenance"]
    assert prov["input"].endswith("rec.tif")
    # without a calibration the run fails: the message names the recording and nothing is left behind
    e = _one_line(run_cli("run", tmp_path / "rec.tif", tmp_path / "o2.zarr"))
    assert "rec.tif" in e and "ingest.zarr" not in e
    assert not (tmp_path / "o2.zarr.ingest.zarr").exists()


def test_saturation_and_inf_with_nan_in_float_input(tmp_path):
    src = pipeline.simulate(tmp_path / "f.zarr", frames=4, size=(64, 64), truth_frames=False)
    g = zarr.open_group(str(src), mode="r+")
    raw = g["frames"][:].astype(np.float32)
    raw[0, 1, 1] = np.nan
    raw[0, 2, 2] = 70000.0  # saturated
    raw[1, 3, 3] = np.inf
    del g["frames"]
    g.create_array("frames", data=raw, chunks=(4, 64, 64))
    with pytest.warns(UserWarning):
        pipeline.run(src, tmp_path / "o.zarr", overrides=["flatfield.saturation_level=65535",
                                                          "flatfield.bad_pixels.replace=false"])
    out = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["frames"][:]
    assert np.isnan(out[0, 2, 2]) and np.isnan(out[0, 1, 1]) and np.isnan(out[1, 3, 3])
    assert not np.isinf(out).any()


def test_spatial_without_gat_does_not_depend_on_chunking(sim_small, tmp_path):
    over = ["denoise.enabled=true", "denoise.temporal=false", "denoise.method=bilateral", "denoise.anscombe=false"]
    pipeline.run(sim_small, tmp_path / "a.zarr", overrides=[*over, "execution.chunk_frames=4"])
    pipeline.run(sim_small, tmp_path / "b.zarr", overrides=[*over, "execution.chunk_frames=16"])
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["frames"][:],
                                  zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["frames"][:])


def test_clean_errors_for_export_and_raw_ingest(sim_small, tmp_path):
    out = tmp_path / "o.zarr"
    pipeline.run(sim_small, out)
    assert "not an array of frames" in _one_line(run_cli("export", out, tmp_path / "x.tif", "--array", "calibration"))
    p = run_cli("export", out, tmp_path / "g.tif", "--array", "calibration/gain")  # a 2D map: one page
    assert p.returncode == 0 and tifffile.imread(tmp_path / "g.tif").shape == (128, 160)
    (tmp_path / "cam.raw").write_bytes(b"\0" * 64)
    assert "dtype" in _one_line(run_cli("ingest", tmp_path / "cam.raw", tmp_path / "r.zarr", "--raw-dtype", "foo",
                                        "--raw-shape", "4,4"))
    assert "raw-shape" in _one_line(run_cli("ingest", tmp_path / "cam.raw", tmp_path / "r.zarr", "--raw-dtype",
                                            "<u2", "--raw-shape", "0,4"))


def test_calibration_made_without_the_run_response_is_refused(tmp_path):
    cal = pipeline.api.simulate_characterisation(tmp_path / "c.zarr", size=(128, 128), n_flats=4, n_edge=2,
                                                 step_frames=30)
    pipeline.api.characterise(cal, tmp_path / "rep")
    sim = pipeline.simulate(tmp_path / "v.zarr", frames=4, size=(128, 128), truth_frames=False)
    pipeline.save_calibration(pipeline.calibrate(sim), tmp_path / "plain.zarr")
    e = _one_line(run_cli("run", sim, tmp_path / "o.zarr", "--calibration", tmp_path / "plain.zarr", "--set",
                          f"flatfield.response={tmp_path / 'rep' / 'pixel_response.npy'}"))
    assert "flatfield.response" in e
    # a calibration made with the same response is accepted
    p = run_cli("calibrate", sim, tmp_path / "lin.zarr", "--set",
                f"flatfield.response={tmp_path / 'rep' / 'pixel_response.npy'}")
    assert p.returncode == 0, p.stderr
    p = run_cli("run", sim, tmp_path / "o.zarr", "--calibration", tmp_path / "lin.zarr", "--set",
                f"flatfield.response={tmp_path / 'rep' / 'pixel_response.npy'}", "-q")
    assert p.returncode == 0, p.stderr
    # a calibration saved before the CRC-32 checksums (its response checksum a BLAKE2b) is still accepted
    import zarr

    from pipeline.io.checkpoint import legacy_checksum

    from pipeline.api import load_response
    from pipeline.config import load_config

    resp = load_response(load_config(None, overrides=[f"flatfield.response={tmp_path / 'rep' / 'pixel_response.npy'}"]),
                         (128, 128))
    zarr.open_group(str(tmp_path / "lin.zarr"), mode="r+").attrs["response_checksum"] = legacy_checksum(resp)
    p = run_cli("run", sim, tmp_path / "o2.zarr", "--calibration", tmp_path / "lin.zarr", "--set",
                f"flatfield.response={tmp_path / 'rep' / 'pixel_response.npy'}", "-q")
    assert p.returncode == 0, p.stderr


def test_resume_of_a_run_started_by_an_earlier_release_says_so(sim_small, tmp_path):
    import json

    out = tmp_path / "o.zarr"
    pipeline.run(sim_small, out)
    progress = tmp_path / "o.zarr.progress"
    progress.mkdir()
    (progress / "run.json").write_text(json.dumps({"version": "0.1.0", "config": {}}))
    (tmp_path / "o.zarr.partial").mkdir()
    from pipeline.io.outputs import mark

    mark(progress, "progress")
    mark(tmp_path / "o.zarr.partial", "output")
    e = _one_line(run_cli("run", sim_small, out, "--resume", "--overwrite"))
    assert "earlier xray-pipeline (0.1.0)" in e and "--overwrite instead of --resume" in e
