// The schemas of every cocosnet_ops op, in one place: the library cocosnet_ops (csrc/ops.cpp)
// and the emulated CUDA kernels' cocosnet_ops_emulated (csrc/emulated/module.cpp) define the same.
#pragma once

#include <torch/library.h>

#include <atomic>

#include "cuda/kernels.h"

namespace cocosnet_ops {

// The search-step kernel variant (cuda::SearchVariant bits) that the CUDA patch_match launches
// in this process: the A/B knob of benchmarks/bench_search_variants.py, 0 (the default kernel)
// unless set. Each library (cocosnet_ops, cocosnet_ops_emulated) has its own.
inline std::atomic<int>& search_variant() {
  static std::atomic<int> variant{0};
  return variant;
}

// Sets the variant, returns the previous one. A process setting, not a tensor op: defined with
// its function (no dispatch key), its name starting with an underscore like every such setting.
inline int64_t set_search_variant(int64_t variant) {
  TORCH_CHECK_VALUE(variant >= 0 && variant < cuda::kSearchVariants, "variant: expected search variant bits in [0, ",
                    cuda::kSearchVariants, "), got ", variant);
  return search_variant().exchange(static_cast<int>(variant));
}

inline void define_schemas(torch::Library& m) {
  m.def(
      "patch_match(Tensor query, Tensor key, int k, int iters, Tensor? init, int patch_size, int[] jumps, "
      "bool random_search, int seed, int? max_radius=None) -> (Tensor, Tensor)");
  m.def("evaluate_candidates(Tensor query, Tensor key, Tensor candidates, int k, int patch_size) -> (Tensor, Tensor)");
  m.def(
      "share_matches(Tensor query, Tensor key, Tensor nnf, Tensor scores, Tensor neighbours, int top, int patch_size) "
      "-> (Tensor, Tensor)");
  m.def(
      "nnf_upsample(Tensor nnf, int[] coarse_key_size, int[] key_size, int[] query_size, int window, int dilation) "
      "-> Tensor");
  m.def("exact_knn(Tensor query, Tensor key, int k) -> (Tensor, Tensor)");
  m.def("_set_search_variant(int variant) -> int", &set_search_variant);
  m.def("weighted_gather(Tensor query, Tensor key, Tensor value, Tensor nnf, float temperature) -> Tensor");
  m.def(
      "weighted_gather_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor nnf, "
      "float temperature) -> (Tensor, Tensor, Tensor)");
  m.def("bilinear_weighted_gather(Tensor query, Tensor key, Tensor value, Tensor coords, float temperature) -> Tensor");
  m.def(
      "bilinear_weighted_gather_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor coords, "
      "float temperature) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("bilinear_scores(Tensor query, Tensor key, Tensor coords, int patch_size) -> Tensor");
  m.def("dense_warp(Tensor query, Tensor key, Tensor value, float temperature) -> (Tensor, Tensor)");
  m.def(
      "dense_warp_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor out, Tensor logsumexp, "
      "float temperature) -> (Tensor, Tensor, Tensor)");
}

}  // namespace cocosnet_ops
