// CUDA kernels of the search ops. They run the per-pixel code of patch_match.h that the CPU
// kernels run too, on a group of kLanes lanes per query pixel that share each inner product.
// Every lane keeps the pixel's top-K list in registers (RegisterTopK, one instance per bound on
// k) and scores each candidate as it is proposed. Every iteration is its own launch reading the
// previous NNF and writing the next (double-buffered), so the result does not depend on
// scheduling.
#include <type_traits>

#include "kernels.h"
#include "launch.cuh"

namespace cocosnet_ops {
namespace cuda {
namespace {

constexpr int kThreads = 128;

unsigned int blocks_for(int64_t work) { return static_cast<unsigned int>((work + kThreads - 1) / kThreads); }

Error launch_error() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? nullptr : cudaGetErrorString(error);
}

// Lanes that search for one query pixel together. Each reads every kLanes-th channel of a
// candidate's key row, so the group reads the row in contiguous runs (one lane per row would
// touch a cache line per lane and load), and a butterfly of shuffles sums the partial
// products. Every lane ends with the same sum (each addition is commutative), so all lanes of
// a group keep identical lists and take identical branches.
constexpr int kLanes = 8;

template <typename T>
struct LaneGroupScorer : Scorer<T> {
  int lane;           // 0 .. kLanes - 1
  unsigned int mask;  // this group's lanes within the warp

  __device__ T pixel_dot(int query_pixel, int key_pixel) const {
    const T* a = this->query + int64_t{query_pixel} * this->channels;
    const T* b = this->key + int64_t{key_pixel} * this->channels;
    T sum = 0;
    if constexpr (std::is_same_v<T, float>) {
      // Rows of a multiple of 4 channels start 16-byte aligned: one 16-byte load per lane and step.
      if (this->channels % 4 == 0) {
        const float4* a4 = reinterpret_cast<const float4*>(a);
        const float4* b4 = reinterpret_cast<const float4*>(b);
        for (int c = lane; c < this->channels / 4; c += kLanes) {
          const float4 x = a4[c], y = __ldg(b4 + c);
          sum += (x.x * y.x + x.y * y.y) + (x.z * y.z + x.w * y.w);
        }
        return group_sum(sum);
      }
    }
    for (int c = lane; c < this->channels; c += kLanes) sum += a[c] * b[c];
    return group_sum(sum);
  }

