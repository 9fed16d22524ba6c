// Per-pixel logic shared by the CPU and CUDA kernels of cocosnet_ops.
//
// Everything here works on one query pixel and raw pointers, so the CPU kernels (tested in CI)
// run exactly the code the GPU runs. Feature maps are channels-last per batch item:
// pixel (y, x) of an H x W map with C channels starts at ((y * W) + x) * C. The definitions
// match cocosnet_ops/reference.py, which is the oracle for the tests.
#pragma once

#include <cmath>
#include <cstdint>

// SSE2 is part of x86-64: the CPU kernels use it where GCC would not vectorise by itself.
#if defined(__SSE2__) && !defined(__CUDACC__)
#include <emmintrin.h>
#define COCOSNET_SSE2 1
#endif

#ifdef __CUDACC__
#define HOST_DEVICE __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Inlined into the kernels' pixel loops: the per-candidate calls are too small to be calls.
#define HOST_DEVICE inline __attribute__((always_inline))
#else
#define HOST_DEVICE inline
#endif

namespace cocosnet_ops {

// Random streams: the purpose in the high 16 bits, the iteration in the low 16.
constexpr uint32_t kStreamFill = 1u << 16;
constexpr uint32_t kStreamSearchY = 2u << 16;
constexpr uint32_t kStreamSearchX = 3u << 16;
// Random-search draws are numbered anchor * kMaxRadii + radius level.
constexpr int kMaxRadii = 32;
constexpr int kSearchAnchors = 4;

// ------------------------------------------------------------------------------ random numbers

// PCG-RXS-M-XS 32-bit hash (Jarzynski and Olano, 2020).
HOST_DEVICE uint32_t pcg_hash(uint32_t x) {
  const uint32_t state = x * 747796405u + 2891336453u;
  const uint32_t word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
  return (word >> 22u) ^ word;
}

// The part of counter_random that does not depend on the counter: a pixel's draws from one
// stream hash it once.
HOST_DEVICE uint32_t random_stream(uint32_t seed, uint32_t stream, uint32_t pixel) {
  return pcg_hash(pcg_hash(pcg_hash(seed) ^ stream) ^ pixel);
}

// A random number that is a pure function of its arguments: no state, so no thread order.
// `pixel` is the query pixel's flat index within its map, so batch items draw alike.
HOST_DEVICE uint32_t counter_random(uint32_t seed, uint32_t stream, uint32_t pixel, uint32_t counter) {
  return pcg_hash(random_stream(seed, stream, pixel) ^ counter);
}

// ------------------------------------------------------------------------------ geometry

// A query-map displacement in key-map pixels, rounded half away from zero (in 64 bits: the
// product of a displacement and a map side can pass 2^31).
HOST_DEVICE int scale_shift(int d, int key_extent, int query_extent) {
  const int64_t magnitude =
      (2 * static_cast<int64_t>(d < 0 ? -d : d) * key_extent + query_extent) / (2 * static_cast<int64_t>(query_extent));
  return static_cast<int>(d < 0 ? -magnitude : magnitude);
}

HOST_DEVICE int clamp_int(int v, int low, int high) { return v < low ? low : (v > high ? high : v); }
HOST_DEVICE int clamp_int(int64_t v, int low, int high) {
  return static_cast<int>(v < low ? low : (v > high ? high : v));
}

// Division of non-negative int32 values by a fixed positive divisor through a multiply and a
// shift (Granlund and Montgomery, 1994), exact for every n, d in [0, 2^31): a flat key index
// splits into row and column without a hardware division per candidate.
struct FastDivider {
  uint32_t divisor;
  uint32_t magic;
  uint32_t shift;

  HOST_DEVICE explicit FastDivider(int d) : divisor(static_cast<uint32_t>(d)), shift(0) {
    while ((1u << shift) < divisor) ++shift;
    magic = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - divisor)) / divisor + 1);
  }

  HOST_DEVICE int quotient(int n) const {
#ifdef __CUDA_ARCH__
    const uint32_t high = __umulhi(static_cast<uint32_t>(n), magic);
#else
    const uint32_t high = static_cast<uint32_t>((uint64_t{static_cast<uint32_t>(n)} * magic) >> 32);
#endif
    return static_cast<int>((high + static_cast<uint32_t>(n)) >> shift);
  }
};

HOST_DEVICE float exp_of(float x) { return expf(x); }
HOST_DEVICE double exp_of(double x) { return exp(x); }

struct MapSize {
  int height;
  int width;
  HOST_DEVICE int pixels() const { return height * width; }
  HOST_DEVICE bool contains(int y, int x) const { return y >= 0 && y < height && x >= 0 && x < width; }
};

// ------------------------------------------------------------------------------ scores

// Inner product with a fixed summation order (eight partial sums), so the CPU loop vectorises
// without -ffast-math and gives the same result whatever the thread count.
template <typename T>
HOST_DEVICE T dot(const T* a, const T* b, int n) {
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 += a[i] * b[i];
    s1 += a[i + 1] * b[i + 1];
    s2 += a[i + 2] * b[i + 2];
    s3 += a[i + 3] * b[i + 3];
    s4 += a[i + 4] * b[i + 4];
    s5 += a[i + 5] * b[i + 5];
    s6 += a[i + 6] * b[i + 6];
    s7 += a[i + 7] * b[i + 7];
  }
  for (; i < n; ++i) s0 += a[i] * b[i];
  return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
}

