// Torch glue of the CUDA gathers: argument checks, layouts, scratch buffers, launches on the
// current stream, and the deterministic scatter of the backward, registered for the CUDA key.
//
// The backward adds into the key and value gradients with atomics, unless deterministic
// algorithms are on: then the (query pixel, candidate[, corner]) entries are sorted stably by the
// key pixel they touch, and every key pixel sums its run in entry order, like the CPU kernels.
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cuda_glue.h"

namespace cocosnet_ops {
namespace {

cuda::GatherDims gather_dims(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, int64_t k) {
  return {static_cast<int>(query.size(0)), static_cast<int>(query.size(1)), static_cast<int>(value.size(1)),
          static_cast<int>(k), map_size(query), map_size(key)};
}

// The layouts the kernels read, on the query's device.
struct GatherTensors {
  at::Tensor query, key, value;  // channels-last
  at::Tensor nnf;                // (B, K, Hq, Wq), or undefined
  at::Tensor coords;             // (B, K, Hq, Wq, 2), or undefined

  GatherTensors(const at::Tensor& query_, const at::Tensor& key_, const at::Tensor& value_, const at::Tensor& nnf_,
                const at::Tensor& coords_)
      : query(to_channels_last(query_)),
        key(to_channels_last(key_)),
        value(to_channels_last(value_)),
        nnf(nnf_.defined() ? nnf_.contiguous() : nnf_),
        coords(coords_.defined() ? coords_.contiguous() : coords_) {}

  bool bilinear() const { return coords.defined(); }
  int64_t k() const { return bilinear() ? coords.size(1) : nnf.size(1); }

  template <typename T>
  cuda::GatherInputs<T> inputs(double temperature) const {
    return {query.data_ptr<T>(),
            key.data_ptr<T>(),
            value.data_ptr<T>(),
            nnf.defined() ? nnf.data_ptr<int>() : nullptr,
            coords.defined() ? coords.data_ptr<T>() : nullptr,
            static_cast<T>(temperature)};
  }
};

// The kernels' global scratch when their per-candidate values do not fit in shared memory.
template <typename T>
at::Tensor scratch_buffer(const cuda::GatherDims& dims, bool bilinear, bool backward, const at::Tensor& like) {
  const int64_t elements = cuda::gather_scratch_elements<T>(dims, bilinear, backward);
  return elements > 0 ? at::empty({elements}, like.options()) : at::Tensor();
}

template <typename T>
T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// The checks of both gathers and their backward: the kernels trust these shapes.
void check_gather_args(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                       const at::Tensor& nnf, const at::Tensor& coords, double temperature) {
  check_pair(query, key);
  check_value(value, key);
  check_temperature(temperature);
  check_same_device(key, query, "key");
  check_same_device(value, query, "value");
  if (nnf.defined()) {
    check_index_map(nnf, "nnf", query, key.size(2) * key.size(3));
    check_same_device(nnf, query, "nnf");
  } else {
    check_coords(coords, query);
    check_same_device(coords, query, "coords");
  }
}

void check_grad_out(const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& value) {
  TORCH_CHECK_VALUE(grad_out.sizes() == at::IntArrayRef({query.size(0), value.size(1), query.size(2), query.size(3)}),
                    "grad_out: expected shape (B, Cv, Hq, Wq) of the gather's output, got ", grad_out.sizes());
  TORCH_CHECK_TYPE(grad_out.scalar_type() == query.scalar_type(), "grad_out: dtype must match query");
  check_same_device(grad_out, query, "grad_out");
}

at::Tensor gather_forward(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                          const at::Tensor& nnf, const at::Tensor& coords, double temperature, const char* op) {
  check_gather_args(query, key, value, nnf, coords, temperature);
  const c10::DeviceGuard guard(query.device());
  const GatherTensors t(query, key, value, nnf, coords);
  const cuda::GatherDims dims = gather_dims(query, key, value, t.k());
  at::Tensor out = at::empty({dims.batch, dims.qs.height, dims.qs.width, dims.value_channels}, query.options());
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "gather_cuda", [&] {
    const at::Tensor scratch = scratch_buffer<scalar_t>(dims, t.bilinear(), false, query);
    check_launch(cuda::launch_gather_forward(dims, t.inputs<scalar_t>(temperature), out.data_ptr<scalar_t>(),
                                             data_or_null<scalar_t>(scratch), current_stream(query)),
                 op);
  });
  return from_channels_last(out);
}

// The deterministic scatter: `keys` (B, entries) holds the key pixel of every entry.
template <typename T>
void scatter_to_keys(const cuda::GatherDims& dims, const GatherTensors& t, double temperature,
                     const at::Tensor& grad_out_cl, const at::Tensor& coefs, const at::Tensor& keys,
                     at::Tensor& grad_key, at::Tensor& grad_value, const char* op) {
  // std::optional, or the bool would pick sort(dim, descending).
  const auto [sorted, order] = keys.sort(/*stable=*/std::optional<bool>(true), /*dim=*/1);
  const at::Tensor boundaries = at::arange(int64_t{dims.ks.pixels()} + 1, keys.options()).expand({dims.batch, -1});
  const at::Tensor segment_start = at::searchsorted(sorted, boundaries.contiguous(), /*out_int32=*/true);
  check_launch(cuda::launch_scatter_to_keys(dims, t.inputs<T>(temperature), grad_out_cl.data_ptr<T>(),
                                            coefs.data_ptr<T>(), order.data_ptr<int64_t>(),
                                            segment_start.data_ptr<int>(), grad_key.data_ptr<T>(),
                                            grad_value.data_ptr<T>(), current_stream(grad_key)),
               op);
}

std::vector<at::Tensor> gather_backward(const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key,
                                        const at::Tensor& value, const at::Tensor& nnf, const at::Tensor& coords,
                                        double temperature, const char* op) {
  check_gather_args(query, key, value, nnf, coords, temperature);
  check_grad_out(grad_out, query, value);
  const c10::DeviceGuard guard(query.device());
  const GatherTensors t(query, key, value, nnf, coords);
  const cuda::GatherDims dims = gather_dims(query, key, value, t.k());
  const at::Tensor grad_out_cl = to_channels_last(grad_out);
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  const int taps = t.bilinear() ? 4 : 1;
  TORCH_CHECK(!deterministic || int64_t{dims.qs.pixels()} * dims.k * taps < (int64_t{1} << 31), op,
              ": too many (pixel, candidate) entries per batch item for the deterministic scatter");
  at::Tensor grad_query = at::empty_like(t.query);
  // The atomic scatter adds into zeros; the deterministic one writes every element.
  at::Tensor grad_key = deterministic ? at::empty_like(t.key) : at::zeros_like(t.key);
  at::Tensor grad_value = deterministic ? at::empty_like(t.value) : at::zeros_like(t.value);
  at::Tensor grad_coords = t.bilinear() ? at::empty_like(t.coords) : at::Tensor();
  at::Tensor coefs, corners;
  if (deterministic) {
    coefs = at::empty({dims.batch, dims.qs.pixels(), 2 * dims.k}, query.options());
    if (t.bilinear()) corners = at::empty({dims.batch, dims.qs.pixels() * dims.k * 4}, query.options().dtype(at::kInt));
  }
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "gather_cuda", [&] {
    const at::Tensor scratch = scratch_buffer<scalar_t>(dims, t.bilinear(), true, query);
    const cuda::GatherGrads<scalar_t> grads{grad_query.data_ptr<scalar_t>(), grad_key.data_ptr<scalar_t>(),
                                            grad_value.data_ptr<scalar_t>(), data_or_null<scalar_t>(grad_coords),
                                            data_or_null<scalar_t>(coefs), data_or_null<int>(corners)};
    check_launch(cuda::launch_gather_backward(dims, t.inputs<scalar_t>(temperature), grad_out_cl.data_ptr<scalar_t>(),
                                              grads, data_or_null<scalar_t>(scratch), current_stream(query)),
                 op);
    if (!deterministic) return;
    // Entry e = pixel * K + candidate (weighted) or (pixel * K + candidate) * 4 + corner (bilinear),
    // keyed by the key pixel it reads, clamped into the map as the kernels clamp it.
    const at::Tensor keys =
        t.bilinear() ? corners
                     : t.nnf.clamp(0, dims.ks.pixels() - 1).view({dims.batch, dims.k, dims.qs.pixels()}).transpose(1, 2)
                           .reshape({dims.batch, -1});
    scatter_to_keys<scalar_t>(dims, t, temperature, grad_out_cl, coefs, keys, grad_key, grad_value, op);
  });
  std::vector<at::Tensor> grads{from_channels_last(grad_query), from_channels_last(grad_key),
                                from_channels_last(grad_value)};
  if (t.bilinear()) grads.push_back(grad_coords);
  return grads;
}

