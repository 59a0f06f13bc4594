"""``run A B C OUT/``: several short clips in one call, each into OUT/NAME.zarr, equal to their own single runs."""

import shutil

import numpy as np
import pytest
import zarr

import pipeline
from conftest import one_line, run_cli


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three 12-frame 64² clips (different seeds and screens), one in a folder named without '.zarr' and with a
    dot ('clip.v2': its output is clip.v2.zarr), and each one's output from its own single run (the truth a batch
    must equal, bit for bit)."""
    root = tmp_path_factory.mktemp("clips")
    paths = [root / "a.zarr", root / "b.zarr", root / "clip.v2"]
    for seed, (p, preset) in enumerate(zip(paths, ("eu-gc", "gc", "eu-gc"))):
        pipeline.simulate(p, frames=12, size=(64, 64), preset=preset, seed=seed + 1)
    single = {}
    for p in paths:
        out = root / "single" / f"{p.name.removesuffix('.zarr')}.zarr"
        pipeline.run(p, out)
        single[p.name.removesuffix(".zarr")] = zarr.open_group(str(out), mode="r")["frames"][:]
    return paths, single


def _frames(path):
    return zarr.open_group(str(path), mode="r")["frames"][:]


def test_several_inputs_each_equal_their_single_run(tmp_path, clips):
    paths, single = clips
    out = tmp_path / "out"  # created by the run
    p = run_cli("run", *paths, out)
    assert p.returncode == 0, p.stderr
    assert sorted(q.name for q in out.iterdir()) == ["a.zarr", "b.zarr", "clip.v2.zarr"]
    for name, want in single.items():
        np.testing.assert_array_equal(_frames(out / f"{name}.zarr"), want)
    assert p.stdout.count(" frames in ") == 4  # one line per input, and the total
    assert "3 inputs, 36 frames in" in p.stdout.splitlines()[-1]
    plan = tmp_path / "plan"
    p = run_cli("run", *paths, plan, "--dry-run")  # a plan per input, nothing written
    assert p.returncode == 0, p.stderr
    assert [line.split(": ", 1)[1].split(" (")[0] for line in p.stdout.splitlines() if line.startswith("output ")] \
        == [str(plan / n) for n in ("a.zarr", "b.zarr", "clip.v2.zarr")]
    assert not plan.exists()


def test_refused_before_anything_is_written(tmp_path, clips):
    paths, _ = clips
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(paths[1], out / "b.zarr")  # an existing output, second in line
    e = one_line(run_cli("run", *paths, tmp_path / "typo.zarr", out))  # a missing input, last in line
    assert "typo.zarr" in e and "does not exist" in e and "nothing was run" in e
    e = one_line(run_cli("run", *paths, out))
    assert "b.zarr" in e and "--overwrite" in e
    assert sorted(q.name for q in out.iterdir()) == ["b.zarr"]  # a.zarr was not made first
    np.testing.assert_array_equal(_frames(out / "b.zarr"), _frames(paths[1]))  # and b untouched
    shutil.copytree(paths[0], tmp_path / "x" / "a.zarr")
    e = one_line(run_cli("run", paths[0], tmp_path / "x" / "a.zarr", tmp_path / "o2"))  # same NAME twice
    assert "a.zarr" in e and "o2" in e and not (tmp_path / "o2").exists()
    e = one_line(run_cli("run", paths[0], paths[2], paths[1]))  # the last is a dataset, not a folder
    assert "Zarr dataset" in e and "folder" in e
    e = one_line(run_cli("run", paths[0], paths[2], paths[2] / "inside"))  # the folder inside an input
    assert "overlaps" in e and "clip.v2" in e and not (paths[2] / "inside").exists()


def test_a_bad_input_stops_the_batch_and_resume_goes_on(tmp_path, clips):
    paths, single = clips
    bad = tmp_path / "b.zarr"  # frames only: no darks, no flats, no --calibration
    zarr.open_group(str(bad), mode="w").create_array("frames", shape=(4, 64, 64), dtype="uint16")
    out = tmp_path / "out"
    e = one_line(run_cli("run", paths[0], bad, paths[2], out))
    assert str(bad) in e and "no darks" in e and "1 of 3 inputs done" in e and "--resume" in e
    assert sorted(q.name for q in out.iterdir()) == ["a.zarr"]
    np.testing.assert_array_equal(_frames(out / "a.zarr"), single["a"])
    shutil.rmtree(bad)
    shutil.copytree(paths[1], bad)  # the input mended: --resume keeps a.zarr and runs the other two
    p = run_cli("run", paths[0], bad, paths[2], out, "--resume")
    assert p.returncode == 0, p.stderr
    assert "a.zarr' is complete; nothing to resume" in p.stdout
    for name, want in single.items():
        np.testing.assert_array_equal(_frames(out / f"{name}.zarr"), want)