#ifdef COCOSNET_SSE2
// The same eight sums in two SSE2 registers (s0..s3 and s4..s7), so bit for bit the same result;
// GCC compiles the scalar form to shuffles through vector registers at every step instead.
template <>
HOST_DEVICE float dot<float>(const float* a, const float* b, int n) {
  __m128 low = _mm_setzero_ps(), high = _mm_setzero_ps();
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    low = _mm_add_ps(low, _mm_mul_ps(_mm_loadu_ps(a + i), _mm_loadu_ps(b + i)));
    high = _mm_add_ps(high, _mm_mul_ps(_mm_loadu_ps(a + i + 4), _mm_loadu_ps(b + i + 4)));
  }
  alignas(16) float s[8];
  _mm_store_ps(s, low);
  _mm_store_ps(s + 4, high);
  for (; i < n; ++i) s[0] += a[i] * b[i];
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}
#endif

// A NaN score ranks as -inf, so every candidate has a place in the order.
template <typename T>
HOST_DEVICE T rankable(T score) {
  return score != score ? -static_cast<T>(INFINITY) : score;
}

// Mean over the patch of the inner products at equal displacements, features zero outside.
// `pixel_dot(query_pixel, key_pixel)` is the inner product of two pixels' features, given their
// flat indices in the query and key maps: the CPU computes it in one thread, the GPU across a
// group of lanes.
template <typename T, typename PixelDot>
HOST_DEVICE T patch_score_with(const PixelDot& pixel_dot, MapSize qs, MapSize ks, int qy, int qx, int ky, int kx,
                               int radius) {
  if (radius == 0) return rankable(pixel_dot(qy * qs.width + qx, ky * ks.width + kx));
  T total = 0;
  for (int dy = -radius; dy <= radius; ++dy) {
    for (int dx = -radius; dx <= radius; ++dx) {
      if (!qs.contains(qy + dy, qx + dx) || !ks.contains(ky + dy, kx + dx)) continue;
      total += pixel_dot((qy + dy) * qs.width + qx + dx, (ky + dy) * ks.width + kx + dx);
    }
  }
  const int side = 2 * radius + 1;
  return rankable(total / static_cast<T>(side * side));
}

template <typename T>
HOST_DEVICE T patch_score(const T* query, const T* key, int channels, MapSize qs, MapSize ks, int qy, int qx,
                          int ky, int kx, int radius) {
  const auto pixel_dot = [&](int query_pixel, int key_pixel) {
    return dot(query + static_cast<int64_t>(query_pixel) * channels, key + static_cast<int64_t>(key_pixel) * channels,
               channels);
  };
  return patch_score_with<T>(pixel_dot, qs, ks, qy, qx, ky, kx, radius);
}

// ------------------------------------------------------------------------------ top-K list

// Candidate a ranks before b: higher score, ties to the lower index.
template <typename T>
HOST_DEVICE bool ranks_before(T score_a, int index_a, T score_b, int index_b) {
  return score_a > score_b || (score_a == score_b && index_a < index_b);
}

// A sorted, duplicate-free list of at most k candidates in caller-provided storage.
template <typename T>
struct TopK {
  // Scans the list before scoring: on a CPU a key row costs more than the scan.
  static constexpr bool kScoreFirst = false;
  int* index;
  T* score;
  int k;
  int count;

  // Without an early exit, four entries per SSE2 compare (GCC leaves the plain loop scalar).
  HOST_DEVICE bool contains(int candidate) const {
    bool found = false;
    int i = 0;
#ifdef COCOSNET_SSE2
    const __m128i wanted = _mm_set1_epi32(candidate);
    __m128i hits = _mm_setzero_si128();
    for (; i + 4 <= count; i += 4)
      hits = _mm_or_si128(hits, _mm_cmpeq_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(index + i)), wanted));
    found = _mm_movemask_epi8(hits) != 0;
#endif
    for (; i < count; ++i) found |= index[i] == candidate;
    return found;
  }

  HOST_DEVICE bool full() const { return count == k; }

  // Whether a candidate of this score would enter the list (ignoring duplicates).
  HOST_DEVICE bool admits(T s, int candidate) const {
    return count < k || ranks_before(s, candidate, score[k - 1], index[k - 1]);
  }

  // Insert a candidate known to be absent and admitted.
  HOST_DEVICE void insert(int candidate, T s) {
    int i = count < k ? count++ : k - 1;
    for (; i > 0 && ranks_before(s, candidate, score[i - 1], index[i - 1]); --i) {
      index[i] = index[i - 1];
      score[i] = score[i - 1];
    }
    index[i] = candidate;
    score[i] = s;
  }

  // Make the list the k sorted, distinct entries given.
  HOST_DEVICE void assign(const int* from_index, const T* from_score) {
    for (int i = 0; i < k; ++i) {
      index[i] = from_index[i];
      score[i] = from_score[i];
    }
    count = k;
  }
};

