# Two commands work on a fresh clone with only python3 and make:  make demo,  make test
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv bench cuda-check clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/xray-pipeline demo demo-output --overwrite

test: $(STAMP) cuda-check
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_flatfield.py
	$(PY) benchmarks/bench_afterglow.py
	$(PY) benchmarks/bench_mtf.py

# Every CUDA source must compile; skipped (with a note) where nvcc is absent.
cuda-check:
	@set -e; files=$$(ls cuda/*.cu 2>/dev/null || true); \
	if [ -z "$$files" ]; then echo "cuda-check: no .cu sources yet"; exit 0; fi; \
	if ! command -v nvcc >/dev/null 2>&1; then echo "cuda-check: nvcc not found, skipped"; exit 0; fi; \
	for f in $$files; do for arch in sm_80 sm_90; do \
	  nvcc -c -arch=$$arch -o /dev/null $$f || exit 1; done; echo "nvcc ok (sm_80, sm_90): $$f"; done

clean:
	rm -rf $(VENV) demo-output .pytest_cache build *.egg-info
