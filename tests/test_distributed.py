"""Runs on a dask.distributed cluster equal the single-process run bit for bit; settings pass through.

One two-worker LocalCluster (processes, one thread each) serves the module. The recording is small (24 frames of
64 x 64, blocks of 4) with flat-field, afterglow and the temporal denoiser on, so two states cross every block
boundary, and the blocks run in two worker processes.
"""

import functools
import json
import os
import threading

import numpy as np
import pytest
import zarr

import pipeline
from conftest import one_line as _one_line
from conftest import run_cli
from pipeline.config import load_config
from pipeline.errors import BackendError, ConfigError

distributed = pytest.importorskip("distributed")

AMPS, TAUS_S = (0.02, 0.006), (0.03, 0.4)  # a strong afterglow: its state matters across blocks
STAGES = ["execution.chunk_frames=4", "denoise.enabled=true", "denoise.method=gaussian", "denoise.temporal=true"]


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as lc:
        yield lc


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    cal = pipeline.simulate(d / "cal.zarr", scene="open", frames=160, size=(64, 64), beam_off_frame=40,
                            afterglow_amplitudes=AMPS, afterglow_tau_s=TAUS_S, noise=False, truth_frames=False)
    pipeline.api.fit_afterglow(cal, d / "model.json")
    vid = pipeline.simulate(d / "vid.zarr", frames=24, size=(64, 64), afterglow_amplitudes=AMPS,
                            afterglow_tau_s=TAUS_S, speed_px_per_frame=3.0, seed=5)
    overrides = [f"afterglow.model={d / 'model.json'}", *STAGES]
    ref = d / "ref.zarr"
    res = pipeline.run(vid, ref, overrides=[*overrides, "execution.scheduler=synchronous"])
    assert res.stages == ("flatfield", "afterglow", "denoise-temporal", "denoise-spatial")
    return vid, overrides, zarr.open_group(str(ref), mode="r")["frames"][:]