// The same list held in registers, for the GPU: every loop runs over the compile-time bound
// KMax (unrolled, so no array is indexed at run time and none spills to local memory), and
// slots past the current entries hold a sentinel that every real candidate ranks before.
// It keeps exactly the entries TopK keeps, in the same order.
template <typename T, int KMax>
struct RegisterTopK {
  // Scores before scanning: on a GPU the row load overlaps other warps' work, while the scan
  // is KMax compares in every lane; most candidates fail the cheap score test after the first
  // iteration.
  static constexpr bool kScoreFirst = true;
  static constexpr int kNone = 0x7fffffff;
  int index[KMax];
  T score[KMax];
  int k;
  int count;
  int worst_index;  // entry k - 1, or the sentinel while the list is not full
  T worst_score;

  HOST_DEVICE explicit RegisterTopK(int k_) : k(k_), count(0), worst_index(kNone) {
    worst_score = -static_cast<T>(INFINITY);
#pragma unroll
    for (int i = 0; i < KMax; ++i) {
      index[i] = kNone;
      score[i] = -static_cast<T>(INFINITY);
    }
  }

  HOST_DEVICE bool contains(int candidate) const {
    bool found = false;
#pragma unroll
    for (int i = 0; i < KMax; ++i) found |= index[i] == candidate;
    return found;
  }

  HOST_DEVICE bool full() const { return count == k; }

  HOST_DEVICE bool admits(T s, int candidate) const {
    return count < k || ranks_before(s, candidate, worst_score, worst_index);
  }

  // The candidate sinks from the top, swapping with every entry it ranks before; what is
  // carried past entry k - 1 drops out.
  HOST_DEVICE void insert(int candidate, T s) {
#pragma unroll
    for (int i = 0; i < KMax; ++i) {
      if (i < k && ranks_before(s, candidate, score[i], index[i])) {
        const int displaced_index = index[i];
        const T displaced_score = score[i];
        index[i] = candidate;
        score[i] = s;
        candidate = displaced_index;
        s = displaced_score;
      }
    }
    count += count < k;
    update_worst();
  }

  HOST_DEVICE void assign(const int* from_index, const T* from_score) {
#pragma unroll
    for (int i = 0; i < KMax; ++i) {
      if (i < k) {
        index[i] = from_index[i];
        score[i] = from_score[i];
      }
    }
    count = k;
    update_worst();
  }

  HOST_DEVICE void store(int* to_index, T* to_score) const {
#pragma unroll
    for (int i = 0; i < KMax; ++i) {
      if (i < k) {
        to_index[i] = index[i];
        to_score[i] = score[i];
      }
    }
  }

 private:
  HOST_DEVICE void update_worst() {
#pragma unroll
    for (int i = 0; i < KMax; ++i) {
      if (i == k - 1) {
        worst_index = index[i];
        worst_score = score[i];
      }
    }
  }
};

// Everything one pixel's search needs to score key indices.
template <typename T>
struct Scorer {
  const T* query;  // this batch item's query map, channels-last
  const T* key;    // this batch item's key map, channels-last
  int channels;
  MapSize qs;
  MapSize ks;
  int qy;
  int qx;
  int radius;  // patch_size / 2

  HOST_DEVICE T operator()(int candidate) const {
    return patch_score(query, key, channels, qs, ks, qy, qx, candidate / ks.width, candidate % ks.width, radius);
  }
};

// Offer a candidate of known score: kept when it ranks in the top k and, for a list that scores
// first (List::kScoreFirst), is not listed yet (other lists have checked that before scoring).
template <typename List, typename T>
HOST_DEVICE void offer_scored(List& list, int candidate, T s) {
  if (list.admits(s, candidate) && (!List::kScoreFirst || !list.contains(candidate))) list.insert(candidate, s);
}

// Offer a candidate: skipped when already listed, scored, kept when it ranks in the top k.
// `List` is TopK or RegisterTopK, and `Score` a Scorer or a type derived from it that scores
// the same way (the GPU's, which splits each inner product across lanes), here and below.
template <typename Score, typename List>
HOST_DEVICE void offer(List& list, const Score& scorer, int candidate) {
  // Whether a candidate is listed and whether its score would enter the list are independent,
  // and it enters only when both allow: a list tests the cheaper one first (List::kScoreFirst).
  if (!List::kScoreFirst && list.contains(candidate)) return;
  offer_scored(list, candidate, scorer(candidate));
}

// How many candidates ahead of the one being scored the CPU asks for its key row: rows are
// scattered over a map larger than the caches, so the loads would otherwise stall in turn.
constexpr int kPrefetchDistance = 6;

template <typename T>
HOST_DEVICE void prefetch_row(const T* row, int length) {
#if !defined(__CUDA_ARCH__) && defined(__GNUC__)
  const char* bytes = reinterpret_cast<const char*>(row);
  for (int offset = 0; offset < length * static_cast<int>(sizeof(T)); offset += 64) __builtin_prefetch(bytes + offset);
#endif
}

// Offer `count` candidates (stride `stride`; negative entries mean none) in order.
template <typename Score, typename List>
HOST_DEVICE void offer_all(List& list, const Score& scorer, const int* candidates, int count, int stride) {
  // From kPrefetchDistance before the first candidate on, so that no row arrives unasked.
  for (int i = -kPrefetchDistance; i < count; ++i) {
    if (i + kPrefetchDistance < count) {
      const int ahead = candidates[(i + kPrefetchDistance) * stride];
      if (ahead >= 0) prefetch_row(scorer.key + static_cast<int64_t>(ahead) * scorer.channels, scorer.channels);
    }
    if (i < 0) continue;
    const int candidate = candidates[i * stride];
    // Out-of-range entries are skipped, so no input reads outside the key map.
    if (candidate >= 0 && candidate < scorer.ks.pixels()) offer(list, scorer, candidate);
  }
}

