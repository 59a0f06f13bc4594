"""Peak memory of a run is set by the block size, not by the length of the video."""

import subprocess
import sys

import pytest

import pipeline
from pipeline.io.models import save_model

CHILD = """
import sys, pipeline
extra = [f"afterglow.model={sys.argv[3]}"] if len(sys.argv) > 3 else []
pipeline.run(sys.argv[1], sys.argv[2], overrides=["execution.chunk_frames=16", *extra])
from pipeline.bench import peak_rss_mib  # VmHWM: ru_maxrss would carry the parent's size over the exec
print(int(peak_rss_mib() * 1024))
"""


def _peak_kib(src, out, *extra):
    p = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), *map(str, extra)], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return int(p.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("afterglow", [False, True], ids=["flatfield", "flatfield+afterglow"])
def test_peak_rss_flat_in_number_of_frames(tmp_path, afterglow):
    size = (256, 256)
    short = pipeline.simulate(tmp_path / "s64.zarr", frames=64, size=size, truth_frames=False)
    long = pipeline.simulate(tmp_path / "s512.zarr", frames=512, size=size, truth_frames=False)
    extra = []
    if afterglow:  # the lag state is carried block to block in time order: memory must still not grow
        extra = [save_model(tmp_path / "m.json", {"frame_rate_hz": 50.0, "tau_s": [0.015, 0.12],
                                                  "amplitudes": [0.01, 0.003]})]
    a = _peak_kib(short, tmp_path / "o64.zarr", *extra)
    b = _peak_kib(long, tmp_path / "o512.zarr", *extra)
    # loading the long video whole would add > 190 MiB (uint16 in + float32 out) on ~200 MiB
    assert b / a < 1.15, (a, b)
