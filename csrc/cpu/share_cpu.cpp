// CPU kernel of share_matches: every query pixel's matches compete with its neighbours'.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common.h"

namespace cocosnet_ops {
namespace {

// Pixels per parallel task, as for evaluate_candidates: each scores dozens of candidates.
constexpr int64_t kGrain = 16;
// How many pixels ahead the kernel asks for the neighbours' lists: they lie anywhere in the NNF.
constexpr int kListsAhead = 2;

// One batch item at a time, so that the threads share one key map in the cache.
template <typename T>
void share_matches_kernel(const at::Tensor& query_cl, const at::Tensor& key_cl, const at::Tensor& nnf_cl,
                          const at::Tensor& score_cl, const at::Tensor& neighbours_cl, int top, int patch_size,
                          at::Tensor& index, at::Tensor& score) {
  const int B = query_cl.size(0), C = query_cl.size(3), k = nnf_cl.size(3), M = neighbours_cl.size(3);
  const MapSize qs{static_cast<int>(query_cl.size(1)), static_cast<int>(query_cl.size(2))};
  const MapSize ks{static_cast<int>(key_cl.size(1)), static_cast<int>(key_cl.size(2))};
  for (int b = 0; b < B; ++b) {
    const T* q = query_cl.data_ptr<T>() + int64_t{b} * qs.pixels() * C;
    const T* kf = key_cl.data_ptr<T>() + int64_t{b} * ks.pixels() * C;
    const int* nnf = nnf_cl.data_ptr<int>() + int64_t{b} * qs.pixels() * k;
    const T* own_score = score_cl.data_ptr<T>() + int64_t{b} * qs.pixels() * k;
    const int* neighbours = neighbours_cl.data_ptr<int>() + int64_t{b} * qs.pixels() * M;
    int* idx = index.data_ptr<int>() + int64_t{b} * qs.pixels() * k;
    T* sc = score.data_ptr<T>() + int64_t{b} * qs.pixels() * k;
    at::parallel_for(0, qs.pixels(), kGrain, [&](int64_t begin, int64_t end) {
      std::vector<int> candidates(std::max(M * top, 1));
      for (int64_t p = begin; p < end; ++p) {
        if (p + kListsAhead < end) {
          for (const int* n = neighbours + (p + kListsAhead) * M; n < neighbours + (p + kListsAhead + 1) * M; ++n)
            if (*n >= 0 && *n < qs.pixels()) prefetch_row(nnf + int64_t{*n} * k, top);
        }
        const Scorer<T> scorer{q, kf, C, qs, ks, static_cast<int>(p / qs.width), static_cast<int>(p % qs.width),
                               patch_size / 2};
        TopK<T> list{idx + p * k, sc + p * k, k, 0};
        share_pixel_matches(list, candidates.data(), scorer, nnf, own_score + p * k, neighbours + p * M, M, top,
                            qs.pixels(), static_cast<uint32_t>(p));
      }
    });
  }
}

std::tuple<at::Tensor, at::Tensor> share_matches_cpu(const at::Tensor& query, const at::Tensor& key,
                                                     const at::Tensor& nnf, const at::Tensor& scores,
                                                     const at::Tensor& neighbours, int64_t top, int64_t patch_size) {
  check_share_args(query, key, nnf, scores, neighbours, top, patch_size);
  const at::Tensor query_cl = to_channels_last(query), key_cl = to_channels_last(key);
  const at::Tensor nnf_cl = to_channels_last(nnf), score_cl = to_channels_last(scores);
  const at::Tensor neighbours_cl = to_channels_last(neighbours);
  at::Tensor index = at::empty_like(nnf_cl), score = at::empty_like(score_cl);
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "share_matches_cpu", [&] {
    share_matches_kernel<scalar_t>(query_cl, key_cl, nnf_cl, score_cl, neighbours_cl, static_cast<int>(top),
                                   static_cast<int>(patch_size), index, score);
  });
  return to_nnf(index, score);
}

}  // namespace

TORCH_LIBRARY_IMPL(cocosnet_ops, CPU, m) { m.impl("share_matches", &share_matches_cpu); }

}  // namespace cocosnet_ops