// The start of every search: the given candidates (negative entries mean none), then, while
// fewer than k distinct are listed, 2k random draws and a scan of every key index from a random
// start. `candidates` has `count` entries with stride `stride`.
template <typename Score, typename List>
HOST_DEVICE void initial_topk(List& list, const Score& scorer, const int* candidates, int count, int stride,
                              uint32_t seed, uint32_t pixel) {
  offer_all(list, scorer, candidates, count, stride);
  const int key_pixels = scorer.ks.pixels();
  const uint32_t fill = random_stream(seed, kStreamFill, pixel);
  for (int j = 0; j < 2 * list.k && !list.full(); ++j) {
    if (j + kPrefetchDistance < 2 * list.k) {
      const uint32_t ahead = pcg_hash(fill ^ (j + kPrefetchDistance)) % key_pixels;
      prefetch_row(scorer.key + static_cast<int64_t>(ahead) * scorer.channels, scorer.channels);
    }
    const int candidate = static_cast<int>(pcg_hash(fill ^ j) % key_pixels);
    if (!list.contains(candidate)) list.insert(candidate, scorer(candidate));
  }
  const uint32_t start = pcg_hash(fill ^ (2 * list.k)) % key_pixels;
  for (int t = 0; t < key_pixels && !list.full(); ++t) {
    const int candidate = static_cast<int>((start + t) % key_pixels);
    if (!list.contains(candidate)) list.insert(candidate, scorer(candidate));
  }
}

// ------------------------------------------------------------------------------ PatchMatch

// The random-search radii for a key map: halving from half its larger side (or from
// `max_radius` when that is smaller and not negative) down to 1, at most kMaxRadii of them,
// written to `radii`; returns their number.
HOST_DEVICE int search_radii(MapSize ks, int* radii, int max_radius = -1) {
  int count = 0;
  int first = (ks.height > ks.width ? ks.height : ks.width) / 2;
  if (max_radius >= 0 && max_radius < first) first = max_radius;
  for (int r = first; r >= 1 && count < kMaxRadii; r /= 2) radii[count++] = r;
  return count;
}

// Where max_radius lets one pixel's search go: the key pixels within Chebyshev distance `radius`
// of at least one of its init candidates. It reads them where they lie (on the GPU: global
// memory, not registers), sorted ascending: flat indices order by row, then column, so the
// candidates in the rows around a key pixel are one run, found by bisection.
struct SearchWindow {
  const int* init;  // this pixel's init candidates, ascending; entries outside [0, key pixels) are none
  int count;
  int radius;  // < 0: unbounded
  MapSize ks;
  FastDivider by_width;  // ks.width

  HOST_DEVICE bool allows(int ky, int kx) const {
    if (radius < 0) return true;
    const int x0 = kx > radius ? kx - radius : 0, x1 = kx < ks.width - radius ? kx + radius : ks.width - 1;
    const int y0 = ky > radius ? ky - radius : 0, y1 = ky < ks.height - radius ? ky + radius : ks.height - 1;
    // Every entry in rows y0..y1 and columns x0..x1 lies in flat order between (y0, x0) and
    // (y1, x1); the run between them holds entries of other columns too.
    const int last = y1 * ks.width + x1;
    for (int m = first_at_least(y0 * ks.width + x0); m < count && init[m] <= last; ++m) {
      const int ex = init[m] - by_width.quotient(init[m]) * ks.width;
      if (ex >= x0 && ex <= x1) return true;
    }
    return false;
  }

  // The position of the first entry >= value (count when none), by bisection. The answer lies
  // in [first, first + length]; the rounds depend on count only, so they branch alike for every
  // value (no mispredictions on a CPU, no divergence on a GPU).
  HOST_DEVICE int first_at_least(int value) const {
    int first = 0, length = count;
    while (length > 1) {
      const int half = length / 2;
      first = init[first + half - 1] < value ? first + half : first;
      length -= half;
    }
    return first + (length == 1 && init[first] < value);
  }
};

// The bound max_radius puts on a whole batch's search: every pixel's init candidates,
// (B, Hq, Wq, count), each pixel's sorted ascending, and the radius (< 0: no bound).
struct SearchBound {
  const int* init;
  int count;
  int max_radius;

  // The window of pixel `pixel` (numbered over the batch). A pixel without a valid init
  // candidate has nothing to be near: it searches unbounded, so holes in the init fill in from
  // their neighbours' matches.
  HOST_DEVICE SearchWindow window(int64_t pixel, MapSize ks) const {
    SearchWindow w{init + pixel * count, count, -1, ks, FastDivider(ks.width)};
    if (max_radius < 0) return w;
    const int first_valid = w.first_at_least(0);
    if (first_valid < count && w.init[first_valid] < ks.pixels()) w.radius = max_radius;
    return w;
  }
};

// How for_each_step_candidate reads a neighbour's k matches: one after another. (The GPU's lane
// groups may read them together, see search.cu.)
struct ListEntries {
  template <typename Visit>
  HOST_DEVICE void operator()(const int* matches, int k, Visit&& visit) const {
    for (int i = 0; i < k; ++i) visit(matches[i]);
  }
};

