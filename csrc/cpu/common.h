// Torch-side helpers shared by the CPU kernels: argument checks and layout changes.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>

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
  // Only on the CPU: on a GPU the scan would be a host sync per op, and the kernels clamp.
  if (!t.is_cpu()) return;
  auto [low, high] = at::aminmax(t);
  TORCH_CHECK_VALUE(low.item<int>() >= 0 && high.item<int>() < key_pixels, name,
                    ": entries must be flat key indices in [0, ", key_pixels, ")");
}

// Continuous (x, y) key positions (B, K, Hq, Wq, 2) matching the query.
inline void check_coords(const at::Tensor& coords, const at::Tensor& query) {
  TORCH_CHECK_TYPE(coords.scalar_type() == query.scalar_type(), "coords: dtype must match query");
  TORCH_CHECK_VALUE(coords.device() == query.device(), "coords: expected device ", query.device(), ", got ",
                    coords.device());
  TORCH_CHECK_VALUE(coords.dim() == 5 && coords.size(0) == query.size(0) && coords.size(1) > 0 &&
                        coords.size(2) == query.size(2) && coords.size(3) == query.size(3) && coords.size(4) == 2,
                    "coords: expected shape (B, K, Hq, Wq, 2) matching the query");
}

inline void check_search_args(const at::Tensor& query, const at::Tensor& key, int64_t k, int64_t patch_size) {
  check_pair(query, key);
  check_int_in("k", k, 1, key.size(2) * key.size(3));
  check_patch_size(patch_size);
}

inline void check_iteration_args(int64_t iters, at::IntArrayRef jumps, int64_t seed) {
  check_int_in("iters", iters, 0, kMaxIters);
  check_int_in("seed", seed, 0, 0xFFFFFFFFLL);
  for (int64_t step : jumps) check_int_in("jump", step, 1, kMaxStep);
}

// max_radius (None: unbounded) bounds the search around the init candidates, so it needs them.
inline void check_max_radius(const c10::optional<int64_t>& max_radius, const c10::optional<at::Tensor>& init) {
  if (!max_radius.has_value()) return;
  check_int_in("max_radius", *max_radius, 0, kMaxStep);
  TORCH_CHECK_VALUE(init.has_value(), "max_radius: bounds the search around the init candidates, so needs init");
}

// The propagation step of iteration `it`: the last given step repeats; none means 1.
inline int jump_step(at::IntArrayRef jumps, int64_t it) {
  return jumps.empty() ? 1 : static_cast<int>(jumps[std::min<size_t>(it, jumps.size() - 1)]);
}

// Candidates (B, M, Hq, Wq) as contiguous (B, Hq, Wq, M), each pixel's run in one place. Entries
// < 0 mean none; the kernels also skip entries past the key map, so only the CPU scans for them.
inline at::Tensor candidates_by_pixel(const c10::optional<at::Tensor>& candidates, const at::Tensor& query,
                                      int64_t key_pixels) {
  if (!candidates.has_value() || candidates->size(1) == 0)
    return at::empty({query.size(0), query.size(2), query.size(3), 0}, query.options().dtype(at::kInt));
  const at::Tensor& c = *candidates;
  TORCH_CHECK_TYPE(c.scalar_type() == at::kInt, "candidates: expected int32, got ", c.scalar_type());
  TORCH_CHECK_VALUE(c.dim() == 4 && c.size(0) == query.size(0) && c.size(2) == query.size(2) &&
                        c.size(3) == query.size(3),
                    "candidates: expected shape (B, M, Hq, Wq) matching the query");
  TORCH_CHECK_VALUE(c.device() == query.device(), "candidates: expected device ", query.device(), ", got ",
                    c.device());
  if (c.is_cpu())
    TORCH_CHECK_VALUE(c.max().item<int>() < key_pixels, "candidates: entries must be < ", key_pixels,
                      " (or < 0 for none)");
  return c.permute({0, 2, 3, 1}).contiguous();
}

// The bound of a search (max_radius, after check_max_radius) and the storage it reads: the
// candidates of candidates_by_pixel, each pixel's sorted. A radius that spans the key map bounds nothing (every
// key pixel lies that near every init candidate, and the random-search radii start as they
// would unbounded): such a search is the unbounded one, without the window's cost.
struct BoundedInit {
  at::Tensor sorted;
  SearchBound bound;
};

