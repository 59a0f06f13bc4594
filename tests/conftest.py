import subprocess
import sys

import pytest

import pipeline


def run_cli(*args, cwd=None, timeout=300):
    """Run the real console entry point in a subprocess; return CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(scope="session")
def sim_small(tmp_path_factory):
    """A 48-frame 128 x 160 simulated recording (eu-gc), shared read-only by tests."""
    path = tmp_path_factory.mktemp("sim") / "small.zarr"
    pipeline.simulate(path, frames=48, size=(128, 160), seed=3)
    return path
