// Torch glue of the CUDA search kernels: argument checks, layouts and launches on the current
// stream, registered for the CUDA dispatch key.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "../schemas.h"
#include "cuda_glue.h"

namespace cocosnet_ops {
namespace {

void check_search_args_cuda(const at::Tensor& query, const at::Tensor& key, int64_t k, int64_t patch_size) {
  check_search_args(query, key, k, patch_size);
  check_same_device(key, query, "key");
  TORCH_CHECK_VALUE(k <= cuda::kMaxK, "k: the CUDA search kernels keep at most ", cuda::kMaxK,
                    " matches per pixel, got ", k);
}

bool is_half(const at::Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }

// patch_match reads half-precision features directly; the checks of the float32 ops see float32
// stand-ins of them (on the meta device: shapes only, no copy).
void check_patch_match_features_cuda(const at::Tensor& query, const at::Tensor& key, int64_t k, int64_t patch_size) {
  if (!is_half(query) && !is_half(key)) return check_search_args_cuda(query, key, k, patch_size);
  TORCH_CHECK_TYPE(query.scalar_type() == key.scalar_type(), "key: dtype must match query");
  check_same_device(key, query, "key");
  const auto stand_in = [](const at::Tensor& t) {
    return at::empty(t.sizes(), t.options().dtype(at::kFloat).device(at::kMeta));
  };
  check_search_args_cuda(stand_in(query), stand_in(key), k, patch_size);
}

// Features as the kernels read them: T for float32 and float64, the 16 bits of a half.
template <typename S>
const S* features(const at::Tensor& t) {
  if constexpr (std::is_same_v<S, float> || std::is_same_v<S, double>)
    return t.data_ptr<S>();
  else
    return static_cast<const S*>(t.const_data_ptr());
}

template <typename T, typename S = T>
cuda::SearchArgs<T, S> search_args(const at::Tensor& query_cl, const at::Tensor& key_cl, int64_t k,
                                   int64_t patch_size, int64_t seed) {
  const S* query = features<S>(query_cl);
  const S* key = features<S>(key_cl);
  const int channels = static_cast<int>(query_cl.size(3));
  const auto aligned = [](const S* p) { return reinterpret_cast<uintptr_t>(p) % (4 * sizeof(S)) == 0; };
  return {query,
          key,
          channels,
          {static_cast<int>(query_cl.size(1)), static_cast<int>(query_cl.size(2))},
          {static_cast<int>(key_cl.size(1)), static_cast<int>(key_cl.size(2))},
          static_cast<int>(query_cl.size(0)),
          static_cast<int>(k),
          static_cast<int>(patch_size / 2),
          static_cast<uint32_t>(seed),
          channels % 4 == 0 && aligned(query) && aligned(key)};
}

// The first top-K of every pixel from the given candidates, as (B, Hq, Wq, k) state.
template <typename T, typename S = T>
std::tuple<at::Tensor, at::Tensor> initial_state(const at::Tensor& query_cl, const at::Tensor& key_cl,
                                                 const at::Tensor& candidates, int64_t k, int64_t patch_size,
                                                 int64_t seed, const char* op) {
  const std::vector<int64_t> shape{query_cl.size(0), query_cl.size(1), query_cl.size(2), k};
  at::Tensor index = at::empty(shape, query_cl.options().dtype(at::kInt));
  at::Tensor score = at::empty(shape, query_cl.options().dtype(c10::CppTypeToScalarType<T>::value));
  check_launch(cuda::launch_initial_search(search_args<T, S>(query_cl, key_cl, k, patch_size, seed),
                                           candidates.data_ptr<int>(), static_cast<int>(candidates.size(3)),
                                           index.data_ptr<int>(), score.data_ptr<T>(), current_stream(query_cl)),
               op);
  return {index, score};
}

std::tuple<at::Tensor, at::Tensor> evaluate_candidates_cuda(const at::Tensor& query, const at::Tensor& key,
                                                            const at::Tensor& candidates, int64_t k,
                                                            int64_t patch_size) {
  check_search_args_cuda(query, key, k, patch_size);
  check_same_device(candidates, query, "candidates");
  const c10::DeviceGuard guard(query.device());
  const at::Tensor query_cl = to_channels_last(query), key_cl = to_channels_last(key);
  const at::Tensor cand = candidates_by_pixel(candidates, query, key.size(2) * key.size(3));
  std::tuple<at::Tensor, at::Tensor> state;
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "evaluate_candidates", [&] {
    state = initial_state<scalar_t>(query_cl, key_cl, cand, k, patch_size, 0, "evaluate_candidates");
  });
  return to_nnf(std::get<0>(state), std::get<1>(state));
}

// patch_match's iterations on features stored as S, scores T.
template <typename T, typename S>
std::tuple<at::Tensor, at::Tensor> run_patch_match(const at::Tensor& query_cl, const at::Tensor& key_cl,
                                                   const at::Tensor& cand, int64_t k, int64_t iters,
                                                   int64_t patch_size, at::IntArrayRef jumps, int64_t seed,
                                                   const cuda::Radii& radii, const SearchBound& bound) {
  at::Tensor index, score;
  std::tie(index, score) = initial_state<T, S>(query_cl, key_cl, cand, k, patch_size, seed, "patch_match");
  at::Tensor next_index = at::empty_like(index), next_score = at::empty_like(score);
  const cuda::SearchArgs<T, S> args = search_args<T, S>(query_cl, key_cl, k, patch_size, seed);
  const int variant = search_variant().load();
  void* stream = current_stream(query_cl);
  for (int64_t it = 0; it < iters; ++it) {
    check_launch(cuda::launch_search_step(args, radii, bound, jump_step(jumps, it), static_cast<int>(it),
                                          index.data_ptr<int>(), score.data_ptr<T>(), next_index.data_ptr<int>(),
                                          next_score.data_ptr<T>(), variant, stream),
                 "patch_match");
    std::swap(index, next_index);
    std::swap(score, next_score);
  }
  return to_nnf(index, score);
}

// float16 and bfloat16 features are read as they are (scores float32), without a float32 copy.
std::tuple<at::Tensor, at::Tensor> patch_match_cuda(const at::Tensor& query, const at::Tensor& key, int64_t k,
                                                    int64_t iters, const c10::optional<at::Tensor>& init,
                                                    int64_t patch_size, at::IntArrayRef jumps, bool random_search,
                                                    int64_t seed, c10::optional<int64_t> max_radius) {
  check_patch_match_features_cuda(query, key, k, patch_size);
  check_iteration_args(iters, jumps, seed);
  check_max_radius(max_radius, init);
  if (init.has_value()) check_same_device(*init, query, "init");
  const c10::DeviceGuard guard(query.device());
  const at::Tensor query_cl = to_channels_last(query), key_cl = to_channels_last(key);
  const at::Tensor cand = candidates_by_pixel(init, query, key.size(2) * key.size(3));
  cuda::Radii radii{};
  const BoundedInit bounded = search_bound(cand, max_radius, map_size(key));
  radii.count = random_search ? search_radii(map_size(key), radii.value, bounded.bound.max_radius) : 0;
  const auto run = [&](auto score_type, auto stored_type) {
    using T = decltype(score_type);
    using S = decltype(stored_type);
    return run_patch_match<T, S>(query_cl, key_cl, cand, k, iters, patch_size, jumps, seed, radii, bounded.bound);
  };
  switch (query.scalar_type()) {
    case at::kHalf:
      return run(float{}, cuda::HalfBits{});
    case at::kBFloat16:
      return run(float{}, cuda::BFloat16Bits{});
    case at::kFloat:
      return run(float{}, float{});
    default:
      return run(double{}, double{});
  }
}

std::tuple<at::Tensor, at::Tensor> share_matches_cuda(const at::Tensor& query, const at::Tensor& key,
                                                      const at::Tensor& nnf, const at::Tensor& scores,
                                                      const at::Tensor& neighbours, int64_t top, int64_t patch_size) {
  check_share_args(query, key, nnf, scores, neighbours, top, patch_size);
  check_search_args_cuda(query, key, nnf.size(1), patch_size);
  const c10::DeviceGuard guard(query.device());
  const at::Tensor query_cl = to_channels_last(query), key_cl = to_channels_last(key);
  const at::Tensor nnf_cl = to_channels_last(nnf), score_cl = to_channels_last(scores);
  const at::Tensor neighbours_cl = to_channels_last(neighbours);
  at::Tensor index = at::empty_like(nnf_cl), score = at::empty_like(score_cl);
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "share_matches", [&] {
    check_launch(cuda::launch_share_matches(search_args<scalar_t>(query_cl, key_cl, nnf.size(1), patch_size, 0),
                                            nnf_cl.data_ptr<int>(), score_cl.data_ptr<scalar_t>(),
                                            neighbours_cl.data_ptr<int>(), static_cast<int>(neighbours.size(1)),
                                            static_cast<int>(top), index.data_ptr<int>(), score.data_ptr<scalar_t>(),
                                            current_stream(query)),
                 "share_matches");
  });
  return to_nnf(index, score);
}

