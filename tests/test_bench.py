"""`xray-pipeline bench`: what it writes, and that its numbers are consistent with its own timings."""

import json
import math

import numpy as np
import pytest

from pipeline import bench
from pipeline.cli import main


def test_time_it_median_and_spread(monkeypatch):
    ticks = iter([0.0, 0.0, 1.0, 1.0, 4.0, 4.0, 6.0, 6.0, 6.0])  # runs of 1, 3, 2 s after the warm-up
    monkeypatch.setattr(bench.time, "perf_counter", lambda: next(ticks))
    r = bench.time_it(lambda: None, repeats=3, warmup=1)
    assert r["seconds"] == [1.0, 3.0, 2.0]
    assert r["median_s"] == 2.0
    assert r["spread_pct"] == pytest.approx(100.0)


def test_textbook_mtf_peer_matches_the_analytic_gaussian_edge():
    # the peer must be right before it is compared with: a Gaussian edge has MTF(f) = exp(-2 pi^2 sigma^2 f^2)
    mtf = bench.textbook_mtf(bench.edge_roi(128, sigma=1.2), 4)
    f = np.arange(mtf.size) / (2 * (mtf.size - 1) / 4)
    sel = (f > 0.02) & (f < 0.3)
    assert np.max(np.abs(mtf[sel] - np.exp(-2 * math.pi**2 * 1.2**2 * f[sel] ** 2))) < 0.03


