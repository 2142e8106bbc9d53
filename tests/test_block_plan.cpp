// Splitting a context into blocks, placing contiguous runs of blocks on workers, and the memory
// plan that decides what fits (runtime/request_plan.h).
#include <gtest/gtest.h>

#include <random>

#include "runtime/block_plan.h"
#include "runtime/errors.h"
#include "runtime/request_plan.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

TEST(SplitBlocks, CoversTheContextWithoutPadding) {
  std::mt19937_64 rng(3);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t C = std::uniform_int_distribution<int64_t>(0, 5000)(rng);
    const int64_t b = std::uniform_int_distribution<int64_t>(1, 700)(rng);
    const auto blocks = split_blocks(C, b);
    ASSERT_EQ(static_cast<int64_t>(blocks.size()), (C + b - 1) / b);
    int64_t next = 0;
    for (size_t k = 0; k < blocks.size(); ++k) {
      EXPECT_EQ(blocks[k].index, static_cast<int>(k));
      EXPECT_EQ(blocks[k].start, next);
      EXPECT_GE(blocks[k].length, 1);
      EXPECT_LE(blocks[k].length, b);
      if (k + 1 < blocks.size()) {
        EXPECT_EQ(blocks[k].length, b);
      }
      next += blocks[k].length;
    }
    EXPECT_EQ(next, C);
  }
}

TEST(SplitBlocks, RejectsImpossibleSizes) {
  EXPECT_THROW(split_blocks(10, 0), std::invalid_argument);
  EXPECT_THROW(check_block_sizes(8, 9), std::invalid_argument);
  EXPECT_THROW(check_block_sizes(8, 0), std::invalid_argument);
  EXPECT_THROW(check_block_sizes(0, 0), std::invalid_argument);
  EXPECT_NO_THROW(check_block_sizes(8, 8));
  EXPECT_NO_THROW(check_block_sizes(8, 1));
}

TEST(AssignBlocks, ContiguousRunsBalancedByCapacity) {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t C = std::uniform_int_distribution<int64_t>(1, 4000)(rng);
    const int64_t b = std::uniform_int_distribution<int64_t>(1, 300)(rng);
    const int W = std::uniform_int_distribution<int>(1, 6)(rng);
    std::vector<int64_t> cap(W);
    for (auto& c : cap) c = std::uniform_int_distribution<int64_t>(C / W + b, 2 * C + b)(rng);
    const auto blocks = split_blocks(C, b);
    const auto runs = assign_blocks(blocks, cap);
    ASSERT_EQ(static_cast<int>(runs.size()), W);
    int next = 0;
    double worst = 0;
    for (int r = 0; r < W; ++r) {
      int64_t load = 0;
      for (const auto& blk : runs[r]) {
        EXPECT_EQ(blk.index, next++) << "runs must be contiguous and in order";
        load += blk.length;
      }
      EXPECT_LE(load, cap[r]);
      worst = std::max(worst, double(load) / cap[r]);
    }
    EXPECT_EQ(next, static_cast<int>(blocks.size()));
    // No placement can beat the optimum by much: moving one boundary block never lowers the
    // worst ratio below what the greedy binary search found (within one block's share).
    double lower = 0;
    for (const auto& blk : blocks) lower = std::max(lower, double(blk.length) / *std::max_element(cap.begin(), cap.end()));
    EXPECT_GE(worst + 1e-9, lower);
  }
}

TEST(AssignBlocks, EqualWorkersGetEqualShares) {
  const auto runs = assign_blocks(split_blocks(4096, 256), {100000, 100000, 100000, 100000});
  for (const auto& r : runs) EXPECT_EQ(r.size(), 4u);
}

TEST(AssignBlocks, TooLargeContextSaysHowMuchFits) {
  try {
    assign_blocks(split_blocks(1000, 100), {300, 300});
    FAIL() << "expected an error";
  } catch (const std::length_error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("1000 tokens does not fit"), std::string::npos) << m;
    EXPECT_NE(m.find("600"), std::string::npos) << m;
  }
}

// Scratch of phase 1: the anchor in front of the longest block, except where every block is
// block 0 (it is encoded alone, and its first rows become the anchor).
TEST(EncodeScratchRows, AnchorRowsOnlyWhenALaterBlockFollows) {
  const std::vector<BlockSpec> blocks = split_blocks(1000, 300);  // 300, 300, 300, 100
  EXPECT_EQ(encode_scratch_rows(blocks, 120), 120 + 300);
  EXPECT_EQ(encode_scratch_rows({blocks[0]}, 120), 0) << "block 0 alone goes straight into the shard's K/V";
  EXPECT_EQ(encode_scratch_rows({blocks[0], blocks[1]}, 120), 120 + 300);
  EXPECT_EQ(encode_scratch_rows({blocks[3]}, 120), 120 + 100);
  EXPECT_EQ(encode_scratch_rows(split_blocks(250, 300), 250), 0) << "one block holds the context";
}

