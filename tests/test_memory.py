"""Peak memory of a run is set by the block size, not by the length of the video."""

import subprocess
import sys

import pytest

import pipeline

CHILD = """
import resource, sys, pipeline
pipeline.run(sys.argv[1], sys.argv[2], overrides=["execution.chunk_frames=16"])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_kib(src, out):
    p = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return int(p.stdout.split()[-1])


@pytest.mark.slow
def test_peak_rss_flat_in_number_of_frames(tmp_path):
    size = (256, 256)
    short = pipeline.simulate(tmp_path / "s64.zarr", frames=64, size=size, truth_frames=False)
    long = pipeline.simulate(tmp_path / "s512.zarr", frames=512, size=size, truth_frames=False)
    a = _peak_kib(short, tmp_path / "o64.zarr")
    b = _peak_kib(long, tmp_path / "o512.zarr")
    # loading the long video whole would add > 190 MiB (uint16 in + float32 out) on ~200 MiB
    assert b / a < 1.15, (a, b)
