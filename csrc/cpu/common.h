// Torch-side helpers shared by the CPU kernels: argument checks and layout changes.
#pragma once

#include <ATen/ATen.h>

#include "../patch_match.h"

namespace cocosnet_ops {

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
  TORCH_CHECK_VALUE(query.size(0) == key.size(0) && query.size(1) == key.size(1),
                    "key: batch and channels must match query");
}

inline void check_value(const at::Tensor& value, const at::Tensor& key) {
  check_features(value, "value");
  TORCH_CHECK_TYPE(value.scalar_type() == key.scalar_type(), "value: dtype must match key");
  TORCH_CHECK_VALUE(value.size(0) == key.size(0) && value.size(2) == key.size(2) && value.size(3) == key.size(3),
                    "value: batch and spatial size must match key");
}

// An int32 (B, K, Hq, Wq) tensor of flat indices in [0, key_pixels).
inline void check_index_map(const at::Tensor& t, const char* name, const at::Tensor& query, int64_t key_pixels) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kInt, name, ": expected int32, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 4 && t.size(0) == query.size(0) && t.size(1) > 0 && t.size(2) == query.size(2) &&
                        t.size(3) == query.size(3),
                    name, ": expected shape (B, K, Hq, Wq) matching the query");
  auto [low, high] = at::aminmax(t);
  TORCH_CHECK_VALUE(low.item<int>() >= 0 && high.item<int>() < key_pixels, name,
                    ": entries must be flat key indices in [0, ", key_pixels, ")");
}

// (x, y) key coordinates (B, K, Hq, Wq, 2) of the query's dtype.
inline void check_coords(const at::Tensor& coords, const at::Tensor& query) {
  TORCH_CHECK_TYPE(coords.scalar_type() == query.scalar_type(), "coords: dtype must match query");
  TORCH_CHECK_VALUE(coords.dim() == 5 && coords.size(0) == query.size(0) && coords.size(1) > 0 &&
                        coords.size(2) == query.size(2) && coords.size(3) == query.size(3) && coords.size(4) == 2,
                    "coords: expected shape (B, K, Hq, Wq, 2) matching the query");
}

inline void check_temperature(double temperature) {
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0, "temperature: expected a finite value > 0, got ",
                    temperature);
}

}  // namespace cocosnet_ops
