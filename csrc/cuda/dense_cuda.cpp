// CUDA versions of the all-pairs ops, from ATen ops the dispatcher sends to the GPU:
//  * dense_warp through the memory-efficient attention kernel (float32; memory linear in the
//    pixel count), and an exact chunked softmax for float64, which that kernel lacks;
//  * exact_knn as a matmul and a top-k per chunk of query pixels.
#include <torch/library.h>

#include <limits>

#include "cuda_glue.h"

namespace cocosnet_ops {
namespace {

// Head sizes are padded to a multiple of this: the float32 kernels of memory-efficient
// attention need rows of a multiple of 4 elements (16 bytes) on sm80 and later.
constexpr int64_t kHeadAlignment = 8;
// The efficient-attention forward pads its logsumexp along the queries to a multiple of 32,
// with +inf, and its backward may read that far.
constexpr int64_t kLogsumexpAlignment = 32;
// Entries of a (rows, key pixels) block the chunked ops hold at once: 2^24, 128 MiB in float64.
constexpr int64_t kChunkEntries = int64_t{1} << 24;

int64_t round_up(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// (B, C, H, W) -> (B, 1, H*W, width): one attention head, zero-padded to `width` features. Zero
// features add nothing to the inner products, and zero values give zero outputs.
at::Tensor as_head(const at::Tensor& t, int64_t width) {
  at::Tensor rows = t.flatten(2).transpose(1, 2);
  if (rows.size(2) < width) rows = at::constant_pad_nd(rows, {0, width - rows.size(2)});
  return rows.unsqueeze(1).contiguous();
}

// (B, 1, N, width) -> contiguous (B, C, H, W), dropping the padding.
at::Tensor from_head(const at::Tensor& t, int64_t channels, int64_t height, int64_t width) {
  return t.squeeze(1).narrow(2, 0, channels).transpose(1, 2).reshape({t.size(0), channels, height, width}).contiguous();
}

// (B, C, H, W) -> (B, H*W, C) rows of pixels.
at::Tensor pixel_rows(const at::Tensor& t) { return t.flatten(2).transpose(1, 2); }

at::Tensor from_rows(const at::Tensor& rows, const at::Tensor& like) {
  return rows.transpose(1, 2).reshape({like.size(0), rows.size(2), like.size(2), like.size(3)}).contiguous();
}

// Query pixels per chunk so that a (B, rows, key pixels) block holds about kChunkEntries.
int64_t chunk_rows(int64_t batch, int64_t key_pixels) {
  return std::max<int64_t>(1, kChunkEntries / std::max<int64_t>(1, batch * key_pixels));
}

// The exact softmax warp in chunks of query pixels, for float64: (out, logsumexp (B, 1, Nq)).
std::tuple<at::Tensor, at::Tensor> dense_warp_chunked(const at::Tensor& query, const at::Tensor& key,
                                                      const at::Tensor& value, double temperature) {
  const at::Tensor q = pixel_rows(query), keys = key.flatten(2), values = pixel_rows(value);
  const int64_t n = q.size(1), chunk = chunk_rows(q.size(0), keys.size(2));
  at::Tensor out = at::empty({q.size(0), n, values.size(2)}, query.options());
  at::Tensor logsumexp = at::empty({q.size(0), n}, query.options());
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t rows = std::min(chunk, n - start);
    const at::Tensor logits = at::matmul(q.narrow(1, start, rows), keys).mul_(1.0 / temperature);
    const at::Tensor lse = at::logsumexp(logits, {2});
    out.narrow(1, start, rows).copy_(at::matmul(logits.sub_(lse.unsqueeze(2)).exp_(), values));
    logsumexp.narrow(1, start, rows).copy_(lse);
  }
  return {from_rows(out, query), logsumexp.unsqueeze(1)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dense_warp_backward_chunked(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& out, const at::Tensor& logsumexp, double temperature) {
  const at::Tensor q = pixel_rows(query), k = pixel_rows(key), v = pixel_rows(value);
  const at::Tensor g = pixel_rows(grad_out), o = pixel_rows(out), lse = logsumexp.squeeze(1);
  const double scale = 1.0 / temperature;
  const int64_t n = q.size(1), chunk = chunk_rows(q.size(0), k.size(1));
  at::Tensor grad_q = at::empty_like(q);
  at::Tensor grad_k = at::zeros_like(k), grad_v = at::zeros_like(v);
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t rows = std::min(chunk, n - start);
    const at::Tensor qc = q.narrow(1, start, rows), gc = g.narrow(1, start, rows);
    // p = softmax rows, dS = p * (dP - rowsum(dO * O)) with dP = dO V^T.
    const at::Tensor p =
        at::matmul(qc, k.transpose(1, 2)).mul_(scale).sub_(lse.narrow(1, start, rows).unsqueeze(2)).exp_();
    const at::Tensor delta = (gc * o.narrow(1, start, rows)).sum(2, /*keepdim=*/true);
    const at::Tensor ds = at::matmul(gc, v.transpose(1, 2)).sub_(delta).mul_(p);
    grad_q.narrow(1, start, rows).copy_(at::matmul(ds, k).mul_(scale));
    grad_k.add_(at::matmul(ds.transpose(1, 2), qc), scale);
    grad_v.add_(at::matmul(p.transpose(1, 2), gc));
  }
  return {from_rows(grad_q, query), from_rows(grad_k, key), from_rows(grad_v, value)};
}

void check_dense_args(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                      double temperature) {
  check_pair(query, key);
  check_value(value, key);
  check_temperature(temperature);
  check_same_device(key, query, "key");
  check_same_device(value, query, "value");
}

std::tuple<at::Tensor, at::Tensor> dense_warp_cuda(const at::Tensor& query, const at::Tensor& key,
                                                   const at::Tensor& value, double temperature) {
  check_dense_args(query, key, value, temperature);
  const c10::DeviceGuard guard(query.device());
  if (query.scalar_type() == at::kDouble) return dense_warp_chunked(query, key, value, temperature);
  const int64_t features = round_up(query.size(1), kHeadAlignment), values = round_up(value.size(1), kHeadAlignment);
  const auto [out, logsumexp, seed, offset] = at::_scaled_dot_product_efficient_attention(
      as_head(query, features), as_head(key, features), as_head(value, values), /*attn_bias=*/{},
      /*compute_log_sumexp=*/true, /*dropout_p=*/0.0, /*is_causal=*/false, /*scale=*/1.0 / temperature);
  const int64_t n = query.size(2) * query.size(3);
  return {from_head(out, value.size(1), query.size(2), query.size(3)), logsumexp.narrow(2, 0, n).contiguous()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dense_warp_backward_cuda(const at::Tensor& grad_out,
                                                                        const at::Tensor& query,
                                                                        const at::Tensor& key,
                                                                        const at::Tensor& value,
                                                                        const at::Tensor& out,
                                                                        const at::Tensor& logsumexp,
                                                                        double temperature) {
  check_dense_args(query, key, value, temperature);
  const int64_t n = query.size(2) * query.size(3);
  TORCH_CHECK_VALUE(logsumexp.dim() == 3 && logsumexp.size(0) == query.size(0) && logsumexp.size(1) == 1 &&
                        logsumexp.size(2) == n,
                    "logsumexp: expected shape (B, 1, Hq * Wq) from dense_warp, got ", logsumexp.sizes());
  const c10::DeviceGuard guard(query.device());
  if (query.scalar_type() == at::kDouble)
    return dense_warp_backward_chunked(grad_out, query, key, value, out, logsumexp, temperature);
  const int64_t features = round_up(query.size(1), kHeadAlignment), values = round_up(value.size(1), kHeadAlignment);
  const at::Tensor padded_logsumexp =
      at::constant_pad_nd(logsumexp.to(at::kFloat), {0, round_up(n, kLogsumexpAlignment) - n},
                          std::numeric_limits<double>::infinity());
  // No dropout: the random-state tensors are not read, and are CPU scalars as the forward makes them.
  const at::Tensor unused_seed = at::empty({}, at::TensorOptions().dtype(at::kLong));
  const auto [grad_q, grad_k, grad_v, grad_bias] = at::_scaled_dot_product_efficient_attention_backward(
      as_head(grad_out, values), as_head(query, features), as_head(key, features), as_head(value, values),
      /*attn_bias=*/at::Tensor(), as_head(out, values), padded_logsumexp, unused_seed, unused_seed,
      /*dropout_p=*/0.0, /*grad_input_mask=*/{true, true, true, false}, /*is_causal=*/false,
      /*scale=*/1.0 / temperature);
  return {from_head(grad_q, query.size(1), query.size(2), query.size(3)),
          from_head(grad_k, key.size(1), key.size(2), key.size(3)),
          from_head(grad_v, value.size(1), value.size(2), value.size(3))};
}

// (rows, N) logits, NaN already -inf and -0 already +0 -> their k best as (rows, k) indices,
// score descending and ties to the lower index. float32: one top-k over int64 keys that order
// like (score, -index), so no two are equal and none is left to break; float64 scores do not
// fit such a key, so their rows are sorted stably.
at::Tensor topk_indices(const at::Tensor& logits, int64_t k) {
  if (logits.scalar_type() == at::kDouble)
    return std::get<1>(logits.sort(/*stable=*/std::optional<bool>(true), /*dim=*/1, /*descending=*/true)).narrow(1, 0, k);
  at::Tensor bits = logits.view(at::kInt).to(at::kLong);
  // IEEE floats order as their bit patterns once the magnitude bits of negative ones are flipped.
  bits = at::where(bits.lt(0), bits.bitwise_xor(0x7fffffff), bits);
  const int64_t n = logits.size(1);
  const at::Tensor lower_index_first = at::arange(n - 1, -1, -1, logits.options().dtype(at::kLong));
  return std::get<1>(at::topk(bits.mul_(int64_t{1} << 32).add_(lower_index_first), k, 1, true, true));
}

std::tuple<at::Tensor, at::Tensor> exact_knn_cuda(const at::Tensor& query, const at::Tensor& key, int64_t k) {
  check_pair(query, key);
  check_same_device(key, query, "key");
  const int64_t B = query.size(0), Nq = query.size(2) * query.size(3), Nk = key.size(2) * key.size(3);
  TORCH_CHECK_VALUE(k >= 1 && k <= Nk, "k: expected 1 <= k <= key pixels, got ", k);
  const c10::DeviceGuard guard(query.device());
  const at::Tensor rows = pixel_rows(query);  // (B, Nq, C)
  const at::Tensor keys = key.flatten(2);     // (B, C, Nk)
  at::Tensor index = at::empty({B, Nq, k}, query.options().dtype(at::kLong));
  at::Tensor score = at::empty({B, Nq, k}, query.options());
  const int64_t chunk = chunk_rows(1, Nk);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t start = 0; start < Nq; start += chunk) {
      const int64_t n = std::min(chunk, Nq - start);
      at::Tensor logits = at::matmul(rows[b].narrow(0, start, n), keys[b]);
      // The reference's order: NaN ranks as -inf, and -0 ties with +0.
      logits.masked_fill_(logits.isnan(), -std::numeric_limits<double>::infinity());
      logits.masked_fill_(logits.eq(0), 0.0);
      const at::Tensor best = topk_indices(logits, k);
      index[b].narrow(0, start, n).copy_(best);
      score[b].narrow(0, start, n).copy_(logits.gather(1, best));
    }
  }
  const auto shape = std::vector<int64_t>{B, k, query.size(2), query.size(3)};
  return {index.transpose(1, 2).to(at::kInt).reshape(shape).contiguous(),
          score.transpose(1, 2).reshape(shape).contiguous()};
}

}  // namespace

TORCH_LIBRARY_IMPL(cocosnet_ops, CUDA, m) {
  m.impl("dense_warp", &dense_warp_cuda);
  m.impl("dense_warp_backward", &dense_warp_backward_cuda);
  m.impl("exact_knn", &exact_knn_cuda);
}

}  // namespace cocosnet_ops