class _LockedCounter:
    """A progress callback that cannot pickle (it holds a lock): it must never be sent to a worker."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = []

    def __call__(self, n):
        with self.lock:
            self.calls.append((n, threading.get_ident()))


def test_cluster_address_equals_single_process(cluster, recording, tmp_path):
    vid, overrides, ref = recording
    progress = _LockedCounter()
    out = tmp_path / "d.zarr"
    res = pipeline.run(vid, out, overrides=[*overrides, f"execution.scheduler={cluster.scheduler_address}"],
                       progress=progress)
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["frames"][:], ref)  # bit for bit
    assert res.frames == 24
    assert sorted(n for n, _ in progress.calls) == [4] * 6  # one call per block ...
    assert {ident for _, ident in progress.calls} == {threading.get_ident()}  # ... here, on the client
    assert not (tmp_path / "d.zarr.progress").exists()  # the workers' checkpoint was removed at the end


def test_progress_stays_in_the_calling_thread_with_processes(recording, tmp_path):
    """The local processes scheduler too: progress is counted here, so it need not pickle."""
    vid, overrides, ref = recording
    progress = _LockedCounter()
    out = tmp_path / "p.zarr"
    pipeline.run(vid, out, overrides=[*overrides, "execution.scheduler=processes", "execution.num_workers=2"],
                 progress=progress)
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["frames"][:], ref)
    assert [n for n, _ in progress.calls] == [4] * 6
    assert {ident for _, ident in progress.calls} == {threading.get_ident()}


def _record(folder, c, t0, t1, written, states):
    """An ``on_commit`` that runs on a worker: records where it ran and the states after block ``c``."""
    np.savez(folder / f"states_{c}.npz", *[np.asarray(s) for s in states])
    (folder / f"block_{c}.json").write_text(json.dumps({"pid": os.getpid(), "t0": t0, "t1": t1,
                                                        "checksum": written["checksum"]}))


def _chain_and_source(vid, overrides):
    """The chain and reader api.run builds (flat-field, afterglow, temporal + spatial denoising)."""
    from pipeline.api import calibrate, load_afterglow
    from pipeline.plan import _noise_model
    from pipeline.io import zarr_store
    from pipeline.stages import build_chain

    cfg = load_config(overrides=overrides)
    ds = zarr_store.open_input(vid)
    model = load_afterglow(cfg, ds)
    cal = calibrate(ds, cfg, afterglow_model=model)
    chain = build_chain(cfg, cal, ds.frames.dtype, afterglow_model=model)
    noise = _noise_model(cfg, chain, ds)
    return build_chain(cfg, cal, ds.frames.dtype, afterglow_model=model, noise=noise), ds


def test_states_cross_blocks_on_workers(cluster, recording, tmp_path):
    """process_frames itself: on_commit runs in the worker processes and sees the same states as in one process."""
    from pipeline.schedule import process_frames

    vid, overrides, ref = recording
    chain, ds = _chain_and_source(vid, overrides)
    got = {}
    for name, sched in (("local", "synchronous"), ("cluster", cluster.scheduler_address)):
        folder = tmp_path / name
        folder.mkdir()
        target = zarr.open_array(str(tmp_path / f"{name}.zarr"), mode="w", shape=ds.shape, chunks=(4, 64, 64),
                                 dtype="float32")
        results = process_frames(ds.reader(), target, chain, chunk_frames=4, scheduler=sched,
                                 on_commit=functools.partial(_record, folder))
        assert [r["t0"] for r in results] == list(range(0, 24, 4))
        np.testing.assert_array_equal(target[:], ref)
        got[name] = folder
    pids = {json.loads((got["cluster"] / f"block_{c}.json").read_text())["pid"] for c in range(6)}
    assert os.getpid() not in pids  # the checkpoint callback ran in the workers
    for c in range(6):
        a, b = np.load(got["local"] / f"states_{c}.npz"), np.load(got["cluster"] / f"states_{c}.npz")
        assert len(a.files) == len(b.files) == 2  # afterglow and temporal-filter states
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])


def test_local_cluster_from_config_equals_single_process(recording, tmp_path):
    """execution.cluster: local starts (and stops) its own LocalCluster of num_workers processes."""
    vid, overrides, ref = recording
    out = tmp_path / "l.zarr"
    pipeline.run(vid, out, overrides=[*overrides, "execution.cluster=local", "execution.num_workers=2"])
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["frames"][:], ref)


def test_cli_scheduler_option_runs_on_the_cluster(cluster, recording, tmp_path):
    vid, overrides, ref = recording
    out = tmp_path / "c.zarr"
    args = [a for o in overrides for a in ("--set", o)]
    p = run_cli("run", vid, out, *args, "--scheduler", cluster.scheduler_address, "-q")
    assert p.returncode == 0, p.stderr
    g = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(g["frames"][:], ref)
    assert g.attrs["provenance"]["config"]["execution"]["scheduler"] == cluster.scheduler_address


def test_bad_scheduler_and_cluster_values_are_one_line(sim_small, tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["execution.scheduler=dask"])
    msg = str(exc.value)
    assert "\n" not in msg and "'execution.scheduler'" in msg and "'dask'" in msg
    for allowed in ("threads", "synchronous", "processes", "tcp://host:8786"):
        assert allowed in msg
    with pytest.raises(ConfigError, match=r"'execution\.cluster'.*'none', 'local' or 'local-cuda'.*'slurm'"):
        load_config(overrides=["execution.cluster=slurm"])
    with pytest.raises(ConfigError, match=r"'execution\.cluster'.*scheduler at threads"):
        load_config(overrides=["execution.cluster=local", "execution.scheduler=tcp://10.0.0.5:8786"])
    for bad in ("tcp://", "tcp://host:port", "host:8786", "tcp://a b:1"):
        with pytest.raises(ConfigError, match=r"'execution\.scheduler'"):
            load_config({"execution": {"scheduler": bad}})
    e = _one_line(run_cli("run", sim_small, tmp_path / "o.zarr", "--scheduler", "dask"))
    assert "execution.scheduler" in e and "threads" in e and "tcp://" in e
    e = _one_line(run_cli("run", sim_small, tmp_path / "o.zarr", "--cluster", "slurm"))
    assert "execution.cluster" in e and "local-cuda" in e
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.zarr.partial").exists()


def test_settings_pass_through_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("execution:\n  cluster: local\n  num_workers: 3\n")
    ex = load_config(f).execution
    assert (ex.scheduler, ex.cluster, ex.num_workers) == ("threads", "local", 3)
    ex = load_config(f, overrides=["execution.cluster=none", "execution.scheduler=tcp://10.0.0.5:8786"]).execution
    assert (ex.scheduler, ex.cluster) == ("tcp://10.0.0.5:8786", "none")
    assert load_config({"execution": {"cluster": None}}).execution.cluster == "none"
    assert load_config().execution.scheduler == "threads" and load_config().execution.cluster == "none"
    p = run_cli("config", "--config", f, "--set", "execution.num_workers=2")
    assert p.returncode == 0, p.stderr
    assert "cluster: local" in p.stdout and "num_workers: 2" in p.stdout


def test_unreachable_scheduler_is_one_line(sim_small, tmp_path):
    import dask

    reach = r"cannot reach the Dask scheduler at 'tcp://127\.0\.0\.1:1'"
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), pytest.raises(BackendError, match=reach):
        pipeline.run(sim_small, tmp_path / "o.zarr", overrides=["execution.scheduler=tcp://127.0.0.1:1"])


def test_local_cuda_without_dask_cuda_names_the_install(sim_small, tmp_path):
    try:
        import dask_cuda  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("dask-cuda is installed")
    out = tmp_path / "o.zarr"
    with pytest.raises(BackendError, match=r"pip install dask-cuda") as exc:
        pipeline.run(sim_small, out, overrides=["execution.cluster=local-cuda"])
    assert "\n" not in str(exc.value)
    assert not out.exists() and not out.with_name("o.zarr.partial").exists()  # refused before any output


def _die(block):
    os._exit(3)  # a worker killed mid-task, as by the out-of-memory killer


def test_dead_workers_and_in_memory_output_are_one_line(tmp_path):
    from pipeline.schedule import process_frames

    src = np.zeros((8, 4, 4), np.float32)
    with pytest.raises(ConfigError, match="in-memory output"):
        process_frames(src, np.zeros_like(src), _die, chunk_frames=4, scheduler="processes")
    target = zarr.open_array(str(tmp_path / "t.zarr"), mode="w", shape=src.shape, chunks=(4, 4, 4), dtype="float32")
    with pytest.raises(BackendError, match="workers died") as exc:
        process_frames(src, target, _die, chunk_frames=4, cluster="local", num_workers=1)
    assert "\n" not in str(exc.value)


def _host_copy(a):
    """A stand-in for the upload to a worker's GPU, for a machine without one: a NumPy copy."""
    return np.array(a)