// Most candidates one PatchMatch iteration proposes for a pixel (see step_candidates).
HOST_DEVICE int max_step_candidates(int k) { return 4 * k + kSearchAnchors * kMaxRadii; }

// The candidates one double-buffered PatchMatch iteration proposes for a pixel, passed in order
// to `visit` (at most max_step_candidates(k) of them) as (flat index, row, column). `previous`
// holds the whole NNF of this batch item before the iteration, laid out (Hq, Wq, k), best first.
//  * propagation: the k matches of each neighbour at distance `step` along the axes, shifted
//    back by that distance in key pixels (dropped when outside the key map);
//  * random search: for each of the best kSearchAnchors matches and each radius, one uniform
//    draw in the square of that radius around it, clamped to the key map.
template <typename Visit, typename Entries = ListEntries>
HOST_DEVICE void for_each_step_candidate(const int* previous, int k, MapSize qs, MapSize ks, int qy, int qx, int step,
                                         const int* radii, int num_radii, uint32_t seed, int iteration,
                                         uint32_t pixel, Visit&& visit, const Entries& entries = Entries{}) {
  const int neighbour_dy[4] = {-step, step, 0, 0};
  const int neighbour_dx[4] = {0, 0, -step, step};
  const FastDivider by_width(ks.width);
  // Not unrolled: four copies of the candidate's scoring would crowd the GPU's instruction cache.
#pragma unroll 1
  for (int n = 0; n < 4; ++n) {
    const int ny = qy + neighbour_dy[n], nx = qx + neighbour_dx[n];
    if (!qs.contains(ny, nx)) continue;
    const int shift_y = scale_shift(neighbour_dy[n], ks.height, qs.height);
    const int shift_x = scale_shift(neighbour_dx[n], ks.width, qs.width);
    entries(previous + static_cast<int64_t>(ny * qs.width + nx) * k, k, [&](int match) {
      const int row = by_width.quotient(match);
      const int ky = row - shift_y, kx = match - row * ks.width - shift_x;
      if (ks.contains(ky, kx)) visit(ky * ks.width + kx, ky, kx);
    });
  }
  const int* own = previous + static_cast<int64_t>(qy * qs.width + qx) * k;
  const int anchors = k < kSearchAnchors ? k : kSearchAnchors;
  const uint32_t stream_y = random_stream(seed, kStreamSearchY | iteration, pixel);
  const uint32_t stream_x = random_stream(seed, kStreamSearchX | iteration, pixel);
  for (int a = 0; a < anchors; ++a) {
    const int ay = by_width.quotient(own[a]), ax = own[a] - ay * ks.width;
    for (int level = 0; level < num_radii; ++level) {
      const int r = radii[level];
      const uint32_t draw = static_cast<uint32_t>(a * kMaxRadii + level);
      const int oy = static_cast<int>(pcg_hash(stream_y ^ draw) % (2 * r + 1)) - r;
      const int ox = static_cast<int>(pcg_hash(stream_x ^ draw) % (2 * r + 1)) - r;
      const int ky = clamp_int(ay + oy, 0, ks.height - 1), kx = clamp_int(ax + ox, 0, ks.width - 1);
      visit(ky * ks.width + kx, ky, kx);
    }
  }
}

// One double-buffered PatchMatch iteration for one pixel on the CPU: its previous matches
// (`previous`, `previous_score`: this batch item's NNF before the iteration, (Hq, Wq, k)) compete
// with the step candidates inside `window`. The result goes to `list`, whose storage must not
// alias `previous`. The candidates are listed in `scratch` (room for max_step_candidates(k))
// first, so their key rows can be prefetched. The GPU (search.cu) offers each as it is proposed
// instead, with the same result: the list here leaves out the candidates already among the
// previous matches, which an offer skips while they are listed and could not bring back once
// displaced (the list only improves), and so scans the window for fewer.
template <typename T, typename Score, typename List>
HOST_DEVICE void patch_match_step(List& list, int* scratch, const Score& scorer, const int* previous,
                                  const T* previous_score, int step, const int* radii, int num_radii,
                                  const SearchWindow& window, uint32_t seed, int iteration, uint32_t pixel) {
  const int64_t own = scorer.qy * scorer.qs.width + scorer.qx;
  list.assign(previous + own * list.k, previous_score + own * list.k);
  int count = 0;
  for_each_step_candidate(previous, list.k, scorer.qs, scorer.ks, scorer.qy, scorer.qx, step, radii, num_radii, seed,
                          iteration, pixel, [&](int candidate, int ky, int kx) {
                            if (!list.contains(candidate) && window.allows(ky, kx)) scratch[count++] = candidate;
                          });
  offer_all(list, scorer, scratch, count, 1);
}

// ------------------------------------------------------------------------------ NNF upsampling

