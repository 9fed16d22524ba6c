// CUDA kernels of weighted_gather and bilinear_weighted_gather, forward and backward.
//
// A group of G lanes (4 to 32, by channel count) works on one query pixel. Each lane takes every
// G-th channel of a row, so a group reads a key or value row in contiguous runs, and a butterfly
// of shuffles sums the lanes' partial inner products; every lane ends with the same sum (each
// addition is commutative), so all lanes of a group see the same logits. The passes are those
// of the per-pixel code in patch_match.h (weighted_gather_pixel, bilinear_gather_pixel and their
// backward), with every loop over channels split across the lanes:
//   1. the K logits (and in the backward the products with grad_out), candidate by candidate;
//   2. the softmax, each lane for every G-th candidate (softmax_inplace, split over lanes);
//   3. the weighted sums of rows (the output, or the query gradient), by channel;
//   4. backward only: the scatter into the key and value gradients, with atomics, unless the
//      deterministic scatter_to_keys_kernel follows.
// Per-candidate values live in shared memory, or in a global buffer when K is too large.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels.h"
#include "launch.cuh"

namespace cocosnet_ops {
namespace cuda {
namespace {

constexpr int kThreads = 128;
// Channels a lane handles in one pass of a weighted sum: rows up to kPerLane * G channels take
// one pass over the candidates.
constexpr int kPerLane = 4;
// Dynamic shared memory a block may use without opting in.
constexpr int64_t kSharedBytes = 48 * 1024;

Error launch_error() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

// Lanes per query pixel: enough for kPerLane channels each of the wider of C and Cv.
int group_size(const GatherDims& d) {
  const int widest = std::max(d.channels, d.value_channels);
  int lanes = 4;
  while (lanes < 32 && lanes * kPerLane < widest) lanes *= 2;
  return lanes;
}

// Values kept per (query pixel, candidate): the logit (then the softmax weight); in the backward
// also <grad_out, value> (then the logit gradient), and for the bilinear backward the four
// coordinate derivatives of the two inner products.
__host__ __device__ constexpr int scratch_slots(bool bilinear, bool backward) {
  return !backward ? 1 : (bilinear ? 6 : 2); }

template <typename T>
int64_t block_scratch_bytes(const GatherDims& d, int lanes, int slots) {
  return int64_t{kThreads / lanes} * d.k * slots * static_cast<int64_t>(sizeof(T));
}

template <int G>
struct LaneGroup {
  int lane;           // 0 .. G - 1
  unsigned int mask;  // this group's lanes within the warp

  __device__ LaneGroup()
      : lane(static_cast<int>(threadIdx.x % G)),
        mask(G == 32 ? 0xffffffffu : ((1u << (G % 32)) - 1u) << (threadIdx.x % 32 / G * G)) {}

  template <typename T>
  __device__ T sum(T value) const {
#pragma unroll
    for (int offset = G / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(mask, value, offset, G);
    return value;
  }

  // Candidate i's per-candidate values are written and read by lane i % G alone, until sync().
  __device__ bool owns(int i) const { return i % G == lane; }

  __device__ void sync() const { __syncwarp(mask); }
};

// The key pixels a candidate reads and their weights: an NNF entry reads one at weight 1, a
// coordinate its four bilinear corners.
template <typename T, bool kBilinear>
struct Taps {
  static constexpr int kCount = kBilinear ? 4 : 1;
  int row[kCount];
  T weight[kCount];
};

// One query pixel's candidates.
template <typename T>
struct Candidates {
  const int* nnf;    // entry 0 of this pixel, stride `stride` (weighted_gather)
  const T* coords;   // (x, y) 0 of this pixel, stride 2 * `stride` (bilinear_weighted_gather)
  int stride;        // query pixels per map
  MapSize ks;

  __device__ int row(int i) const { return clamp_int(__ldg(nnf + int64_t{i} * stride), 0, ks.pixels() - 1); }

  __device__ Bilinear<T> corners(int i) const {
    const T* xy = coords + 2 * (int64_t{i} * stride);
    return Bilinear<T>(__ldg(xy), __ldg(xy + 1), ks);
  }

