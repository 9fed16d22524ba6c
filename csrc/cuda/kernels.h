// Launchers of the CUDA kernels: plain C++ declarations shared by the .cu files (compiled by
// nvcc, CUDA headers only) and the torch glue (compiled by the host compiler, c10 APIs only).
// Every launcher takes raw pointers and the stream as void*, enqueues its kernels there and
// returns nullptr, or the CUDA error message of a failed launch.
#pragma once

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#include <cuda_fp16.h>
#endif

#include "../patch_match.h"

namespace cocosnet_ops {
namespace cuda {

using Error = const char*;

// The largest k the search kernels keep per pixel: their top-K lists are fixed-size arrays,
// one template instance per bound (8, 16, 32, 64).
constexpr int kMaxK = 64;

// Half-precision feature maps as the search kernels read them: the 16 bits of an IEEE half
// (torch.float16) or of a bfloat16 (torch.bfloat16), converted to float32 for every product
// (exactly: both widen without rounding), so the scores accumulate in float32.
struct HalfBits {
  uint16_t bits;
};
struct BFloat16Bits {
  uint16_t bits;
};

HOST_DEVICE float widen(float x) { return x; }
HOST_DEVICE double widen(double x) { return x; }
HOST_DEVICE float widen(BFloat16Bits x) {
  const uint32_t bits = uint32_t{x.bits} << 16;
  float out;
  memcpy(&out, &bits, sizeof out);
  return out;
}
HOST_DEVICE float widen(HalfBits x) {
#ifdef __CUDA_ARCH__
  return __half2float(__ushort_as_half(x.bits));
#else
  const uint32_t sign = uint32_t{x.bits & 0x8000u} << 16;
  const uint32_t exponent = (x.bits >> 10) & 0x1fu, mantissa = x.bits & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1fu) {
    bits = sign | 0x7f800000u | (mantissa << 13);  // inf, NaN
  } else if (exponent == 0) {
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;  // subnormal: m * 2^-24
    memcpy(&bits, &magnitude, sizeof bits);
    bits |= sign;
  } else {
    bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
  }
  float out;
  memcpy(&out, &bits, sizeof out);
  return out;
#endif
}

// What every search kernel needs: channels-last features of the whole batch and the shapes.
// Scores are T; the features are stored as S: T itself, or, with T = float, HalfBits or
// BFloat16Bits (patch_match on half-precision features, read without a float32 copy).
template <typename T, typename S = T>
struct SearchArgs {
  const S* query;  // (B, Hq, Wq, C)
  const S* key;    // (B, Hk, Wk, C)
  int channels;
  MapSize qs;
  MapSize ks;
  int batch;
  int k;
  int radius;  // patch_size / 2
  uint32_t seed;
  // Rows are read four channels per load: channels a multiple of 4 and both maps aligned to
  // 4 * sizeof(S) bytes.
  bool vector_rows;

  HOST_DEVICE int64_t pixels() const { return int64_t{batch} * qs.pixels(); }
};

// Variants of the search-step kernel, as bits: benchmarks/bench_search_variants.py times them
// against the default (0) on a GPU, and each stays a variant until such a run measures it
// faster. Every variant returns the default kernel's results bit for bit. They are built for
// float32 features and k in 9..16 (the list bound the benchmarks use); other calls run the default.
enum SearchVariant : int {
  kCoalescedLists = 1,    // a neighbour's k matches read by the lane group in one load each 8, passed by shuffle
  kPipelinedRows = 2,     // a candidate's key row requested when it is proposed, reduced at the next proposal
  kBoundedRegisters = 4,  // __launch_bounds__ asking for 8 blocks per SM: at most 64 registers a thread
  kSplitLists = 8,        // the top-K list split across the lane group (2 entries a lane) instead of copied
};
constexpr int kSearchVariants = 16;  // every combination of the bits

// The random-search radii, by value: kernel arguments need a fixed size.
struct Radii {
  int value[kMaxRadii];
  int count;
};

// The first top-K of every pixel from `count` candidates each ((B, Hq, Wq, count), < 0 for
// none), topped up at random; writes (B, Hq, Wq, k) indices and scores.
template <typename T, typename S>
Error launch_initial_search(const SearchArgs<T, S>& args, const int* candidates, int count, int* index, T* score,
                            void* stream);

// One double-buffered PatchMatch iteration: reads (previous_index, previous_score), writes
// (index, score), all (B, Hq, Wq, k). `bound` (max_radius) reads its init candidates on the device.
// `variant`: SearchVariant bits, in [0, kSearchVariants).
template <typename T, typename S>
Error launch_search_step(const SearchArgs<T, S>& args, const Radii& radii, const SearchBound& bound, int step,
                         int iteration, const int* previous_index, const T* previous_score, int* index, T* score,
                         int variant, void* stream);

// share_matches: every pixel's own matches `nnf` (B, Hq, Wq, k) with their scores `own_score`
// compete with the first `top` matches of its `count` neighbours (B, Hq, Wq, count); writes
// (B, Hq, Wq, k) indices and scores.
template <typename T>
Error launch_share_matches(const SearchArgs<T>& args, const int* nnf, const T* own_score, const int* neighbours,
                           int count, int top, int* index, T* score, void* stream);

// nnf_upsample: `coarse` (B, K, coarse query pixels) -> `out` (B, K * window^2, query pixels).
Error launch_nnf_upsample(const int* coarse, int* out, int batch, int k, MapSize coarse_query, MapSize query,
                          MapSize coarse_key, MapSize key, int window, int dilation, void* stream);

// bilinear_scores: `coords` (B, K, Hq, Wq, 2) -> `scores` (B, K, Hq, Wq); features channels-last.
template <typename T>
Error launch_bilinear_scores(const T* query, const T* key, const T* coords, T* scores, int batch, int k, int channels,
                             MapSize qs, MapSize ks, int radius, void* stream);

}  // namespace cuda
}  // namespace cocosnet_ops