// Candidate `m * window^2 + i * window + j` of fine query pixel (y, x), see nnf_upsample.
// `coarse` is this batch item's coarse NNF, laid out (K, coarse height, coarse width).
HOST_DEVICE void upsample_pixel(int* out, int out_stride, const int* coarse, int k, int y, int x,
                                MapSize coarse_query, MapSize query, MapSize coarse_key, MapSize key, int window,
                                int dilation) {
  // In 64 bits: products of two map sides, and of a window offset and the dilation, can pass 2^31.
  const int64_t cy = int64_t{y} * coarse_query.height / query.height;
  const int64_t cx = int64_t{x} * coarse_query.width / query.width;
  const int64_t off_y = ((y - cy * query.height / coarse_query.height) * key.height * coarse_query.height) /
                        (int64_t{query.height} * coarse_key.height);
  const int64_t off_x = ((x - cx * query.width / coarse_query.width) * key.width * coarse_query.width) /
                        (int64_t{query.width} * coarse_key.width);
  const int first = (window - 1) / 2;
  for (int m = 0; m < k; ++m) {
    const int match = clamp_int(coarse[int64_t{m} * coarse_query.pixels() + cy * coarse_query.width + cx], 0,
                                coarse_key.pixels() - 1);
    const int64_t base_y = int64_t{match / coarse_key.width} * key.height / coarse_key.height + off_y;
    const int64_t base_x = int64_t{match % coarse_key.width} * key.width / coarse_key.width + off_x;
    for (int i = 0; i < window; ++i) {
      const int gy = clamp_int(base_y + int64_t{i - first} * dilation, 0, key.height - 1);
      for (int j = 0; j < window; ++j) {
        const int gx = clamp_int(base_x + int64_t{j - first} * dilation, 0, key.width - 1);
        out[((int64_t{m} * window + i) * window + j) * out_stride] = gy * key.width + gx;
      }
    }
  }
}

// ------------------------------------------------------------------------------ weighted gathers

// A continuous (x, y) key position as four corners and their bilinear weights, clamped to the
// map (border padding). `moves_x`/`moves_y`: whether the coordinate was inside, so has a gradient.
template <typename T>
struct Bilinear {
  int corner[4];  // flat key indices: (y0, x0), (y0, x1), (y1, x0), (y1, x1)
  T weight[4];
  T wx, wy;
  bool moves_x, moves_y;

  HOST_DEVICE Bilinear(T x, T y, MapSize ks) {
    moves_x = x >= 0 && x <= ks.width - 1;
    moves_y = y >= 0 && y <= ks.height - 1;
    // Written so that a NaN coordinate lands on 0 instead of indexing out of the map.
    x = x >= 0 ? (x <= ks.width - 1 ? x : T(ks.width - 1)) : T(0);
    y = y >= 0 ? (y <= ks.height - 1 ? y : T(ks.height - 1)) : T(0);
    const int x0 = static_cast<int>(x), y0 = static_cast<int>(y);  // x, y >= 0: truncation is floor
    const int x1 = x0 + 1 < ks.width ? x0 + 1 : ks.width - 1;
    const int y1 = y0 + 1 < ks.height ? y0 + 1 : ks.height - 1;
    wx = x - x0;
    wy = y - y0;
    corner[0] = y0 * ks.width + x0;
    corner[1] = y0 * ks.width + x1;
    corner[2] = y1 * ks.width + x0;
    corner[3] = y1 * ks.width + x1;
    weight[0] = (1 - wx) * (1 - wy);
    weight[1] = wx * (1 - wy);
    weight[2] = (1 - wx) * wy;
    weight[3] = wx * wy;
  }

  // <a, t(x, y)> from the inner products with the four corners.
  HOST_DEVICE T blend(const T corner_dots[4]) const {
    const T top = corner_dots[0] * (1 - wx) + corner_dots[1] * wx;
    const T bottom = corner_dots[2] * (1 - wx) + corner_dots[3] * wx;
    return top * (1 - wy) + bottom * wy;
  }

  // d<a, t(x, y)>/dx and /dy from the same corner products; zero where clamped.
  HOST_DEVICE T d_dx(const T c[4]) const { return moves_x ? (c[1] - c[0]) * (1 - wy) + (c[3] - c[2]) * wy : T(0); }
  HOST_DEVICE T d_dy(const T c[4]) const { return moves_y ? (c[2] - c[0]) * (1 - wx) + (c[3] - c[1]) * wx : T(0); }
};

// softmax_k(dots / temperature) in place. Shifting by the maximum before dividing keeps a tiny
// temperature finite: it tends to the arg-max instead of inf - inf.
template <typename T>
HOST_DEVICE void softmax_inplace(T* dots, int k, T temperature) {
  T top = dots[0];
  for (int i = 1; i < k; ++i) top = dots[i] > top ? dots[i] : top;
  T total = 0;
  for (int i = 0; i < k; ++i) {
    dots[i] = exp_of((dots[i] - top) / temperature);
    total += dots[i];
  }
  for (int i = 0; i < k; ++i) dots[i] /= total;
}

// Forward of weighted_gather for one pixel: `weights` (k scratch) ends as the softmax weights.
template <typename T>
HOST_DEVICE void weighted_gather_pixel(T* out, T* weights, const T* query_pixel, const T* key, const T* value,
                                       const int* nnf, int nnf_stride, int k, int channels, int value_channels,
                                       T temperature) {
  for (int i = 0; i < k; ++i)
    weights[i] = dot(query_pixel, key + static_cast<int64_t>(nnf[int64_t{i} * nnf_stride]) * channels, channels);
  softmax_inplace(weights, k, temperature);
  for (int c = 0; c < value_channels; ++c) out[c] = 0;
  for (int i = 0; i < k; ++i) {
    const T* v = value + static_cast<int64_t>(nnf[int64_t{i} * nnf_stride]) * value_channels;
    for (int c = 0; c < value_channels; ++c) out[c] += weights[i] * v[c];
  }
}