def test_bench_command_writes_consistent_results(tmp_path):
    out = tmp_path / "res"
    rc = main(["bench", "--sizes", "48,64", "--frames", "8", "--repeats", "2", "--scaling-frames", "8,24",
               "--scaling-size", "48", "--workers", "1,2", "--full-frames", "4", "--no-denoise-methods", "--no-startup",
               "--mtf-rois", "16",
               "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "bench_cpu.json").read_text())
    for name in ("bench_cpu.md", "bench_cpu_stages.png", "bench_cpu_scaling.png"):
        assert (out / name).stat().st_size > 1000
    assert set(data["sizes"]) == {"48", "64"}
    for block in data["sizes"].values():
        st, pp = block["stages"], block["pipelines"]
        for grp in (st, pp):
            for name, e in grp.items():
                assert e["per_s"] == pytest.approx(e["items"] / e["median_s"])
                assert e["median_s"] == pytest.approx(float(np.median(e["seconds"])))
                if e["roofline"]:
                    assert e["ratio_to_roofline"] == pytest.approx(e["per_s"] / grp[e["roofline"]]["per_s"])
        for name in ("flatfield", "afterglow (2 terms)", "denoise temporal", "peer: numpy loop flat-field"):
            assert st[name]["roofline"] in st and st[st[name]["roofline"]]["kind"] == "roofline"
        # the spatial denoisers side by side, the configured one (guided by default) first and none twice
        spatial = [k for k in st if k.startswith("denoise ") and k != "denoise temporal"]
        assert spatial == ["denoise guided (GAT)", "denoise nlm (GAT)", "denoise bilateral (GAT)"]
        assert {"zarr copy uint16", "flat-field", "full default (+ spatial denoiser)"} <= set(pp)
        assert pp["full default (+ spatial denoiser)"]["items"] == 4
        for name, e in pp.items():  # every job (copies too) says where its time went, within its own wall time
            a, h = e["time_account"], e["host"]
            assert a["blocks_s"] <= a["wall_s"] <= max(e["seconds"]) and a["write_s"] > 0
            assert 0 < h["cores_busy"] and (h["iowait_pct"] is None or 0 <= h["iowait_pct"] <= 100)
    sc = data["scaling"]
    assert [p["frames"] for p in sc["frames"]] == [8, 24]
    assert [p["workers"] for p in sc["workers"]] == [1, 2]
    assert all(p["peak_rss_MiB"] > 50 for p in sc["frames"])  # a Python process with NumPy and Dask loaded
    mtf = data["mtf"]  # the MTF engine at both ROI sizes, each job against the textbook peer of the same run
    assert set(mtf) == {"128x128", "256x256"}
    for size, res in mtf.items():
        assert set(res) == {"mtf batched", "mtf one ROI at a time", "peer: textbook per-ROI mtf"}
        for e in res.values():
            assert math.isfinite(e["per_s"]) and e["per_s"] > 0 and e["unit"] == f"ROIs ({size})"
            assert e["ratio_to_textbook"] == pytest.approx(e["per_s"] / res["peer: textbook per-ROI mtf"]["per_s"])
    assert "denoise_methods" not in data and "startup" not in data  # --no-denoise-methods, --no-startup
    md = (out / "bench_cpu.md").read_text()
    assert "| flatfield |" in md and "## Scaling" in md and "Where the time went" in md
    assert "| zarr copy uint16 |" in md.split("Where the time went")[1]
    assert "| 128x128 | mtf batched |" in md and "| 256x256 | peer: textbook per-ROI mtf |" in md
    assert "Batched / textbook: 128x128 " in md and "incomplete" not in md


def test_bench_denoise_methods_and_startup_sections(tmp_path):
    """The denoising methods (quality and speed) and the start-up rows, in the report's JSON and Markdown; small
    scenes and few calls (structure and sanity only: no figure of speed is asserted)."""
    out = tmp_path / "res"
    data, paths = bench.run_benchmarks(
        sizes=(), repeats=1, out=out, scaling_frames=(), mtf=False, log=lambda *a: None,
        denoise_options={"scene_frames": 24, "scene_size": 64, "speed_size": 128, "speed_frames": 2},
        startup_repeats=1, startup_calls=("--help", "config"))
    assert out / "bench_cpu.json" in paths and out / "bench_cpu.md" in paths
    saved = json.loads((out / "bench_cpu.json").read_text())
    dm = saved["denoise_methods"]
    from pipeline.bench.denoise import ROWS

    rows = {r["method"]: r for r in dm["rows"]}
    assert list(rows) == list(ROWS)  # every method, in order
    assert rows["temporal + guided (default)"]["gain_db"] > 0
    assert rows["none"]["gain_db"] == pytest.approx(0.0) and rows["none"]["cpu_fps"]["1"] is None
    for name, r in rows.items():
        assert set(r["trail_pct"]) == {"1", "3", "6"} and all(math.isfinite(v) for v in r["trail_pct"].values())
        assert r["gpu_fps"] is None  # a CPU run: the GPU column is not measured, and says so
        if name != "none":
            assert set(r["cpu_fps"]) >= {"1"}
            assert all(math.isfinite(v) and v > 0 for v in r["cpu_fps"].values())
    su = saved["startup"]["results"]
    assert list(su) == ["--help", "config"]
    assert all(math.isfinite(v["cold_s"]) and v["cold_s"] > 0 and v["warm_s"] > 0 for v in su.values())
    md = (out / "bench_cpu.md").read_text()
    assert "## Denoising methods, quality and speed" in md and "## Start-up of a command" in md
    assert all(f"| {name} |" in md for name in ROWS) and "not measured (" in md
    assert "| `--help` |" in md and "| `config` |" in md and "incomplete" not in md


def test_startup_batch_rows(tmp_path):
    """The batch rows: N copies of the tiny video by N calls and by one call with N inputs, each output written,
    no cold figure, '-' in the table (the warm package cache; no figure of speed is asserted)."""
    import os
    from pathlib import Path

    import zarr

    import pipeline
    from pipeline.bench import startup

    pipeline.simulate(tmp_path / "tiny.zarr", frames=8, size=(32, 32), seed=2)
    env = dict(os.environ, PYTHONPATH=str(Path(startup.__file__).resolve().parents[2]))
    rows = startup._batch(tmp_path, env, 2, 1)
    assert list(rows) == ["run, 2 such inputs: 2 calls", "run, 2 such inputs: one call"]
    assert all(v["cold_s"] is None and v["warm_s"] > 0 and len(v["warm_all_s"]) == 1 for v in rows.values())
    for n in ("clip0.zarr", "clip1.zarr"):
        np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "single" / n), mode="r")["frames"][:],
                                      zarr.open_group(str(tmp_path / "batch" / n), mode="r")["frames"][:])
    md = "\n".join(startup.rows_table({"results": rows}))
    assert "| `run, 2 such inputs: one call` | - |" in md


def test_startup_exit_rows(tmp_path):
    """The paired exit rows: the tiny run by the console script and by main() in its own process, in turns; both
    write the same output (no figure of speed is asserted); the batch note still counts only the batch rows."""
    import os
    from pathlib import Path

    import zarr

    import pipeline
    from pipeline.bench import startup

    pipeline.simulate(tmp_path / "tiny.zarr", frames=8, size=(32, 32), seed=3)
    env = dict(os.environ, PYTHONPATH=str(Path(startup.__file__).resolve().parents[2]))
    rows = startup._exits(["run", "tiny.zarr", "out.zarr", "--overwrite", "-q"], tmp_path, env, 2)
    assert list(rows) == ["run, in turns: the console script", "run, in turns: main(), the usual exit"]
    assert all(v["cold_s"] is None and v["warm_s"] > 0 and len(v["warm_all_s"]) == 2 for v in rows.values())
    assert zarr.open_group(str(tmp_path / "out.zarr"), mode="r")["frames"].shape == (8, 32, 32)
    batch = {"run, 8 such inputs: 8 calls": {"cold_s": None, "warm_s": 1.0, "warm_all_s": [1.0] * 3}}
    assert startup._batch_note({"repeats": 5, "results": rows | batch}) == " (the rows of several inputs: median of 3)"