// ------------------------------------------------------------------------------ weighted gathers
// Launchers of gather.cu: weighted_gather and bilinear_weighted_gather, forward and backward.

namespace cocosnet_ops {
namespace cuda {

struct GatherDims {
  int batch;
  int channels;        // C of query and key
  int value_channels;  // Cv
  int k;               // candidates per query pixel
  MapSize qs;
  MapSize ks;

  HOST_DEVICE int64_t query_pixels() const { return int64_t{batch} * qs.pixels(); }
  HOST_DEVICE int64_t key_pixels() const { return int64_t{batch} * ks.pixels(); }
};

// One gather's inputs; features and values channels-last. Exactly one of `nnf` and `coords` is
// set: NNF entries are clamped into the key map and coordinates go through Bilinear (clamped,
// NaN to 0), so no input reads outside the maps.
template <typename T>
struct GatherInputs {
  const T* query;   // (B, Hq, Wq, C)
  const T* key;     // (B, Hk, Wk, C)
  const T* value;   // (B, Hk, Wk, Cv)
  const int* nnf;   // weighted_gather: (B, K, Hq, Wq) flat key indices
  const T* coords;  // bilinear_weighted_gather: (B, K, Hq, Wq, 2) (x, y) key positions
  T temperature;
};

// What the backward writes. Without `coefs` it adds into `key` and `value` with atomics (the
// caller zeroes them); with `coefs` (deterministic mode) it leaves them to launch_scatter_to_keys.
template <typename T>
struct GatherGrads {
  T* query;     // (B, Hq, Wq, C), written
  T* key;       // (B, Hk, Wk, C)
  T* value;     // (B, Hk, Wk, Cv)
  T* coords;    // bilinear: (B, K, Hq, Wq, 2), written
  T* coefs;     // or nullptr: per query pixel its K softmax weights, then its K logit gradients
  int* corners; // bilinear with coefs: per query pixel and candidate the 4 key pixels it reads
};

// The kernels keep a few values per (query pixel, candidate) between their passes: in shared
// memory when a block's fit, else in a buffer of this many elements that the caller passes as
// `scratch` (0: shared memory suffices, pass nullptr).
template <typename T>
int64_t gather_scratch_elements(const GatherDims& dims, bool bilinear, bool backward);

// out (B, Hq, Wq, Cv).
template <typename T>
Error launch_gather_forward(const GatherDims& dims, const GatherInputs<T>& in, T* out, T* scratch, void* stream);

// grad_out (B, Hq, Wq, Cv).
template <typename T>
Error launch_gather_backward(const GatherDims& dims, const GatherInputs<T>& in, const T* grad_out,
                             const GatherGrads<T>& grads, T* scratch, void* stream);

// The deterministic scatter after launch_gather_backward with `coefs`: every key pixel sums the
// entries that touch it in entry order. Entries are (query pixel, candidate[, corner]) numbered
// within their batch item; `order` (B, entries) lists them sorted stably by key pixel and
// `segment_start` (B, Hk * Wk + 1) where each key pixel's run begins. Writes all of grad_key
// and grad_value.
template <typename T>
Error launch_scatter_to_keys(const GatherDims& dims, const GatherInputs<T>& in, const T* grad_out, const T* coefs,
                             const int64_t* order, const int* segment_start, T* grad_key, T* grad_value,
                             void* stream);

}  // namespace cuda
}  // namespace cocosnet_ops
