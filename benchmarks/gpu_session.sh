#!/usr/bin/env bash
# Everything a session with a GPU should run, in one call of this workplace's device tool, most important
# first, each part under its own time limit so that what finished comes back even if a later part runs long:
#   here:   make gpu-bundle                 (the wheels the GPU node lacks, in .whl/, about 15 MB)
#   device: bash benchmarks/gpu_session.sh  (carry: .whl; timeout_s 590)
# Results land in benchmarks/results/ there and come back in $OUT/results.tgz (the device tool brings $OUT back,
# at most 8 files; the tarball's list in results.txt; unpack it in the repository's root), beside gpu-check.log:
# gpu-<device>.json (bench_gpu.py), io-<device>.{json,md} (bench_io.py: the host's reads and
# writes through Zarr and through the pipelines' own, with 16 threads), conveyor_host_<device>.{json,md}
# (bench_conveyor_host.py: the GPU engine's host side with a free device against the Zarr copy),
# bench_gpu.{json,md} and two plots (bench --device gpu).
# Budget (seconds, about 9.5 minutes in all): GPU tests 90, bench_gpu.py 120, bench_io.py 60,
# bench_conveyor_host.py 60, bench --device gpu 210 (its report is rewritten after each part, so a run cut off at
# its limit still leaves what it measured).
set -u
OUT=${OUT:-/tmp/gpu-session-out}
mkdir -p "$OUT"
log="$OUT/gpu-check.log"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# CuPy's compiled kernels: kept in the (ignored) .cupycache/ and handed back as one tarball, so a later call
# that carries .cupycache skips the compiles (a fresh node starts with an empty cache)
export CUPY_CACHE_DIR="$PWD/.cupycache"
mkdir -p "$CUPY_CACHE_DIR"
# Per-part limits (seconds) and the bench's arguments can be set from outside for a shorter call
# (on an H200, 2026-11-27: the GPU tests took 57 s, bench_gpu.py 51 s, and bench at 2048 x 2048 with 128 frames
# about 200 s before its scaling part; on an H100 the same day the whole script took 352 s. A change to
# cuda/correct.cu that makes it slow to compile shows here first: bench_gpu.py builds it several times)
T_TESTS=${T_TESTS:-90} T_BENCH_GPU=${T_BENCH_GPU:-120} T_IO=${T_IO:-60} T_HOST=${T_HOST:-60} T_BENCH=${T_BENCH:-210}
BENCH_ARGS=${BENCH_ARGS:---sizes 2048 --frames 128 --scaling-frames 256,1024 --workers 16 --repeats 2}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_session: could not install .whl" | tee -a "$log"; exit 1; }
  # PYTHONPATH comes before site-packages: /tmp/site would shadow the node's copy of a package, so
  # make gpu-bundle leaves out every package the node has (GPU_NODE_HAS) and carries no numpy
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if ! python3 -c "import dask.distributed, zarr, pydantic, numcodecs, pipeline.api" >>"$log" 2>&1; then
  echo "gpu_session: the carried packages do not import (see $log); rebuild .whl with make gpu-bundle" | tee -a "$log"
  tail -n 20 "$log"
  exit 1
fi
{ date -u; nvidia-smi -L; python3 -c "import cupy, numpy; print('cupy', cupy.__version__, 'numpy', numpy.__version__)"; } \
  2>&1 | tee -a "$log"
step() {  # step SECONDS NAME COMMAND...
  local limit=$1 name=$2; shift 2
  echo "=== $name (limit ${limit}s)" | tee -a "$log"
  local t0=$SECONDS
  timeout "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$log"
}
[ "$T_TESTS" -gt 0 ] && step "$T_TESTS" "GPU tests" python3 -m pytest -q -m gpu tests/gpu -p no:cacheprovider \
  --tb=short -ra --durations=8
[ "$T_BENCH_GPU" -gt 0 ] && step "$T_BENCH_GPU" "bench_gpu.py" python3 benchmarks/bench_gpu.py
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -c 'A-Za-z0-9\n' '-')
[ "$T_IO" -gt 0 ] && step "$T_IO" "bench_io.py (16 threads)" python3 benchmarks/bench_io.py --frames 32 --threads 16 \
  --parts reads,partial,writes --repeats 2 --name "io-${GPU_NAME:-gpu-node}"
[ "$T_HOST" -gt 0 ] && step "$T_HOST" "bench_conveyor_host.py" python3 benchmarks/bench_conveyor_host.py --size 2048 \
  --frames 32 --repeats 2 --name "${GPU_NAME:-gpu-node}"
eval "set -- $BENCH_ARGS"  # BENCH_ARGS is shell words: --scaling-frames '' (skip the scaling run) survives
[ "$T_BENCH" -gt 0 ] && step "$T_BENCH" "bench --device gpu" python3 -m pipeline.cli bench --device gpu "$@" \
  --out benchmarks/results
# the device tool hands back at most 8 files: the results in one tarball (unpack in the repository's root),
# the log beside it
(cd benchmarks/results && ls gpu-*.json io-*.json io-*.md conveyor_host_*.json conveyor_host_*.md bench_gpu.json \
  bench_gpu.md bench_gpu_*.png 2>/dev/null | sed 's|^|benchmarks/results/|') > "$OUT/results.txt"
tar czf "$OUT/results.tgz" -T "$OUT/results.txt" 2>>"$log"
tar czf "$OUT/cupycache.tgz" -C "$CUPY_CACHE_DIR" . 2>/dev/null
tail -n 40 "$log"
