// Launchers of the CUDA kernels: plain C++ declarations shared by the .cu files (compiled by
// nvcc, CUDA headers only) and the torch glue (compiled by the host compiler, c10 APIs only).
// Every launcher takes raw pointers and the stream as void*, enqueues its kernels there and
// returns nullptr, or the CUDA error message of a failed launch.
#pragma once

#include <cstdint>

#include "../patch_match.h"

namespace cocosnet_ops {
namespace cuda {

using Error = const char*;

// The largest k the search kernels keep per pixel: their top-K lists are fixed-size arrays,
// one template instance per bound (8, 16, 32, 64).
constexpr int kMaxK = 64;

// What every search kernel needs: channels-last features of the whole batch and the shapes.
template <typename T>
struct SearchArgs {
  const T* query;  // (B, Hq, Wq, C)
  const T* key;    // (B, Hk, Wk, C)
  int channels;
  MapSize qs;
  MapSize ks;
  int batch;
  int k;
  int radius;  // patch_size / 2
  uint32_t seed;

  HOST_DEVICE int64_t pixels() const { return int64_t{batch} * qs.pixels(); }

  HOST_DEVICE Scorer<T> scorer(int b, int p) const {
    return {query + int64_t{b} * qs.pixels() * channels, key + int64_t{b} * ks.pixels() * channels, channels, qs, ks,
            p / qs.width, p % qs.width, radius};
  }
};

// The random-search radii, by value: kernel arguments need a fixed size.
struct Radii {
  int value[kMaxRadii];
  int count;
};

// The first top-K of every pixel from `count` candidates each ((B, Hq, Wq, count), < 0 for
// none), topped up at random; writes (B, Hq, Wq, k) indices and scores.
template <typename T>
Error launch_initial_search(const SearchArgs<T>& args, const int* candidates, int count, int* index, T* score,
                            void* stream);

// One double-buffered PatchMatch iteration: reads (previous_index, previous_score), writes
// (index, score), all (B, Hq, Wq, k). `bound` (max_radius) reads its init candidates on the device.
template <typename T>
Error launch_search_step(const SearchArgs<T>& args, const Radii& radii, const SearchBound& bound, int step,
                         int iteration, const int* previous_index, const T* previous_score, int* index, T* score,
                         void* stream);

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
