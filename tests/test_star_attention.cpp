// Star Attention's two phases on the CPU backend against an independent dense reference that
// the test drives with explicit masks and position ids.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>

#include "runtime/block_plan.h"
#include "runtime/random_model.h"
#include "runtime/star_attention.h"
#include "tests/support/reference_model.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

using testing::causal_mask;
using testing::LayerKv;
using testing::reference_forward;

// Tolerances: float32 engine vs double reference through a few layers of a small model.
constexpr double kKvTol = 2e-4;
constexpr double kLogitTol = 2e-4;

using Fixture = testing::CpuModel;

// Reference K/V of every block as phase 1 defines it: block 0 alone; block k as
// [anchor ; block] with positions [0..a-1 ; start..], causal, keeping the block's rows only.
std::vector<LayerKv> reference_block_kv(Fixture& f, const std::vector<int32_t>& ctx,
                                        const BlockSpec& blk, int64_t a) {
  std::vector<int32_t> toks, pos;
  const int64_t prefix = blk.start == 0 ? 0 : a;
  for (int64_t i = 0; i < prefix; ++i) {
    toks.push_back(ctx[i]);
    pos.push_back(static_cast<int32_t>(i));
  }
  for (int64_t i = 0; i < blk.length; ++i) {
    toks.push_back(ctx[blk.start + i]);
    pos.push_back(static_cast<int32_t>(blk.start + i));
  }
  const int64_t n = static_cast<int64_t>(toks.size());
  // The mask is built here explicitly rather than trusting causal_mask's offsets.
  std::vector<bool> mask(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) mask[i * n + j] = j <= i;
  auto r = reference_forward(f.config, f.weights, toks, pos, mask);
  const int64_t kd = f.config.kv_dim();
  std::vector<LayerKv> out;
  for (auto& l : r.kv)
    out.push_back({std::vector<double>(l.k.begin() + prefix * kd, l.k.end()),
                   std::vector<double>(l.v.begin() + prefix * kd, l.v.end())});
  return out;
}

struct Phase1Case {
  int64_t context, block, anchor;
  int workers;
  bool variant;
};

class Phase1 : public ::testing::TestWithParam<Phase1Case> {};

TEST_P(Phase1, BlockKvEqualsDenseReferenceWithAnchor) {
  const Phase1Case pc = GetParam();
  Fixture f(pc.variant, 11 + pc.block);
  std::mt19937_64 rng(pc.context * 31 + pc.anchor);
  const auto ctx = testing::random_tokens(rng, pc.context, f.config.vocab_size);
  const auto blocks = split_blocks(pc.context, pc.block);
  const auto runs = assign_blocks(blocks, std::vector<int64_t>(pc.workers, pc.context));
  const std::vector<int32_t> anchor(ctx.begin(), ctx.begin() + pc.anchor);
  int checked = 0;
  for (const auto& run : runs) {
    if (run.empty()) continue;
    int64_t n = 0;
    std::vector<std::vector<int32_t>> toks;
    for (const auto& b : run) {
      n += b.length;
      toks.emplace_back(ctx.begin() + b.start, ctx.begin() + b.start + b.length);
    }
    ContextShard shard(*f.model, n);
    shard.encode(anchor, run, toks);
    ASSERT_EQ(shard.tokens(), n);
    int64_t row = 0;
    for (const auto& b : run) {
      const auto ref = reference_block_kv(f, ctx, b, pc.anchor);
      for (int l = 0; l < f.config.num_layers; ++l) {
        const auto k = f.download(shard.cache().keys(l).slice_rows(row, b.length));
        const auto v = f.download(shard.cache().values(l).slice_rows(row, b.length));
        EXPECT_LT(testing::max_abs_diff(k.data(), ref[l].k.data(), k.size()), kKvTol)
            << "K of block " << b.index << " layer " << l;
        EXPECT_LT(testing::max_abs_diff(v.data(), ref[l].v.data(), v.size()), kKvTol)
            << "V of block " << b.index << " layer " << l;
      }
      row += b.length;
      ++checked;
    }
  }
  EXPECT_EQ(checked, static_cast<int>(blocks.size()));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, Phase1,
    ::testing::Values(Phase1Case{45, 12, 12, 2, false},  // a = b, last block short
                      Phase1Case{45, 12, 5, 3, false},   // a < b
                      Phase1Case{40, 10, 1, 1, true},    // bias + llama3 RoPE, one worker
                      Phase1Case{37, 8, 8, 4, true}));   // the shard without block 0

