#!/usr/bin/env bash
# Everything only a GPU can show, in one command, from the repository root of a machine with a
# GPU, torch with CUDA, nvcc and compute-sanitizer:
#   1. build cocosnet_ops._C in place with its CUDA kernels (for this GPU's architecture);
#   2. the tests marked cuda or triton (the CPU suite runs in CI);
#   3. compute-sanitizer memcheck and racecheck on a small run of every CUDA kernel;
#   4. the GPU benchmarks: the warp against dense and SDPA, and the gathers' bandwidth.
# Results go to $RESULTS (default benchmarks/results); logs of the sanitizer runs beside them.
# WARP_ARGS and GATHER_ARGS replace the benchmarks' default grids (e.g. fewer sides when GPU time
# is short). CXX must link libstdc++ dynamically like torch does: an extension with its own
# static copy crashes when a C++ check throws (seen with one toolchain's g++).
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-benchmarks/results}
mkdir -p "$RESULTS"
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SANITIZER=${SANITIZER:-compute-sanitizer}
capability=$($PYTHON -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$capability} MAX_JOBS=${MAX_JOBS:-16}

echo "== build (sm ${TORCH_CUDA_ARCH_LIST})"
$PYTHON setup.py -q build_ext --inplace
$PYTHON -c "import cocosnet_ops; assert cocosnet_ops.HAS_CUDA_KERNELS, 'no CUDA kernels in the build'"
if ! ldd cocosnet_ops/_C*.so | grep -q libstdc++; then
  echo "warning: _C links libstdc++ statically; C++ errors will crash (set CXX to the system g++)" >&2
fi

# Every later step runs even when one fails; the script fails at the end.
failed=0
echo "== CUDA and Triton tests"
$PYTHON -m pytest -q -p no:cacheprovider -m "cuda or triton" tests || failed=1

echo "== compute-sanitizer"
# memcheck over every kernel the case launches; racecheck over this project's kernels only:
# PyTorch's memory-efficient attention kernel (dense_warp's float32 path) reports shared-memory
# hazards of its own (torch 2.11, H100).
$SANITIZER --tool memcheck --error-exitcode 1 --log-file "$RESULTS/sanitizer_memcheck.log" \
  $PYTHON benchmarks/gpu_sanitizer_case.py || failed=1
tail -n 1 "$RESULTS/sanitizer_memcheck.log"
$SANITIZER --tool racecheck --kernel-name kns=cocosnet_ops --error-exitcode 1 \
  --log-file "$RESULTS/sanitizer_racecheck.log" $PYTHON benchmarks/gpu_sanitizer_case.py || failed=1
tail -n 1 "$RESULTS/sanitizer_racecheck.log"

echo "== benchmarks"
# shellcheck disable=SC2086  # the argument lists are meant to split
$PYTHON benchmarks/bench_gather_cuda.py ${GATHER_ARGS:-} --out "$RESULTS/gather_cuda.csv" || failed=1
$PYTHON benchmarks/bench_warp.py --device cuda ${WARP_ARGS:---sides 128 256 512 1024 --channels 32 64 --repeats 10} \
  --out "$RESULTS/warp_cuda.csv" || failed=1
exit $failed