at::Tensor nnf_upsample_cuda(const at::Tensor& nnf, at::IntArrayRef coarse_key_size, at::IntArrayRef key_size,
                             at::IntArrayRef query_size, int64_t window, int64_t dilation) {
  const UpsampleSizes s = check_upsample_args(nnf, coarse_key_size, key_size, query_size, window, dilation);
  const c10::DeviceGuard guard(nnf.device());
  const at::Tensor coarse = nnf.contiguous();
  const int64_t B = nnf.size(0), K = nnf.size(1);
  at::Tensor out = at::empty({B, K * window * window, s.query.height, s.query.width}, nnf.options());
  check_launch(cuda::launch_nnf_upsample(coarse.data_ptr<int>(), out.data_ptr<int>(), static_cast<int>(B),
                                         static_cast<int>(K), s.coarse_query, s.query, s.coarse_key, s.key,
                                         static_cast<int>(window), static_cast<int>(dilation), current_stream(nnf)),
               "nnf_upsample");
  return out;
}

at::Tensor bilinear_scores_cuda(const at::Tensor& query, const at::Tensor& key, const at::Tensor& coords,
                                int64_t patch_size) {
  check_bilinear_scores_args(query, key, coords, patch_size);
  check_same_device(key, query, "key");
  check_same_device(coords, query, "coords");
  const c10::DeviceGuard guard(query.device());
  const at::Tensor query_cl = to_channels_last(query), key_cl = to_channels_last(key), xy = coords.contiguous();
  const int64_t B = query.size(0), K = coords.size(1);
  at::Tensor scores = at::empty({B, K, query.size(2), query.size(3)}, query.options());
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "bilinear_scores", [&] {
    check_launch(cuda::launch_bilinear_scores(query_cl.data_ptr<scalar_t>(), key_cl.data_ptr<scalar_t>(),
                                              xy.data_ptr<scalar_t>(), scores.data_ptr<scalar_t>(),
                                              static_cast<int>(B), static_cast<int>(K),
                                              static_cast<int>(query.size(1)), map_size(query), map_size(key),
                                              static_cast<int>(patch_size / 2), current_stream(query)),
                 "bilinear_scores");
  });
  return scores;
}

}  // namespace

COCOSNET_CUDA_KERNELS(m) {
  m.impl("bilinear_scores", &bilinear_scores_cuda);
  m.impl("patch_match", &patch_match_cuda);
  m.impl("evaluate_candidates", &evaluate_candidates_cuda);
  m.impl("share_matches", &share_matches_cuda);
  m.impl("nnf_upsample", &nnf_upsample_cuda);
}

}  // namespace cocosnet_ops
