// The subset of CUDA that csrc/cuda/*.cu use, for the host compiler: with
// COCOSNET_EMULATED_CUDA the same kernel sources build into cocosnet_ops._C_emulated and run on
// the CPU, every simulated GPU thread a fiber of one block at a time. Shuffles, __syncwarp and
// __syncthreads switch fibers until every thread they wait for has arrived, so lane groups
// exchange values as on a GPU, and a shuffle that some lane of its mask never reaches (a
// divergence bug that a GPU may hide) fails the launch instead of hanging. Kernel changes are
// tested with it where no GPU is (tests/test_emulated_cuda.py); it measures nothing about speed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) alignas(n)

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned int x, y, z;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned int x, y;
};
using cudaStream_t = struct EmulatedStream*;
enum cudaError_t { cudaSuccess = 0, cudaErrorLaunchFailure = 719 };

cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t error);

namespace cocosnet_ops {
namespace emulated {

struct Coordinates {
  uint3 thread, block;
  dim3 block_dim, grid_dim;
};

// Where the running fiber is in the launch.
const Coordinates& coordinates();
// The running fiber's lane `source`'s value of this round of exchanges among the lanes of
// `mask` (its warp's), after publishing its own `size` bytes at `value`; `out` receives them.
void exchange(unsigned int mask, const void* value, std::size_t size, int source, void* out);
void sync_threads();
unsigned char* dynamic_shared();
// Runs `body` once per thread of the grid: blocks one after another, each block's threads as
// fibers. A deadlock (a shuffle or barrier that cannot complete) makes cudaGetLastError fail.
void run(const std::function<void()>& body, dim3 blocks, dim3 threads, std::size_t shared_bytes);

}  // namespace emulated
}  // namespace cocosnet_ops

#define threadIdx (::cocosnet_ops::emulated::coordinates().thread)
#define blockIdx (::cocosnet_ops::emulated::coordinates().block)
#define blockDim (::cocosnet_ops::emulated::coordinates().block_dim)
#define gridDim (::cocosnet_ops::emulated::coordinates().grid_dim)

template <typename T>
T __shfl_xor_sync(unsigned int mask, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable_v<T>, "shuffles move up to 16 bytes");
  const int lane = static_cast<int>(threadIdx.x % 32);
  int source = lane ^ lane_mask;
  if (source / width != lane / width) source = lane;  // outside this lane's segment: its own value
  T out;
  ::cocosnet_ops::emulated::exchange(mask, &value, sizeof(T), source, &out);
  return out;
}

// Lane `source_lane` of this lane's segment of `width` lanes.
template <typename T>
T __shfl_sync(unsigned int mask, T value, int source_lane, int width = 32) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable_v<T>, "shuffles move up to 16 bytes");
  const int lane = static_cast<int>(threadIdx.x % 32);
  T out;
  ::cocosnet_ops::emulated::exchange(mask, &value, sizeof(T), lane / width * width + source_lane % width, &out);
  return out;
}

// Lane `lane - delta` of this lane's segment of `width` lanes; the lanes below keep their own value.
template <typename T>
T __shfl_up_sync(unsigned int mask, T value, unsigned int delta, int width = 32) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable_v<T>, "shuffles move up to 16 bytes");
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int source = lane % width >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane;
  T out;
  ::cocosnet_ops::emulated::exchange(mask, &value, sizeof(T), source, &out);
  return out;
}

// Whether `predicate` is non-zero in any lane of `mask`: one exchange round per lane of the mask,
// which every lane of it runs alike.
inline int __any_sync(unsigned int mask, int predicate) {
  int any = 0;
  for (int source = 0; source < 32; ++source) {
    if (((mask >> source) & 1u) == 0) continue;
    int theirs = 0;
    ::cocosnet_ops::emulated::exchange(mask, &predicate, sizeof predicate, source, &theirs);
    any |= theirs != 0;
  }
  return any;
}

inline void __syncwarp(unsigned int mask = 0xffffffffu) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  int ignored = 0;
  ::cocosnet_ops::emulated::exchange(mask, &ignored, sizeof ignored, lane, &ignored);
}

inline void __syncthreads() { ::cocosnet_ops::emulated::sync_threads(); }

// CUDA's device-side integer max, which the host compiler does not have unqualified.
inline int max(int a, int b) { return a > b ? a : b; }

template <typename T>
T __ldg(const T* p) {
  return *p;
}

// Blocks run one at a time and a block's fibers take turns, so a plain addition is atomic here.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

namespace cocosnet_ops {
namespace cuda {

// kernel<<<blocks, threads, shared_bytes, stream>>>(args...), emulated.
template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), dim3 blocks, dim3 threads, std::size_t shared_bytes, cudaStream_t,
                   Args&&... args) {
  // The kernel's parameters, converted once as the launch would; every thread gets copies.
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  emulated::run([&] { std::apply(kernel, params); }, blocks, threads, shared_bytes);
}

}  // namespace cuda
}  // namespace cocosnet_ops

#define COCOSNET_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(::cocosnet_ops::emulated::dynamic_shared())
