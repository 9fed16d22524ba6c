// Torch-side helpers shared by the CPU kernels: argument checks and layout changes.
#pragma once

#include <ATen/ATen.h>

#include "../patch_match.h"

namespace cocosnet_ops {

// Bounds of the arguments, the same as the Python checks' (cocosnet_ops/ops.py; tests/test_constants.py
// pins the two together). The ops check them again here, so that a direct torch.ops call cannot
// overflow the kernels' int arithmetic either.
constexpr int64_t kMaxPatchSize = 31;
constexpr int64_t kMaxIters = 65535;            // the iteration number is 16 bits of the random stream
constexpr int64_t kMaxStep = int64_t{1} << 30;  // offsets and indices are int32 in the kernels
constexpr int64_t kMaxWindow = 64;
constexpr double kMinTemperature = 1e-30;

// "name: expected an int in [low, high], got value", worded like the Python checks.
inline void check_int_in(const char* name, int64_t value, int64_t low, int64_t high) {
  TORCH_CHECK_VALUE(value >= low && value <= high, name, ": expected an int in [", low, ", ", high, "], got ", value);
}

inline void check_patch_size(int64_t patch_size) {
  check_int_in("patch_size", patch_size, 1, kMaxPatchSize);
  TORCH_CHECK_VALUE(patch_size % 2 == 1, "patch_size: expected an odd size in [1, ", kMaxPatchSize, "], got ",
                    patch_size);
}

// A (height, width) argument whose pixels int32 flat indices can number.
inline MapSize check_size(const char* name, at::IntArrayRef size) {
  TORCH_CHECK_VALUE(size.size() == 2, name, ": expected a pair (height, width), got ", size.size(), " values");
  check_int_in(name, size[0], 1, kMaxStep);
  check_int_in(name, size[1], 1, kMaxStep);
  TORCH_CHECK_VALUE(size[0] * size[1] <= kMaxStep, name, ": ", size[0], " x ", size[1],
                    " pixels are too many for int32 indices");
  return {static_cast<int>(size[0]), static_cast<int>(size[1])};
}

// (B, C, H, W) -> contiguous (B, H, W, C): each pixel's features in one run of memory.
inline at::Tensor to_channels_last(const at::Tensor& t) { return t.permute({0, 2, 3, 1}).contiguous(); }

// (B, H, W, C) -> contiguous (B, C, H, W).
inline at::Tensor from_channels_last(const at::Tensor& t) { return t.permute({0, 3, 1, 2}).contiguous(); }

inline MapSize map_size(const at::Tensor& t) { return {static_cast<int>(t.size(2)), static_cast<int>(t.size(3))}; }

inline void check_features(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() == 4, name, ": expected a 4-D tensor (B, C, H, W), got ", t.dim(), " dimensions");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
                   ": expected float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.numel() > 0, name, ": expected a non-empty tensor");
  TORCH_CHECK_VALUE(t.size(2) * t.size(3) < (int64_t{1} << 30), name, ": the map is too large for int32 indices");
}

inline void check_pair(const at::Tensor& query, const at::Tensor& key) {
  check_features(query, "query");
  check_features(key, "key");
  TORCH_CHECK_TYPE(query.scalar_type() == key.scalar_type(), "key: dtype must match query");
  TORCH_CHECK_VALUE(key.device() == query.device(), "key: expected device ", query.device(), " like query, got ",
                    key.device());
  TORCH_CHECK_VALUE(query.size(0) == key.size(0) && query.size(1) == key.size(1),
                    "key: batch and channels must match query");
}

inline void check_value(const at::Tensor& value, const at::Tensor& key) {
  check_features(value, "value");
  TORCH_CHECK_TYPE(value.scalar_type() == key.scalar_type(), "value: dtype must match key");
  TORCH_CHECK_VALUE(value.device() == key.device(), "value: expected device ", key.device(), " like key, got ",
                    value.device());
  TORCH_CHECK_VALUE(value.size(0) == key.size(0) && value.size(2) == key.size(2) && value.size(3) == key.size(3),
                    "value: batch and spatial size must match key");
}

// An int32 (B, K, Hq, Wq) tensor of flat indices in [0, key_pixels). The range is scanned on CPU
// tensors only: on a GPU the scan would be a host sync per op, and the CUDA kernels clamp indices.
inline void check_index_map(const at::Tensor& t, const char* name, const at::Tensor& query, int64_t key_pixels) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt, name, ": expected int32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 4 && t.size(0) == query.size(0) && t.size(1) > 0 && t.size(2) == query.size(2) &&
                        t.size(3) == query.size(3),
                    name, ": expected shape (B, K, Hq, Wq) matching the query");
  TORCH_CHECK_VALUE(t.device() == query.device(), name, ": expected device ", query.device(), ", got ", t.device());
  if (t.is_cpu()) {
    auto [low, high] = at::aminmax(t);
    TORCH_CHECK_VALUE(low.item<int>() >= 0 && high.item<int>() < key_pixels, name,
                      ": entries must be flat key indices in [0, ", key_pixels, ")");
  }
}

inline void check_temperature(double temperature) {
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature >= kMinTemperature,
                    "temperature: expected a finite value >= ", kMinTemperature, ", got ", temperature);
}

// A warp's output or its gradient: (B, Cv, Hq, Wq) of the query's dtype.
inline void check_warp_shaped(const at::Tensor& t, const char* name, const at::Tensor& query, const at::Tensor& value) {
  TORCH_CHECK_TYPE(t.scalar_type() == query.scalar_type(), name, ": dtype must match query");
  TORCH_CHECK_VALUE(t.device() == query.device(), name, ": expected device ", query.device(), ", got ", t.device());
  TORCH_CHECK_VALUE(t.dim() == 4 && t.size(0) == query.size(0) && t.size(1) == value.size(1) &&
                        t.size(2) == query.size(2) && t.size(3) == query.size(3),
                    name, ": expected shape (B, Cv, Hq, Wq) of the warp");
}

}  // namespace cocosnet_ops
