// CPU kernels of weighted_gather and bilinear_weighted_gather, forward and backward.
//
// The backward scatters into the key and value gradients. Instead of atomics, each batch item's
// (query pixel, candidate) entries are bucketed by the key pixel they touch (a counting sort),
// and every key pixel sums its bucket in entry order: deterministic, whatever the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common.h"

namespace cocosnet_ops {
namespace {

constexpr int64_t kGrain = 64;

// One batch item's scatter: entry e (of query pixel e / entries_per_pixel) adds
// coef_a[e] * src_a[pixel] to out_a[target[e]] and coef_b[e] * src_b[pixel] to out_b[target[e]].
template <typename T>
void scatter_to_keys(const int* target, int64_t entries, int entries_per_pixel, int64_t key_pixels, const T* coef_a,
                     const T* src_a, int channels_a, T* out_a, const T* coef_b, const T* src_b, int channels_b,
                     T* out_b) {
  std::vector<int64_t> start(key_pixels + 1, 0);
  for (int64_t e = 0; e < entries; ++e) ++start[target[e] + 1];
  for (int64_t q = 0; q < key_pixels; ++q) start[q + 1] += start[q];
  std::vector<int64_t> order(entries);
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t e = 0; e < entries; ++e) order[fill[target[e]]++] = e;
  at::parallel_for(0, key_pixels, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) {
      T* a = out_a + q * channels_a;
      T* b = out_b + q * channels_b;
      for (int64_t i = start[q]; i < start[q + 1]; ++i) {
        const int64_t e = order[i], pixel = e / entries_per_pixel;
        const T* sa = src_a + pixel * channels_a;
        const T* sb = src_b + pixel * channels_b;
        for (int c = 0; c < channels_a; ++c) a[c] += coef_a[e] * sa[c];
        for (int c = 0; c < channels_b; ++c) b[c] += coef_b[e] * sb[c];
      }
    }
  });
}

// Shapes of one call, read once.
struct GatherShape {
  int batch, channels, value_channels, k;
  MapSize qs, ks;
  GatherShape(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, int64_t k_)
      : batch(query.size(0)),
        channels(query.size(1)),
        value_channels(value.size(1)),
        k(static_cast<int>(k_)),
        qs(map_size(query)),
        ks(map_size(key)) {}
};

