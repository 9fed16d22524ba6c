// CPU kernels of dense_warp, through the flash-attention CPU kernel (memory linear in the pixel
// count).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

namespace cocosnet_ops {
namespace {

// (B, C, H, W) -> (B, 1, H*W, width): one attention head, zero-padded to `width` features.
// Zero features add nothing to the inner products, and zero values give zero outputs, which is
// how the flash kernel (equal head sizes only) serves value widths other than the feature width.
at::Tensor as_head(const at::Tensor& t, int64_t width) {
  at::Tensor rows = t.flatten(2).transpose(1, 2);
  if (rows.size(2) < width) rows = at::constant_pad_nd(rows, {0, width - rows.size(2)});
  return rows.unsqueeze(1).contiguous();
}

// (B, 1, N, width) -> contiguous (B, C, H, W), dropping the padding.
at::Tensor from_head(const at::Tensor& t, int64_t channels, int64_t height, int64_t width) {
  return t.squeeze(1).narrow(2, 0, channels).transpose(1, 2).reshape({t.size(0), channels, height, width}).contiguous();
}

std::tuple<at::Tensor, at::Tensor> dense_warp_cpu(const at::Tensor& query, const at::Tensor& key,
                                                  const at::Tensor& value, double temperature) {
  check_pair(query, key);
  check_value(value, key);
  check_temperature(temperature);
  const int64_t width = std::max(query.size(1), value.size(1));
  auto [out, logsumexp] = at::_scaled_dot_product_flash_attention_for_cpu(
      as_head(query, width), as_head(key, width), as_head(value, width), 0.0, false, {}, 1.0 / temperature);
  return {from_head(out, value.size(1), query.size(2), query.size(3)), logsumexp};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dense_warp_backward_cpu(const at::Tensor& grad_out,
                                                                       const at::Tensor& query, const at::Tensor& key,
                                                                       const at::Tensor& value, const at::Tensor& out,
                                                                       const at::Tensor& logsumexp,
                                                                       double temperature) {
  check_pair(query, key);
  check_value(value, key);
  check_warp_shaped(grad_out, "grad_out", query, value);
  check_warp_shaped(out, "out", query, value);
  TORCH_CHECK_VALUE(logsumexp.dim() == 3 && logsumexp.size(0) == query.size(0) && logsumexp.size(1) == 1 &&
                        logsumexp.size(2) == query.size(2) * query.size(3),
                    "logsumexp: expected shape (B, 1, Hq * Wq) from dense_warp");
  TORCH_CHECK_TYPE(logsumexp.scalar_type() == query.scalar_type(), "logsumexp: dtype must match query");
  check_temperature(temperature);
  const int64_t width = std::max(query.size(1), value.size(1));
  auto [grad_q, grad_k, grad_v] = at::_scaled_dot_product_flash_attention_for_cpu_backward(
      as_head(grad_out, width), as_head(query, width), as_head(key, width), as_head(value, width),
      as_head(out, width), logsumexp, 0.0, false, {}, 1.0 / temperature);
  return {from_head(grad_q, query.size(1), query.size(2), query.size(3)),
          from_head(grad_k, key.size(1), key.size(2), key.size(3)),
          from_head(grad_v, value.size(1), value.size(2), value.size(3))};
}

}  // namespace

TORCH_LIBRARY_IMPL(cocosnet_ops, CPU, m) {
  m.impl("dense_warp", &dense_warp_cpu);
  m.impl("dense_warp_backward", &dense_warp_backward_cpu);
}

}  // namespace cocosnet_ops
