"""Never lose, mix or invent data: every input form protected, one writer per output, missing chunks never read
as zeros, resume that checks content, outputs that never write over what is not theirs, no hangs.

Each case was found by trying the pipeline as a hostile user would (it lost, mixed or invented data with exit
status 0); each test fails on the code before its fix."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import zarr

import pipeline
from conftest import one_line, run_cli


def _tree(path):
    """Every file under ``path`` with its bytes (to show an input is untouched)."""
    p = path if path.is_dir() else path.parent
    return {str(q.relative_to(p)): q.read_bytes() for q in sorted(p.rglob("*")) if q.is_file()}


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    """A small simulated recording, its calibration, and its frames as a TIFF file in a folder with notes."""
    d = tmp_path_factory.mktemp("safety")
    sim = pipeline.simulate(d / "s.zarr", frames=16, size=(64, 64), chunk_frames=4, truth_frames=False, seed=2)
    pipeline.save_calibration(pipeline.calibrate(sim), d / "cal.zarr")
    frames = zarr.open_group(str(sim), mode="r")["frames"][:]
    return d, sim, frames


def _recording_folder(tmp_path, frames):
    d = tmp_path / "d"
    d.mkdir()
    tifffile.imwrite(d / "rec.tif", frames, photometric="minisblack")
    (d / "notes.txt").write_text("beamtime notes")
    return d


# --------------------------------------------------------------------------- 1. every input form protected
@pytest.mark.parametrize("target", ["folder", "file", "inside", "calibration", "model"])
def test_no_output_ever_replaces_or_enters_an_input(rec, tmp_path, target):
    d0, sim, frames = rec
    d = _recording_folder(tmp_path, frames)
    src = d / "rec.tif"
    cal = tmp_path / "cal.zarr"
    shutil.copytree(d0 / "cal.zarr", cal)
    model = tmp_path / "m.json"
    args = ["--calibration", cal]
    out = {"folder": d, "file": src, "inside": src / "x.zarr", "calibration": cal, "model": model}[target]
    if target == "model":  # the afterglow model named in the config is an input too
        pipeline.api.fit_afterglow(pipeline.simulate(tmp_path / "step.zarr", frames=60, size=(32, 32), scene="open",
                                                     beam_off_frame=20, truth_frames=False), model)
        args += ["--set", f"afterglow.model={model}"]
        src = sim
    before = {p: _tree(p) for p in (d, cal)} | {model: model.read_bytes() if model.exists() else None}
    e = one_line(run_cli("run", src, out, *args, "--overwrite", "-q"))
    assert "overlaps the input" in e
    assert {p: _tree(p) for p in (d, cal)} | {model: model.read_bytes() if model.exists() else None} == before
    assert sorted(q.name for q in tmp_path.iterdir() if q.name.startswith(("d.", "rec.", "cal.zarr.", "m.json."))) \
        == []  # no lock, partial or staged ingest left beside it


def test_ingest_darks_flats_files_are_inputs(rec, tmp_path):
    _, _, frames = rec
    d = _recording_folder(tmp_path, frames)
    np.save(tmp_path / "darks.npy", frames[:2])
    before = (tmp_path / "darks.npy").read_bytes()
    e = one_line(run_cli("ingest", d / "rec.tif", tmp_path / "darks.npy", "--darks", tmp_path / "darks.npy",
                         "--overwrite"))
    assert "overlaps the input" in e and (tmp_path / "darks.npy").read_bytes() == before


def test_overwrite_replaces_only_an_output_of_the_same_kind(rec, tmp_path):
    _, sim, _ = rec
    f = tmp_path / "o.zarr"
    f.write_text("a file of the user's")
    e = one_line(run_cli("run", sim, f, "--overwrite", "-q"))
    assert "is a file" in e and f.read_text() == "a file of the user's"
    f.unlink()
    assert run_cli("run", sim, f, "-q").returncode == 0
    assert run_cli("run", sim, f, "--overwrite", "-q").returncode == 0  # and again: every later overwrite works
    assert run_cli("run", sim, f, "--overwrite", "-q").returncode == 0
    assert sorted(q.name for q in tmp_path.iterdir()) == ["o.zarr"]


@pytest.mark.parametrize("suffix", [".partial", ".progress", ".ingest.zarr"])
def test_user_folders_beside_the_output_are_never_deleted(rec, tmp_path, suffix):
    _, sim, _ = rec
    user = tmp_path / f"o.zarr{suffix}"
    user.mkdir()
    (user / "mine.txt").write_text("mine")
    e = one_line(run_cli("run", sim, tmp_path / "o.zarr", "-q"))
    assert "not made by xray-pipeline" in e and (user / "mine.txt").read_text() == "mine"


def test_a_user_folder_named_like_the_old_output_survives_an_overwrite(rec, tmp_path):
    _, sim, _ = rec
    assert run_cli("run", sim, tmp_path / "o.zarr", "-q").returncode == 0
    (tmp_path / "o.zarr.old").mkdir()
    (tmp_path / "o.zarr.old" / "mine.txt").write_text("mine")
    assert run_cli("run", sim, tmp_path / "o.zarr", "--overwrite", "-q").returncode == 0
    assert (tmp_path / "o.zarr.old" / "mine.txt").read_text() == "mine"


# --------------------------------------------------------------------------- 2. one writer per output
def _holder(out):
    """Another process holding ``out``'s lock, as a running writer does (started, lock taken)."""
    code = ("import sys, time; from pipeline.io.outputs import OutputLock; l = OutputLock(sys.argv[1]); "
            "print('held', flush=True); time.sleep(300)")
    p = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_and_the_lock_goes_with_a_killed_holder(rec, tmp_path):
    _, sim, _ = rec
    out = tmp_path / "o.zarr"
    assert run_cli("run", sim, out, "-q").returncode == 0
    before = _tree(out)
    holder = _holder(out)
    try:
        for args in (["--overwrite"], ["--resume"], ["--resume", "--overwrite"]):
            e = one_line(run_cli("run", sim, out, "-q", *args))
            assert "being written by another xray-pipeline process" in e and f"pid {holder.pid}" in e
        e = one_line(run_cli("calibrate", sim, out, "--overwrite"))  # every writer takes the lock
        assert "being written by another" in e
        assert _tree(out) == before and not (tmp_path / "o.zarr.partial").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed writer: the OS lets go of its lock
        holder.wait()
    assert run_cli("run", sim, out, "-q", "--overwrite").returncode == 0
    assert sorted(q.name for q in tmp_path.iterdir()) == ["o.zarr"]