at::Tensor weighted_gather_cuda(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                const at::Tensor& nnf, double temperature) {
  return gather_forward(query, key, value, nnf, at::Tensor(), temperature, "weighted_gather");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> weighted_gather_backward_cuda(const at::Tensor& grad_out,
                                                                             const at::Tensor& query,
                                                                             const at::Tensor& key,
                                                                             const at::Tensor& value,
                                                                             const at::Tensor& nnf,
                                                                             double temperature) {
  const auto grads =
      gather_backward(grad_out, query, key, value, nnf, at::Tensor(), temperature, "weighted_gather_backward");
  return {grads[0], grads[1], grads[2]};
}

at::Tensor bilinear_weighted_gather_cuda(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                                         const at::Tensor& coords, double temperature) {
  return gather_forward(query, key, value, at::Tensor(), coords, temperature, "bilinear_weighted_gather");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bilinear_weighted_gather_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const at::Tensor& coords, double temperature) {
  const auto grads = gather_backward(grad_out, query, key, value, at::Tensor(), coords, temperature,
                                     "bilinear_weighted_gather_backward");
  return {grads[0], grads[1], grads[2], grads[3]};
}

}  // namespace

COCOSNET_CUDA_KERNELS(m) {
  m.impl("weighted_gather", &weighted_gather_cuda);
  m.impl("weighted_gather_backward", &weighted_gather_backward_cuda);
  m.impl("bilinear_weighted_gather", &bilinear_weighted_gather_cuda);
  m.impl("bilinear_weighted_gather_backward", &bilinear_weighted_gather_backward_cuda);
}

}  // namespace cocosnet_ops
