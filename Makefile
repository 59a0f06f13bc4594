# Two commands work on a fresh clone with only python3 and make:  make demo,  make test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv bench bench-detail cuda-check gpu-check gpu-bundle wheelhouse clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xray-pipeline demo demo-output --overwrite

# one pytest worker per core (pytest-xdist; a module's tests stay on one worker, so its fixtures are made once)
test: $(STAMP) cuda-check
	$(PY) -m pytest -q -n auto --dist loadscope

# The throughput benchmark (stages, pipelines, rooflines, peers, scaling): JSON, table and plots
# into benchmarks/results/. Options: make bench BENCH_ARGS="--sizes 512,1024,2048 --device gpu"
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(VENV)/bin/xray-pipeline bench --out benchmarks/results $(BENCH_ARGS)

# The older, narrower studies (one question each; see each script's docstring).
bench-detail: $(STAMP)
	$(PY) benchmarks/bench_flatfield.py
	$(PY) benchmarks/bench_afterglow.py
	$(PY) benchmarks/bench_mtf.py
	$(PY) benchmarks/bench_denoise.py
	$(PY) benchmarks/bench_codecs.py
	$(PY) benchmarks/bench_io.py
	$(PY) benchmarks/bench_setup.py
	$(PY) benchmarks/bench_conveyor_host.py
	$(PY) benchmarks/bench_output_chunks.py
	$(PY) benchmarks/bench_startup.py
	$(PY) benchmarks/bench_denoise_methods.py

# Every CUDA source must compile; skipped (with a note) where nvcc is absent.
cuda-check:
	@set -e; files=$$(ls cuda/*.cu 2>/dev/null || true); \
	if [ -z "$$files" ]; then echo "cuda-check: no .cu sources yet"; exit 0; fi; \
	if ! command -v nvcc >/dev/null 2>&1; then echo "cuda-check: nvcc not found, skipped"; exit 0; fi; \
	for f in $$files; do for arch in sm_80 sm_90; do \
	  nvcc -c -arch=$$arch -o /dev/null $$f || exit 1; done; echo "nvcc ok (sm_80, sm_90): $$f"; done

# On a machine with a GPU and CuPy: the CuPy-vs-NumPy tests and the GPU benchmark
# (writes benchmarks/results/gpu-<device>.json). Skips with a message without a GPU.
# On a GPU node without network, install from a wheelhouse first (see below) and pass GPU_PY=python3.
GPU_PY ?= $(PY)
gpu-check: $(if $(filter $(PY),$(GPU_PY)),$(STAMP))
	$(GPU_PY) -m pytest -q -m gpu tests/gpu || [ $$? -eq 5 ]  # 5: nothing collected (no CuPy here)
	$(GPU_PY) benchmarks/bench_gpu.py
	@if $(GPU_PY) -c "import sys; from pipeline.backend import gpu_unavailable_reason as r; sys.exit(bool(r()))"; then \
	  $(GPU_PY) -m pipeline.cli bench --device gpu --sizes 1024,2048 --frames 256 --scaling-frames 256,1024,4096 \
	    --out benchmarks/results; \
	else echo "gpu-check: no GPU here, xray-pipeline bench --device gpu skipped"; fi

# Only the wheels this workplace's GPU node lacks (its image has Python 3.12 with CuPy, NumPy, SciPy,
# scikit-image, numba, h5py, ...: GPU_NODE_HAS), in .whl/ (about 15 MB), for benchmarks/gpu_session.sh;
# dask, distributed, zarr, numcodecs and pydantic at the versions the tests ran with here.
GPU_NODE_HAS = click cloudpickle fsspec jinja2 markupsafe msgpack numpy packaging psutil pyyaml \
  sortedcontainers toolz typing_extensions zipp urllib3 scipy pillow tqdm
gpu-bundle: $(STAMP)
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 -d .whl $$($(PY) -c "from importlib.metadata import version as v; \
	  print(' '.join(f'{n}=={v(n)}' for n in ('dask', 'distributed', 'zarr', 'numcodecs', 'pydantic')))")
	@cd .whl && for f in *.whl; do n=$$(echo $$f | cut -d- -f1 | tr 'A-Z' 'a-z'); \
	  case " $(GPU_NODE_HAS) " in *" $$n "*) rm -f $$f;; esac; done; ls; du -sh .

# An offline bundle of wheels for another Python/platform (air-gapped GPU nodes):
#   make wheelhouse PYVER=3.12 PLATFORM=manylinux2014_x86_64   then there:
#   pip install --no-index --find-links wheelhouse xray-pipeline
PYVER ?= 3.12
PLATFORM ?= manylinux2014_x86_64
wheelhouse: $(STAMP)
	$(PY) -m pip wheel --no-deps --quiet -w wheelhouse .
	$(PY) -m pip download --quiet --only-binary=:all: --python-version $(PYVER) --implementation cp \
	  --platform $(PLATFORM) --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d wheelhouse \
	  $$($(PY) -c "import tomllib;print(' '.join(repr(d) for d in tomllib.load(open('pyproject.toml','rb'))['project']['dependencies']))" | tr -d "'")

clean:
	rm -rf $(VENV) demo-output .pytest_cache build *.egg-info