def test_device_chain_on_workers_equals_single_process(cluster, recording, tmp_path):
    """execution.device=gpu on a cluster runs every task's stages through DeviceChain on its worker's device;
    with NumPy standing in for the GPU the output equals the single-process run bit for bit, and the graph
    ships the chain once per worker (its device copies are made there, once)."""
    from pipeline.conveyor import DeviceChain
    from pipeline.schedule import process_frames

    vid, overrides, ref = recording
    chain, ds = _chain_and_source(vid, overrides)
    dchain = DeviceChain(chain, upload=_host_copy, download=np.asarray)
    target = zarr.open_array(str(tmp_path / "g.zarr"), mode="w", shape=ds.shape, chunks=(4, 64, 64), dtype="float32")
    process_frames(ds.reader(), target, dchain, chunk_frames=4, scheduler=cluster.scheduler_address)
    np.testing.assert_array_equal(target[:], ref)
    assert dchain._local is None  # the client made no device copies: the workers did


def test_device_chain_makes_its_device_copies_once(recording):
    from pipeline.conveyor import DeviceChain

    vid, overrides, ref = recording
    chain, ds = _chain_and_source(vid, overrides)
    sizes = []

    def counting_upload(a):
        sizes.append(np.asarray(a).shape)
        return np.array(a)

    dchain = DeviceChain(chain, upload=counting_upload, download=np.asarray)
    raw = np.asarray(ds.frames[0:4])
    block, mask = dchain.head(raw)
    fixed = len(sizes)  # dark, gain, inverse gain, bad-pixel table: made now
    assert fixed >= 3
    states = [None] * len(dchain.stateful)
    for t0 in (0, 4, 8):
        block, mask = dchain.head(np.asarray(ds.frames[t0:t0 + 4]))
        for i, stage in enumerate(dchain.stateful):
            st = stage.initial_state(block) if states[i] is None else states[i]
            block, states[i] = stage(block, st)
        out = dchain.tail((block, mask))
        np.testing.assert_array_equal(out, ref[t0:t0 + 4])
    assert sum(1 for s in sizes[fixed:] if s == (64, 64)) == 0  # no map uploaded again: only blocks and states


def test_device_gpu_on_a_cluster_without_cupy_is_one_line(cluster, recording, tmp_path):
    """The client needs no GPU; workers without CuPy fail the run with the backend's one-line reason."""
    from pipeline.backend import gpu_unavailable_reason

    if gpu_unavailable_reason() is None:
        pytest.skip("a GPU is usable here")
    vid, overrides, _ = recording
    one_line = (r"^execution.device=gpu: the worker on .* has no usable GPU: CuPy is not installed .*; "
                r"give every worker CuPy and a GPU, or use --device cpu$")
    with pytest.raises(BackendError, match=one_line):
        pipeline.run(vid, tmp_path / "x.zarr", overrides=[*overrides, "execution.device=gpu",
                                                          f"execution.scheduler={cluster.scheduler_address}"])
    assert not (tmp_path / "x.zarr").exists()


def test_auto_on_a_cluster_address_uses_the_workers_cpus(cluster, recording, tmp_path):
    """auto cannot see a remote cluster's GPUs: the stages run on the workers' CPUs, said once."""
    from pipeline import backend

    vid, overrides, ref = recording
    backend._said.clear()
    with pytest.warns(RuntimeWarning, match="auto on a dask.distributed cluster runs the stages on the workers' CPUs"):
        pipeline.run(vid, tmp_path / "a.zarr", overrides=[*overrides, "execution.device=auto",
                                                          f"execution.scheduler={cluster.scheduler_address}"])
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["frames"][:], ref)
