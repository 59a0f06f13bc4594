"""The command line end to end, in a temporary directory, through the real entry point."""

import json

import numpy as np
import pytest
import zarr

from conftest import run_cli


def _one_line_error(proc):
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    assert len(err) == 1 and err[0].startswith("error: "), proc.stderr
    return err[0]


def test_end_to_end(tmp_path):
    sim, cal, out = tmp_path / "sim.zarr", tmp_path / "cal.zarr", tmp_path / "out.zarr"
    p = run_cli("simulate", sim, "--frames", 12, "--size", 64, 96, "--preset", "gc", "-q")
    assert p.returncode == 0, p.stderr
    p = run_cli("info", sim, "--json")
    d = json.loads(p.stdout)
    assert d["arrays"]["frames"]["shape"] == [12, 64, 96] and d["attributes"]["pixel_pitch_mm"] == 0.01
    p = run_cli("calibrate", sim, cal)
    assert p.returncode == 0, p.stderr
    p = run_cli("run", sim, out, "--calibration", cal, "--set", "flatfield.output=transmission", "-q")
    assert p.returncode == 0, p.stderr
    assert "12 frames in" in p.stdout and "frames/s" in p.stdout
    g = zarr.open_group(str(out), mode="r")
    assert g["frames"].dtype == np.float32 and g["frames"].shape == (12, 64, 96)
    prov = g.attrs["provenance"]
    for key in ("version", "config", "input", "start", "end", "device"):
        assert key in prov
    acc = prov["time_account"]
    assert acc["threads"] >= 1 and 0 < acc["blocks_s"] < acc["wall_s"] <= prov["seconds"]
    assert all(acc[k] >= 0 for k in ("read_s", "stages_s", "write_s", "record_s")) and acc["write_s"] > 0
    assert prov["config"]["flatfield"]["output"] == "transmission"
    # transmission of the open beam is about 1
    truth = zarr.open_group(str(sim), mode="r")["truth/frames"][:]
    open_beam = truth > 0.999 * truth.max()
    assert np.nanmean(g["frames"][:][open_beam]) == pytest.approx(1.0, abs=0.01)
    p = run_cli("config", "--set", "execution.chunk_frames=3")
    assert "chunk_frames: 3" in p.stdout


def test_errors_are_one_line(tmp_path, sim_small):
    e = _one_line_error(run_cli("run", sim_small, tmp_path / "o.zarr", "--set", "flatfield.outptu=counts"))
    assert "flatfield.outptu" in e
    e = _one_line_error(run_cli("run", sim_small, tmp_path / "o.zarr", "--set", "execution.chunk_frames=many"))
    assert "execution.chunk_frames" in e
    e = _one_line_error(run_cli("run", tmp_path / "missing.zarr", tmp_path / "o.zarr"))
    assert "missing.zarr" in e and "does not exist" in e
    bad = tmp_path / "mismatch.zarr"
    g = zarr.open_group(str(bad), mode="w")
    g.create_array("frames", shape=(4, 32, 32), dtype="uint16")
    g.create_array("darks", shape=(2, 32, 31), dtype="uint16")
    g.create_array("flats", shape=(2, 32, 32), dtype="uint16")
    e = _one_line_error(run_cli("run", bad, tmp_path / "o.zarr"))
    assert "darks" in e and "(2, 32, 31)" in e
    nocal = tmp_path / "nocal.zarr"
    g = zarr.open_group(str(nocal), mode="w")
    g.create_array("frames", shape=(4, 32, 32), dtype="uint16")
    e = _one_line_error(run_cli("run", nocal, tmp_path / "o.zarr"))
    assert "darks" in e and "--calibration" in e
    assert not (tmp_path / "o.zarr").exists()


def test_existing_output_is_never_overwritten_without_flag(tmp_path, sim_small):
    out = tmp_path / "out.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("user data")
    e = _one_line_error(run_cli("run", sim_small, out))
    assert "--overwrite" in e
    assert (out / "precious.txt").read_text() == "user data"
    e = _one_line_error(run_cli("run", sim_small, sim_small, "--overwrite"))
    assert "overlaps the input" in e
    # --overwrite replaces a Zarr output, never a folder of something else
    e = _one_line_error(run_cli("run", sim_small, out, "--overwrite", "-q"))
    assert "not a Zarr group" in e and (out / "precious.txt").read_text() == "user data"
    (out / "precious.txt").unlink()
    out.rmdir()
    assert run_cli("run", sim_small, out, "-q").returncode == 0
    p = run_cli("run", sim_small, out, "--overwrite", "-q")  # an earlier output: replaced
    assert p.returncode == 0, p.stderr
    assert zarr.open_group(str(out), mode="r")["frames"].shape[0] == 48
    assert sorted(q.name for q in tmp_path.iterdir()) == ["out.zarr"]  # no lock, partial or old output left


