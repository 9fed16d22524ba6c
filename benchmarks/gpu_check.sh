#!/usr/bin/env bash
# Everything only a GPU can show, in one command, from the repository root of a machine with a
# GPU, torch with CUDA, nvcc and compute-sanitizer:
#   1. build cocosnet_ops._C in place with its CUDA kernels (for this GPU's architecture);
#   2. the CUDA and Triton tests (the CPU suite runs in CI);
#   3. compute-sanitizer memcheck and racecheck on a small run of every CUDA kernel;
#   4. the GPU benchmarks: the warp against dense and SDPA, and the gathers' bandwidth.
# Results go to $RESULTS (default benchmarks/results); logs of the sanitizer runs beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-benchmarks/results}
mkdir -p "$RESULTS"
PYTHON=${PYTHON:-python3}
SANITIZER=${SANITIZER:-compute-sanitizer}
capability=$($PYTHON -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$capability} MAX_JOBS=${MAX_JOBS:-16}

echo "== build (sm ${TORCH_CUDA_ARCH_LIST})"
$PYTHON setup.py -q build_ext --inplace
$PYTHON -c "import cocosnet_ops; assert cocosnet_ops.HAS_CUDA_KERNELS, 'no CUDA kernels in the build'"

echo "== CUDA and Triton tests"
$PYTHON -m pytest -q -p no:cacheprovider tests/test_build.py tests/test_cuda_*.py \
  $(ls tests/test_triton*.py 2>/dev/null || true)

echo "== compute-sanitizer"
for tool in memcheck racecheck; do
  $SANITIZER --tool "$tool" --error-exitcode 1 --log-file "$RESULTS/sanitizer_$tool.log" \
    $PYTHON benchmarks/gpu_sanitizer_case.py
  tail -n 1 "$RESULTS/sanitizer_$tool.log"
done

echo "== benchmarks"
$PYTHON benchmarks/bench_gather_cuda.py --out "$RESULTS/gather_cuda.csv"
$PYTHON benchmarks/bench_warp.py --device cuda --sides 128 256 512 1024 --channels 32 64 --repeats 10 \
  --out "$RESULTS/warp_cuda.csv"
