// merge_partials: attention over key shards, merged, equals attention over all keys.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "runtime/cpu_backend.h"
#include "tests/support/backend_helpers.h"

namespace starattn {
namespace {

using testing::fetch;
using testing::make;
using testing::random_vec;

struct Problem {
  int64_t T, S;
  int hq, hkv, d;
  std::vector<float> q, k, v;
};

Problem random_problem(std::mt19937& rng, int64_t T, int64_t S, int hq, int hkv, int d) {
  Problem p{T, S, hq, hkv, d, {}, {}, {}};
  p.q = random_vec(rng, static_cast<size_t>(T * hq * d));
  p.k = random_vec(rng, static_cast<size_t>(S * hkv * d));
  p.v = random_vec(rng, static_cast<size_t>(S * hkv * d));
  return p;
}

// One shard's (o, lse) result and the buffers behind it.
struct Shard {
  Buffer o, lse;
};

// Attention of all query rows against the keys listed in `keys` (in that order), with a causal
// mask translated to the shard when `causal` (keys must then be a contiguous run starting at
// keys[0], and the global rule is: row i sees key j iff j <= i + offset).
Shard attend(Backend& be, const Problem& p, const std::vector<int64_t>& keys, bool causal,
             int64_t offset) {
  const int64_t kvd = p.hkv * p.d, n = static_cast<int64_t>(keys.size());
  std::vector<float> k(static_cast<size_t>(n * kvd)), v(k.size());
  for (int64_t j = 0; j < n; ++j) {
    std::copy_n(p.k.begin() + keys[j] * kvd, kvd, k.begin() + j * kvd);
    std::copy_n(p.v.begin() + keys[j] * kvd, kvd, v.begin() + j * kvd);
  }
  Buffer qb = make(be, p.T, p.hq * p.d, p.q), kb = make(be, n, kvd, k), vb = make(be, n, kvd, v);
  Shard s{be.alloc(p.T, p.hq * p.d, DType::f32), be.alloc(p.T, p.hq, DType::f32)};
  AttentionArgs a;
  a.q = qb.view(); a.k = kb.view(); a.v = vb.view(); a.o = s.o.view(); a.lse = s.lse.view();
  a.n_q_heads = p.hq; a.n_kv_heads = p.hkv; a.head_dim = p.d;
  a.scale = 1.0f / std::sqrt(static_cast<float>(p.d));
  if (causal) {
    a.mask = MaskKind::causal;
    a.causal_offset = offset - (keys.empty() ? 0 : keys[0]);
  }
  be.attention(a);
  return s;
}

std::vector<Partial> partials(const std::vector<Shard>& shards, const std::vector<size_t>& order) {
  std::vector<Partial> parts;
  for (size_t i : order) parts.push_back({shards[i].o.view(), shards[i].lse.view()});
  return parts;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double tol,
                  const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t n = 0; n < got.size(); ++n) {
    ASSERT_FALSE(std::isnan(got[n])) << what << " " << n;
    if (std::isinf(want[n])) {
      ASSERT_EQ(got[n], want[n]) << what << " " << n;
    } else {
      ASSERT_NEAR(got[n], want[n], tol) << what << " " << n;
    }
  }
}

// Random cut points (repeats allowed, so some shards are empty) -> contiguous key runs.
std::vector<std::vector<int64_t>> contiguous_shards(std::mt19937& rng, int64_t S, int n_shards) {
  std::vector<int64_t> cuts{0, S};
  std::uniform_int_distribution<int64_t> pick(0, S);
  for (int i = 0; i < n_shards - 1; ++i) cuts.push_back(pick(rng));
  std::sort(cuts.begin(), cuts.end());
  std::vector<std::vector<int64_t>> shards;
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    shards.emplace_back();
    for (int64_t j = cuts[i]; j < cuts[i + 1]; ++j) shards.back().push_back(j);
  }
  return shards;
}

// Every key goes to a random shard (shards are arbitrary subsets; some may stay empty).
std::vector<std::vector<int64_t>> scattered_shards(std::mt19937& rng, int64_t S, int n_shards) {
  std::vector<std::vector<int64_t>> shards(static_cast<size_t>(n_shards));
  std::uniform_int_distribution<int> pick(0, n_shards - 1);
  for (int64_t j = 0; j < S; ++j) shards[static_cast<size_t>(pick(rng))].push_back(j);
  return shards;
}

void check_split(Backend& be, const Problem& p, const std::vector<std::vector<int64_t>>& split,
                 bool causal, int64_t offset, std::mt19937& rng) {
  std::vector<int64_t> all(static_cast<size_t>(p.S));
  std::iota(all.begin(), all.end(), 0);
  const Shard whole = attend(be, p, all, causal, offset);
  const auto want_o = fetch(be, whole.o.view()), want_l = fetch(be, whole.lse.view());

  std::vector<Shard> shards;
  for (const auto& keys : split) shards.push_back(attend(be, p, keys, causal, offset));
  std::vector<size_t> order(shards.size());
  std::iota(order.begin(), order.end(), 0);

  Buffer o = be.alloc(p.T, p.hq * p.d, DType::f32), l = be.alloc(p.T, p.hq, DType::f32);
  be.merge_partials(partials(shards, order), o.view(), l.view());
  const auto got_o = fetch(be, o.view()), got_l = fetch(be, l.view());
  expect_close(got_o, want_o, 1e-5, "o");
  expect_close(got_l, want_l, 1e-5, "lse");

  // Order independence: any permutation of the shards gives the same result.
  for (int trial = 0; trial < 3; ++trial) {
    std::shuffle(order.begin(), order.end(), rng);
    be.merge_partials(partials(shards, order), o.view(), l.view());
    expect_close(fetch(be, o.view()), got_o, 1e-6, "permuted o");
    expect_close(fetch(be, l.view()), got_l, 1e-6, "permuted lse");
  }
}

