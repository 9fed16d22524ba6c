// CPU kernels of the search ops: patch_match, evaluate_candidates, nnf_upsample.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common.h"

namespace cocosnet_ops {
namespace {

// Pixels per parallel task: each scores dozens of candidates, so small grains balance well.
constexpr int64_t kGrain = 16;

std::vector<int> search_radii(MapSize ks) {
  std::vector<int> radii;
  for (int r = (ks.height > ks.width ? ks.height : ks.width) / 2; r >= 1 && radii.size() < kMaxRadii; r /= 2)
    radii.push_back(r);
  return radii;
}

void check_search_args(const at::Tensor& query, const at::Tensor& key, int64_t k, int64_t patch_size) {
  check_pair(query, key);
  check_int_in("k", k, 1, key.size(2) * key.size(3));
  check_patch_size(patch_size);
}

// Candidates (B, M, Hq, Wq) as contiguous (B, Hq, Wq, M), each pixel's run in one place.
at::Tensor candidates_by_pixel(const c10::optional<at::Tensor>& candidates, const at::Tensor& query,
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
  TORCH_CHECK_VALUE(c.max().item<int>() < key_pixels, "candidates: entries must be < ", key_pixels,
                    " (or < 0 for none)");
  return c.permute({0, 2, 3, 1}).contiguous();
}

// The search state: (B, Hq, Wq, K) indices and scores, ready for the public (B, K, Hq, Wq).
std::tuple<at::Tensor, at::Tensor> to_nnf(const at::Tensor& index, const at::Tensor& score) {
  return {index.permute({0, 3, 1, 2}).contiguous(), score.permute({0, 3, 1, 2}).contiguous()};
}

template <typename T>
void initial_search(const at::Tensor& query_cl, const at::Tensor& key_cl, const at::Tensor& candidates,
                    at::Tensor& index, at::Tensor& score, int k, int patch_size, uint32_t seed) {
  const int B = query_cl.size(0), C = query_cl.size(3);
  const MapSize qs{static_cast<int>(query_cl.size(1)), static_cast<int>(query_cl.size(2))};
  const MapSize ks{static_cast<int>(key_cl.size(1)), static_cast<int>(key_cl.size(2))};
  const int M = candidates.size(3);
  const T* q = query_cl.data_ptr<T>();
  const T* kf = key_cl.data_ptr<T>();
  const int* cand = candidates.data_ptr<int>();
  int* idx = index.data_ptr<int>();
  T* sc = score.data_ptr<T>();
  at::parallel_for(0, int64_t{B} * qs.pixels(), kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      const int b = pixel / qs.pixels(), p = pixel % qs.pixels();
      const Scorer<T> scorer{q + int64_t{b} * qs.pixels() * C, kf + int64_t{b} * ks.pixels() * C, C, qs, ks,
                             p / qs.width, p % qs.width, patch_size / 2};
      TopK<T> list{idx + pixel * k, sc + pixel * k, k, 0};
      initial_topk(list, scorer, cand + pixel * M, M, 1, seed, static_cast<uint32_t>(p));
    }
  });
}

std::tuple<at::Tensor, at::Tensor> evaluate_candidates_cpu(const at::Tensor& query, const at::Tensor& key,
                                                           const at::Tensor& candidates, int64_t k,
                                                           int64_t patch_size) {
  check_search_args(query, key, k, patch_size);
  const at::Tensor query_cl = to_channels_last(query), key_cl = to_channels_last(key);
  const at::Tensor cand = candidates_by_pixel(candidates, query, key.size(2) * key.size(3));
  at::Tensor index = at::empty({query.size(0), query.size(2), query.size(3), k}, query.options().dtype(at::kInt));
  at::Tensor score = at::empty({query.size(0), query.size(2), query.size(3), k}, query.options());
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "evaluate_candidates_cpu", [&] {
    initial_search<scalar_t>(query_cl, key_cl, cand, index, score, k, patch_size, 0);
  });
  return to_nnf(index, score);
}

template <typename T>
void search_iterations(const at::Tensor& query_cl, const at::Tensor& key_cl, at::Tensor& index, at::Tensor& score,
                       int k, int iters, int patch_size, const std::vector<int64_t>& jumps, bool random_search,
                       uint32_t seed) {
  const int B = query_cl.size(0), C = query_cl.size(3);
  const MapSize qs{static_cast<int>(query_cl.size(1)), static_cast<int>(query_cl.size(2))};
  const MapSize ks{static_cast<int>(key_cl.size(1)), static_cast<int>(key_cl.size(2))};
  const std::vector<int> radii = random_search ? search_radii(ks) : std::vector<int>{};
  at::Tensor next_index = at::empty_like(index), next_score = at::empty_like(score);
  const T* q = query_cl.data_ptr<T>();
  const T* kf = key_cl.data_ptr<T>();
  for (int it = 0; it < iters; ++it) {
    const int step = jumps.empty() ? 1 : static_cast<int>(jumps[std::min<size_t>(it, jumps.size() - 1)]);
    const int* previous = index.data_ptr<int>();
    const T* previous_score = score.data_ptr<T>();
    int* out_index = next_index.data_ptr<int>();
    T* out_score = next_score.data_ptr<T>();
    at::parallel_for(0, int64_t{B} * qs.pixels(), kGrain, [&](int64_t begin, int64_t end) {
      std::vector<int> candidates(max_step_candidates(k));
      for (int64_t pixel = begin; pixel < end; ++pixel) {
        const int b = pixel / qs.pixels(), p = pixel % qs.pixels();
        const int64_t batch_nnf = int64_t{b} * qs.pixels() * k;
        const Scorer<T> scorer{q + int64_t{b} * qs.pixels() * C, kf + int64_t{b} * ks.pixels() * C, C, qs, ks,
                               p / qs.width, p % qs.width, patch_size / 2};
        TopK<T> list{out_index + pixel * k, out_score + pixel * k, k, 0};
        patch_match_step(list, candidates.data(), scorer, previous + batch_nnf, previous_score + batch_nnf, step,
                         radii.data(), static_cast<int>(radii.size()), seed, it, static_cast<uint32_t>(p));
      }
    });
    std::swap(index, next_index);
    std::swap(score, next_score);
  }
}