at::Tensor weighted_gather_cpu(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                               const at::Tensor& nnf, double temperature) {
  check_pair(query, key);
  check_value(value, key);
  check_index_map(nnf, "nnf", query, key.size(2) * key.size(3));
  check_temperature(temperature);
  const GatherShape s(query, key, value, nnf.size(1));
  const at::Tensor q_cl = to_channels_last(query), k_cl = to_channels_last(key), v_cl = to_channels_last(value);
  const at::Tensor index = nnf.contiguous();
  at::Tensor out = at::empty({s.batch, s.qs.height, s.qs.width, s.value_channels}, query.options());
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "weighted_gather_cpu", [&] {
    const scalar_t t = static_cast<scalar_t>(temperature);
    at::parallel_for(0, int64_t{s.batch} * s.qs.pixels(), kGrain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> weights(s.k);
      for (int64_t pixel = begin; pixel < end; ++pixel) {
        const int64_t b = pixel / s.qs.pixels(), p = pixel % s.qs.pixels();
        weighted_gather_pixel(out.data_ptr<scalar_t>() + pixel * s.value_channels, weights.data(),
                              q_cl.data_ptr<scalar_t>() + pixel * s.channels,
                              k_cl.data_ptr<scalar_t>() + b * s.ks.pixels() * s.channels,
                              v_cl.data_ptr<scalar_t>() + b * s.ks.pixels() * s.value_channels,
                              index.data_ptr<int>() + b * s.k * s.qs.pixels() + p, s.qs.pixels(), s.k, s.channels,
                              s.value_channels, t);
      }
    });
  });
  return from_channels_last(out);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> weighted_gather_backward_cpu(const at::Tensor& grad_out,
                                                                            const at::Tensor& query,
                                                                            const at::Tensor& key,
                                                                            const at::Tensor& value,
                                                                            const at::Tensor& nnf, double temperature) {
  check_pair(query, key);
  check_value(value, key);
  check_index_map(nnf, "nnf", query, key.size(2) * key.size(3));
  check_warp_shaped(grad_out, "grad_out", query, value);
  check_temperature(temperature);
  const GatherShape s(query, key, value, nnf.size(1));
  const at::Tensor q_cl = to_channels_last(query), k_cl = to_channels_last(key), v_cl = to_channels_last(value);
  const at::Tensor g_cl = to_channels_last(grad_out);
  const at::Tensor index = nnf.contiguous();
  at::Tensor grad_q = at::empty_like(q_cl);
  at::Tensor grad_k = at::zeros_like(k_cl), grad_v = at::zeros_like(v_cl);
  // Per (pixel, candidate): softmax weight, logit gradient and the key index, pixel-major.
  at::Tensor weights = at::empty({s.batch, s.qs.pixels(), s.k}, query.options());
  at::Tensor logit_grads = at::empty_like(weights);
  at::Tensor targets = index.view({s.batch, s.k, s.qs.pixels()}).transpose(1, 2).contiguous();
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "weighted_gather_backward_cpu", [&] {
    const scalar_t t = static_cast<scalar_t>(temperature);
    at::parallel_for(0, int64_t{s.batch} * s.qs.pixels(), kGrain, [&](int64_t begin, int64_t end) {
      for (int64_t pixel = begin; pixel < end; ++pixel) {
        const int64_t b = pixel / s.qs.pixels(), p = pixel % s.qs.pixels();
        weighted_gather_backward_pixel(
            grad_q.data_ptr<scalar_t>() + pixel * s.channels, weights.data_ptr<scalar_t>() + pixel * s.k,
            logit_grads.data_ptr<scalar_t>() + pixel * s.k, g_cl.data_ptr<scalar_t>() + pixel * s.value_channels,
            q_cl.data_ptr<scalar_t>() + pixel * s.channels, k_cl.data_ptr<scalar_t>() + b * s.ks.pixels() * s.channels,
            v_cl.data_ptr<scalar_t>() + b * s.ks.pixels() * s.value_channels,
            index.data_ptr<int>() + b * s.k * s.qs.pixels() + p, s.qs.pixels(), s.k, s.channels, s.value_channels,
            t);
      }
    });
    const int64_t entries = int64_t{s.qs.pixels()} * s.k;
    for (int64_t b = 0; b < s.batch; ++b) {
      scatter_to_keys(targets.data_ptr<int>() + b * entries, entries, s.k, s.ks.pixels(),
                      logit_grads.data_ptr<scalar_t>() + b * entries,
                      q_cl.data_ptr<scalar_t>() + b * s.qs.pixels() * s.channels, s.channels,
                      grad_k.data_ptr<scalar_t>() + b * s.ks.pixels() * s.channels,
                      weights.data_ptr<scalar_t>() + b * entries,
                      g_cl.data_ptr<scalar_t>() + b * s.qs.pixels() * s.value_channels, s.value_channels,
                      grad_v.data_ptr<scalar_t>() + b * s.ks.pixels() * s.value_channels);
    }
  });
  return {from_channels_last(grad_q), from_channels_last(grad_k), from_channels_last(grad_v)};
}