inline BoundedInit search_bound(const at::Tensor& candidates_by_pixel, const c10::optional<int64_t>& max_radius,
                                MapSize ks) {
  if (!max_radius.has_value() || *max_radius >= std::max(ks.height, ks.width) - 1)
    return {at::Tensor(), {nullptr, 0, -1}};
  at::Tensor sorted = std::get<0>(candidates_by_pixel.sort(-1));
  return {sorted, {sorted.data_ptr<int>(), static_cast<int>(sorted.size(3)), static_cast<int>(*max_radius)}};
}

// share_matches: an NNF (B, K, Hq, Wq) with its scores and (B, M, Hq, Wq) neighbours, flat query
// indices, < 0 for none (the kernels skip entries past the query map; only the CPU scans for them).
inline void check_share_args(const at::Tensor& query, const at::Tensor& key, const at::Tensor& nnf,
                             const at::Tensor& scores, const at::Tensor& neighbours, int64_t top, int64_t patch_size) {
  check_pair(query, key);
  check_patch_size(patch_size);
  check_index_map(nnf, "nnf", query, key.size(2) * key.size(3));
  TORCH_CHECK_TYPE(scores.scalar_type() == query.scalar_type(), "scores: dtype must match query");
  TORCH_CHECK_VALUE(scores.sizes() == nnf.sizes() && scores.device() == nnf.device(),
                    "scores: expected the shape and device of nnf");
  TORCH_CHECK_TYPE(neighbours.scalar_type() == at::kInt, "neighbours: expected int32, got ", neighbours.scalar_type());
  TORCH_CHECK_VALUE(neighbours.dim() == 4 && neighbours.size(0) == query.size(0) &&
                        neighbours.size(2) == query.size(2) && neighbours.size(3) == query.size(3) &&
                        neighbours.device() == query.device(),
                    "neighbours: expected shape (B, M, Hq, Wq) matching the query, on its device");
  check_int_in("top", top, 1, nnf.size(1));
  if (neighbours.is_cpu() && neighbours.numel() > 0)
    TORCH_CHECK_VALUE(neighbours.max().item<int>() < query.size(2) * query.size(3),
                      "neighbours: entries must be flat query indices < ", query.size(2) * query.size(3),
                      " (or < 0 for none)");
}

// The search state: (B, Hq, Wq, K) indices and scores, ready for the public (B, K, Hq, Wq).
inline std::tuple<at::Tensor, at::Tensor> to_nnf(const at::Tensor& index, const at::Tensor& score) {
  return {index.permute({0, 3, 1, 2}).contiguous(), score.permute({0, 3, 1, 2}).contiguous()};
}

struct UpsampleSizes {
  MapSize coarse_query, coarse_key, key, query;
};

inline UpsampleSizes check_upsample_args(const at::Tensor& nnf, at::IntArrayRef coarse_key_size,
                                         at::IntArrayRef key_size, at::IntArrayRef query_size, int64_t window,
                                         int64_t dilation) {
  TORCH_CHECK_TYPE(nnf.scalar_type() == at::kInt, "nnf: expected int32, got ", nnf.scalar_type());
  TORCH_CHECK_VALUE(nnf.dim() == 4 && nnf.numel() > 0, "nnf: expected a non-empty (B, K, H, W) tensor");
  TORCH_CHECK_VALUE(nnf.size(2) * nnf.size(3) <= kMaxStep, "nnf: too many pixels for int32 indices");
  const UpsampleSizes s{map_size(nnf), check_size("coarse_key_size", coarse_key_size), check_size("key_size", key_size),
                        check_size("query_size", query_size)};
  check_int_in("window", window, 1, kMaxWindow);
  check_int_in("dilation", dilation, 0, kMaxStep / kMaxWindow);
  TORCH_CHECK_VALUE(s.query.height >= s.coarse_query.height && s.query.width >= s.coarse_query.width,
                    "query_size: must be at least the coarse NNF's size");
  // Only on the CPU: the kernels clamp coarse matches into the map, so none is read out of bounds.
  if (nnf.is_cpu()) {
    auto [low, high] = at::aminmax(nnf);
    TORCH_CHECK_VALUE(low.item<int>() >= 0 && high.item<int>() < s.coarse_key.pixels(),
                      "nnf: entries must be flat indices into the coarse key map");
  }
  return s;
}

inline void check_bilinear_scores_args(const at::Tensor& query, const at::Tensor& key, const at::Tensor& coords,
                                       int64_t patch_size) {
  check_pair(query, key);
  check_coords(coords, query);
  check_patch_size(patch_size);
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