std::tuple<at::Tensor, at::Tensor> patch_match_cpu(const at::Tensor& query, const at::Tensor& key, int64_t k,
                                                   int64_t iters, const c10::optional<at::Tensor>& init,
                                                   int64_t patch_size, at::IntArrayRef jumps, bool random_search,
                                                   int64_t seed) {
  check_search_args(query, key, k, patch_size);
  check_int_in("iters", iters, 0, kMaxIters);
  check_int_in("seed", seed, 0, 0xFFFFFFFFLL);
  for (int64_t step : jumps) check_int_in("jump", step, 1, kMaxStep);
  const at::Tensor query_cl = to_channels_last(query), key_cl = to_channels_last(key);
  const at::Tensor cand = candidates_by_pixel(init, query, key.size(2) * key.size(3));
  at::Tensor index = at::empty({query.size(0), query.size(2), query.size(3), k}, query.options().dtype(at::kInt));
  at::Tensor score = at::empty({query.size(0), query.size(2), query.size(3), k}, query.options());
  const std::vector<int64_t> steps(jumps.begin(), jumps.end());
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "patch_match_cpu", [&] {
    initial_search<scalar_t>(query_cl, key_cl, cand, index, score, k, patch_size, static_cast<uint32_t>(seed));
    search_iterations<scalar_t>(query_cl, key_cl, index, score, k, iters, patch_size, steps, random_search,
                                static_cast<uint32_t>(seed));
  });
  return to_nnf(index, score);
}

at::Tensor nnf_upsample_cpu(const at::Tensor& nnf, at::IntArrayRef coarse_key_size, at::IntArrayRef key_size,
                            at::IntArrayRef query_size, int64_t window, int64_t dilation) {
  TORCH_CHECK_TYPE(nnf.scalar_type() == at::kInt, "nnf: expected int32, got ", nnf.scalar_type());
  TORCH_CHECK_VALUE(nnf.dim() == 4 && nnf.numel() > 0, "nnf: expected a non-empty (B, K, H, W) tensor");
  TORCH_CHECK_VALUE(nnf.size(2) * nnf.size(3) <= kMaxStep, "nnf: too many pixels for int32 indices");
  const MapSize coarse_key = check_size("coarse_key_size", coarse_key_size);
  const MapSize key = check_size("key_size", key_size);
  const MapSize query = check_size("query_size", query_size);
  check_int_in("window", window, 1, kMaxWindow);
  check_int_in("dilation", dilation, 0, kMaxStep / kMaxWindow);
  const MapSize coarse_query = map_size(nnf);
  TORCH_CHECK_VALUE(query.height >= coarse_query.height && query.width >= coarse_query.width,
                    "query_size: must be at least the coarse NNF's size");
  auto [low, high] = at::aminmax(nnf);
  TORCH_CHECK_VALUE(low.item<int>() >= 0 && high.item<int>() < coarse_key.pixels(),
                    "nnf: entries must be flat indices into the coarse key map");
  const at::Tensor coarse = nnf.contiguous();
  const int B = nnf.size(0), K = nnf.size(1), w = window;
  at::Tensor out = at::empty({B, int64_t{K} * w * w, query.height, query.width}, nnf.options());
  const int* in = coarse.data_ptr<int>();
  int* o = out.data_ptr<int>();
  at::parallel_for(0, int64_t{B} * query.pixels(), 256, [&](int64_t begin, int64_t end) {
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      const int b = pixel / query.pixels(), p = pixel % query.pixels();
      upsample_pixel(o + int64_t{b} * K * w * w * query.pixels() + p, query.pixels(),
                     in + int64_t{b} * K * coarse_query.pixels(), K, p / query.width, p % query.width, coarse_query,
                     query, coarse_key, key, w, static_cast<int>(dilation));
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(cocosnet_ops, CPU, m) {
  m.impl("patch_match", &patch_match_cpu);
  m.impl("evaluate_candidates", &evaluate_candidates_cpu);
  m.impl("nnf_upsample", &nnf_upsample_cpu);
}

}  // namespace cocosnet_ops