at::Tensor bilinear_weighted_gather_cpu(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                        const at::Tensor& coords, double temperature) {
  check_pair(query, key);
  check_value(value, key);
  check_coords(coords, query);
  check_temperature(temperature);
  const GatherShape s(query, key, value, coords.size(1));
  const at::Tensor q_cl = to_channels_last(query), k_cl = to_channels_last(key), v_cl = to_channels_last(value);
  const at::Tensor xy = coords.contiguous();
  at::Tensor out = at::empty({s.batch, s.qs.height, s.qs.width, s.value_channels}, query.options());
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "bilinear_weighted_gather_cpu", [&] {
    const scalar_t t = static_cast<scalar_t>(temperature);
    at::parallel_for(0, int64_t{s.batch} * s.qs.pixels(), kGrain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> weights(s.k);
      for (int64_t pixel = begin; pixel < end; ++pixel) {
        const int64_t b = pixel / s.qs.pixels(), p = pixel % s.qs.pixels();
        bilinear_gather_pixel(out.data_ptr<scalar_t>() + pixel * s.value_channels, weights.data(),
                              q_cl.data_ptr<scalar_t>() + pixel * s.channels,
                              k_cl.data_ptr<scalar_t>() + b * s.ks.pixels() * s.channels,
                              v_cl.data_ptr<scalar_t>() + b * s.ks.pixels() * s.value_channels,
                              xy.data_ptr<scalar_t>() + (b * s.k * s.qs.pixels() + p) * 2, s.qs.pixels() * 2, s.k,
                              s.ks, s.channels, s.value_channels, t);
      }
    });
  });
  return from_channels_last(out);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bilinear_weighted_gather_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& coords, double temperature) {
  check_pair(query, key);
  check_value(value, key);
  check_coords(coords, query);
  check_warp_shaped(grad_out, "grad_out", query, value);
  check_temperature(temperature);
  const GatherShape s(query, key, value, coords.size(1));
  const at::Tensor q_cl = to_channels_last(query), k_cl = to_channels_last(key), v_cl = to_channels_last(value);
  const at::Tensor g_cl = to_channels_last(grad_out);
  const at::Tensor xy = coords.contiguous();
  at::Tensor grad_q = at::empty_like(q_cl);
  at::Tensor grad_k = at::zeros_like(k_cl), grad_v = at::zeros_like(v_cl);
  at::Tensor grad_xy = at::empty_like(xy);
  // Per (pixel, candidate, corner): scatter coefficients and key index, pixel-major.
  const int entries_per_pixel = 4 * s.k;
  at::Tensor key_coef = at::empty({s.batch, s.qs.pixels(), entries_per_pixel}, query.options());
  at::Tensor value_coef = at::empty_like(key_coef);
  at::Tensor corners = at::empty({s.batch, s.qs.pixels(), entries_per_pixel}, query.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "bilinear_weighted_gather_backward_cpu", [&] {
    const scalar_t t = static_cast<scalar_t>(temperature);
    at::parallel_for(0, int64_t{s.batch} * s.qs.pixels(), kGrain, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> weights(s.k);
      for (int64_t pixel = begin; pixel < end; ++pixel) {
        const int64_t b = pixel / s.qs.pixels(), p = pixel % s.qs.pixels();
        const int64_t xy_offset = (b * s.k * s.qs.pixels() + p) * 2;
        bilinear_gather_backward_pixel(
            grad_q.data_ptr<scalar_t>() + pixel * s.channels, grad_xy.data_ptr<scalar_t>() + xy_offset,
            s.qs.pixels() * 2, weights.data(), key_coef.data_ptr<scalar_t>() + pixel * entries_per_pixel,
            value_coef.data_ptr<scalar_t>() + pixel * entries_per_pixel,
            corners.data_ptr<int>() + pixel * entries_per_pixel, g_cl.data_ptr<scalar_t>() + pixel * s.value_channels,
            q_cl.data_ptr<scalar_t>() + pixel * s.channels, k_cl.data_ptr<scalar_t>() + b * s.ks.pixels() * s.channels,
            v_cl.data_ptr<scalar_t>() + b * s.ks.pixels() * s.value_channels, xy.data_ptr<scalar_t>() + xy_offset,
            s.qs.pixels() * 2, s.k, s.ks, s.channels, s.value_channels, t);
      }
    });
    const int64_t entries = int64_t{s.qs.pixels()} * entries_per_pixel;
    for (int64_t b = 0; b < s.batch; ++b) {
      scatter_to_keys(corners.data_ptr<int>() + b * entries, entries, entries_per_pixel, s.ks.pixels(),
                      key_coef.data_ptr<scalar_t>() + b * entries,
                      q_cl.data_ptr<scalar_t>() + b * s.qs.pixels() * s.channels, s.channels,
                      grad_k.data_ptr<scalar_t>() + b * s.ks.pixels() * s.channels,
                      value_coef.data_ptr<scalar_t>() + b * entries,
                      g_cl.data_ptr<scalar_t>() + b * s.qs.pixels() * s.value_channels, s.value_channels,
                      grad_v.data_ptr<scalar_t>() + b * s.ks.pixels() * s.value_channels);
    }
  });
  return {from_channels_last(grad_q), from_channels_last(grad_k), from_channels_last(grad_v), grad_xy};
}

}  // namespace

TORCH_LIBRARY_IMPL(cocosnet_ops, CPU, m) {
  m.impl("weighted_gather", &weighted_gather_cpu);
  m.impl("weighted_gather_backward", &weighted_gather_backward_cpu);
  m.impl("bilinear_weighted_gather", &bilinear_weighted_gather_cpu);
  m.impl("bilinear_weighted_gather_backward", &bilinear_weighted_gather_backward_cpu);
}

}  // namespace cocosnet_ops