  __device__ T group_sum(T sum) const {
#pragma unroll
    for (int offset = kLanes / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(mask, sum, offset, kLanes);
    return sum;
  }

  __device__ T operator()(int candidate) const {
    if (this->radius == 0) return rankable(pixel_dot(this->qy * this->qs.width + this->qx, candidate));
    const auto dot = [this](int query_pixel, int key_pixel) { return pixel_dot(query_pixel, key_pixel); };
    const int ky = candidate / this->ks.width;
    return patch_score_with<T>(dot, this->qs, this->ks, this->qy, this->qx, ky, candidate - ky * this->ks.width,
                               this->radius);
  }
};

// This thread's pixel (batch-wide flat index) and its group's scorer; false past the last pixel.
template <typename T>
__device__ bool group_scorer(const SearchArgs<T>& args, int64_t& pixel, LaneGroupScorer<T>& scorer) {
  const int64_t thread = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  pixel = thread / kLanes;
  if (pixel >= args.pixels()) return false;
  const int b = static_cast<int>(pixel / args.qs.pixels()), p = static_cast<int>(pixel % args.qs.pixels());
  static_cast<Scorer<T>&>(scorer) = args.scorer(b, p);
  scorer.lane = static_cast<int>(thread % kLanes);
  scorer.mask = ((1u << kLanes) - 1) << (threadIdx.x % 32 / kLanes * kLanes);
  return true;
}

template <typename T, int KMax>
__global__ void __launch_bounds__(kThreads)
    initial_search_kernel(SearchArgs<T> args, const int* __restrict__ candidates, int count, int* __restrict__ index,
                          T* __restrict__ score) {
  int64_t pixel;
  LaneGroupScorer<T> scorer;
  if (!group_scorer(args, pixel, scorer)) return;
  RegisterTopK<T, KMax> list(args.k);
  initial_topk(list, scorer, candidates + pixel * count, count, 1, args.seed,
               static_cast<uint32_t>(pixel % args.qs.pixels()));
  if (scorer.lane == 0) list.store(index + pixel * args.k, score + pixel * args.k);
}

template <typename T, int KMax>
__global__ void __launch_bounds__(kThreads)
    search_step_kernel(SearchArgs<T> args, Radii radii, SearchBound bound, int step, int iteration,
                       const int* __restrict__ previous_index, const T* __restrict__ previous_score,
                       int* __restrict__ index, T* __restrict__ score) {
  int64_t pixel;
  LaneGroupScorer<T> scorer;
  if (!group_scorer(args, pixel, scorer)) return;
  RegisterTopK<T, KMax> list(args.k);
  const int64_t batch_nnf = pixel / args.qs.pixels() * args.qs.pixels() * args.k;
  patch_match_step(list, static_cast<int*>(nullptr), scorer, previous_index + batch_nnf, previous_score + batch_nnf,
                   step, radii.value, radii.count, bound.window(pixel, args.ks), args.seed, iteration,
                   static_cast<uint32_t>(pixel % args.qs.pixels()));
  if (scorer.lane == 0) list.store(index + pixel * args.k, score + pixel * args.k);
}

template <typename T, int KMax>
__global__ void __launch_bounds__(kThreads)
    share_matches_kernel(SearchArgs<T> args, const int* __restrict__ nnf, const T* __restrict__ own_score,
                         const int* __restrict__ neighbours, int count, int top, int* __restrict__ index,
                         T* __restrict__ score) {
  int64_t pixel;
  LaneGroupScorer<T> scorer;
  if (!group_scorer(args, pixel, scorer)) return;
  RegisterTopK<T, KMax> list(args.k);
  const int64_t batch_nnf = pixel / args.qs.pixels() * args.qs.pixels() * args.k;
  share_pixel_matches(list, static_cast<int*>(nullptr), scorer, nnf + batch_nnf, own_score + pixel * args.k,
                      neighbours + pixel * count, count, top, args.qs.pixels(),
                      static_cast<uint32_t>(pixel % args.qs.pixels()));
  if (scorer.lane == 0) list.store(index + pixel * args.k, score + pixel * args.k);
}

__global__ void __launch_bounds__(kThreads)
    nnf_upsample_kernel(const int* __restrict__ coarse, int* __restrict__ out, int batch, int k,
                        MapSize coarse_query, MapSize query, MapSize coarse_key, MapSize key, int window,
                        int dilation) {
  const int64_t pixel = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (pixel >= int64_t{batch} * query.pixels()) return;
  const int b = static_cast<int>(pixel / query.pixels()), p = static_cast<int>(pixel % query.pixels());
  upsample_pixel(out + int64_t{b} * k * window * window * query.pixels() + p, query.pixels(),
                 coarse + int64_t{b} * k * coarse_query.pixels(), k, p / query.width, p % query.width, coarse_query,
                 query, coarse_key, key, window, dilation);
}

// One thread per (pixel, candidate) score: entry e of the (B, K, Hq, Wq) output.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    bilinear_scores_kernel(const T* __restrict__ query, const T* __restrict__ key, const T* __restrict__ coords,
                           T* __restrict__ scores, int batch, int k, int channels, MapSize qs, MapSize ks,
                           int radius) {
  const int64_t entry = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (entry >= int64_t{batch} * k * qs.pixels()) return;
  const int p = static_cast<int>(entry % qs.pixels());
  const int64_t b = entry / qs.pixels() / k;
  scores[entry] = bilinear_patch_score(query + b * qs.pixels() * channels, key + b * ks.pixels() * channels, channels,
                                       qs, ks, p / qs.width, p % qs.width, coords[2 * entry], coords[2 * entry + 1],
                                       radius);
}

template <typename T, int KMax>
Error initial_search(const SearchArgs<T>& args, const int* candidates, int count, int* index, T* score,
                     cudaStream_t stream) {
  launch_kernel(initial_search_kernel<T, KMax>, blocks_for(args.pixels() * kLanes), kThreads, 0, stream, args,
                candidates, count, index, score);
  return launch_error();
}

template <typename T, int KMax>
Error search_step(const SearchArgs<T>& args, const Radii& radii, const SearchBound& bound, int step, int iteration,
                  const int* previous_index, const T* previous_score, int* index, T* score, cudaStream_t stream) {
  launch_kernel(search_step_kernel<T, KMax>, blocks_for(args.pixels() * kLanes), kThreads, 0, stream, args, radii,
                bound, step, iteration, previous_index, previous_score, index, score);
  return launch_error();
}

constexpr const char* kTooManyMatches = "k exceeds the largest list the CUDA search kernels keep";

}  // namespace

template <typename T>
Error launch_initial_search(const SearchArgs<T>& args, const int* candidates, int count, int* index, T* score,
                            void* stream) {
  if (args.pixels() == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  if (args.k <= 8) return initial_search<T, 8>(args, candidates, count, index, score, s);
  if (args.k <= 16) return initial_search<T, 16>(args, candidates, count, index, score, s);
  if (args.k <= 32) return initial_search<T, 32>(args, candidates, count, index, score, s);
  if (args.k <= kMaxK) return initial_search<T, kMaxK>(args, candidates, count, index, score, s);
  return kTooManyMatches;
}

template <typename T>
Error launch_search_step(const SearchArgs<T>& args, const Radii& radii, const SearchBound& bound, int step,
                         int iteration, const int* previous_index, const T* previous_score, int* index, T* score,
                         void* stream) {
  if (args.pixels() == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  if (args.k <= 8)
    return search_step<T, 8>(args, radii, bound, step, iteration, previous_index, previous_score, index, score, s);
  if (args.k <= 16)
    return search_step<T, 16>(args, radii, bound, step, iteration, previous_index, previous_score, index, score, s);
  if (args.k <= 32)
    return search_step<T, 32>(args, radii, bound, step, iteration, previous_index, previous_score, index, score, s);
  if (args.k <= kMaxK)
    return search_step<T, kMaxK>(args, radii, bound, step, iteration, previous_index, previous_score, index, score,
                                 s);
  return kTooManyMatches;
}

template <typename T>
Error launch_share_matches(const SearchArgs<T>& args, const int* nnf, const T* own_score, const int* neighbours,
                           int count, int top, int* index, T* score, void* stream) {
  if (args.pixels() == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  const unsigned int blocks = blocks_for(args.pixels() * kLanes);
  if (args.k <= 8)
    launch_kernel(share_matches_kernel<T, 8>, blocks, kThreads, 0, s, args, nnf, own_score, neighbours, count, top,
                  index, score);
  else if (args.k <= 16)
    launch_kernel(share_matches_kernel<T, 16>, blocks, kThreads, 0, s, args, nnf, own_score, neighbours, count, top,
                  index, score);
  else if (args.k <= 32)
    launch_kernel(share_matches_kernel<T, 32>, blocks, kThreads, 0, s, args, nnf, own_score, neighbours, count, top,
                  index, score);
  else if (args.k <= kMaxK)
    launch_kernel(share_matches_kernel<T, kMaxK>, blocks, kThreads, 0, s, args, nnf, own_score, neighbours, count, top,
                  index, score);
  else
    return kTooManyMatches;
  return launch_error();
}

Error launch_nnf_upsample(const int* coarse, int* out, int batch, int k, MapSize coarse_query, MapSize query,
                          MapSize coarse_key, MapSize key, int window, int dilation, void* stream) {
  const int64_t pixels = int64_t{batch} * query.pixels();
  if (pixels == 0) return nullptr;
  launch_kernel(nnf_upsample_kernel, blocks_for(pixels), kThreads, 0, static_cast<cudaStream_t>(stream), coarse, out,
                batch, k, coarse_query, query, coarse_key, key, window, dilation);
  return launch_error();
}

template <typename T>
Error launch_bilinear_scores(const T* query, const T* key, const T* coords, T* scores, int batch, int k, int channels,
                             MapSize qs, MapSize ks, int radius, void* stream) {
  const int64_t entries = int64_t{batch} * k * qs.pixels();
  if (entries == 0) return nullptr;
  launch_kernel(bilinear_scores_kernel<T>, blocks_for(entries), kThreads, 0, static_cast<cudaStream_t>(stream), query,
                key, coords, scores, batch, k, channels, qs, ks, radius);
  return launch_error();
}

template Error launch_initial_search<float>(const SearchArgs<float>&, const int*, int, int*, float*, void*);
template Error launch_initial_search<double>(const SearchArgs<double>&, const int*, int, int*, double*, void*);
template Error launch_search_step<float>(const SearchArgs<float>&, const Radii&, const SearchBound&, int, int,
                                         const int*, const float*, int*, float*, void*);
template Error launch_search_step<double>(const SearchArgs<double>&, const Radii&, const SearchBound&, int, int,
                                          const int*, const double*, int*, double*, void*);
template Error launch_share_matches<float>(const SearchArgs<float>&, const int*, const float*, const int*, int, int,
                                           int*, float*, void*);
template Error launch_share_matches<double>(const SearchArgs<double>&, const int*, const double*, const int*, int,
                                            int, int*, double*, void*);
template Error launch_bilinear_scores<float>(const float*, const float*, const float*, float*, int, int, int, MapSize,
                                             MapSize, int, void*);
template Error launch_bilinear_scores<double>(const double*, const double*, const double*, double*, int, int, int,
                                              MapSize, MapSize, int, void*);

}  // namespace cuda
}  // namespace cocosnet_ops
