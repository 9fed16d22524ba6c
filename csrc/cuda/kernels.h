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
// (index, score), all (B, Hq, Wq, k).
template <typename T>
Error launch_search_step(const SearchArgs<T>& args, const Radii& radii, int step, int iteration,
                         const int* previous_index, const T* previous_score, int* index, T* score, void* stream);

// nnf_upsample: `coarse` (B, K, coarse query pixels) -> `out` (B, K * window^2, query pixels).
Error launch_nnf_upsample(const int* coarse, int* out, int batch, int k, MapSize coarse_query, MapSize query,
                          MapSize coarse_key, MapSize key, int window, int dilation, void* stream);

// bilinear_scores: `coords` (B, K, Hq, Wq, 2) -> `scores` (B, K, Hq, Wq); features channels-last.
template <typename T>
Error launch_bilinear_scores(const T* query, const T* key, const T* coords, T* scores, int batch, int k, int channels,
                             MapSize qs, MapSize ks, int radius, void* stream);

}  // namespace cuda
}  // namespace cocosnet_ops