def test_lock_in_process(tmp_path):
    from pipeline.io.outputs import OutputBusyError, OutputLock

    a = OutputLock(tmp_path / "x.zarr")
    with pytest.raises(OutputBusyError, match="being written by another"):
        OutputLock(tmp_path / "x.zarr")
    a.release()
    b = OutputLock(tmp_path / "x.zarr")  # free again once released
    b.release()
    assert not (tmp_path / "x.zarr.lock").exists()


# --------------------------------------------------------------------------- 4. missing chunks outside frames
def _without_chunk(src, dst, array, key="c/0/0/0"):
    shutil.copytree(src, dst)
    (dst / array / key).unlink()
    return dst


@pytest.mark.parametrize("array", ["flats", "darks"])
def test_a_lost_darks_or_flats_chunk_is_an_error_not_zeros(rec, tmp_path, array):
    _, sim, _ = rec
    bad = _without_chunk(sim, tmp_path / "b.zarr", array)
    e = one_line(run_cli("calibrate", bad, tmp_path / "cal.zarr"))
    assert f"b.zarr/{array}" in e and "chunk file missing" in e and "lost" in e
    e = one_line(run_cli("run", bad, tmp_path / "o.zarr", "-q"))
    assert f"{array}" in e and "chunk file missing" in e
    assert not (tmp_path / "cal.zarr").exists() and not (tmp_path / "o.zarr").exists()


def test_a_lost_calibration_map_chunk_is_an_error(rec, tmp_path):
    d, sim, _ = rec
    cal = _without_chunk(d / "cal.zarr", tmp_path / "cal.zarr", "gain", "c/0/0")
    e = one_line(run_cli("run", sim, tmp_path / "o.zarr", "--calibration", cal, "-q"))
    assert "cal.zarr/gain" in e and "chunk file missing" in e


def test_a_chunk_path_that_is_a_folder_or_fifo_is_never_read(rec, tmp_path):
    _, sim, _ = rec
    bad = _without_chunk(sim, tmp_path / "b.zarr", "frames", "c/1/0/0")
    (bad / "frames/c/1/0/0").mkdir()
    e = one_line(run_cli("run", bad, tmp_path / "o.zarr", "-q"))
    assert "frames 4-7" in e and "not a regular file" in e
    (bad / "frames/c/1/0/0").rmdir()
    os.mkfifo(bad / "frames/c/1/0/0")
    e = one_line(run_cli("run", bad, tmp_path / "o.zarr", "-q", timeout=60))  # a hang fails (timeout)
    assert "frames 4-7" in e and "not a regular file" in e
    e = one_line(run_cli("export", bad, tmp_path / "x.tif", timeout=60))
    assert "not a regular file" in e and not (tmp_path / "x.tif").exists()


