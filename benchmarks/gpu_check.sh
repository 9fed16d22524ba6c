#!/usr/bin/env bash
# Everything only a GPU can show, in one command, from the repository root of a machine with a
# GPU, torch with CUDA, nvcc and compute-sanitizer:
#   1. build cocosnet_ops._C in place with its CUDA kernels (for this GPU's architecture);
#   2. the tests marked cuda or triton (the CPU suite runs in CI);
#   3. compute-sanitizer memcheck (and racecheck, full run only) on a small run of every CUDA kernel;
#   4. the GPU benchmarks: the warp against SDPA (patchmatch_cuda, patchmatch_triton, flash and
#      memory-efficient SDPA in bf16, same run), the search-step variants and half-precision
#      scoring against the default kernel (A/B, interleaved, one process), and the gathers'
#      bandwidth (full run only);
#   5. a training smoke: train.py on the synthetic figures at 256x256 for 50 steps with
#      --amp auto in one process, then under torchrun on every GPU (NCCL).
# One summary table at the end (every step's status and seconds, the training rows); every CSV
# and log goes to $RESULTS (default benchmarks/results).
#
#   benchmarks/gpu_check.sh            the full grids
#   benchmarks/gpu_check.sh --quick    sides 512 and 1024 only, memcheck only: fits in 8 minutes
#   benchmarks/gpu_check.sh --dry-run  print every step's command, run none (works without a GPU;
#                                      tests/test_gpu_check.py runs it so the script cannot rot)
#
# WARP_ARGS, VARIANT_ARGS and GATHER_ARGS replace the benchmarks' grids. CXX must link libstdc++
# dynamically like torch does: an extension with its own static copy crashes when a C++ check
# throws (seen with one toolchain's g++).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
dry_run=0
for arg in "$@"; do
  case $arg in
    --quick) quick=1 ;;
    --dry-run) dry_run=1 ;;
    -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: error: unknown argument '$arg' (expected --quick, --dry-run or --help)" >&2; exit 2 ;;
  esac
done

RESULTS=${RESULTS:-benchmarks/results}
PYTHON=${PYTHON:-python3}
SANITIZER=${SANITIZER:-compute-sanitizer}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ((dry_run)); then
  gpus="<GPUs present>"
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"<this GPU's capability>"}
else
  mkdir -p "$RESULTS"
  gpus=$($PYTHON -c "import torch; print(torch.cuda.device_count())")
  capability=$($PYTHON -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$capability}
fi
export MAX_JOBS=${MAX_JOBS:-16} FORCE_CUDA=1
smoke_dir=$(mktemp -d -u "${TMPDIR:-/tmp}/gpu_train_smoke.XXXXXX")

# Every step runs even when one fails; the script fails at the end.
failed=0
summary=()
step() {
  local name=$1
  shift
  echo "== $name"
  printf '+'
  printf ' %q' "$@"
  echo
  if ((dry_run)); then
    summary+=("$name|not run (dry run)|")
    return
  fi
  local start=$SECONDS status=ok
  "$@" || { status="FAILED (exit $?)"; failed=1; }
  summary+=("$name|$status|$((SECONDS - start))")
}

step "build (sm $TORCH_CUDA_ARCH_LIST)" $PYTHON setup.py -q build_ext --inplace
step "CUDA kernels in the build" $PYTHON -c \
  "import cocosnet_ops; assert cocosnet_ops.HAS_CUDA_KERNELS, 'no CUDA kernels in the build'"
if ((!dry_run)) && ! ldd cocosnet_ops/_C*.so | grep -q libstdc++; then
  echo "warning: _C links libstdc++ statically; C++ errors will crash (set CXX to the system g++)" >&2
fi

step "CUDA and Triton tests" $PYTHON -m pytest -q -p no:cacheprovider -m "cuda or triton" tests

# memcheck over every kernel the case launches; racecheck over this project's kernels only:
# PyTorch's memory-efficient attention kernel (dense_warp's float32 path) reports shared-memory
# hazards of its own (torch 2.11, H100).
step "compute-sanitizer memcheck" $SANITIZER --tool memcheck --error-exitcode 1 \
  --log-file "$RESULTS/sanitizer_memcheck.log" $PYTHON benchmarks/gpu_sanitizer_case.py
if ((!quick)); then
  step "compute-sanitizer racecheck" $SANITIZER --tool racecheck --kernel-name kns=cocosnet_ops \
    --error-exitcode 1 --log-file "$RESULTS/sanitizer_racecheck.log" $PYTHON benchmarks/gpu_sanitizer_case.py
fi

if ((quick)); then
  warp_default="--sides 512 1024 --channels 32 --repeats 5 --methods patchmatch_cuda patchmatch_triton sdpa_flash_bf16 sdpa_efficient_bf16"
else
  warp_default="--sides 128 256 512 1024 --channels 32 64 --repeats 10"
  # shellcheck disable=SC2086  # the argument lists are meant to split
  step "gather bandwidth" $PYTHON benchmarks/bench_gather_cuda.py ${GATHER_ARGS:-} --out "$RESULTS/gather_cuda.csv"
fi
# shellcheck disable=SC2086
step "warp benchmark" $PYTHON benchmarks/bench_warp.py --device cuda ${WARP_ARGS:-$warp_default} \
  --out "$RESULTS/warp_cuda.csv"

variant_default="--sides 512 1024 --rounds $((quick ? 5 : 10))"
# shellcheck disable=SC2086
step "search variants A/B" $PYTHON benchmarks/bench_search_variants.py ${VARIANT_ARGS:-$variant_default} \
  --out "$RESULTS/search_variants.csv"

smoke=(benchmarks/gpu_train_smoke.py --device cuda --size 256 --steps 50 --amp auto --out "$RESULTS/train_smoke.csv")
step "training smoke, one process" $PYTHON "${smoke[@]}" --run-dir "$smoke_dir/one_process"
step "training smoke, torchrun on $gpus GPUs" $PYTHON -m torch.distributed.run --standalone \
  --nproc_per_node "$gpus" "${smoke[@]}" --run-dir "$smoke_dir/torchrun"

echo
echo "== summary"
printf '%s\n' "step|status|seconds" "${summary[@]}" | column -t -s '|'
if ((!dry_run)); then
  # method, side, channels, status, forward+backward seconds and peak MiB
  [[ -f $RESULTS/warp_cuda.csv ]] && cut -d , -f 1,2,3,7,9,11 "$RESULTS/warp_cuda.csv" | column -t -s ,
  # config, side, median ms, time over the default kernel's, same results, top-1 agreement
  [[ -f $RESULTS/search_variants.csv ]] && cut -d , -f 1,4,8,9,10,11 "$RESULTS/search_variants.csv" | column -t -s ,
  [[ -f $RESULTS/train_smoke.csv ]] && column -t -s , "$RESULTS/train_smoke.csv"
  rm -rf "$smoke_dir"
fi
exit $failed
