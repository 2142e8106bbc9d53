// Float32 attention for the CPU backend: tiled online softmax with register-blocked products.
//
// A work item is (KV head g, a tile of up to kRowTile query rows, a range of keys). Its "states"
// are the (row, query head of g's group) pairs, rows x group of them, so every K/V element loaded
// is used by all the query heads that share it (GQA). Per tile of kKeyTile keys:
//   1. K tile transposed into kt[D][keys], so that scores = Q kt is a product whose inner loop
//      runs over contiguous keys;
//   2. scores masked, then an online-softmax step per state (running max m, running sum l in
//      double, rescaling of the accumulator when the max grows);
//   3. acc += P V, with V read in place (its rows are contiguous over D).
// Both products go through one register-blocked micro-kernel (block_product) written with GCC
// vector types. The work-item body is compiled twice: for AVX2+FMA (8-lane vectors, picked at run
// time by __builtin_cpu_supports) and for baseline x86-64 (SSE2, 4 lanes), so the binary runs on
// any x86-64 CPU without -march flags.
#include "runtime/cpu_attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace starattn {

namespace {

#define STARATTN_ALWAYS_INLINE inline __attribute__((always_inline))

// GCC vector types: a generic vector expression compiles to whatever the enclosing function's
// target offers (ymm + FMA in the AVX2 variant, xmm in the baseline one).
typedef float Vec4 __attribute__((vector_size(16)));
typedef float Vec8 __attribute__((vector_size(32)));

// Query rows per work item: the K/V tile is reused across rows x (query heads of the group).
constexpr int64_t kRowTile = 16;
// Columns of one micro-kernel block (two AVX2 vectors, four SSE ones).
constexpr int kCols = 16;
// Keys per inner tile: kt is D x 64 floats (16-32 KiB), the score tile rows x group x 64.
constexpr int kKeyTile = 64;
static_assert(kKeyTile % kCols == 0, "score tiles are whole micro-kernel blocks");
// Smallest key range worth giving its own work item when the keys are split across threads.
constexpr int64_t kMinSplitKeys = 512;

struct AttnShape {
  int64_t T = 0, S = 0;
  int hq = 0, hkv = 0, group = 0, d = 0;
  float scale = 1.0f;
  MaskKind mask = MaskKind::none;
  int64_t offset = 0;
};

const float* row_ptr(const Tensor& t, int64_t r) { return static_cast<const float*>(t.data) + r * t.stride; }
float* row_ptr_mut(const Tensor& t, int64_t r) { return static_cast<float*>(t.data) + r * t.stride; }

// Number of keys query row i sees: a prefix [0, n) of the keys (written to avoid overflow for
// any offset).
int64_t visible_keys(const AttnShape& a, int64_t i) {
  if (a.mask == MaskKind::none || a.offset >= a.S) return a.S;
  if (a.offset < -i) return 0;  // i + offset + 1 <= 0
  return std::min(a.S, i + a.offset + 1);
}

// One thread's working memory for a work item with n states (sized for the largest item).
struct Scratch {
  float* q;    // [n][D]        the group's query vectors, pre-multiplied by the scale
  float* kt;   // [D][kKeyTile] transposed K tile, keys past the tile's end zero
  float* p;    // [n][kKeyTile] scores, then unnormalised probabilities
  float* acc;  // [n][D]        unnormalised output sum_j p_j v_j
  float* m;    // [n]           running max of the scores
  double* l;   // [n]           running sum of exp(score - m); double so long rows stay exact
};

// ---- micro-kernel ----

// c[r][0..kCols) (+)= sum_k a[r][k] * b[k][0..kCols) for r < R. The R x kCols accumulators
// stay in registers for the whole k loop, so every b vector loaded feeds R multiply-adds.
template <typename V, int R>
STARATTN_ALWAYS_INLINE void block_product(const float* a, int64_t lda, const float* b, int64_t ldb,
                                          int64_t K, float* c, int64_t ldc, bool accumulate) {
  constexpr int kLanes = static_cast<int>(sizeof(V) / sizeof(float));
  constexpr int kVecs = kCols / kLanes;
  V acc[R][kVecs];
  for (int r = 0; r < R; ++r)
    for (int n = 0; n < kVecs; ++n) {
      if (accumulate)
        std::memcpy(&acc[r][n], c + r * ldc + n * kLanes, sizeof(V));
      else
        acc[r][n] = V{};
    }
  for (int64_t k = 0; k < K; ++k) {
    V bv[kVecs];
    for (int n = 0; n < kVecs; ++n) std::memcpy(&bv[n], b + k * ldb + n * kLanes, sizeof(V));
    for (int r = 0; r < R; ++r) {
      const float x = a[r * lda + k];
      for (int n = 0; n < kVecs; ++n) acc[r][n] += x * bv[n];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int n = 0; n < kVecs; ++n) std::memcpy(c + r * ldc + n * kLanes, &acc[r][n], sizeof(V));
}

// block_product for the n <= R rows left at the end of a row range (one instantiation per n).
template <typename V, int R>
STARATTN_ALWAYS_INLINE void block_product_rows(int n, const float* a, int64_t lda, const float* b,
                                               int64_t ldb, int64_t K, float* c, int64_t ldc,
                                               bool accumulate) {
  if constexpr (R > 1) {
    if (n < R) {
      block_product_rows<V, R - 1>(n, a, lda, b, ldb, K, c, ldc, accumulate);
      return;
    }
  }
  block_product<V, R>(a, lda, b, ldb, K, c, ldc, accumulate);
}

// c[rows][cols] (+)= a[rows][K] * b[K][cols] (all row-major with the given leading dimensions),
// in RMax-row x kCols-column blocks; columns past the last whole block (head dims that are not a
// multiple of 16) take a plain loop.
template <typename V, int RMax>
STARATTN_ALWAYS_INLINE void product(const float* a, int64_t lda, const float* b, int64_t ldb,
                                    int64_t K, float* c, int64_t ldc, int rows, int cols,
                                    bool accumulate) {
  const int whole = cols / kCols * kCols;
  for (int r0 = 0; r0 < rows; r0 += RMax) {
    const int n = std::min(RMax, rows - r0);
    const float* ar = a + r0 * lda;
    float* cr = c + r0 * ldc;
    for (int c0 = 0; c0 < whole; c0 += kCols)
      block_product_rows<V, RMax>(n, ar, lda, b + c0, ldb, K, cr + c0, ldc, accumulate);
    for (int r = 0; r < n; ++r)
      for (int col = whole; col < cols; ++col) {
        float s = accumulate ? cr[r * ldc + col] : 0.0f;
        for (int64_t k = 0; k < K; ++k) s += ar[r * lda + k] * b[k * ldb + col];
        cr[r * ldc + col] = s;
      }
  }
}

// ---- softmax on vectors ----

// The int32 vector with as many lanes as V (for building 2^n in the exponent bits).
template <typename V>
struct IntVec;
template <>
struct IntVec<Vec4> {
  typedef int32_t type __attribute__((vector_size(16)));
};
template <>
struct IntVec<Vec8> {
  typedef int32_t type __attribute__((vector_size(32)));
};

// Row p[0..kKeyTile) := exp(p - m), returning the sum of the new values. Written on vector types
// with vector selects, because the scalar form does not vectorise: GCC will not if-convert a
// float comparison under the default -ftrapping-math, and std::exp only vectorises with
// -ffast-math.
//
// exp(x), x <= 0: x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in a short-mantissa high part,
// so n * kLn2Hi is exact, and a low correction); exp(r) from its Taylor series to r^7
// (truncation below 6e-9 relative on that interval); 2^n built in the exponent bits. Below
// -87.3 the result is subnormal: 2^n is applied in two halves so that it is still rounded once;
// below -104 (and for -inf, i.e. masked keys) it is 0, as std::exp's float result is. Checked
// against std::exp on every float in [-104, 0], in both compiled variants: within 1.2e-7
// relative (1 ulp) wherever the result is a normal float, within one subnormal step (1.4e-45)
// where it is subnormal.
template <typename V>
STARATTN_ALWAYS_INLINE float exp_row(float* p, float m) {
  typedef typename IntVec<V>::type IV;
  constexpr int kLanes = static_cast<int>(sizeof(V) / sizeof(float));
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // 355 / 512: 9 significant bits
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  constexpr float kLow = -104.0f;
  V sum = V{};
  for (int j = 0; j < kKeyTile; j += kLanes) {
    V x;
    std::memcpy(&x, p + j, sizeof(V));
    x -= m;
    const V xc = x < kLow ? V{} + kLow : x;
    const V n = (xc * kLog2e + kRound) - kRound;
    const V r = (xc - n * kLn2Hi) - n * kLn2Lo;
    V poly = V{} + 1.0f / 5040;
    poly = poly * r + 1.0f / 720;
    poly = poly * r + 1.0f / 120;
    poly = poly * r + 1.0f / 24;
    poly = poly * r + 1.0f / 6;
    poly = poly * r + 0.5f;
    poly = poly * r + 1.0f;
    poly = poly * r + 1.0f;
    const IV ni = __builtin_convertvector(n, IV);
    const IV n1 = ni >> 1;  // floor(n / 2): both halves of 2^n stay normal floats
    const IV bits1 = (n1 + 127) << 23, bits2 = (ni - n1 + 127) << 23;
    V s1, s2;
    std::memcpy(&s1, &bits1, sizeof(V));
    std::memcpy(&s2, &bits2, sizeof(V));
    const V e = x < kLow ? V{} : poly * s1 * s2;
    std::memcpy(p + j, &e, sizeof(V));
    sum += e;
  }
  float total = 0.0f;
  for (int l = 0; l < kLanes; ++l) total += sum[l];
  return total;
}

// max of p[0..kKeyTile).
template <typename V>
STARATTN_ALWAYS_INLINE float max_row(const float* p) {
  constexpr int kLanes = static_cast<int>(sizeof(V) / sizeof(float));
  V mx = V{} - INFINITY;
  for (int j = 0; j < kKeyTile; j += kLanes) {
    V x;
    std::memcpy(&x, p + j, sizeof(V));
    mx = x > mx ? x : mx;
  }
  float m = -INFINITY;
  for (int l = 0; l < kLanes; ++l) m = std::max(m, mx[l]);
  return m;
}

// ---- K tile transpose ----

// kt[c][j] = K[j0 + j][g * D + c] for the tile's nk keys. Whole lanes x lanes blocks go through
// register shuffles (the lane-wise unpack / shuffle / 128-bit permute patterns, which GCC maps
// to single instructions); leftover keys and dims are copied one by one.
template <typename V>
STARATTN_ALWAYS_INLINE void transpose_keys(const Tensor& k, int64_t j0, int nk, int g, int d, float* kt) {
  constexpr int kLanes = static_cast<int>(sizeof(V) / sizeof(float));
  const int nk_blocks = nk / kLanes * kLanes, d_blocks = d / kLanes * kLanes;
  for (int jb = 0; jb < nk_blocks; jb += kLanes) {
    const float* src[kLanes];
    for (int i = 0; i < kLanes; ++i) src[i] = row_ptr(k, j0 + jb + i) + static_cast<int64_t>(g) * d;
    for (int cb = 0; cb < d_blocks; cb += kLanes) {
      V r[kLanes], t[kLanes];
      for (int i = 0; i < kLanes; ++i) std::memcpy(&r[i], src[i] + cb, sizeof(V));
      if constexpr (kLanes == 8) {
        V u[8], w[8];
        for (int i = 0; i < 8; i += 2) {
          u[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
          u[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
        }
        for (int i = 0; i < 8; i += 4)
          for (int h = 0; h < 2; ++h) {
            w[i + 2 * h] = __builtin_shufflevector(u[i + h], u[i + 2 + h], 0, 1, 8, 9, 4, 5, 12, 13);
            w[i + 2 * h + 1] = __builtin_shufflevector(u[i + h], u[i + 2 + h], 2, 3, 10, 11, 6, 7, 14, 15);
          }
        for (int i = 0; i < 4; ++i) {
          t[i] = __builtin_shufflevector(w[i], w[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
          t[i + 4] = __builtin_shufflevector(w[i], w[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
        }
      } else {
        static_assert(kLanes == 4, "4- or 8-lane vectors");
        const V u0 = __builtin_shufflevector(r[0], r[1], 0, 4, 1, 5);
        const V u1 = __builtin_shufflevector(r[0], r[1], 2, 6, 3, 7);
        const V u2 = __builtin_shufflevector(r[2], r[3], 0, 4, 1, 5);
        const V u3 = __builtin_shufflevector(r[2], r[3], 2, 6, 3, 7);
        t[0] = __builtin_shufflevector(u0, u2, 0, 1, 4, 5);
        t[1] = __builtin_shufflevector(u0, u2, 2, 3, 6, 7);
        t[2] = __builtin_shufflevector(u1, u3, 0, 1, 4, 5);
        t[3] = __builtin_shufflevector(u1, u3, 2, 3, 6, 7);
      }
      for (int i = 0; i < kLanes; ++i) std::memcpy(kt + (cb + i) * kKeyTile + jb, &t[i], sizeof(V));
    }
    for (int i = 0; i < kLanes; ++i)
      for (int c = d_blocks; c < d; ++c) kt[c * kKeyTile + jb + i] = src[i][c];
  }
  for (int j = nk_blocks; j < nk; ++j) {
    const float* kr = row_ptr(k, j0 + j) + static_cast<int64_t>(g) * d;
    for (int c = 0; c < d; ++c) kt[c * kKeyTile + j] = kr[c];
  }
}

// ---- one work item ----

// Folds keys [kb, ke) of KV head g into the states of rows [i0, i1); state s is row
// i0 + s / group, query head g * group + s % group. Leaves m, l, acc in the scratch.
template <typename V, int RMax>
STARATTN_ALWAYS_INLINE void attend_item_impl(const AttentionArgs& a, const AttnShape& sh, int g,
                                             int64_t i0, int64_t i1, int64_t kb, int64_t ke,
                                             const Scratch& w) {
  const int d = sh.d, group = sh.group;
  const int n = static_cast<int>(i1 - i0) * group;
  for (int s = 0; s < n; ++s) {
    const float* src = row_ptr(a.q, i0 + s / group) + static_cast<int64_t>(g * group + s % group) * d;
    float* dst = w.q + static_cast<int64_t>(s) * d;
    for (int c = 0; c < d; ++c) dst[c] = src[c] * sh.scale;
  }
  std::fill(w.m, w.m + n, -INFINITY);
  std::fill(w.l, w.l + n, 0.0);
  std::fill(w.acc, w.acc + static_cast<int64_t>(n) * d, 0.0f);

  for (int64_t j0 = kb; j0 < ke; j0 += kKeyTile) {
    const int nk = static_cast<int>(std::min<int64_t>(kKeyTile, ke - j0));
    transpose_keys<V>(a.k, j0, nk, g, d, w.kt);
    if (nk < kKeyTile)
      for (int c = 0; c < d; ++c) std::fill(w.kt + c * kKeyTile + nk, w.kt + (c + 1) * kKeyTile, 0.0f);

    // With few states (decoding) this loop does little arithmetic per byte of K and V and waits
    // on memory; ask for the next tile's rows now so they arrive while this tile is computed.
    const int64_t next_keys = std::min<int64_t>(kKeyTile, ke - (j0 + kKeyTile));
    for (int64_t j = 0; j < next_keys; ++j)
      for (int c = 0; c < d; c += 64 / static_cast<int>(sizeof(float))) {
        __builtin_prefetch(row_ptr(a.k, j0 + kKeyTile + j) + static_cast<int64_t>(g) * d + c);
        __builtin_prefetch(row_ptr(a.v, j0 + kKeyTile + j) + static_cast<int64_t>(g) * d + c);
      }

    product<V, RMax>(w.q, d, w.kt, kKeyTile, d, w.p, kKeyTile, n, kKeyTile, false);

    for (int s = 0; s < n; ++s) {
      float* p = w.p + static_cast<int64_t>(s) * kKeyTile;
      // The keys this state's row sees form a prefix of the tile.
      const int64_t vis = visible_keys(sh, i0 + s / group);
      const int valid = static_cast<int>(std::clamp<int64_t>(vis - j0, 0, nk));
      // Masked keys and the zero padding past the tile's end weigh exp(-inf) = 0.
      std::fill(p + valid, p + kKeyTile, -INFINITY);
      const float tile_max = max_row<V>(p);
      if (tile_max == -INFINITY) {  // sees nothing here: contributes nothing to the P V product
        std::fill(p, p + kKeyTile, 0.0f);
        continue;
      }
      const float m_old = w.m[s];
      const float m_new = std::max(m_old, tile_max);
      // At most kKeyTile terms <= 1, summed across vector lanes in float, then into l in double.
      const float tile_sum = exp_row<V>(p, m_new);
      // exp(-inf) = 0 clears the (still zero) state on the first tile this state sees.
      const float alpha = std::exp(m_old - m_new);
      if (alpha != 1.0f) {
        float* acc = w.acc + static_cast<int64_t>(s) * d;
        for (int c = 0; c < d; ++c) acc[c] *= alpha;
      }
      w.l[s] = w.l[s] * alpha + tile_sum;
      w.m[s] = m_new;
    }

    product<V, RMax>(w.p, kKeyTile, row_ptr(a.v, j0) + static_cast<int64_t>(g) * d, a.v.stride, nk,
                     w.acc, d, n, d, true);
  }
}

using AttendItemFn = void (*)(const AttentionArgs&, const AttnShape&, int, int64_t, int64_t,
                              int64_t, int64_t, const Scratch&);

// 16 vector registers: 6 rows x 2 ymm accumulators + 2 loads + 1 broadcast.
__attribute__((target("avx2,fma"))) void attend_item_avx2(const AttentionArgs& a, const AttnShape& sh,
                                                          int g, int64_t i0, int64_t i1, int64_t kb,
                                                          int64_t ke, const Scratch& w) {
  attend_item_impl<Vec8, 6>(a, sh, g, i0, i1, kb, ke, w);
}

// 16 xmm registers: 2 rows x 4 accumulators + 4 loads + 1 broadcast.
void attend_item_baseline(const AttentionArgs& a, const AttnShape& sh, int g, int64_t i0, int64_t i1,
                          int64_t kb, int64_t ke, const Scratch& w) {
  attend_item_impl<Vec4, 2>(a, sh, g, i0, i1, kb, ke, w);
}

bool use_avx2() {
  static const bool avx2 = [] {
    const char* force = std::getenv("STARATTN_CPU_ATTENTION");
    if (force != nullptr && std::strcmp(force, "baseline") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return avx2;
}

// Writes o = acc / l and lse = m + ln l for one (row, head); a row that saw nothing (l = 0)
// gets o = 0 and lse = -inf.
void write_output(float m, double l, const float* acc, int d, float* o, float* lse) {
  if (!(l > 0.0)) {
    std::fill(o, o + d, 0.0f);
    *lse = -INFINITY;
    return;
  }
  const double inv = 1.0 / l;
  for (int c = 0; c < d; ++c) o[c] = static_cast<float>(acc[c] * inv);
  *lse = static_cast<float>(static_cast<double>(m) + std::log(l));
}

}  // namespace

int64_t cpu_attention_row_tile() { return kRowTile; }

const char* cpu_attention_isa() { return use_avx2() ? "avx2+fma" : "baseline"; }

void cpu_attention(const AttentionArgs& a) {
  AttnShape sh;
  sh.T = a.q.rows;
  sh.S = a.k.rows;
  sh.hq = a.n_q_heads;
  sh.hkv = a.n_kv_heads;
  sh.group = a.n_q_heads / a.n_kv_heads;
  sh.d = a.head_dim;
  sh.scale = a.scale;
  sh.mask = a.mask;
  sh.offset = a.causal_offset;
  if (sh.T == 0) return;
  const AttendItemFn attend_item = use_avx2() ? attend_item_avx2 : attend_item_baseline;

  // Work items: (KV head, tile of query rows, key split). Splitting the keys keeps every thread
  // busy when there are few query rows (decoding against a long context); the splits are then
  // merged exactly like shard partials.
  const int threads = std::max(1, omp_get_max_threads());
  const int64_t row_tiles = (sh.T + kRowTile - 1) / kRowTile;
  const int64_t base_items = row_tiles * sh.hkv;
  int64_t splits = 1;
  if (base_items < 2 * threads && sh.S >= 2 * kMinSplitKeys)
    splits = std::min((2 * threads + base_items - 1) / base_items, sh.S / kMinSplitKeys);
  const int64_t items = base_items * splits;
  const int64_t max_states = kRowTile * sh.group;
  const int64_t d = sh.d;

  // Per-thread scratch allocated up front (no allocation inside the parallel region).
  const int64_t floats_per_thread = 2 * max_states * d + d * kKeyTile + max_states * kKeyTile + max_states;
  std::vector<float> t_floats(static_cast<size_t>(threads * floats_per_thread));
  std::vector<double> t_l(static_cast<size_t>(threads * max_states));
  // Split states, indexed ((split * T + row) * Hq + head); only used when splits > 1.
  const size_t n_split_states = splits > 1 ? static_cast<size_t>(splits * sh.T * sh.hq) : 0;
  std::vector<float> s_m(n_split_states);
  std::vector<double> s_l(n_split_states);
  std::vector<float> s_acc(n_split_states * static_cast<size_t>(sh.d));

#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num();
    Scratch w;
    w.q = t_floats.data() + tid * floats_per_thread;
    w.acc = w.q + max_states * d;
    w.kt = w.acc + max_states * d;
    w.p = w.kt + d * kKeyTile;
    w.m = w.p + max_states * kKeyTile;
    w.l = t_l.data() + tid * max_states;
#pragma omp for schedule(dynamic, 1)
    for (int64_t item = 0; item < items; ++item) {
      const int g = static_cast<int>(item % sh.hkv);
      // Last row tiles first: under a causal mask they see the most keys, and starting the big
      // items early leaves the small ones to even out the threads at the end.
      const int64_t tile = row_tiles - 1 - (item / sh.hkv) % row_tiles;
      const int64_t split = item / base_items;
      const int64_t i0 = tile * kRowTile, i1 = std::min(sh.T, i0 + kRowTile);
      // Rows see a prefix of the keys that grows with the row, so the last row bounds the tile.
      const int64_t key_end = visible_keys(sh, i1 - 1);
      const int64_t kb = key_end * split / splits, ke = key_end * (split + 1) / splits;
      attend_item(a, sh, g, i0, i1, kb, ke, w);
      for (int64_t i = i0; i < i1; ++i) {
        for (int qh = 0; qh < sh.group; ++qh) {
          const int h = g * sh.group + qh;
          const int64_t s = (i - i0) * sh.group + qh;
          if (splits == 1) {
            write_output(w.m[s], w.l[s], w.acc + s * d, sh.d, row_ptr_mut(a.o, i) + h * d,
                         row_ptr_mut(a.lse, i) + h);
          } else {
            const size_t gs = static_cast<size_t>((split * sh.T + i) * sh.hq + h);
            s_m[gs] = w.m[s];
            s_l[gs] = w.l[s];
            std::copy(w.acc + s * d, w.acc + (s + 1) * d, s_acc.data() + gs * d);
          }
        }
      }
    }
  }
  if (splits == 1) return;

  // Combine the key splits: rescale each to the common max (empty splits have m = -inf, l = 0).
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t rh = 0; rh < sh.T * sh.hq; ++rh) {
    const int64_t i = rh / sh.hq;
    const int h = static_cast<int>(rh % sh.hq);
    float m = -INFINITY;
    for (int64_t sp = 0; sp < splits; ++sp) m = std::max(m, s_m[static_cast<size_t>(sp * sh.T * sh.hq + rh)]);
    float* o = row_ptr_mut(a.o, i) + h * d;
    float* lse = row_ptr_mut(a.lse, i) + h;
    if (m == -INFINITY) {
      write_output(m, 0.0, nullptr, sh.d, o, lse);
      continue;
    }
    double l = 0.0;
    std::fill(o, o + d, 0.0f);  // accumulate the rescaled numerator in o itself
    for (int64_t sp = 0; sp < splits; ++sp) {
      const size_t gs = static_cast<size_t>(sp * sh.T * sh.hq + rh);
      if (!(s_l[gs] > 0.0)) continue;
      const float wgt = std::exp(s_m[gs] - m);
      l += s_l[gs] * wgt;
      const float* acc = s_acc.data() + gs * d;
      for (int c = 0; c < sh.d; ++c) o[c] += wgt * acc[c];
    }
    write_output(m, l, o, sh.d, o, lse);
  }
}

}  // namespace starattn
