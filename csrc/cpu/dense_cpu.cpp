// CPU kernels of the all-pairs ops: dense_warp (through the flash-attention CPU kernel, memory
// linear in the pixel count) and exact_knn (chunked matmul + top-k).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common.h"

namespace cocosnet_ops {
namespace {

// Logits held at once by exact_knn: 2^26 entries, 256 MiB in float32.
constexpr int64_t kKnnChunkEntries = int64_t{1} << 26;

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

// Rows of (n, N) logits -> their k best (score descending, index ascending), as (n, k) each.
std::tuple<at::Tensor, at::Tensor> topk_rows(const at::Tensor& logits, int64_t k) {
  auto [values, index] = at::topk(logits, k, 1, true, true);
  // topk leaves the order of equal scores open; fix it, and take every row whose k-th score is
  // tied with a score outside the top k through a full stable sort.
  const at::Tensor kth = values.narrow(1, k - 1, 1);
  const at::Tensor tied_rows = (logits >= kth).sum(1).gt(k).nonzero().squeeze(1);
  at::Tensor by_index = index.argsort(/*stable=*/false, 1);
  index = index.gather(1, by_index);
  values = values.gather(1, by_index);
  const at::Tensor by_score = values.argsort(/*stable=*/true, 1, /*descending=*/true);
  index = index.gather(1, by_score);
  values = values.gather(1, by_score);
  if (tied_rows.numel() > 0) {
    auto [sorted, order] = logits.index_select(0, tied_rows).sort(/*stable=*/true, 1, /*descending=*/true);
    values.index_copy_(0, tied_rows, sorted.narrow(1, 0, k));
    index.index_copy_(0, tied_rows, order.narrow(1, 0, k));
  }
  return {index, values};
}

std::tuple<at::Tensor, at::Tensor> exact_knn_cpu(const at::Tensor& query, const at::Tensor& key, int64_t k) {
  check_pair(query, key);
  const int64_t B = query.size(0), Nq = query.size(2) * query.size(3), Nk = key.size(2) * key.size(3);
  TORCH_CHECK_VALUE(k >= 1 && k <= Nk, "k: expected 1 <= k <= key pixels, got ", k);
  const at::Tensor rows = query.flatten(2).transpose(1, 2);  // (B, Nq, C)
  const at::Tensor keys = key.flatten(2);                     // (B, C, Nk)
  at::Tensor index = at::empty({B, Nq, k}, query.options().dtype(at::kLong));
  at::Tensor score = at::empty({B, Nq, k}, query.options());
  const int64_t chunk = std::max<int64_t>(1, kKnnChunkEntries / Nk);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t start = 0; start < Nq; start += chunk) {
      const int64_t n = std::min(chunk, Nq - start);
      at::Tensor logits = at::matmul(rows[b].narrow(0, start, n), keys[b]);
      logits.masked_fill_(logits.isnan(), -std::numeric_limits<double>::infinity());
      auto [chunk_index, chunk_score] = topk_rows(logits, k);
      index[b].narrow(0, start, n).copy_(chunk_index);
      score[b].narrow(0, start, n).copy_(chunk_score);
    }
  }
  const auto shape = std::vector<int64_t>{B, k, query.size(2), query.size(3)};
  return {index.transpose(1, 2).to(at::kInt).reshape(shape).contiguous(),
          score.transpose(1, 2).reshape(shape).contiguous()};
}

}  // namespace

TORCH_LIBRARY_IMPL(cocosnet_ops, CPU, m) {
  m.impl("dense_warp", &dense_warp_cpu);
  m.impl("dense_warp_backward", &dense_warp_backward_cpu);
  m.impl("exact_knn", &exact_knn_cpu);
}

}  // namespace cocosnet_ops