// Backward of weighted_gather for one pixel. On return `weights` holds the softmax weights and
// `logit_grads` dL/dlogit / T (the coefficient of query and key in each other's gradient), and
// `grad_query_pixel` is complete. The key and value gradients are scattered by the caller.
template <typename T>
HOST_DEVICE void weighted_gather_backward_pixel(T* grad_query_pixel, T* weights, T* logit_grads, const T* grad_out_pixel,
                                                const T* query_pixel, const T* key, const T* value, const int* nnf,
                                                int nnf_stride, int k, int channels, int value_channels,
                                                T temperature) {
  T mean_grad = 0;
  for (int i = 0; i < k; ++i) {
    const int64_t q = nnf[int64_t{i} * nnf_stride];
    weights[i] = dot(query_pixel, key + q * channels, channels);
    logit_grads[i] = dot(grad_out_pixel, value + q * value_channels, value_channels);
  }
  softmax_inplace(weights, k, temperature);
  for (int i = 0; i < k; ++i) mean_grad += weights[i] * logit_grads[i];
  for (int c = 0; c < channels; ++c) grad_query_pixel[c] = 0;
  for (int i = 0; i < k; ++i) {
    logit_grads[i] = weights[i] * (logit_grads[i] - mean_grad) / temperature;
    const T* kf = key + static_cast<int64_t>(nnf[int64_t{i} * nnf_stride]) * channels;
    for (int c = 0; c < channels; ++c) grad_query_pixel[c] += logit_grads[i] * kf[c];
  }
}

// Inner products of `a` with the four corners of `t`.
template <typename T>
HOST_DEVICE void corner_dots(T out[4], const T* a, const T* t, const Bilinear<T>& b, int channels) {
  for (int c = 0; c < 4; ++c) out[c] = dot(a, t + static_cast<int64_t>(b.corner[c]) * channels, channels);
}

// Forward of bilinear_weighted_gather for one pixel; `coords` holds k (x, y) pairs.
template <typename T>
HOST_DEVICE void bilinear_gather_pixel(T* out, T* weights, const T* query_pixel, const T* key, const T* value,
                                       const T* coords, int coords_stride, int k, MapSize ks, int channels,
                                       int value_channels, T temperature) {
  for (int i = 0; i < k; ++i) {
    const Bilinear<T> b(coords[int64_t{i} * coords_stride], coords[int64_t{i} * coords_stride + 1], ks);
    T dots[4];
    corner_dots(dots, query_pixel, key, b, channels);
    weights[i] = b.blend(dots);
  }
  softmax_inplace(weights, k, temperature);
  for (int c = 0; c < value_channels; ++c) out[c] = 0;
  for (int i = 0; i < k; ++i) {
    const Bilinear<T> b(coords[int64_t{i} * coords_stride], coords[int64_t{i} * coords_stride + 1], ks);
    for (int n = 0; n < 4; ++n) {
      const T w = weights[i] * b.weight[n];
      const T* v = value + static_cast<int64_t>(b.corner[n]) * value_channels;
      for (int c = 0; c < value_channels; ++c) out[c] += w * v[c];
    }
  }
}

// Backward of bilinear_weighted_gather for one pixel. Writes the query gradient and the (x, y)
// gradient of each coordinate, and per candidate the coefficients of the scatter the caller
// does: key corner[4i+n] gets key_coef[4i+n] * query, value corner[4i+n] gets
// value_coef[4i+n] * grad_out.
template <typename T>
HOST_DEVICE void bilinear_gather_backward_pixel(T* grad_query_pixel, T* grad_coords, int grad_coords_stride, T* weights,
                                                T* key_coef, T* value_coef, int* corners, const T* grad_out_pixel,
                                                const T* query_pixel, const T* key, const T* value, const T* coords,
                                                int coords_stride, int k, MapSize ks, int channels,
                                                int value_channels, T temperature) {
  // weights[i]: softmax weight; key_coef/value_coef first hold per-candidate intermediates.
  for (int i = 0; i < k; ++i) {
    const Bilinear<T> b(coords[int64_t{i} * coords_stride], coords[int64_t{i} * coords_stride + 1], ks);
    T kd[4], vd[4];
    corner_dots(kd, query_pixel, key, b, channels);
    corner_dots(vd, grad_out_pixel, value, b, value_channels);
    weights[i] = b.blend(kd);
    key_coef[4 * i] = b.blend(vd);  // g_i = <grad_out, v(x_i)>
    // d<query, key(x)>/dx, /dy and d<grad_out, value(x)>/dx, /dy, kept until the weights exist.
    key_coef[4 * i + 1] = b.d_dx(kd);
    key_coef[4 * i + 2] = b.d_dy(kd);
    value_coef[4 * i] = b.d_dx(vd);
    value_coef[4 * i + 1] = b.d_dy(vd);
  }
  softmax_inplace(weights, k, temperature);
  T mean_grad = 0;
  for (int i = 0; i < k; ++i) mean_grad += weights[i] * key_coef[4 * i];
  for (int c = 0; c < channels; ++c) grad_query_pixel[c] = 0;
  for (int i = 0; i < k; ++i) {
    const Bilinear<T> b(coords[int64_t{i} * coords_stride], coords[int64_t{i} * coords_stride + 1], ks);
    const T logit_grad = weights[i] * (key_coef[4 * i] - mean_grad) / temperature;
    grad_coords[int64_t{i} * grad_coords_stride] = logit_grad * key_coef[4 * i + 1] + weights[i] * value_coef[4 * i];
    grad_coords[int64_t{i} * grad_coords_stride + 1] = logit_grad * key_coef[4 * i + 2] + weights[i] * value_coef[4 * i + 1];
    for (int n = 0; n < 4; ++n) {
      const T* kf = key + static_cast<int64_t>(b.corner[n]) * channels;
      const T coef = logit_grad * b.weight[n];
      for (int c = 0; c < channels; ++c) grad_query_pixel[c] += coef * kf[c];
    }
    for (int n = 0; n < 4; ++n) {
      key_coef[4 * i + n] = logit_grad * b.weight[n];
      value_coef[4 * i + n] = weights[i] * b.weight[n];
      corners[4 * i + n] = b.corner[n];
    }
  }
}

