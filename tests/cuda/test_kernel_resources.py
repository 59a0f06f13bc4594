"""What ptxas makes of every kernel in cuda/: no register spills anywhere, no local memory on the hot paths.

A streaming kernel that keeps an array in local memory (a stack frame: a dynamically indexed array,
or registers spilled) turns each pixel's one read and one write into many, which no emulation on
the CPU can show. ``nvcc -cubin -Xptxas -v`` reports, per kernel and architecture, the stack frame,
the spill stores and loads, and the registers; this test holds the kernels to what they were
written for. The two generic fallbacks that keep a sorting array in local memory by design (the bad
pixels' median for neighbour tables wider than 24 columns, NLM's rows of patch distances) are
named, with the size of their frame. Skipped where nvcc is absent (CI has it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.kernels import CUDA_DIR, NLM_SPECIALISED

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found")
ARCHS = ("sm_80", "sm_90")
SOURCES = sorted(p.stem for p in CUDA_DIR.glob("*.cu"))

# kernels allowed a stack frame (bytes at most): local arrays by design, off the per-pixel hot path
STACK_ALLOWED = {
    "bad_heads_u16": 320,  # generic median: up to 80 neighbours, insertion sort (tables of > 24 columns)
    "bad_heads_f32": 320,
    "nl_means_f32": 256,  # a run of pixels' sums and the patch's columns, for a patch size known only at run time
    # (nl_means_f32_p3/_p5/_p7, the sizes one sets, hold them in registers: no allowance)
}
ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'")
PROPS = re.compile(r"Function properties for (\w+)\s*\n\s*(\d+) bytes stack frame, (\d+) bytes spill stores, "
                   r"(\d+) bytes spill loads")
REGS = re.compile(r"Used (\d+) registers")


def ptxas_report(path: Path, arch: str, tmp_path: Path) -> dict[str, dict[str, int]]:
    """Per entry function: stack, spill_stores, spill_loads, registers (nvcc -cubin -Xptxas -v)."""
    proc = subprocess.run([NVCC, "-cubin", f"-arch={arch}", "-Xptxas", "-v", "-o",
                           str(tmp_path / f"{path.stem}-{arch}.cubin"), str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stderr
    props = {m.group(1): tuple(int(g) for g in m.groups()[1:]) for m in PROPS.finditer(log)}
    report = {}
    entries = list(ENTRY.finditer(log))
    for i, m in enumerate(entries):
        name = m.group(1)
        section = log[m.end(): entries[i + 1].start() if i + 1 < len(entries) else len(log)]
        regs = REGS.search(section)
        stack, stores, loads = props[name]
        report[name] = {"stack": stack, "spill_stores": stores, "spill_loads": loads,
                        "registers": int(regs.group(1)) if regs else -1}
    return report


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    from concurrent.futures import ThreadPoolExecutor

    tmp = tmp_path_factory.mktemp("ptxas")
    jobs = [(name, arch) for name in SOURCES for arch in ARCHS]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # nvcc processes side by side
        found = pool.map(lambda job: ptxas_report(CUDA_DIR / f"{job[0]}.cu", job[1], tmp), jobs)
        return dict(zip(jobs, found))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", SOURCES)
def test_no_spills_and_no_local_memory_on_hot_paths(reports, name, arch):
    report = reports[(name, arch)]
    assert report, f"ptxas reported no kernels for {name}.cu"
    for kernel, r in report.items():
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{kernel} ({arch}) spills registers: {r}"
        limit = STACK_ALLOWED.get(kernel, 0)
        assert r["stack"] <= limit, f"{kernel} ({arch}) keeps {r['stack']} bytes in local memory (allowed {limit})"
        assert 0 < r["registers"] <= 255, f"{kernel} ({arch}): {r}"


def test_every_kernel_the_host_code_launches_is_reported(reports):
    """The parse sees every kernel: the names pipeline.kernels looks up are all in ptxas's report."""
    seen = {k for report in reports.values() for k in report}
    for required in ("correct_u16_f32", "correct_u16_f32_v4", "correct_u16_c16_v4", "bad_heads_u16_k8",
                     "bad_heads_u16_k24", "remove_lag_f32", "temporal_step_f32", "nl_means_f32", "saturate_u16",
                     "guided_colsum_f32", "guided_coef_f32", "guided_colsum_ab_f32", "guided_apply_f32",
                     *(f"nl_means_f32_p{p}" for p in NLM_SPECIALISED)):
        assert required in seen
    assert set(STACK_ALLOWED) <= seen, "an allowance names a kernel that no longer exists"


def test_the_check_sees_local_memory(tmp_path):
    """The check can fail: a dynamically indexed local array is reported as a stack frame."""
    src = tmp_path / "local.cu"
    src.write_text('extern "C" __global__ void k(const float* x, int n, float* o) {\n'
                   "    float v[64];\n"  # an insertion sort: the index depends on the data
                   "    int m = 0;\n"
                   "    for (int j = 0; j < n && j < 64; ++j) {\n"
                   "        int i = m++;\n"
                   "        while (i > 0 && v[i - 1] > x[j]) { v[i] = v[i - 1]; --i; }\n"
                   "        v[i] = x[j];\n"
                   "    }\n"
                   "    o[0] = m ? v[m / 2] : 0.0f;\n"
                   "}\n")
    report = ptxas_report(src, "sm_80", tmp_path)
    assert report["k"]["stack"] >= 64 * 4