def test_host_use_counts_this_process_and_zarrs_loop_thread(tmp_path):
    """cores_busy is CPU-s per wall-s, zarr_loop_busy the loop thread's share of the wall time, iowait_pct the
    machine's; Zarr's loop thread is seen. (Exact on given counters: no share of a loaded machine is asserted.)"""
    import time

    import zarr

    c0 = {"wall": 10.0, "cpu": 3.0, "loop": 1.0, "ticks": 1000, "iowait": 40}
    c1 = {"wall": 12.0, "cpu": 4.5, "loop": 1.5, "ticks": 1400, "iowait": 60}
    assert bench._host_use(c0, c1) == {"cores_busy": 0.75, "zarr_loop_busy": 0.25, "iowait_pct": 5.0}
    c0 = bench._host_counters()
    spent = time.process_time()
    while time.process_time() - spent < 0.05:  # this process's CPU time grows by at least 0.05 s
        pass
    c1 = bench._host_counters()
    assert c1["cpu"] - c0["cpu"] >= 0.05 and bench._host_use(c0, c1)["cores_busy"] > 0
    a = zarr.create_array(str(tmp_path / "a.zarr"), shape=(64, 256, 256), chunks=(1, 256, 256), dtype="f4")
    a[...] = 1.0
    np.asarray(a[...])  # the loop thread exists and has worked
    from pipeline.io.zarr_store import loop_thread_cpu_s

    assert loop_thread_cpu_s() is not None and loop_thread_cpu_s() > 0


def test_bench_rejects_bad_sizes(capsys):
    assert main(["bench", "--sizes", "512,abc"]) != 0
    assert "comma-separated list of integers" in capsys.readouterr().err


def test_peak_rss_of_a_child_is_its_own():
    # a child of a process holding 300 MiB must not report those 300 MiB as its own peak
    import subprocess
    import sys

    ballast = np.ones(300 * 2**20 // 8)  # noqa: F841 - held while the child runs
    code = "from pipeline.bench import peak_rss_mib; print(peak_rss_mib())"
    own = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert 10 < own < 250


def test_bench_on_gpu_without_one_says_why(capsys):
    from pipeline.backend import gpu_unavailable_reason

    if gpu_unavailable_reason() is None:
        pytest.skip("a GPU is present")
    assert main(["bench", "--device", "gpu", "--sizes", "32", "--scaling-frames", ""]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--device cpu" in err[0]


def test_bench_out_that_is_a_file_is_refused_and_kept(tmp_path, capsys):
    f = tmp_path / "results.txt"
    f.write_text("my notes")
    assert main(["bench", "--sizes", "32", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert f.read_text() == "my notes"


def test_conveyor_host_benchmark_runs_the_conveyor_on_its_stand_in_device(tmp_path):
    """benchmarks/bench_conveyor_host.py (run on GPU nodes by gpu_session.sh) still runs: a tiny video, one repeat."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_conveyor_host.py"
    proc = subprocess.run([sys.executable, str(script), "--size", "64", "--frames", "12", "--repeats", "1",
                           "--name", "t", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads((tmp_path / "conveyor_host_t.json").read_text())
    assert set(data["results"]) == {"zarr copy uint16->float32 (Zarr's API)", "zarr copy uint16->float32 (pipeline I/O)",
                                    "CPU engine, flat field", "GPU engine's host side, flat field (free device)"}
    assert all(r["frames_per_s"] > 0 for r in data["results"].values())
    assert len(data["conveyor_waits"]) == 1  # the conveyor ran (its waits were recorded)


def test_bench_denoise_methods_fills_the_gpu_column_from_arrays_on_the_device(monkeypatch):
    """With device="gpu" the GPU column is timed on arrays put on the device by the benchmark's host (here a NumPy
    stand-in, so that the plumbing is checked without a GPU: its figures are not a GPU's)."""
    from pipeline.bench import denoise as dnm

    put = []

    class StandIn:
        xp = np

        def __init__(self, device):
            assert device == "gpu"

        def put(self, a):
            put.append(a.shape)
            return a

        def sync(self):
            pass

    monkeypatch.setattr(dnm, "_Host", StandIn)
    data = dnm.bench_denoise_methods(repeats=1, speed_frames=1, device="gpu", scene_frames=24, scene_size=64,
                                     speed_size=64, gpu_size=96, gpu_frames=2, log=lambda *a: None)
    assert put == [(2, 96, 96)]
    rows = {r["method"]: r for r in data["rows"]}
    assert rows["none"]["gpu_fps"] is None
    assert all(r["gpu_fps"] > 0 for k, r in rows.items() if k != "none")
    assert data["meta"]["gpu_measured"] and "2 frames of 96^2" in data["meta"]["gpu"]
    assert "not measured" not in "\n".join(dnm.rows_table(data))