def test_export_of_a_video_with_a_lost_chunk_fails(rec, tmp_path):
    _, sim, _ = rec
    bad = _without_chunk(sim, tmp_path / "b.zarr", "frames", "c/2/0/0")
    e = one_line(run_cli("export", bad, tmp_path / "x.tif"))
    assert "frames 8-11" in e and "chunk file missing" in e and "on_error" not in e
    assert not (tmp_path / "x.tif").exists()


def test_afterglow_fit_of_a_step_with_a_lost_chunk_fails(tmp_path):
    step = pipeline.simulate(tmp_path / "st.zarr", frames=60, size=(32, 32), scene="open", beam_off_frame=20,
                             truth_frames=False, chunk_frames=4)
    (step / "frames/c/6/0/0").unlink()
    e = one_line(run_cli("afterglow", "fit", step, "--out", tmp_path / "m.json"))
    assert "frames 24-27" in e and not (tmp_path / "m.json").exists()


def test_foreign_zarr_missing_chunks_are_the_fill_value(rec, tmp_path):
    """A Zarr group written by another tool (write_empty_chunks=False): a missing chunk is its fill value."""
    _, _, frames = rec
    g = zarr.open_group(str(tmp_path / "f.zarr"), mode="w", zarr_format=3)
    a = g.create_array("frames", shape=frames.shape, dtype=frames.dtype, chunks=(4, 64, 64), fill_value=0)
    a[...] = frames
    a[4:8] = 0  # all fill: Zarr stores no chunk
    assert not (tmp_path / "f.zarr/frames/c/1/0/0").exists()
    for name in ("darks", "flats"):
        g.create_array(name, data=np.full((2, 64, 64), 100 if name == "darks" else 3000, np.uint16))
    res = pipeline.run(tmp_path / "f.zarr", tmp_path / "o.zarr")
    assert res.skipped_frames == []  # read as the fill value, by the Zarr spec
    from pipeline.io.zarr_store import FrameReader

    assert "fill value" in FrameReader(a, "f").missing_rule
    assert "fill value" in zarr.open_group(str(res.output), mode="r").attrs["provenance"]["input_missing_chunks"]
    with pytest.raises(pipeline.PipelineError, match="frames 4-7 .*chunk file missing"):  # asked to treat as lost
        pipeline.run(tmp_path / "f.zarr", tmp_path / "p.zarr", overrides=["execution.check_missing_chunks=true"])


# --------------------------------------------------------------------------- 6. resume checks content
def _interrupted(sim, out, **kw):
    """A run stopped (Ctrl-C) after two blocks: its .partial and .progress are left for --resume."""
    done = []

    def stop(n):
        done.append(n)
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(pipeline.errors.RunInterrupted):
        pipeline.run(sim, out, overrides=["execution.chunk_frames=4", "execution.scheduler=synchronous"],
                     progress=stop, **kw)


def test_resume_refuses_an_input_whose_frames_changed(rec, tmp_path):
    _, _, frames = rec
    src = pipeline.simulate(tmp_path / "s.zarr", frames=16, size=(64, 64), chunk_frames=4, truth_frames=False)
    out = tmp_path / "o.zarr"
    _interrupted(src, out)
    assert (tmp_path / "o.zarr.partial").is_dir()
    other = pipeline.simulate(tmp_path / "t.zarr", frames=16, size=(64, 64), chunk_frames=4, truth_frames=False,
                              seed=9)
    shutil.rmtree(src / "frames")
    shutil.copytree(other / "frames", src / "frames")  # the frames swapped between the stop and the resume
    e = one_line(run_cli("run", src, out, "-q", "--resume", "--set", "execution.chunk_frames=4"))
    assert "input's files changed" in e and "--overwrite instead of --resume" in e


def test_resume_of_an_unchanged_input_goes_on(tmp_path):
    src = pipeline.simulate(tmp_path / "s.zarr", frames=16, size=(64, 64), chunk_frames=4, truth_frames=False)
    _interrupted(src, tmp_path / "o.zarr")
    p = run_cli("run", src, tmp_path / "o.zarr", "-q", "--resume", "--set", "execution.chunk_frames=4")
    assert p.returncode == 0, p.stderr
    whole = pipeline.run(src, tmp_path / "w.zarr", overrides=["execution.chunk_frames=4"])
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["frames"][:],
                                  zarr.open_group(str(whole.output), mode="r")["frames"][:])