  template <bool kBilinear>
  __device__ Taps<T, kBilinear> taps(int i) const {
    Taps<T, kBilinear> t;
    if constexpr (kBilinear) {
      const Bilinear<T> b = corners(i);
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        t.row[n] = b.corner[n];
        t.weight[n] = b.weight[n];
      }
    } else {
      t.row[0] = row(i);
      t.weight[0] = T(1);
    }
    return t;
  }
};

// What the passes of one query pixel read.
template <typename T>
struct PixelView {
  int b;            // batch item
  int p;            // flat index within its query map
  const T* query;   // this pixel's features
  const T* keys;    // this batch item's key map
  const T* values;  // this batch item's value map
  Candidates<T> candidates;
};

template <typename T>
__device__ PixelView<T> pixel_view(const GatherDims& d, const GatherInputs<T>& in, int b, int p, int64_t pixel) {
  const int query_pixels = d.qs.pixels(), key_pixels = d.ks.pixels();
  PixelView<T> v;
  v.b = b;
  v.p = p;
  v.query = in.query + pixel * d.channels;
  v.keys = in.key + int64_t{v.b} * key_pixels * d.channels;
  v.values = in.value + int64_t{v.b} * key_pixels * d.value_channels;
  const int64_t first = int64_t{v.b} * d.k * query_pixels + v.p;  // entry (b, 0, p)
  v.candidates = {in.nnf != nullptr ? in.nnf + first : nullptr, in.coords != nullptr ? in.coords + 2 * first : nullptr,
                  query_pixels, d.ks};
  return v;
}

// This group's per-candidate values: `per_pixel` of them, in shared memory or in `global`.
template <typename T, int G>
__device__ T* group_scratch(T* global, int64_t pixel, int per_pixel) {
  COCOSNET_DYNAMIC_SHARED(unsigned char, shared_scratch);
  if (global != nullptr) return global + pixel * per_pixel;
  return reinterpret_cast<T*>(shared_scratch) + static_cast<int>(threadIdx.x / G) * per_pixel;
}

// This lane's share of <a, b> over n channels: every G-th channel, or with kVectors (float rows
// of a multiple of 4 channels, 16-byte aligned) every G-th run of four.
template <int G, bool kVectors, typename T>
__device__ T lane_dot(const T* a, const T* b, int n, int lane) {
  T sum = 0;
  if constexpr (kVectors) {
    static_assert(std::is_same_v<T, float>, "16-byte loads of float rows only");
    const float4* a4 = reinterpret_cast<const float4*>(a);
    const float4* b4 = reinterpret_cast<const float4*>(b);
    // Rolled: rows of up to 4 * G channels, the usual case, take one step (unrolling spilled).
#pragma unroll 1
    for (int c = lane; c < n / 4; c += G) {
      const float4 x = __ldg(a4 + c), y = __ldg(b4 + c);
      sum += (x.x * y.x + x.y * y.y) + (x.z * y.z + x.w * y.w);
    }
  } else {
    for (int c = lane; c < n; c += G) sum += __ldg(a + c) * __ldg(b + c);
  }
  return sum;
}

// softmax_inplace over the group: each lane turns its candidates' logits into softmax weights;
// `top` is the largest logit, which every lane knows.
template <int G, typename T>
__device__ void group_softmax(const LaneGroup<G>& g, T* logits, int k, T top, T temperature) {
  T total = 0;
  for (int i = g.lane; i < k; i += G) {
    logits[i] = exp_of((logits[i] - top) / temperature);
    total += logits[i];
  }
  total = g.sum(total);
  for (int i = g.lane; i < k; i += G) logits[i] /= total;
}

// The running maximum of softmax_inplace: the first logit, then every larger one.
template <typename T>
__device__ T running_max(T top, T logit, int i) {
  return i == 0 || logit > top ? logit : top;
}

// out[c] = sum_i coef[i] * sum_taps weight * rows[row, c] for this lane's channels c, over the
// candidates in order; rows have n channels.
template <bool kBilinear, int G, typename T>
__device__ void weighted_rows(const LaneGroup<G>& g, const Candidates<T>& candidates, const T* coef, int k,
                              const T* rows, int n, T* out) {
  for (int base = 0; base < n; base += G * kPerLane) {
    T acc[kPerLane];
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) acc[r] = 0;
    for (int i = 0; i < k; ++i) {
      const Taps<T, kBilinear> t = candidates.template taps<kBilinear>(i);
      const T ci = coef[i];
#pragma unroll
      for (int tap = 0; tap < t.kCount; ++tap) {
        const T w = ci * t.weight[tap];
        const T* row = rows + int64_t{t.row[tap]} * n;
#pragma unroll
        for (int r = 0; r < kPerLane; ++r) {
          const int c = base + g.lane + r * G;
          if (c < n) acc[r] += w * __ldg(row + c);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) {
      const int c = base + g.lane + r * G;
      if (c < n) out[c] = acc[r];
    }
  }
}

template <typename T, int G, bool kBilinear, bool kVectors>
__global__ void __launch_bounds__(kThreads)
    gather_forward_kernel(GatherDims d, GatherInputs<T> in, T* __restrict__ out, T* scratch) {
  const int b = static_cast<int>(blockIdx.y), p = static_cast<int>(blockIdx.x * (kThreads / G) + threadIdx.x / G);
  if (p >= d.qs.pixels()) return;
  const int64_t pixel = int64_t{b} * d.qs.pixels() + p;
  const LaneGroup<G> g;
  const PixelView<T> v = pixel_view(d, in, b, p, pixel);
  T* weights = group_scratch<T, G>(scratch, pixel, d.k);
  T top = 0;
  for (int i = 0; i < d.k; ++i) {
    T logit;
    if constexpr (kBilinear) {
      const Bilinear<T> b = v.candidates.corners(i);
      T dots[4];
#pragma unroll
      for (int n = 0; n < 4; ++n)
        dots[n] = lane_dot<G, kVectors>(v.query, v.keys + int64_t{b.corner[n]} * d.channels, d.channels, g.lane);
      logit = g.sum(b.blend(dots));
    } else {
      const T* row = v.keys + int64_t{v.candidates.row(i)} * d.channels;
      logit = g.sum(lane_dot<G, kVectors>(v.query, row, d.channels, g.lane));
    }
    if (g.owns(i)) weights[i] = logit;
    top = running_max(top, logit, i);
  }
  group_softmax(g, weights, d.k, top, in.temperature);
  g.sync();
  weighted_rows<kBilinear>(g, v.candidates, weights, d.k, v.values, d.value_channels,
                           out + pixel * d.value_channels);
}

template <typename T, int G, bool kBilinear, bool kVectors>
__global__ void __launch_bounds__(kThreads)
    gather_backward_kernel(GatherDims d, GatherInputs<T> in, const T* __restrict__ grad_out, GatherGrads<T> grads,
                           T* scratch) {
  const int b = static_cast<int>(blockIdx.y), p = static_cast<int>(blockIdx.x * (kThreads / G) + threadIdx.x / G);
  if (p >= d.qs.pixels()) return;
  const int64_t pixel = int64_t{b} * d.qs.pixels() + p;
  const LaneGroup<G> g;
  const PixelView<T> v = pixel_view(d, in, b, p, pixel);
  const int k = d.k;
  T* weights = group_scratch<T, G>(scratch, pixel, scratch_slots(kBilinear, true) * k);
  T* logit_grads = weights + k;
  T* derivatives = weights + 2 * k;  // bilinear: d<query, key>/dx, /dy, d<grad_out, value>/dx, /dy
  const T* go = grad_out + pixel * d.value_channels;
  T top = 0;
  for (int i = 0; i < k; ++i) {
    T logit, value_dot;
    if constexpr (kBilinear) {
      const Bilinear<T> b = v.candidates.corners(i);
      T kd[4], vd[4];
#pragma unroll
      for (int n = 0; n < 4; ++n) {
        kd[n] = lane_dot<G, kVectors>(v.query, v.keys + int64_t{b.corner[n]} * d.channels, d.channels, g.lane);
        vd[n] = lane_dot<G, false>(go, v.values + int64_t{b.corner[n]} * d.value_channels, d.value_channels, g.lane);
      }
      // blend, d_dx and d_dy are linear in the corner products: applied to each lane's share
      // and then summed, they give those of the sums.
      logit = g.sum(b.blend(kd));
      value_dot = g.sum(b.blend(vd));
      const T dkx = g.sum(b.d_dx(kd)), dky = g.sum(b.d_dy(kd));
      const T dvx = g.sum(b.d_dx(vd)), dvy = g.sum(b.d_dy(vd));
      if (g.owns(i)) {
        derivatives[i] = dkx;
        derivatives[k + i] = dky;
        derivatives[2 * k + i] = dvx;
        derivatives[3 * k + i] = dvy;
      }
    } else {
      const int row = v.candidates.row(i);
      logit = g.sum(lane_dot<G, kVectors>(v.query, v.keys + int64_t{row} * d.channels, d.channels, g.lane));
      value_dot =
          g.sum(lane_dot<G, false>(go, v.values + int64_t{row} * d.value_channels, d.value_channels, g.lane));
    }
    if (g.owns(i)) {
      weights[i] = logit;
      logit_grads[i] = value_dot;
    }
    top = running_max(top, logit, i);
  }
  group_softmax(g, weights, k, top, in.temperature);
  T mean_grad = 0;
  for (int i = g.lane; i < k; i += G) mean_grad += weights[i] * logit_grads[i];
  mean_grad = g.sum(mean_grad);
  for (int i = g.lane; i < k; i += G) {
    const T w = weights[i];
    const T logit_grad = w * (logit_grads[i] - mean_grad) / in.temperature;
    logit_grads[i] = logit_grad;
    if constexpr (kBilinear) {
      T* grad_xy = grads.coords + 2 * (int64_t{v.b} * k * d.qs.pixels() + int64_t{i} * d.qs.pixels() + v.p);
      grad_xy[0] = logit_grad * derivatives[i] + w * derivatives[2 * k + i];
      grad_xy[1] = logit_grad * derivatives[k + i] + w * derivatives[3 * k + i];
      if (grads.corners != nullptr) {
        const Bilinear<T> b = v.candidates.corners(i);
#pragma unroll
        for (int n = 0; n < 4; ++n) grads.corners[(pixel * k + i) * 4 + n] = b.corner[n];
      }
    }
    if (grads.coefs != nullptr) {
      grads.coefs[pixel * 2 * k + i] = w;
      grads.coefs[pixel * 2 * k + k + i] = logit_grad;
    }
  }
  g.sync();
  weighted_rows<kBilinear>(g, v.candidates, logit_grads, k, v.keys, d.channels, grads.query + pixel * d.channels);
  if (grads.coefs != nullptr) return;
  T* grad_keys = grads.key + int64_t{v.b} * d.ks.pixels() * d.channels;
  T* grad_values = grads.value + int64_t{v.b} * d.ks.pixels() * d.value_channels;
  for (int i = 0; i < k; ++i) {
    const Taps<T, kBilinear> t = v.candidates.template taps<kBilinear>(i);
#pragma unroll
    for (int tap = 0; tap < t.kCount; ++tap) {
      const T key_coef = logit_grads[i] * t.weight[tap], value_coef = weights[i] * t.weight[tap];
      T* key_row = grad_keys + int64_t{t.row[tap]} * d.channels;
      for (int c = g.lane; c < d.channels; c += G) atomicAdd(key_row + c, key_coef * __ldg(v.query + c));
      T* value_row = grad_values + int64_t{t.row[tap]} * d.value_channels;
      for (int c = g.lane; c < d.value_channels; c += G) atomicAdd(value_row + c, value_coef * __ldg(go + c));
    }
  }
}

// One group per key pixel sums the entries of its run of `order`, in order (the CPU's
// scatter_to_keys): entry e of a batch item is query pixel e / E, candidate (e % E) / taps and,
// bilinear, corner e % 4, with E = K taps entries per query pixel.
template <typename T, int G, bool kBilinear>
__global__ void __launch_bounds__(kThreads)
    scatter_to_keys_kernel(GatherDims d, GatherInputs<T> in, const T* __restrict__ grad_out,
                           const T* __restrict__ coefs, const int64_t* __restrict__ order,
                           const int* __restrict__ segment_start, T* __restrict__ grad_key,
                           T* __restrict__ grad_value) {
  const int b = static_cast<int>(blockIdx.y), q = static_cast<int>(blockIdx.x * (kThreads / G) + threadIdx.x / G);
  const int query_pixels = d.qs.pixels(), key_pixels = d.ks.pixels(), k = d.k;
  if (q >= key_pixels) return;
  const int64_t key_pixel = int64_t{b} * key_pixels + q;
  const LaneGroup<G> g;
  constexpr int kTaps = kBilinear ? 4 : 1;
  const int entries_per_pixel = kTaps * k;
  const int begin = __ldg(segment_start + int64_t{b} * (key_pixels + 1) + q);
  const int end = __ldg(segment_start + int64_t{b} * (key_pixels + 1) + q + 1);
  const int64_t* entries = order + int64_t{b} * query_pixels * entries_per_pixel;
  const int widest = max(d.channels, d.value_channels);
  for (int base = 0; base < widest; base += G * kPerLane) {
    T key_acc[kPerLane], value_acc[kPerLane];
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) key_acc[r] = value_acc[r] = 0;
    for (int j = begin; j < end; ++j) {
      const int e = static_cast<int>(__ldg(entries + j));
      const int p = e / entries_per_pixel;
      const int i = (e - p * entries_per_pixel) / kTaps;
      const int64_t pixel = int64_t{b} * query_pixels + p;
      T weight = 1;
      if constexpr (kBilinear) {
        const T* xy = in.coords + 2 * ((int64_t{b} * k + i) * query_pixels + p);
        const Bilinear<T> corners(__ldg(xy), __ldg(xy + 1), d.ks);
        const int corner = e & 3;
        // Selected, not indexed: a run-time index would put the weights in local memory.
#pragma unroll
        for (int n = 0; n < 4; ++n) weight = n == corner ? corners.weight[n] : weight;
      }
      const T key_coef = __ldg(coefs + pixel * 2 * k + k + i) * weight;
      const T value_coef = __ldg(coefs + pixel * 2 * k + i) * weight;
      const T* query_row = in.query + pixel * d.channels;
      const T* grad_row = grad_out + pixel * d.value_channels;
#pragma unroll
      for (int r = 0; r < kPerLane; ++r) {
        const int c = base + g.lane + r * G;
        if (c < d.channels) key_acc[r] += key_coef * __ldg(query_row + c);
        if (c < d.value_channels) value_acc[r] += value_coef * __ldg(grad_row + c);
      }
    }
#pragma unroll
    for (int r = 0; r < kPerLane; ++r) {
      const int c = base + g.lane + r * G;
      if (c < d.channels) grad_key[key_pixel * d.channels + c] = key_acc[r];
      if (c < d.value_channels) grad_value[key_pixel * d.value_channels + c] = value_acc[r];
    }
  }
}

constexpr const char* kTooManyItems = "the CUDA gathers take at most 65535 batch items";
constexpr const char* kNoScratch = "the gather needs a scratch buffer of gather_scratch_elements() elements";

// One group per pixel of each batch item's map: x over the map, y over the batch (so a kernel
// finds its batch item without a 64-bit division).
template <int G>
bool grid_for(int map_pixels, int batch, dim3& grid) {
  grid = dim3(static_cast<unsigned int>((map_pixels + kThreads / G - 1) / (kThreads / G)),
              static_cast<unsigned int>(batch));
  return batch <= 65535;
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// 16-byte loads of query and key rows: float, rows of a multiple of 4 channels, aligned maps.
template <typename T>
bool vector_rows(const GatherDims& d, const GatherInputs<T>& in) {
  return std::is_same_v<T, float> && d.channels % 4 == 0 && aligned16(in.query) && aligned16(in.key);
}

// Calls launch(bilinear, vectors) with both as std::bool_constant; 16-byte loads for float only.
template <typename T, typename Launch>
void with_variant(bool bilinear, bool vectors, Launch&& launch) {
  using Yes = std::true_type;
  using No = std::false_type;
  if constexpr (std::is_same_v<T, float>) {
    if (vectors) {
      if (bilinear)
        launch(Yes{}, Yes{});
      else
        launch(No{}, Yes{});
      return;
    }
  }
  if (bilinear)
    launch(Yes{}, No{});
  else
    launch(No{}, No{});
}

template <typename T, int G>
Error gather_forward(const GatherDims& d, const GatherInputs<T>& in, T* out, T* scratch, cudaStream_t stream) {
  dim3 blocks;
  if (!grid_for<G>(d.qs.pixels(), d.batch, blocks)) return kTooManyItems;
  const int64_t shared = scratch != nullptr ? 0 : block_scratch_bytes<T>(d, G, scratch_slots(false, false));
  if (shared > kSharedBytes) return kNoScratch;
  with_variant<T>(in.coords != nullptr, vector_rows(d, in), [&](auto bilinear, auto vectors) {
    launch_kernel(gather_forward_kernel<T, G, decltype(bilinear)::value, decltype(vectors)::value>, blocks, kThreads,
                  shared, stream, d, in, out, scratch);
  });
  return launch_error();
}

template <typename T, int G>
Error gather_backward(const GatherDims& d, const GatherInputs<T>& in, const T* grad_out, const GatherGrads<T>& grads,
                      T* scratch, cudaStream_t stream) {
  dim3 blocks;
  if (!grid_for<G>(d.qs.pixels(), d.batch, blocks)) return kTooManyItems;
  const bool bilinear = in.coords != nullptr;
  const int64_t shared = scratch != nullptr ? 0 : block_scratch_bytes<T>(d, G, scratch_slots(bilinear, true));
  if (shared > kSharedBytes) return kNoScratch;
  with_variant<T>(bilinear, vector_rows(d, in), [&](auto bilinear_, auto vectors) {
    launch_kernel(gather_backward_kernel<T, G, decltype(bilinear_)::value, decltype(vectors)::value>, blocks, kThreads,
                  shared, stream, d, in, grad_out, grads, scratch);
  });
  return launch_error();
}

template <typename T, int G>
Error scatter_to_keys(const GatherDims& d, const GatherInputs<T>& in, const T* grad_out, const T* coefs,
                      const int64_t* order, const int* segment_start, T* grad_key, T* grad_value,
                      cudaStream_t stream) {
  dim3 blocks;
  if (!grid_for<G>(d.ks.pixels(), d.batch, blocks)) return kTooManyItems;
  if (in.coords != nullptr)
    launch_kernel(scatter_to_keys_kernel<T, G, true>, blocks, kThreads, 0, stream, d, in, grad_out, coefs, order,
                  segment_start, grad_key, grad_value);
  else
    launch_kernel(scatter_to_keys_kernel<T, G, false>, blocks, kThreads, 0, stream, d, in, grad_out, coefs, order,
                  segment_start, grad_key, grad_value);
  return launch_error();
}

// Calls launch<G>() with the group size for these shapes.
template <typename Launch>
Error with_group_size(const GatherDims& d, Launch&& launch) {
  switch (group_size(d)) {
    case 4:
      return launch(std::integral_constant<int, 4>{});
    case 8:
      return launch(std::integral_constant<int, 8>{});
    case 16:
      return launch(std::integral_constant<int, 16>{});
    default:
      return launch(std::integral_constant<int, 32>{});
  }
}

}  // namespace

template <typename T>
int64_t gather_scratch_elements(const GatherDims& dims, bool bilinear, bool backward) {
  const int slots = scratch_slots(bilinear, backward);
  if (block_scratch_bytes<T>(dims, group_size(dims), slots) <= kSharedBytes) return 0;
  return dims.query_pixels() * dims.k * slots;
}

template <typename T>
Error launch_gather_forward(const GatherDims& dims, const GatherInputs<T>& in, T* out, T* scratch, void* stream) {
  if (dims.query_pixels() == 0) return nullptr;
  return with_group_size(dims, [&](auto lanes) {
    return gather_forward<T, decltype(lanes)::value>(dims, in, out, scratch, static_cast<cudaStream_t>(stream));
  });
}

template <typename T>
Error launch_gather_backward(const GatherDims& dims, const GatherInputs<T>& in, const T* grad_out,
                             const GatherGrads<T>& grads, T* scratch, void* stream) {
  if (dims.query_pixels() == 0) return nullptr;
  return with_group_size(dims, [&](auto lanes) {
    return gather_backward<T, decltype(lanes)::value>(dims, in, grad_out, grads, scratch,
                                                      static_cast<cudaStream_t>(stream));
  });
}

template <typename T>
Error launch_scatter_to_keys(const GatherDims& dims, const GatherInputs<T>& in, const T* grad_out, const T* coefs,
                             const int64_t* order, const int* segment_start, T* grad_key, T* grad_value,
                             void* stream) {
  if (dims.key_pixels() == 0) return nullptr;
  return with_group_size(dims, [&](auto lanes) {
    return scatter_to_keys<T, decltype(lanes)::value>(dims, in, grad_out, coefs, order, segment_start, grad_key,
                                                      grad_value, static_cast<cudaStream_t>(stream));
  });
}

template int64_t gather_scratch_elements<float>(const GatherDims&, bool, bool);
template int64_t gather_scratch_elements<double>(const GatherDims&, bool, bool);
template Error launch_gather_forward<float>(const GatherDims&, const GatherInputs<float>&, float*, float*, void*);
template Error launch_gather_forward<double>(const GatherDims&, const GatherInputs<double>&, double*, double*, void*);
template Error launch_gather_backward<float>(const GatherDims&, const GatherInputs<float>&, const float*,
                                             const GatherGrads<float>&, float*, void*);
template Error launch_gather_backward<double>(const GatherDims&, const GatherInputs<double>&, const double*,
                                              const GatherGrads<double>&, double*, void*);
template Error launch_scatter_to_keys<float>(const GatherDims&, const GatherInputs<float>&, const float*, const float*,
                                             const int64_t*, const int*, float*, float*, void*);
template Error launch_scatter_to_keys<double>(const GatherDims&, const GatherInputs<double>&, const double*,
                                              const double*, const int64_t*, const int*, double*, double*, void*);

}  // namespace cuda
}  // namespace cocosnet_ops
