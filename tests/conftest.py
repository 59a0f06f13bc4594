import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline


def run_cli(*args, cwd=None, timeout=300):
    """Run the real console entry point in a subprocess; return CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def one_line(proc) -> str:
    """The single ``error: ...`` line a failed CLI call printed (no traceback); fails the test otherwise."""
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="session")
def sim_small(tmp_path_factory):
    """A 48-frame 128 x 160 simulated recording (eu-gc), shared read-only by tests."""
    path = tmp_path_factory.mktemp("sim") / "small.zarr"
    pipeline.simulate(path, frames=48, size=(128, 160), seed=3)
    return path


@pytest.fixture(scope="session")
def build_emulated(tmp_path_factory):
    """``build(name, shared=False, defines=())``: compile ``tests/cuda/<name>.cpp`` (a CUDA source under
    tests/cuda/emulate.h) into an executable, or a shared library for ctypes, with macros ``defines``."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not available")
    here = Path(__file__).resolve().parent / "cuda"

    def build(name: str, *, shared: bool = False, defines: tuple = ()) -> Path:
        out = tmp_path_factory.mktemp("emu") / (f"lib{name}.so" if shared else name)
        # IEEE float ops with no FMA contraction, like the kernels' explicit __f*_rn
        subprocess.run(["g++", "-std=c++17", "-O2", "-ffp-contract=off", *(["-shared", "-fPIC"] if shared else []),
                        *(f"-D{d}" for d in defines), "-I", str(here), str(here / f"{name}.cpp"), "-o", str(out)],
                       check=True, capture_output=True)
        return out

    return build


def bent_screen_response(rng, h: int, w: int):
    """A per-pixel log-log response (``flatfield.response``, as ``fit_pixel_response`` gives it) of a mildly
    non-linear screen: ``ln S = a + b x + c x^2``, ``x = ln K - ln 5``, ``b`` 1.05-1.2 and ``c`` 0.02 per pixel."""
    import numpy as np

    coeffs = np.zeros((4, h, w), np.float32)
    coeffs[0] = rng.uniform(7.5, 8.0, (h, w))
    coeffs[1] = rng.uniform(1.05, 1.2, (h, w))
    coeffs[2] = 0.02
    coeffs[3] = np.log(5.0)
    return coeffs


def chromium() -> str | None:
    """The headless browser the HTML reports are rendered in (Debian's chromium), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def chromium_flags(profile) -> list:
    """Flags for a quiet, offline headless run with its own profile folder."""
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--virtual-time-budget=5000"]
