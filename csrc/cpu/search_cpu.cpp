// CPU kernels of the search ops: patch_match, evaluate_candidates, nnf_upsample.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common.h"

namespace cocosnet_ops {
namespace {

// Pixels per parallel task: each scores dozens of candidates, so small grains balance well.
constexpr int64_t kGrain = 16;

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
                       int k, int iters, int patch_size, at::IntArrayRef jumps, bool random_search,
                       const SearchBound& bound, uint32_t seed) {
  const int B = query_cl.size(0), C = query_cl.size(3);
  const MapSize qs{static_cast<int>(query_cl.size(1)), static_cast<int>(query_cl.size(2))};
  const MapSize ks{static_cast<int>(key_cl.size(1)), static_cast<int>(key_cl.size(2))};
  int radii[kMaxRadii];
  const int num_radii = random_search ? search_radii(ks, radii, bound.max_radius) : 0;
  at::Tensor next_index = at::empty_like(index), next_score = at::empty_like(score);
  const T* q = query_cl.data_ptr<T>();
  const T* kf = key_cl.data_ptr<T>();
  for (int it = 0; it < iters; ++it) {
    const int step = jump_step(jumps, it);
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
                         radii, num_radii, bound.window(pixel, ks), seed, it, static_cast<uint32_t>(p));
      }
    });
    std::swap(index, next_index);
    std::swap(score, next_score);
  }
}

std::tuple<at::Tensor, at::Tensor> patch_match_cpu(const at::Tensor& query, const at::Tensor& key, int64_t k,
                                                   int64_t iters, const c10::optional<at::Tensor>& init,
                                                   int64_t patch_size, at::IntArrayRef jumps, bool random_search,
                                                   int64_t seed, c10::optional<int64_t> max_radius) {
  check_search_args(query, key, k, patch_size);
  check_iteration_args(iters, jumps, seed);
  check_max_radius(max_radius, init);
  const at::Tensor query_cl = to_channels_last(query), key_cl = to_channels_last(key);
  const at::Tensor cand = candidates_by_pixel(init, query, key.size(2) * key.size(3));
  at::Tensor index = at::empty({query.size(0), query.size(2), query.size(3), k}, query.options().dtype(at::kInt));
  at::Tensor score = at::empty({query.size(0), query.size(2), query.size(3), k}, query.options());
  const BoundedInit bounded = search_bound(cand, max_radius, map_size(key));
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "patch_match_cpu", [&] {
    initial_search<scalar_t>(query_cl, key_cl, cand, index, score, k, patch_size, static_cast<uint32_t>(seed));
    search_iterations<scalar_t>(query_cl, key_cl, index, score, k, iters, patch_size, jumps, random_search,
                                bounded.bound, static_cast<uint32_t>(seed));
  });
  return to_nnf(index, score);
}

at::Tensor nnf_upsample_cpu(const at::Tensor& nnf, at::IntArrayRef coarse_key_size, at::IntArrayRef key_size,
                            at::IntArrayRef query_size, int64_t window, int64_t dilation) {
  const UpsampleSizes s = check_upsample_args(nnf, coarse_key_size, key_size, query_size, window, dilation);
  const MapSize coarse_query = s.coarse_query, coarse_key = s.coarse_key, key = s.key, query = s.query;
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