def test_resume_of_a_complete_output_from_another_input_is_refused(rec, tmp_path):
    _, sim, _ = rec
    other = pipeline.simulate(tmp_path / "t.zarr", frames=16, size=(64, 64), truth_frames=False, seed=4)
    assert run_cli("run", other, tmp_path / "o.zarr", "-q").returncode == 0
    e = one_line(run_cli("run", sim, tmp_path / "o.zarr", "--resume", "-q"))
    assert "made from another input" in e
    p = run_cli("run", other, tmp_path / "o.zarr", "--resume", "-q")
    assert p.returncode == 0 and "nothing to resume" in p.stdout


def test_altered_state_files_are_not_trusted(tmp_path):
    from pipeline.io.checkpoint import Checkpoint

    cp = Checkpoint(tmp_path / "o.zarr.progress")
    cp.start({"x": 1})
    st = [np.arange(12, dtype=np.float32).reshape(3, 4)]
    cp.commit(0, 0, 4, "sum", st, None)
    got = cp.states_after(0, 1)
    np.testing.assert_array_equal(got[0], st[0])
    np.savez(tmp_path / "o.zarr.progress" / "state_000000.npz", s0=np.zeros((3, 4), np.float32),
             present=np.array([True]))  # zeroed, still a valid file
    assert cp.states_after(0, 1) is None


# --------------------------------------------------------------------------- 8. writing over other things
def test_afterglow_fit_never_writes_into_its_input(tmp_path):
    step = pipeline.simulate(tmp_path / "st.zarr", frames=60, size=(32, 32), scene="open", beam_off_frame=20,
                             truth_frames=False)
    before = (step / "zarr.json").read_bytes()
    e = one_line(run_cli("afterglow", "fit", step, "--out", step / "zarr.json", "--overwrite"))
    assert "overlaps the input" in e and (step / "zarr.json").read_bytes() == before


def test_export_over_a_folder_is_refused(rec, tmp_path):
    _, sim, _ = rec
    (tmp_path / "x.tif").mkdir()
    e = one_line(run_cli("export", sim, tmp_path / "x.tif", "--overwrite"))
    assert "is a folder" in e and (tmp_path / "x.tif").is_dir()


def test_mtf_json_is_not_overwritten_without_the_flag(tmp_path):
    sim = pipeline.simulate(tmp_path / "s.zarr", frames=2, size=(128, 128), truth_frames=False)
    (tmp_path / "r.json").write_text("mine")
    e = one_line(run_cli("mtf", sim, "--json", tmp_path / "r.json"))
    assert "--overwrite" in e and (tmp_path / "r.json").read_text() == "mine"
    assert run_cli("mtf", sim, "--json", tmp_path / "r.json", "--overwrite").returncode == 0
    assert json.loads((tmp_path / "r.json").read_text())["frames"] == 2


# --------------------------------------------------------------------------- 9. no hangs
def test_metadata_that_is_a_fifo_is_never_opened(rec, tmp_path):
    _, sim, _ = rec
    bad = tmp_path / "b.zarr"
    shutil.copytree(sim, bad)
    (bad / "darks" / "zarr.json").unlink()
    os.mkfifo(bad / "darks" / "zarr.json")
    e = one_line(run_cli("run", bad, tmp_path / "o.zarr", "-q", timeout=60))  # a hang fails (timeout)
    assert "darks/zarr.json' is not a regular file" in e


# --------------------------------------------------------------------------- 8. characterise writes its report whole
@pytest.fixture(scope="module")
def char(tmp_path_factory):
    d = tmp_path_factory.mktemp("char")
    return pipeline.api.simulate_characterisation(d / "c.zarr", size=(128, 128))


def test_characterise_never_writes_into_its_dataset(char):
    before = _tree(char)
    e = one_line(run_cli("characterise", char, char, "--overwrite"))
    assert "is or lies inside the input" in e and _tree(char) == before


