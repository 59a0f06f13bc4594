"""``run`` as a plan and its execution: the plan is made from the config and metadata alone, prints, writes
nothing, and says what the run then does (stages, chunking, device, calibration source)."""

import pytest
import zarr

import pipeline
from pipeline.runner import dry_run
from conftest import run_cli


@pytest.mark.parametrize("over", [[], ["denoise.enabled=true"], ["denoise.enabled=true", "denoise.temporal=false"],
                                  ["denoise.enabled=true", "denoise.method=none"], ["mtf.enabled=true"],
                                  ["flatfield.enabled=false"], ["execution.chunk_frames=3"]])
def test_the_plan_is_what_the_run_does(sim_small, tmp_path, over):
    plan = dry_run(sim_small, tmp_path / "o.zarr", overrides=over)
    assert not (tmp_path / "o.zarr").exists() and list(tmp_path.iterdir()) == []  # nothing written
    res = pipeline.run(sim_small, tmp_path / "o.zarr", overrides=over)
    prov = zarr.open_group(str(res.output), mode="r").attrs["provenance"]
    assert tuple(res.stages) == plan.stages
    assert prov["chunk_frames"] == plan.chunk_frames and tuple(prov["input_shape"]) == plan.shape
    assert ("noise model" in plan.estimates) == (prov["noise_model"] is not None)


def test_dry_run_prints_the_plan_and_refuses_what_the_run_would(sim_small, tmp_path):
    p = run_cli("run", sim_small, tmp_path / "o.zarr", "--dry-run", "--set", "denoise.enabled=true")
    assert p.returncode == 0, p.stderr
    assert "stages          : flatfield -> denoise-temporal -> denoise-spatial" in p.stdout
    assert "estimated first : noise model" in p.stdout and not (tmp_path / "o.zarr").exists()
    p = run_cli("run", sim_small, sim_small / "x.zarr", "--dry-run")
    assert p.returncode == 2 and "overlaps the input" in p.stderr
    p = run_cli("run", sim_small, tmp_path / "o.zarr", "--dry-run", "--set", "denoise.enabled=true", "--set",
                "denoise.nlm_search=100")
    assert p.returncode == 2 and "nlm_search" in p.stderr


def test_time_account_names_loading_the_cpu_kernels(sim_small, tmp_path):
    """Loading Numba's compiled kernels (its target and threads, once per process) is a named set-up phase, before
    the calibration: not hidden in the calibration's or the first block's time."""
    from pipeline import cpu

    res = pipeline.run(sim_small, tmp_path / "o.zarr")
    phases = list(res.time_account["prepare_s"])
    assert phases[:2] == ["loading the compiled CPU kernels", "calibration"]
    with cpu.disabled():  # the NumPy code: still named (nothing to load), never an error
        res = pipeline.run(sim_small, tmp_path / "o.zarr", overwrite=True)
    assert "loading the compiled CPU kernels" in res.time_account["prepare_s"]