// Phase 2: the query's logits after star attention equal a reference whose query tokens see the
// concatenated phase-1 K/V of all blocks (no mask) and their own tokens causally.
TEST(Phase2, QueryAndDecodeLogitsEqualReferenceOverBlockKv) {
  for (bool variant : {false, true}) {
    Fixture f(variant, 5);
    std::mt19937_64 rng(99);
    const int64_t C = 50, b = 16, a = 7;
    const auto ctx = testing::random_tokens(rng, C, f.config.vocab_size);
    const auto query = testing::random_tokens(rng, 6, f.config.vocab_size);
    const auto blocks = split_blocks(C, b);
    const auto runs = assign_blocks(blocks, {C, C});
    const std::vector<int32_t> anchor(ctx.begin(), ctx.begin() + a);

    std::vector<std::unique_ptr<ContextShard>> shards;
    std::vector<ContextShard*> ptrs;
    for (const auto& run : runs) {
      if (run.empty()) continue;
      int64_t n = 0;
      std::vector<std::vector<int32_t>> toks;
      for (const auto& blk : run) {
        n += blk.length;
        toks.emplace_back(ctx.begin() + blk.start, ctx.begin() + blk.start + blk.length);
      }
      shards.push_back(std::make_unique<ContextShard>(*f.model, n));
      shards.back()->encode(anchor, run, toks);
      ptrs.push_back(shards.back().get());
    }
    ASSERT_EQ(ptrs.size(), 2u);
    LocalShards local(ptrs);
    QuerySession session(*f.model, local, C, 16);

    // Reference prefix: every block's phase-1 K/V, concatenated in block order.
    std::vector<LayerKv> prefix(static_cast<size_t>(f.config.num_layers));
    for (const auto& blk : blocks) {
      const auto kv = reference_block_kv(f, ctx, blk, a);
      for (int l = 0; l < f.config.num_layers; ++l) {
        prefix[l].k.insert(prefix[l].k.end(), kv[l].k.begin(), kv[l].k.end());
        prefix[l].v.insert(prefix[l].v.end(), kv[l].v.begin(), kv[l].v.end());
      }
    }

    std::vector<int32_t> fed = query;
    session.feed(query);
    for (int step = 0; step < 4; ++step) {
      std::vector<int32_t> pos;
      for (size_t i = 0; i < fed.size(); ++i) pos.push_back(static_cast<int32_t>(C + i));
      const auto ref = reference_forward(f.config, f.weights, fed, pos,
                                         causal_mask(static_cast<int64_t>(fed.size()), C), prefix);
      const auto ours = f.download(session.logits());
      const auto& want = ref.logits.back();
      EXPECT_LT(testing::max_abs_diff(ours.data(), want.data(), ours.size()),
                kLogitTol * std::max(1.0, testing::max_abs(want)))
          << "variant " << variant << " step " << step;
      const int32_t next = f.backend->sample(session.logits(), SamplingParams{}, step);
      fed.push_back(next);
      session.feed({next});
    }
  }
}

TEST(Phase2, EmptyShardListMeansPlainCausalOverTheQuery) {
  Fixture f(false, 3);
  std::mt19937_64 rng(4);
  const auto query = testing::random_tokens(rng, 9, f.config.vocab_size);
  LocalShards none({});
  QuerySession session(*f.model, none, 0, 9);
  session.feed(query);
  std::vector<int32_t> pos(9);
  for (int i = 0; i < 9; ++i) pos[i] = i;
  const auto ref = reference_forward(f.config, f.weights, query, pos, causal_mask(9));
  const auto ours = f.download(session.logits());
  EXPECT_LT(testing::max_abs_diff(ours.data(), ref.logits.back().data(), ours.size()),
            kLogitTol * std::max(1.0, testing::max_abs(ref.logits.back())));
}

TEST(Phase1, RejectsMismatchedBlockTokens) {
  Fixture f(false, 1);
  ContextShard shard(*f.model, 10);
  EXPECT_THROW(shard.encode({}, {{0, 0, 4}}, {{1, 2, 3}}), std::invalid_argument);
  EXPECT_THROW(shard.encode({}, {{0, 0, 4}}, {}), std::invalid_argument);
}

TEST(Phase1, CacheOverflowIsAClearError) {
  Fixture f(false, 1);
  ContextShard shard(*f.model, 3);
  try {
    shard.encode({}, {{0, 0, 4}}, {{1, 2, 3, 4}});
    FAIL() << "expected an error";
  } catch (const std::length_error& e) {
    EXPECT_NE(std::string(e.what()).find("capacity"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace starattn