// ------------------------------------------------------------------------------ bilinear scores

// The patch score of query pixel (qy, qx) at the continuous key position (x, y): the mean over
// the (2 * radius + 1)^2 window of <query[qy + dy, qx + dx], key sampled bilinearly at
// (x + dx, y + dy)>, dividing by the full window like patch_score. The centre term always
// counts, border-clamped like bilinear_weighted_gather (so at radius 0 this is the gather's
// logit); an off-centre term counts when its query pixel is inside the query map and its
// position lies in [0, Wk - 1] x [0, Hk - 1]. At integer positions inside the key map it equals
// patch_score for finite features. No rankable(): these scores are read, not ranked, so a NaN
// feature gives a NaN score.
template <typename T>
HOST_DEVICE T bilinear_patch_score(const T* query, const T* key, int channels, MapSize qs, MapSize ks, int qy, int qx,
                                   T x, T y, int radius) {
  T total = 0;
  for (int dy = -radius; dy <= radius; ++dy) {
    for (int dx = -radius; dx <= radius; ++dx) {
      const T sx = x + static_cast<T>(dx), sy = y + static_cast<T>(dy);
      const bool centre = dx == 0 && dy == 0;
      if (!centre && (!qs.contains(qy + dy, qx + dx) || !(sx >= 0 && sx <= ks.width - 1) ||
                      !(sy >= 0 && sy <= ks.height - 1)))
        continue;
      const Bilinear<T> b(sx, sy, ks);
      T dots[4];
      corner_dots(dots, query + static_cast<int64_t>((qy + dy) * qs.width + qx + dx) * channels, key, b, channels);
      total += b.blend(dots);
    }
  }
  const int side = 2 * radius + 1;
  return radius == 0 ? total : total / static_cast<T>(side * side);
}

// ------------------------------------------------------------------------------ shared matches

// share_matches for one query pixel: its own matches, with the scores they came with, compete
// with the first `top` matches of each of its `count` neighbours (flat query indices; entries
// outside [0, query_pixels) are none), read from this batch item's NNF `nnf` ((Hq, Wq, k), best
// first). Own entries are offered first, so a neighbour's copy of one is never rescored; a pixel
// left with fewer than k distinct entries (repeats in its own list) is topped up as
// initial_topk does with seed 0, so the result is evaluate_candidates' of the same candidates
// whenever the given scores are the ones the scorer computes. With `scratch` (room for
// count * top) the neighbours' candidates are listed first, so the CPU can prefetch their key
// rows across neighbours; without it (the GPU) each is offered as it is read. The order of the
// offers, and so the result, is the same.
template <typename T, typename Score, typename List>
HOST_DEVICE void share_pixel_matches(List& list, int* scratch, const Score& scorer, const int* nnf, const T* own_score,
                                     const int* neighbours, int count, int top, int query_pixels, uint32_t pixel) {
  const int key_pixels = scorer.ks.pixels();
  const int* own = nnf + static_cast<int64_t>(pixel) * list.k;
  for (int i = 0; i < list.k; ++i) {
    const int candidate = own[i];
    const T s = rankable(own_score[i]);
    if (candidate >= 0 && candidate < key_pixels && !list.contains(candidate) && list.admits(s, candidate))
      list.insert(candidate, s);
  }
  if (scratch == nullptr) {
    for (int m = 0; m < count; ++m) {
      const int neighbour = neighbours[m];
      if (neighbour >= 0 && neighbour < query_pixels)
        offer_all(list, scorer, nnf + static_cast<int64_t>(neighbour) * list.k, top, 1);
    }
  } else {
    int listed = 0;
    for (int m = 0; m < count; ++m) {
      const int neighbour = neighbours[m];
      if (neighbour < 0 || neighbour >= query_pixels) continue;
      for (int t = 0; t < top; ++t) scratch[listed++] = nnf[static_cast<int64_t>(neighbour) * list.k + t];
    }
    offer_all(list, scorer, scratch, listed, 1);
  }
  initial_topk(list, scorer, static_cast<const int*>(nullptr), 0, 1, 0u, pixel);
}

}  // namespace cocosnet_ops
