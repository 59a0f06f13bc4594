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
               "--scaling-size", "48", "--workers", "1,2", "--full-frames", "4", "--out", str(out)])
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
    md = (out / "bench_cpu.md").read_text()
    assert "| flatfield |" in md and "## Scaling" in md and "Where the time went" in md
    assert "| zarr copy uint16 |" in md.split("Where the time went")[1]


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
