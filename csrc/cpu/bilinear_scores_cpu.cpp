// CPU kernel of bilinear_scores: the (patch) scores at K continuous key coordinates per pixel.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

namespace cocosnet_ops {
namespace {

// Pixels per parallel task: each scores K candidates of up to patch_size^2 * 4 inner products.
constexpr int64_t kGrain = 16;

at::Tensor bilinear_scores_cpu(const at::Tensor& query, const at::Tensor& key, const at::Tensor& coords,
                               int64_t patch_size) {
  check_bilinear_scores_args(query, key, coords, patch_size);
  const int B = query.size(0), C = query.size(1), K = coords.size(1), radius = static_cast<int>(patch_size / 2);
  const MapSize qs = map_size(query), ks = map_size(key);
  const at::Tensor q_cl = to_channels_last(query), k_cl = to_channels_last(key);
  const at::Tensor xy = coords.contiguous();
  at::Tensor scores = at::empty({B, K, qs.height, qs.width}, query.options());
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "bilinear_scores_cpu", [&] {
    const scalar_t* q = q_cl.data_ptr<scalar_t>();
    const scalar_t* kf = k_cl.data_ptr<scalar_t>();
    const scalar_t* c = xy.data_ptr<scalar_t>();
    scalar_t* out = scores.data_ptr<scalar_t>();
    at::parallel_for(0, int64_t{B} * qs.pixels(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t pixel = begin; pixel < end; ++pixel) {
        const int64_t b = pixel / qs.pixels(), p = pixel % qs.pixels();
        const scalar_t* query_map = q + b * qs.pixels() * C;
        const scalar_t* key_map = kf + b * ks.pixels() * C;
        for (int i = 0; i < K; ++i) {
          const int64_t at = (b * K + i) * qs.pixels() + p;
          out[at] = bilinear_patch_score(query_map, key_map, C, qs, ks, static_cast<int>(p / qs.width),
                                         static_cast<int>(p % qs.width), c[2 * at], c[2 * at + 1], radius);
        }
      }
    });
  });
  return scores;
}

}  // namespace

TORCH_LIBRARY_IMPL(cocosnet_ops, CPU, m) { m.impl("bilinear_scores", &bilinear_scores_cpu); }

}  // namespace cocosnet_ops
