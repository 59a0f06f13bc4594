"""Every cuda/*.cu compiles with NVRTC exactly as pipeline.kernels hands it to cupy.RawModule.

nvcc (``make cuda-check``) adds the toolkit's headers implicitly; NVRTC, which CuPy uses at run
time, has none on a wheel-only install, so a kernel that leans on a header compiles with nvcc and
fails on the GPU node. NVRTC itself needs no GPU: the ``nvidia-cuda-nvrtc-cu12`` wheel (in the
``test`` extra on x86_64 Linux) is enough. Skipped where it is absent.
"""

import ctypes
from pathlib import Path

import pytest

from pipeline.kernels import CUDA_DIR, cuda_source

nvrtc_pkg = pytest.importorskip("nvidia.cuda_nvrtc", reason="nvidia-cuda-nvrtc-cu12 not installed")
LIBS = sorted(Path(list(nvrtc_pkg.__path__)[0], "lib").glob("libnvrtc.so.*"))
pytestmark = pytest.mark.skipif(not LIBS, reason="no libnvrtc in nvidia-cuda-nvrtc-cu12")


def _compile(source: str, name: str, options: list[str]) -> tuple[int, str]:
    lib = ctypes.CDLL(str(LIBS[0]))
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None) == 0
    try:
        opts = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        rc = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        return rc, log.value.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("name", sorted(p.stem for p in CUDA_DIR.glob("*.cu")))
def test_cuda_source_compiles_with_nvrtc(name, arch):
    src = cuda_source(name)
    code = f'#line 1 "{src}"\n' + src.read_text()  # what kernels._module gives cupy.RawModule
    rc, log = _compile(code, src.name, ["-std=c++14", f"--gpu-architecture={arch}"])
    assert rc == 0, log


def test_a_header_dependency_fails_here():
    """The check can fail: a source that needs cuda_fp16.h (as nvcc would supply) does not compile."""
    rc, log = _compile('extern "C" __global__ void k(__half* h) { h[0] = __float2half(1.0f); }', "k.cu",
                       ["-std=c++14", "--gpu-architecture=compute_80"])
    assert rc != 0 and "__half" in log


@pytest.mark.parametrize("define", ["XRAY_FRAMES_IN_FLIGHT=2", "XRAY_FRAMES_IN_FLIGHT=8", "XRAY_PREFETCH_BAD=0"])
def test_the_benchmarks_builds_of_the_fused_kernel_compile(define):
    """benchmarks/bench_gpu.py rebuilds cuda/correct.cu with these macros on the GPU node: they must compile there."""
    src = cuda_source("correct")
    rc, log = _compile(f'#line 1 "{src}"\n' + src.read_text(), src.name,
                       ["-std=c++14", "--gpu-architecture=compute_90", f"-D{define}"])
    assert rc == 0, log