def test_characterise_report_is_whole_or_absent(char, tmp_path, monkeypatch):
    out = tmp_path / "rep"
    out.mkdir()
    (out / "pixel_response.npy").write_bytes(b"mine")
    with pytest.raises(pipeline.PipelineError, match="pixel_response.npy' already exists"):
        pipeline.api.characterise(char, out)
    assert (out / "pixel_response.npy").read_bytes() == b"mine"
    (out / "pixel_response.npy").unlink()

    def broken(*a, **k):
        raise RuntimeError("disk gone")

    monkeypatch.setattr(pipeline.report, "characterisation_html", broken)
    with pytest.raises(RuntimeError):
        pipeline.api.characterise(char, out)
    assert list(out.iterdir()) == []  # no half report (report.json alone blocked the rerun)
    monkeypatch.undo()
    rep = pipeline.api.characterise(char, out)  # the rerun needs no --overwrite
    assert sorted(q.name for q in out.iterdir()) == ["pixel_response.npy", "report.html", "report.json"]
    written = json.loads((out / "report.json").read_text())["summary"]
    assert written.keys() == rep["summary"].keys() and written["Bad pixels"] == rep["summary"]["Bad pixels"]


def test_characterise_refuses_a_lost_chunk_and_a_bad_compare(char, tmp_path):
    bad = tmp_path / "b.zarr"
    shutil.copytree(char, bad)
    (bad / "edge" / "c" / "0" / "0" / "0").unlink()
    e = one_line(run_cli("characterise", bad, tmp_path / "r"))
    assert "b.zarr/edge" in e and "chunk file missing" in e and not (tmp_path / "r" / "report.json").exists()
    (tmp_path / "x.json").write_text("[1, 2]")
    e = one_line(run_cli("characterise", char, tmp_path / "r", "--compare", tmp_path / "x.json"))
    assert "not a report" in e


# --------------------------------------------------------------------------- a rerun keeps finished work
def test_a_rerun_without_resume_keeps_the_finished_blocks(tmp_path):
    src = pipeline.simulate(tmp_path / "s.zarr", frames=16, size=(64, 64), chunk_frames=4, truth_frames=False)
    out = tmp_path / "o.zarr"
    _interrupted(src, out)
    kept = _tree(tmp_path / "o.zarr.partial")
    e = one_line(run_cli("run", src, out, "-q", "--set", "execution.chunk_frames=4"))
    assert "interrupted run (2 of 4 blocks finished)" in e and "--resume" in e and "--overwrite" in e
    assert _tree(tmp_path / "o.zarr.partial") == kept
    assert run_cli("run", src, out, "-q", "--overwrite", "--set", "execution.chunk_frames=4").returncode == 0


def test_a_resumed_run_says_what_it_kept_and_drops_stray_temporaries(tmp_path):
    src = pipeline.simulate(tmp_path / "s.zarr", frames=16, size=(64, 64), chunk_frames=4, truth_frames=False)
    out = tmp_path / "o.zarr"
    _interrupted(src, out)
    chunk = next(f for f in (tmp_path / "o.zarr.partial" / "frames" / "c").rglob("*") if f.is_file())
    stray = chunk.with_name(f"{chunk.name}.{'ab' * 16}.partial")
    stray.write_bytes(b"half a chunk")  # as a kill during a chunk's write leaves it
    p = run_cli("run", src, out, "--resume", "--set", "execution.chunk_frames=4")
    assert p.returncode == 0, p.stderr
    assert "resumed: kept 2 finished blocks (8 frames); computed 8 frames" in p.stdout
    assert not any(f.name.endswith(".partial") for f in out.rglob("*"))


def test_a_mismatched_resume_names_the_setting(tmp_path):
    src = pipeline.simulate(tmp_path / "s.zarr", frames=16, size=(64, 64), chunk_frames=4, truth_frames=False)
    out = tmp_path / "o.zarr"
    _interrupted(src, out)
    e = one_line(run_cli("run", src, out, "--resume", "--set", "execution.chunk_frames=4", "--set",
                         "flatfield.output=transmission"))
    assert "another flatfield.output" in e


def test_ctrl_c_hint_repeats_the_runs_options(tmp_path, monkeypatch, capsys):
    from pipeline import cli

    src = pipeline.simulate(tmp_path / "s.zarr", frames=16, size=(64, 64), chunk_frames=4, truth_frames=False)

    def interrupted(*a, **k):
        raise pipeline.errors.RunInterrupted("interrupted")

    monkeypatch.setattr(pipeline.runner, "run", interrupted)  # what the run command calls
    args = ["run", str(src), str(tmp_path / "o.zarr"), "--set", "flatfield.output=attenuation", "--on-error", "skip"]
    assert cli.main(args) == 130
    err = capsys.readouterr().err
    assert "--set flatfield.output=attenuation --on-error skip --resume" in err
