// CPU kernel of exact_knn: brute-force top-k by inner product, in tiles.
//
// Each task takes a block of query rows and walks the key map in tiles of columns: one matrix
// product (the vendor GEMM) fills a tile of scores small enough to stay in cache, and every row
// merges its part of the tile into its running top k (a heap) right away. Columns arrive in
// ascending index order, so a score equal to the worst listed one never enters: ties go to the
// lower index by construction. Most groups of columns hold no score above a row's worst listed
// one, so the scan is mostly one vectorised compare per group. Memory: one tile per thread.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "common.h"

namespace cocosnet_ops {
namespace {

// Query rows per task and key columns per tile: a float32 tile (512 KiB) stays in L2, and the
// GEMM packs each key tile once per 256 rows and each row block once per 512 keys (measured:
// 10% faster than 128 x 1024 at side 256, no better with larger tiles).
constexpr int64_t kRowsPerBlock = 256;
constexpr int64_t kColumnsPerTile = 512;
// Columns compared with a row's worst listed score at once.
constexpr int kScanGroup = 16;

// Whether any of scores[0, kScanGroup) is above `threshold`; NaN never is (it ranks last, so it
// never enters a full list).
template <typename T>
inline bool any_above(const T* scores, T threshold) {
  bool any = false;
  for (int u = 0; u < kScanGroup; ++u) any |= scores[u] > threshold;
  return any;
}

#if defined(__SSE2__)
// The same in SSE2 registers, which every x86-64 processor has: GCC leaves the loop above scalar.
template <>
inline bool any_above<float>(const float* scores, float threshold) {
  const __m128 t = _mm_set1_ps(threshold);
  __m128 hit = _mm_cmpgt_ps(_mm_loadu_ps(scores), t);
  for (int u = 4; u < kScanGroup; u += 4) hit = _mm_or_ps(hit, _mm_cmpgt_ps(_mm_loadu_ps(scores + u), t));
  return _mm_movemask_ps(hit) != 0;
}
#endif

// A row's running top k: a binary heap of (score, index) pairs in the caller's storage with
// the worst-ranked at the root, so an entry costs O(log k) whatever k is, and a final sort.
template <typename T>
struct RunningTopK {
  int* index;
  T* score;
  int k;
  int count;

  static bool worse(T score_a, int index_a, T score_b, int index_b) {
    return ranks_before(score_b, index_b, score_a, index_a);
  }

  // Place (s, candidate) at hole `i` of the first n entries, moving worse children up.
  void sift_down(int i, int n, int candidate, T s) {
    for (int child = 2 * i + 1; child < n; i = child, child = 2 * i + 1) {
      if (child + 1 < n && worse(score[child + 1], index[child + 1], score[child], index[child])) ++child;
      if (!worse(score[child], index[child], s, candidate)) break;
      index[i] = index[child];
      score[i] = score[child];
    }
    index[i] = candidate;
    score[i] = s;
  }

  void push(int candidate, T s) {
    int i = count++;
    for (int parent = (i - 1) / 2; i > 0 && worse(s, candidate, score[parent], index[parent]);
         i = parent, parent = (i - 1) / 2) {
      index[i] = index[parent];
      score[i] = score[parent];
    }
    index[i] = candidate;
    score[i] = s;
  }

  // Merge scores[0, n) of key columns first, first + 1, ...: each column ranks after every
  // listed one of an equal score, so only a strictly higher score than the worst enters.
  void merge(const T* scores, int n, int first) {
    int j = 0;
    for (; j < n && count < k; ++j) push(first + j, rankable(scores[j]));
    T worst = score[0];
    for (; j + kScanGroup <= n; j += kScanGroup) {
      if (!any_above(scores + j, worst)) continue;
      for (int u = 0; u < kScanGroup; ++u) {
        if (scores[j + u] > worst) {
          sift_down(0, k, first + j + u, scores[j + u]);
          worst = score[0];
        }
      }
    }
    for (; j < n; ++j) {
      if (scores[j] > worst) {
        sift_down(0, k, first + j, scores[j]);
        worst = score[0];
      }
    }
  }