TEST(EncodeForwardRows, TheLongestForwardCappedByTheChunk) {
  const auto blocks = split_blocks(1000, 300);  // 300, 300, 300, 100
  EXPECT_EQ(encode_forward_rows(blocks, 120, 0), 300);
  EXPECT_EQ(encode_forward_rows(blocks, 120, 64), 64);
  EXPECT_EQ(encode_forward_rows(blocks, 120, 5000), 300);
  EXPECT_EQ(encode_forward_rows({blocks[3]}, 120, 0), 120) << "the anchor is forwarded alone first";
  EXPECT_EQ(encode_forward_rows({blocks[0]}, 120, 0), 300) << "block 0 carries the anchor in it";
}

// The bytes plan_request charges: K/V per context token, and one encode's scratch and forward
// rows per worker that encodes (separate), or once for the in-process workers that take turns
// in one area (shared_pool). Random sizes; the boundary is exact.
TEST(PlanRequest, AWorkerPaysForOneEncodeAndAPoolForOneInAll) {
  const ModelConfig config = testing::test_config();
  const MemoryModel m = MemoryModel::of(config, DType::f32);
  EXPECT_EQ(m.per_token, config.kv_bytes_per_token(4));
  EXPECT_GT(m.per_forward_row, 0);
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 20; ++trial) {
    const int W = 2 + static_cast<int>(rng() % 4);
    const int64_t b = 50 + static_cast<int64_t>(rng() % 200);
    const int64_t C = W * b;  // W equal blocks of b, anchor b
    const int64_t chunk = trial % 2 ? 0 : 1 + static_cast<int64_t>(rng() % b);
    const int64_t fwd = chunk > 0 ? chunk : b;
    BlockRequest req;
    req.context_len = C;
    req.phase1_chunk = chunk;
    const int64_t encode = m.encode_bytes(2 * b, fwd);
    // separate: each worker holds its block and its own encode.
    const int64_t each = m.fixed + b * m.per_token + encode;
    const RequestPlan p = plan_request(req, std::vector<int64_t>(W, each), m, "w");
    EXPECT_EQ(p.scratch_rows, 2 * b);
    EXPECT_EQ(p.forward_rows, fwd);
    EXPECT_EQ(p.workers_used(), W);
    try {
      plan_request(req, std::vector<int64_t>(W, each - 1), m, "w");
      ADD_FAILURE() << "a byte short on every worker must not fit";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::capacity);
    }
    // shared_pool: every block's K/V and one encode.
    const int64_t pool = m.fixed + C * m.per_token + encode;
    const RequestPlan q = plan_request(req, {pool}, m, "pool", WorkerMemory::shared_pool, W);
    const auto starts = [](const RequestPlan& r) {
      std::vector<std::vector<int64_t>> out;
      for (const auto& run : r.runs) {
        out.emplace_back();
        for (const BlockSpec& blk : run) out.back().push_back(blk.start);
      }
      return out;
    };
    EXPECT_EQ(starts(q), starts(p)) << "the same placement in one process and in a cluster";
    EXPECT_LT(pool, W * each) << "sharing saves W - 1 encodes";
    EXPECT_THROW(plan_request(req, {pool - W * m.per_token}, m, "pool", WorkerMemory::shared_pool, W),
                 Error);
    // Block 0 needs no scratch: its worker (the head's GPU, say) may have that much less room.
    std::vector<int64_t> rooms(W, each);
    rooms[0] = m.fixed + b * m.per_token + m.encode_bytes(0, fwd);
    const RequestPlan r = plan_request(req, rooms, m, "w");
    EXPECT_EQ(starts(r), starts(p)) << "the same even placement";
    EXPECT_EQ(m.run_bytes(r.runs[0], b, chunk), rooms[0]);
    rooms[0] -= 1;
    EXPECT_THROW(plan_request(req, rooms, m, "w"), Error) << "a byte short on block 0's worker";
  }
}

// `starattn run`'s workers: whole blocks exactly when their activation rows fit the room.
TEST(PlanRequest, WholeBlocksOnlyWhereTheirActivationsFit) {
  const MemoryModel m = MemoryModel::of(testing::test_config(), DType::f32);
  const auto blocks = split_blocks(1000, 300);  // one worker holding all four, anchor 120
  const std::vector<BlockSpec> run(blocks.begin() + 1, blocks.end());
  const int64_t n = 700;
  const int64_t whole = n * m.per_token + m.fixed + m.encode_bytes(120 + 300, 300);
  EXPECT_EQ(whole_blocks_if_room(m, run, 120, whole, 256), 0);
  EXPECT_EQ(whole_blocks_if_room(m, run, 120, whole - 1, 256), 256);
  // What the chunked encode needs is less: the fallback fits where whole blocks do not.
  EXPECT_LT(n * m.per_token + m.fixed + m.encode_bytes(120 + 300, 256), whole);
}

}  // namespace
}  // namespace starattn