def test_demo_writes_pngs_and_summary(tmp_path):
    p = run_cli("demo", tmp_path / "d", "--frames", 8, "--size", 128, 128, "-q")
    assert p.returncode == 0, p.stderr
    for name in ("frame_raw_vs_corrected.png", "bad_pixels.png", "gain_map.png", "afterglow_fit.png",
                 "afterglow_model.json", "summary.txt"):
        f = tmp_path / "d" / name
        assert f.exists() and f.stat().st_size > 0
    assert "recall" in p.stdout and "ghost behind moving board" in p.stdout and "MTF20" in p.stdout
    assert (tmp_path / "d" / "corrected.zarr.resolution.png").exists()
    _one_line_error(run_cli("demo", tmp_path / "d", "--frames", 8, "--size", 128, 128, "-q"))  # no silent overwrite


def test_import_pulls_in_neither_dask_nor_cupy():
    import subprocess
    import sys

    code = "import sys, pipeline; print('dask' in sys.modules, 'cupy' in sys.modules, 'zarr' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False", "False"]


def test_console_script_exits_quickly_and_writes_what_main_writes(tmp_path):
    """The console script (``console``: ``main``, then the collector frozen for the exit) against ``main`` in this
    process: the same output bit for bit, no lock left behind, the same exit status on an error; and ``main`` itself
    leaves this process's collector alone."""
    import gc
    import subprocess
    import sys

    from pipeline.cli import main

    sim = tmp_path / "sim.zarr"
    assert run_cli("simulate", sim, "--frames", 8, "--size", 48, 64, "-q").returncode == 0
    p = run_cli("run", sim, tmp_path / "script.zarr", "-q")
    assert p.returncode == 0, p.stderr
    frozen = gc.get_freeze_count()
    assert main(["run", str(sim), str(tmp_path / "inproc.zarr"), "-q"]) == 0
    assert gc.get_freeze_count() == frozen
    a, b = (zarr.open_group(str(tmp_path / n), mode="r") for n in ("script.zarr", "inproc.zarr"))
    np.testing.assert_array_equal(a["frames"][:], b["frames"][:])
    assert not list(tmp_path.glob("*.lock"))
    # console() called directly, as the installed script calls it: the same status and one line on an error
    code = "import sys; from pipeline.cli import console; sys.exit(console(sys.argv[1:]))"
    q = subprocess.run([sys.executable, "-c", code, "run", str(sim), str(tmp_path / "script.zarr")],
                       capture_output=True, text=True)
    assert q.returncode == 2 and "exists" in _one_line_error(q)
    assert main(["run", str(sim), str(tmp_path / "script.zarr")]) == 2


def test_time_line_names_what_set_the_pace():
    from pipeline.cli import describe_time

    acc = {"wall_s": 2.0, "threads": {"readers": 8, "writers": 16}, "read_s": 3.0, "stages_s": 0.0, "write_s": 20.5,
           "record_s": 0.5, "gpu_waits_s": {"reads": 0.1, "device": 0.2, "writers": 1.5}, "gpu_busy_s": 0.3,
           "bound_by": "writers"}
    line = describe_time(acc)
    assert line.startswith("time: reading 3.0 s, stages 0.0 s, writing 20.5 s, recording 0.5 s")
    assert "8 reading, 16 writing threads" in line and line.endswith("paced by writing the output (compression)")
    assert "1.5 s on the writers and worked 0.3 s itself" in line
    cpu = describe_time({k: v for k, v in acc.items() if k not in ("gpu_waits_s", "bound_by")} | {"threads": 2})
    assert cpu.endswith("(thread-seconds over 2 threads)")
    assert describe_time(acc | {"blocks_s": 1.5}).startswith("time: 0.5 s setting up, 1.5 s on the blocks: reading 3.0 s")
    short = {"wall_s": 0.05, "blocks_s": 0.03, "threads": 2, "read_s": 0.004, "stages_s": 0.012, "write_s": 0.02,
             "record_s": 0.001}  # a short clip: hundredths, so the figures are not all 0.0
    assert describe_time(short).startswith("time: 0.02 s setting up, 0.03 s on the blocks: reading 0.00 s, stages "
                                           "0.01 s, writing 0.02 s, recording 0.00 s")