  // Heap sort in place: the worst goes last, leaving the list best first.
  void sort_best_first() {
    for (int n = count; n > 1; --n) {
      const int last_index = index[n - 1];
      const T last_score = score[n - 1];
      index[n - 1] = index[0];
      score[n - 1] = score[0];
      sift_down(0, n - 1, last_index, last_score);
    }
  }
};

// `rows` (B, Nq, C), `keys` (B, C, Nk); writes each query row's top k to index and score
// (B, Nq, k), best first. Blocks of query rows go to the threads one at a time from a shared
// counter instead of in equal shares up front: on a busy machine a descheduled thread then
// holds back one block, not half the work. Each row's result depends only on its block, so
// not on the thread that computed it; and every thread is started even for fewer blocks, so
// the GEMM always runs inside the parallel region, single-threaded: the same kernel, so the
// same bits, whatever the thread count (on a given processor; vendor GEMMs differ between them).
template <typename T>
void knn_by_blocks(const at::Tensor& rows, const at::Tensor& keys, int k, int* index, T* score) {
  const int64_t num_rows = rows.size(1), num_keys = keys.size(2);
  const int64_t blocks_per_item = (num_rows + kRowsPerBlock - 1) / kRowsPerBlock;
  const int64_t blocks = rows.size(0) * blocks_per_item;
  std::atomic<int64_t> next_block{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    at::Tensor tile = at::empty({kRowsPerBlock, std::min(kColumnsPerTile, num_keys)}, rows.options());
    for (int64_t block = next_block++; block < blocks; block = next_block++) {
      const int64_t item = block / blocks_per_item, first_row = (block % blocks_per_item) * kRowsPerBlock;
      const int64_t n_rows = std::min(kRowsPerBlock, num_rows - first_row);
      const at::Tensor block_rows = rows[item].narrow(0, first_row, n_rows);
      int* block_index = index + (item * num_rows + first_row) * k;
      T* block_score = score + (item * num_rows + first_row) * k;
      for (int64_t first_key = 0; first_key < num_keys; first_key += kColumnsPerTile) {
        const int64_t n_keys = std::min(kColumnsPerTile, num_keys - first_key);
        at::Tensor scores = tile.narrow(0, 0, n_rows).narrow(1, 0, n_keys);
        at::mm_out(scores, block_rows, keys[item].narrow(1, first_key, n_keys));
        const T* s = scores.data_ptr<T>();
        const int64_t stride = scores.stride(0);
        // Every column before first_key entered a row's list until it was full.
        const int listed = static_cast<int>(std::min<int64_t>(k, first_key));
        for (int64_t r = 0; r < n_rows; ++r) {
          RunningTopK<T> list{block_index + r * k, block_score + r * k, k, listed};
          list.merge(s + r * stride, static_cast<int>(n_keys), static_cast<int>(first_key));
        }
      }
      for (int64_t r = 0; r < n_rows; ++r)
        RunningTopK<T>{block_index + r * k, block_score + r * k, k, k}.sort_best_first();
    }
  });
}

std::tuple<at::Tensor, at::Tensor> exact_knn_cpu(const at::Tensor& query, const at::Tensor& key, int64_t k) {
  check_pair(query, key);
  const int64_t B = query.size(0), Nq = query.size(2) * query.size(3), Nk = key.size(2) * key.size(3);
  TORCH_CHECK_VALUE(k >= 1 && k <= Nk, "k: expected 1 <= k <= key pixels, got ", k);
  const at::Tensor rows = query.flatten(2).transpose(1, 2);  // (B, Nq, C)
  const at::Tensor keys = key.flatten(2).contiguous();        // (B, C, Nk)
  at::Tensor index = at::empty({B, Nq, k}, query.options().dtype(at::kInt));
  at::Tensor score = at::empty({B, Nq, k}, query.options());
  AT_DISPATCH_FLOATING_TYPES(query.scalar_type(), "exact_knn_cpu", [&] {
    knn_by_blocks<scalar_t>(rows, keys, static_cast<int>(k), index.data_ptr<int>(), score.data_ptr<scalar_t>());
  });
  const auto shape = std::vector<int64_t>{B, k, query.size(2), query.size(3)};
  return {index.transpose(1, 2).reshape(shape).contiguous(), score.transpose(1, 2).reshape(shape).contiguous()};
}

}  // namespace

TORCH_LIBRARY_IMPL(cocosnet_ops, CPU, m) { m.impl("exact_knn", &exact_knn_cpu); }

}  // namespace cocosnet_ops