class Merge : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> be = make_cpu_backend();
};

TEST_F(Merge, ShardedAttentionEqualsWholeAttention) {
  std::mt19937 rng(2024);
  struct Shape { int64_t T, S; int hq, hkv, d; };
  for (const Shape& s : {Shape{5, 40, 4, 2, 16}, Shape{3, 200, 6, 3, 64}, Shape{8, 64, 4, 4, 16},
                         Shape{1, 1500, 4, 2, 64}}) {
    const Problem p = random_problem(rng, s.T, s.S, s.hq, s.hkv, s.d);
    for (int n_shards : {1, 2, 5, 9}) {
      SCOPED_TRACE("T=" + std::to_string(s.T) + " S=" + std::to_string(s.S) + " shards=" +
                   std::to_string(n_shards));
      check_split(*be, p, contiguous_shards(rng, s.S, n_shards), false, 0, rng);
      check_split(*be, p, scattered_shards(rng, s.S, n_shards), false, 0, rng);
    }
  }
}

TEST_F(Merge, CausalShardsWithOffsets) {
  // Contiguous shards of a causal attention with a cached prefix: late shards are invisible to
  // early rows (lse = -inf in that shard) and must weigh nothing.
  std::mt19937 rng(77);
  const Problem p = random_problem(rng, 12, 60, 4, 2, 16);
  for (int64_t offset : {48, 0, -5, 30}) {
    for (int n_shards : {2, 4, 7}) {
      SCOPED_TRACE("offset=" + std::to_string(offset) + " shards=" + std::to_string(n_shards));
      check_split(*be, p, contiguous_shards(rng, p.S, n_shards), true, offset, rng);
    }
  }
}

TEST_F(Merge, AllEmptyAndNoPartials) {
  std::mt19937 rng(5);
  const Problem p = random_problem(rng, 4, 0, 4, 2, 16);
  std::vector<Shard> shards;
  for (int i = 0; i < 3; ++i) shards.push_back(attend(*be, p, {}, false, 0));
  Buffer o = make(*be, 4, 64, random_vec(rng, 4 * 64)), l = make(*be, 4, 4, random_vec(rng, 16));
  be->merge_partials(partials(shards, {0, 1, 2}), o.view(), l.view());
  for (float x : fetch(*be, o.view())) ASSERT_EQ(x, 0.0f);
  for (float x : fetch(*be, l.view())) ASSERT_EQ(x, -INFINITY);

  be->upload(random_vec(rng, 4 * 64).data(), o.view());
  be->merge_partials({}, o.view(), l.view());
  for (float x : fetch(*be, o.view())) ASSERT_EQ(x, 0.0f);
  for (float x : fetch(*be, l.view())) ASSERT_EQ(x, -INFINITY);
}

TEST_F(Merge, MatchesFormulaOnRandomPartials) {
  // Partials straight from random numbers (not from attention), some -inf, merged in place
  // into the first one; reference in double.
  std::mt19937 rng(99);
  const int64_t T = 6, hq = 3, d = 8;
  const int n = 4;
  std::vector<std::vector<float>> os, ls;
  std::vector<Buffer> ob, lb;
  for (int r = 0; r < n; ++r) {
    os.push_back(random_vec(rng, T * hq * d));
    ls.push_back(random_vec(rng, T * hq, 20.0f));
    // A partial that saw no key weighs nothing, whatever its o holds (even NaN).
    for (int64_t e = 0; e < T * hq; ++e)
      if ((e + r) % 5 == 0) {
        ls[r][e] = -INFINITY;
        std::fill_n(os[r].begin() + e * d, d, NAN);
      }
    ob.push_back(make(*be, T, hq * d, os[r]));
    lb.push_back(make(*be, T, hq, ls[r]));
  }
  std::vector<Partial> parts;
  for (int r = 0; r < n; ++r) parts.push_back({ob[r].view(), lb[r].view()});
  be->merge_partials(parts, ob[0].view(), lb[0].view());
  const auto got_o = fetch(*be, ob[0].view()), got_l = fetch(*be, lb[0].view());
  for (int64_t e = 0; e < T * hq; ++e) {
    double m = -INFINITY;
    for (int r = 0; r < n; ++r) m = std::max(m, static_cast<double>(ls[r][e]));
    double z = 0.0;
    for (int r = 0; r < n; ++r) z += std::exp(ls[r][e] - m);
    ASSERT_FALSE(std::isnan(got_l[e]));
    ASSERT_NEAR(got_l[e], m + std::log(z), 1e-5 * std::max(1.0, std::abs(m)));
    for (int64_t c = 0; c < d; ++c) {
      double ref = 0.0;
      for (int r = 0; r < n; ++r)
        if (ls[r][e] != -INFINITY) ref += std::exp(ls[r][e] - m) / z * os[r][e * d + c];
      ASSERT_NEAR(got_o[e * d + c], ref, 1e-5);
    }
  }
}

TEST_F(Merge, RejectsMismatchedShapes) {
  Buffer o = be->alloc(4, 32, DType::f32), l = be->alloc(4, 2, DType::f32);
  Buffer o2 = be->alloc(3, 32, DType::f32), l2 = be->alloc(4, 4, DType::f32);
  EXPECT_THROW(be->merge_partials({{o2.view(), l.view()}}, o.view(), l.view()), std::invalid_argument);
  EXPECT_THROW(be->merge_partials({{o.view(), l2.view()}}, o.view(), l.view()), std::invalid_argument);
  EXPECT_THROW(be->merge_partials({}, o.view().slice_cols(0, 31), l.view()), std::invalid_argument);
}

}  // namespace
}  // namespace starattn
