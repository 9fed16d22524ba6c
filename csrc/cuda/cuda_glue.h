// Torch-side helpers of the CUDA glue. Only generic c10 APIs: the CPU-only torch wheel has no
// ATen/cuda or c10/cuda headers, and the whole extension must build and load against it.
#pragma once

#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include "../cpu/common.h"
#include "kernels.h"

// Where the glue registers its kernels: for CUDA tensors in cocosnet_ops, or, built for the
// emulator, for CPU tensors in cocosnet_ops_emulated.
#ifdef COCOSNET_EMULATED_CUDA
#define COCOSNET_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(cocosnet_ops_emulated, CPU, m)
#else
#define COCOSNET_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(cocosnet_ops, CUDA, m)
#endif

namespace cocosnet_ops {

#ifdef COCOSNET_EMULATED_CUDA
// The emulator runs every launch at once, on CPU tensors: no stream.
inline void* current_stream(const at::Tensor&) { return nullptr; }
#else
// The current CUDA stream of the tensor's device, as the cudaStream_t the launchers take.
inline void* current_stream(const at::Tensor& t) {
  return c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getStream(t.device()).native_handle();
}
#endif

inline void check_launch(cuda::Error error, const char* op) {
  TORCH_CHECK(error == nullptr, op, ": CUDA kernel launch failed: ", error);
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& reference, const char* name) {
  TORCH_CHECK_VALUE(t.device() == reference.device(), name, ": expected device ", reference.device(), ", got ",
                    t.device());
}

}  // namespace cocosnet_ops
