// How the .cu files launch kernels and declare dynamic shared memory, so that the same sources
// build with nvcc for a GPU and, with COCOSNET_EMULATED_CUDA, with the host compiler for the
// emulator of csrc/emulated/ (kernel tests without a GPU).
#pragma once

#ifdef COCOSNET_EMULATED_CUDA
#include "../emulated/cuda_emulation.h"
#else
#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

namespace cocosnet_ops {
namespace cuda {

// kernel<<<blocks, threads, shared_bytes, stream>>>(args...).
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 blocks, dim3 threads, std::size_t shared_bytes,
                   cudaStream_t stream, Args&&... args) {
  kernel<<<blocks, threads, shared_bytes, stream>>>(std::forward<Args>(args)...);
}

}  // namespace cuda
}  // namespace cocosnet_ops

#define COCOSNET_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif
