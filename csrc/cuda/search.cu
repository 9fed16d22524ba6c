// CUDA kernels of the search ops. They run the per-pixel code of patch_match.h that the CPU
// kernels run too, on a group of kLanes lanes per query pixel that share each inner product.
// patch_match also reads half-precision features directly (kernels.h's HalfBits, BFloat16Bits).
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

// Lanes that search for one query pixel together. Each reads every kLanes-th group of four
// channels of a candidate's key row, so the group reads the row in contiguous runs (one lane per
// row would touch a cache line per lane and load), and a butterfly of shuffles sums the partial
// products. Every lane ends with the same sum (each addition is commutative), so all lanes of a
// group keep identical lists and take identical branches.
constexpr int kLanes = 8;

// Four consecutive channels of a row, from chunk `chunk` (channels 4 * chunk ..), as float32:
// one 16-byte load of float32, one 8-byte load of half precision (widened exactly), so both
// give the same products.
__device__ __forceinline__ float4 load4(const float* row, int chunk) {
  return __ldg(reinterpret_cast<const float4*>(row) + chunk);
}
template <typename H>
__device__ __forceinline__ float4 load4(const H* row, int chunk) {
  const uint2 bits = __ldg(reinterpret_cast<const uint2*>(row) + chunk);
  return {widen(H{static_cast<uint16_t>(bits.x & 0xffffu)}), widen(H{static_cast<uint16_t>(bits.x >> 16)}),
          widen(H{static_cast<uint16_t>(bits.y & 0xffffu)}), widen(H{static_cast<uint16_t>(bits.y >> 16)})};
}

__device__ __forceinline__ float dot4(float4 x, float4 y) { return (x.x * y.x + x.y * y.y) + (x.z * y.z + x.w * y.w); }

// Scores key indices for one query pixel, as Scorer does on the CPU (patch_match.h's search
// functions take either), with features stored as S and scores T.
template <typename T, typename S>
struct LaneGroupScorer {
  const S* query;  // this batch item's query map, channels-last
  const S* key;    // this batch item's key map, channels-last
  int channels;
  MapSize qs;
  MapSize ks;
  int qy;
  int qx;
  int radius;  // patch_size / 2
  bool vector_rows;
  int lane;           // 0 .. kLanes - 1
  unsigned int mask;  // this group's lanes within the warp

  __device__ T pixel_dot(int query_pixel, int key_pixel) const {
    const S* a = query + int64_t{query_pixel} * channels;
    const S* b = key + int64_t{key_pixel} * channels;
    T sum = 0;
    if constexpr (std::is_same_v<T, float>) {
      if (vector_rows) {
        for (int c = lane; c < channels / 4; c += kLanes) sum += dot4(load4(a, c), load4(b, c));
        return group_sum(sum);
      }
    }
    for (int c = lane; c < channels; c += kLanes) sum += widen(a[c]) * widen(b[c]);
    return group_sum(sum);
  }

  __device__ T group_sum(T sum) const {
#pragma unroll
    for (int offset = kLanes / 2; offset > 0; offset /= 2) sum += __shfl_xor_sync(mask, sum, offset, kLanes);
    return sum;
  }

  __device__ T operator()(int candidate) const {
    if (radius == 0) return rankable(pixel_dot(qy * qs.width + qx, candidate));
    const auto dot = [this](int query_pixel, int key_pixel) { return pixel_dot(query_pixel, key_pixel); };
    const int ky = candidate / ks.width;
    return patch_score_with<T>(dot, qs, ks, qy, qx, ky, candidate - ky * ks.width, radius);
  }
};

// This thread's pixel (batch-wide flat index) and its group's scorer; false past the last pixel.
template <typename T, typename S>
__device__ bool group_scorer(const SearchArgs<T, S>& args, int64_t& pixel, LaneGroupScorer<T, S>& scorer) {
  const int64_t thread = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  pixel = thread / kLanes;
  if (pixel >= args.pixels()) return false;
  const int b = static_cast<int>(pixel / args.qs.pixels()), p = static_cast<int>(pixel % args.qs.pixels());
  scorer = {args.query + int64_t{b} * args.qs.pixels() * args.channels,
            args.key + int64_t{b} * args.ks.pixels() * args.channels,
            args.channels,
            args.qs,
            args.ks,
            p / args.qs.width,
            p % args.qs.width,
            args.radius,
            args.vector_rows,
            static_cast<int>(thread % kLanes),
            ((1u << kLanes) - 1) << (threadIdx.x % 32 / kLanes * kLanes)};
  return true;
}

// kCoalescedLists: a neighbour's k matches (contiguous in the (Hq, Wq, k) NNF) read by the
// group's lanes together, one entry each per load, then passed to every lane by shuffle in list
// order, instead of every lane loading every entry itself.
struct GroupEntries {
  int lane;
  unsigned int mask;

  template <typename Visit>
  __device__ void operator()(const int* matches, int k, Visit&& visit) const {
    for (int first = 0; first < k; first += kLanes) {
      const int mine = first + lane < k ? __ldg(matches + first + lane) : 0;
      const int count = k - first < kLanes ? k - first : kLanes;
      for (int j = 0; j < count; ++j) visit(__shfl_sync(mask, mine, j, kLanes));
    }
  }
};

// kPipelinedRows: candidates offered one proposal late. A candidate's key row is requested when
// it is proposed and reduced when the next one is, so its load overlaps the previous
// candidate's shuffles and list update instead of stalling them. For patch_size 1 and vector
// rows of at most 4 * kLanes * kChunks channels (see applies); the query row stays in
// registers. The scores are pixel_dot's bit for bit: the same products summed in the same order.
template <typename S, typename List>
struct PipelinedOffers {
  static constexpr int kChunks = 2;
  const LaneGroupScorer<float, S>& scorer;
  float4 query[kChunks];
  float4 row[kChunks];  // this lane's chunks of the pending candidate's key row
  int pending = -1;

  __device__ static bool applies(const LaneGroupScorer<float, S>& s) {
    return s.radius == 0 && s.vector_rows && s.channels <= 4 * kLanes * kChunks;
  }

  __device__ explicit PipelinedOffers(const LaneGroupScorer<float, S>& s) : scorer(s) {
    load(query, s.query + int64_t{s.qy * s.qs.width + s.qx} * s.channels);
  }

  __device__ void offer(List& list, int candidate) {
    float4 next[kChunks];
    load(next, scorer.key + int64_t{candidate} * scorer.channels);
    flush(list);
    pending = candidate;
#pragma unroll
    for (int j = 0; j < kChunks; ++j) row[j] = next[j];
  }

  // Scores the pending candidate and offers it to the list, as offer() does.
  __device__ void flush(List& list) {
    if (pending < 0) return;
    float sum = 0;
#pragma unroll
    for (int j = 0; j < kChunks; ++j)
      if (scorer.lane + j * kLanes < scorer.channels / 4) sum += dot4(query[j], row[j]);
    offer_scored(list, pending, rankable(scorer.group_sum(sum)));
    pending = -1;
  }

 private:
  __device__ void load(float4 (&to)[kChunks], const S* from) const {
#pragma unroll
    for (int j = 0; j < kChunks; ++j) {
      const int chunk = scorer.lane + j * kLanes;
      to[j] = chunk < scorer.channels / 4 ? load4(from, chunk) : float4{0, 0, 0, 0};
    }
  }
};

// kSplitLists: the list of RegisterTopK (the same entries in the same order, so the same
// results) split across the lane group: lane l holds entries l * kPerLane .. l * kPerLane +
// kPerLane - 1, where every lane of a RegisterTopK holds all of them. An insertion shifts each
// entry the candidate ranks before by one place, the first of a lane coming from the previous
// lane's last by shuffle; membership is a vote. The bound on the list's last entry (what
// `admits` compares with) is copied in every lane, so the group branches alike.
template <int KMax>
struct SplitTopK {
  static_assert(KMax % kLanes == 0, "a split list gives every lane as many entries");
  static constexpr bool kScoreFirst = true;
  static constexpr int kPerLane = KMax / kLanes;
  static constexpr int kNone = RegisterTopK<float, KMax>::kNone;
  int index[kPerLane];
  float score[kPerLane];
  int k;
  int count;
  int lane;
  unsigned int mask;
  int worst_index;  // entry k - 1 (the sentinel while the list is not full)
  float worst_score;

  __device__ SplitTopK(int k_, int lane_, unsigned int mask_) : k(k_), count(0), lane(lane_), mask(mask_) {
    worst_index = kNone;
    worst_score = -INFINITY;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      index[j] = kNone;
      score[j] = -INFINITY;
    }
  }

  __device__ bool contains(int candidate) const {
    bool found = false;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) found |= index[j] == candidate;
    return __any_sync(mask, found) != 0;
  }

  __device__ bool full() const { return count == k; }

  __device__ bool admits(float s, int candidate) const {
    return count < k || ranks_before(s, candidate, worst_score, worst_index);
  }

  __device__ void insert(int candidate, float s) {
    // The entry before this lane's first: the previous lane's last (lane 0 has none).
    const int before_index = __shfl_up_sync(mask, index[kPerLane - 1], 1, kLanes);
    const float before_score = __shfl_up_sync(mask, score[kPerLane - 1], 1, kLanes);
    // Whether the entry before ranks before the candidate; lane 0's first has none: the candidate
    // goes first when it ranks before that entry.
    bool previous_stays = lane == 0 || !ranks_before(s, candidate, before_score, before_index);
    int previous_index = before_index;
    float previous_score = before_score;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int position = lane * kPerLane + j;
      const int own_index = index[j];
      const float own_score = score[j];
      const bool stays = !ranks_before(s, candidate, own_score, own_index);
      if (position >= k) {
        index[j] = kNone;  // past the list: what is carried here drops out
        score[j] = -INFINITY;
      } else if (!stays) {
        index[j] = previous_stays ? candidate : previous_index;
        score[j] = previous_stays ? s : previous_score;
      }
      previous_stays = stays;
      previous_index = own_index;
      previous_score = own_score;
    }
    count += count < k;
    update_worst();
  }

  __device__ void assign(const int* from_index, const float* from_score) {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int position = lane * kPerLane + j;
      index[j] = position < k ? from_index[position] : kNone;
      score[j] = position < k ? from_score[position] : -INFINITY;
    }
    count = k;
    update_worst();
  }

  // Every lane writes its own entries (RegisterTopK's are written by lane 0 alone).
  __device__ void store(int* to_index, float* to_score) const {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int position = lane * kPerLane + j;
      if (position < k) {
        to_index[position] = index[j];
        to_score[position] = score[j];
      }
    }
  }

 private:
  __device__ void update_worst() {
    const int last = k - 1;
    int mine_index = index[0];
    float mine_score = score[0];
#pragma unroll
    for (int j = 1; j < kPerLane; ++j) {
      if (j == last % kPerLane) {
        mine_index = index[j];
        mine_score = score[j];
      }
    }
    worst_index = __shfl_sync(mask, mine_index, last / kPerLane, kLanes);
    worst_score = __shfl_sync(mask, mine_score, last / kPerLane, kLanes);
  }
};

template <typename T, typename S, int KMax>
__global__ void __launch_bounds__(kThreads)
    initial_search_kernel(SearchArgs<T, S> args, const int* __restrict__ candidates, int count, int* __restrict__ index,
                          T* __restrict__ score) {
  int64_t pixel;
  LaneGroupScorer<T, S> scorer;
  if (!group_scorer(args, pixel, scorer)) return;
  RegisterTopK<T, KMax> list(args.k);
  initial_topk(list, scorer, candidates + pixel * count, count, 1, args.seed,
               static_cast<uint32_t>(pixel % args.qs.pixels()));
  if (scorer.lane == 0) list.store(index + pixel * args.k, score + pixel * args.k);
}

// One double-buffered PatchMatch iteration for this thread's pixel (patch_match_step's, with
// every candidate offered as it is proposed: other warps hide the latency a CPU hides by
// prefetching). `Variant`: SearchVariant bits, 0 for the default kernel.
template <typename T, typename S, int KMax, int Variant>
__device__ __forceinline__ void search_step_pixel(const SearchArgs<T, S>& args, const Radii& radii,
                                                  const SearchBound& bound, int step, int iteration,
                                                  const int* __restrict__ previous_index,
                                                  const T* __restrict__ previous_score, int* __restrict__ index,
                                                  T* __restrict__ score) {
  static_assert(Variant == 0 || std::is_same_v<S, float>, "the variants are built for float32 features");
  int64_t pixel;
  LaneGroupScorer<T, S> scorer;
  if (!group_scorer(args, pixel, scorer)) return;
  using List = std::conditional_t<(Variant & kSplitLists) != 0, SplitTopK<KMax>, RegisterTopK<T, KMax>>;
  List list = [&] {
    if constexpr ((Variant & kSplitLists) != 0)
      return List(args.k, scorer.lane, scorer.mask);
    else
      return List(args.k);
  }();
  const int64_t batch_nnf = pixel / args.qs.pixels() * args.qs.pixels() * args.k;
  const int* previous = previous_index + batch_nnf;
  const int64_t own = (scorer.qy * scorer.qs.width + scorer.qx) * int64_t{args.k};
  list.assign(previous + own, previous_score + batch_nnf + own);
  const SearchWindow window = bound.window(pixel, args.ks);
  const auto propose = [&](auto&& offer_to_list) {
    const auto visit = [&](int candidate, int ky, int kx) {
      if (window.allows(ky, kx)) offer_to_list(candidate);
    };
    const uint32_t p = static_cast<uint32_t>(pixel % args.qs.pixels());
    if constexpr ((Variant & kCoalescedLists) != 0)
      for_each_step_candidate(previous, args.k, args.qs, args.ks, scorer.qy, scorer.qx, step, radii.value,
                              radii.count, args.seed, iteration, p, visit, GroupEntries{scorer.lane, scorer.mask});
    else
      for_each_step_candidate(previous, args.k, args.qs, args.ks, scorer.qy, scorer.qx, step, radii.value,
                              radii.count, args.seed, iteration, p, visit);
  };
  const auto offer_now = [&](int candidate) { offer(list, scorer, candidate); };
  if constexpr ((Variant & kPipelinedRows) != 0) {
    if (PipelinedOffers<S, List>::applies(scorer)) {
      PipelinedOffers<S, List> offers(scorer);
      propose([&](int candidate) { offers.offer(list, candidate); });
      offers.flush(list);
    } else {
      propose(offer_now);
    }
  } else {
    propose(offer_now);
  }
  if (std::is_same_v<List, SplitTopK<KMax>> || scorer.lane == 0)
    list.store(index + pixel * args.k, score + pixel * args.k);
}

// The search step without a bound on registers (ptxas chooses), and with kBoundedRegisters'.
template <typename T, typename S, int KMax, int Variant>
__global__ void __launch_bounds__(kThreads)
    search_step_kernel(SearchArgs<T, S> args, Radii radii, SearchBound bound, int step, int iteration,
                       const int* __restrict__ previous_index, const T* __restrict__ previous_score,
                       int* __restrict__ index, T* __restrict__ score) {
  search_step_pixel<T, S, KMax, Variant>(args, radii, bound, step, iteration, previous_index, previous_score, index,
                                         score);
}

template <typename T, typename S, int KMax, int Variant>
__global__ void __launch_bounds__(kThreads, 8)
    bounded_search_step_kernel(SearchArgs<T, S> args, Radii radii, SearchBound bound, int step, int iteration,
                               const int* __restrict__ previous_index, const T* __restrict__ previous_score,
                               int* __restrict__ index, T* __restrict__ score) {
  search_step_pixel<T, S, KMax, Variant>(args, radii, bound, step, iteration, previous_index, previous_score, index,
                                         score);
}

template <typename T, int KMax>
__global__ void __launch_bounds__(kThreads)
    share_matches_kernel(SearchArgs<T> args, const int* __restrict__ nnf, const T* __restrict__ own_score,
                         const int* __restrict__ neighbours, int count, int top, int* __restrict__ index,
                         T* __restrict__ score) {
  int64_t pixel;
  LaneGroupScorer<T, T> scorer;
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

template <typename T, typename S, int KMax>
Error initial_search(const SearchArgs<T, S>& args, const int* candidates, int count, int* index, T* score,
                     cudaStream_t stream) {
  launch_kernel(initial_search_kernel<T, S, KMax>, blocks_for(args.pixels() * kLanes), kThreads, 0, stream, args,
                candidates, count, index, score);
  return launch_error();
}

// The search-step kernel for one list bound, variant `Variant`.
template <typename T, typename S, int KMax, int Variant = 0>
Error search_step(const SearchArgs<T, S>& args, const Radii& radii, const SearchBound& bound, int step, int iteration,
                  const int* previous_index, const T* previous_score, int* index, T* score, cudaStream_t stream) {
  const unsigned int blocks = blocks_for(args.pixels() * kLanes);
  if constexpr ((Variant & kBoundedRegisters) != 0)
    launch_kernel(bounded_search_step_kernel<T, S, KMax, Variant>, blocks, kThreads, 0, stream, args, radii, bound,
                  step, iteration, previous_index, previous_score, index, score);
  else
    launch_kernel(search_step_kernel<T, S, KMax, Variant>, blocks, kThreads, 0, stream, args, radii, bound, step,
                  iteration, previous_index, previous_score, index, score);
  return launch_error();
}

// Bound 16 with float32 scores, the one the variants are built for: `variant` picks the kernel.
template <typename S, int Variant = 0>
Error search_step_variant(const SearchArgs<float, S>& args, const Radii& radii, const SearchBound& bound, int step,
                          int iteration, const int* previous_index, const float* previous_score, int* index,
                          float* score, int variant, cudaStream_t stream) {
  if constexpr (Variant + 1 < kSearchVariants) {
    if (variant != Variant)
      return search_step_variant<S, Variant + 1>(args, radii, bound, step, iteration, previous_index, previous_score,
                                                 index, score, variant, stream);
  }
  return search_step<float, S, 16, Variant>(args, radii, bound, step, iteration, previous_index, previous_score,
                                            index, score, stream);
}

constexpr const char* kTooManyMatches = "k exceeds the largest list the CUDA search kernels keep";

}  // namespace

template <typename T, typename S>
Error launch_initial_search(const SearchArgs<T, S>& args, const int* candidates, int count, int* index, T* score,
                            void* stream) {
  if (args.pixels() == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  if (args.k <= 8) return initial_search<T, S, 8>(args, candidates, count, index, score, s);
  if (args.k <= 16) return initial_search<T, S, 16>(args, candidates, count, index, score, s);
  if (args.k <= 32) return initial_search<T, S, 32>(args, candidates, count, index, score, s);
  if (args.k <= kMaxK) return initial_search<T, S, kMaxK>(args, candidates, count, index, score, s);
  return kTooManyMatches;
}

template <typename T, typename S>
Error launch_search_step(const SearchArgs<T, S>& args, const Radii& radii, const SearchBound& bound, int step,
                         int iteration, const int* previous_index, const T* previous_score, int* index, T* score,
                         int variant, void* stream) {
  if (variant < 0 || variant >= kSearchVariants) return "unknown search kernel variant";
  if (args.pixels() == 0) return nullptr;
  const auto s = static_cast<cudaStream_t>(stream);
  if (args.k <= 8)
    return search_step<T, S, 8>(args, radii, bound, step, iteration, previous_index, previous_score, index, score, s);
  if (args.k <= 16) {
    if constexpr (std::is_same_v<S, float>)
      return search_step_variant<S>(args, radii, bound, step, iteration, previous_index, previous_score, index, score,
                                    variant, s);
    else
      return search_step<T, S, 16>(args, radii, bound, step, iteration, previous_index, previous_score, index, score,
                                   s);
  }
  if (args.k <= 32)
    return search_step<T, S, 32>(args, radii, bound, step, iteration, previous_index, previous_score, index, score, s);
  if (args.k <= kMaxK)
    return search_step<T, S, kMaxK>(args, radii, bound, step, iteration, previous_index, previous_score, index, score,
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

template Error launch_initial_search(const SearchArgs<float>&, const int*, int, int*, float*, void*);
template Error launch_initial_search(const SearchArgs<float, HalfBits>&, const int*, int, int*, float*, void*);
template Error launch_initial_search(const SearchArgs<float, BFloat16Bits>&, const int*, int, int*, float*, void*);
template Error launch_initial_search(const SearchArgs<double>&, const int*, int, int*, double*, void*);
template Error launch_search_step(const SearchArgs<float>&, const Radii&, const SearchBound&, int, int, const int*,
                                  const float*, int*, float*, int, void*);
template Error launch_search_step(const SearchArgs<float, HalfBits>&, const Radii&, const SearchBound&, int, int,
                                  const int*, const float*, int*, float*, int, void*);
template Error launch_search_step(const SearchArgs<float, BFloat16Bits>&, const Radii&, const SearchBound&, int, int,
                                  const int*, const float*, int*, float*, int, void*);
template Error launch_search_step(const SearchArgs<double>&, const Radii&, const SearchBound&, int, int, const int*,
                                  const double*, int*, double*, int, void*);
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
