// The whole engine on the cuda backend against the cpu backend (the reference), on random models
// whose head sizes the cuda attention supports (64 and 128):
//   - next-token logits of full and star mode within bf16 tolerance (max |err| <= 3e-2 of the
//     largest |logit|) and the same greedy token wherever the reference's top-1 margin is clear;
//   - star mode with one block covering the context (B >= C) equals full mode on the GPU;
//   - phase 1 paced in slices of layers equals whole chunks bit for bit;
//   - the memory plan: free_bytes follows allocations, and a context that does not fit fails
//     before anything is allocated, with a capacity Error that says how many tokens fit.
// Without a CUDA device every test is skipped.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/cuda_backend.h"
#include "runtime/errors.h"
#include "runtime/engine.h"
#include "runtime/engine_batch.h"
#include "runtime/errors.h"
#include "runtime/model_config.h"
#include "tests/gpu/gpu_test_support.h"

namespace starattn {
namespace {

using testing::expect_logits_close;
using testing::generate;
using testing::make_engine;
using testing::ModelDir;
using testing::Outcome;
using testing::random_request;

constexpr uint64_t kWeightSeed = 7;

// Four layers.
ModelConfig gpu_config(int head_dim) { return testing::gpu_model_config(head_dim, 4); }

class CudaEngine : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_P(CudaEngine, LogitsMatchCpuInFullAndStarMode) {
  const ModelDir dir(gpu_config(GetParam()));
  auto cpu = make_engine(dir.config(), "cpu", 2, kWeightSeed);
  auto gpu = make_engine(dir.config(), "cuda", 2, kWeightSeed);
  // 700 context tokens: the prefill kernel with a causal prefix (star blocks behind the anchor);
  // 12 query tokens and single decode steps: the split decode kernel and the merge.
  for (AttentionMode mode : {AttentionMode::full, AttentionMode::star}) {
    const RequestSpec r = random_request(700, 12, mode, mode == AttentionMode::star ? 256 : 0, 5, 11);
    const Outcome ref = generate(*cpu, r);
    const Outcome got = generate(*gpu, r);
    ASSERT_EQ(got.tokens.size(), 5u);
    EXPECT_EQ(got.stats.blocks, ref.stats.blocks);
    // 3e-2 of the largest |logit| through 4 layers (D = 128 lands near 2.4e-2).
    const int n = expect_logits_close(ref, got, std::string(mode_name(mode)) + " D" + std::to_string(GetParam()),
                                      /*check_top1=*/true);
    EXPECT_GE(n, 1);
  }
}

TEST_P(CudaEngine, StarWithOneBlockEqualsFull) {
  const ModelDir dir(gpu_config(GetParam()));
  auto gpu = make_engine(dir.config(), "cuda", 2, kWeightSeed);
  const int64_t C = 1000;
  const Outcome full = generate(*gpu, random_request(C, 9, AttentionMode::full, 0, 6, 5));
  for (int64_t block : {C, C + 37}) {
    const Outcome star = generate(*gpu, random_request(C, 9, AttentionMode::star, block, 6, 5));
    EXPECT_EQ(star.stats.blocks, 1);
    ASSERT_EQ(star.tokens, full.tokens) << "block " << block;
    for (size_t s = 0; s < full.logits.size(); ++s) {
      float worst = 0.0f, ref_max = 0.0f;
      for (size_t i = 0; i < full.logits[s].size(); ++i) {
        worst = std::max(worst, std::fabs(star.logits[s][i] - full.logits[s][i]));
        ref_max = std::max(ref_max, std::fabs(full.logits[s][i]));
      }
      EXPECT_LE(worst, 1e-5f * ref_max) << "block " << block << " step " << s;
    }
  }
}

// Phase 1 in slices of layers (EngineBatch's step share far below a layer: one layer a step)
// runs the same kernels on the same rows as whole chunks, so on the GPU too the long request's
// tokens and logits are bit-identical.
TEST_P(CudaEngine, PacedPhase1SlicesEqualWholeChunks) {
  const ModelDir dir(gpu_config(GetParam()));
  auto gpu = make_engine(dir.config(), "cuda", 2, kWeightSeed);
  const auto vocab = static_cast<size_t>(gpu->config().vocab_size);
  RequestSpec running = random_request(300, 4, AttentionMode::star, 128, 400, 3);
  RequestSpec long_one = random_request(900, 6, AttentionMode::star, 256, 4, 4);
  running.want_logits = long_one.want_logits = true;
  Outcome got[2][2];  // [whole, sliced][running, long]
  int steps[2] = {0, 0};
  for (int run = 0; run < 2; ++run) {
    EngineBatch batch(*gpu, 64, run == 0 ? 0.0 : 1e-9);
    auto sink = [&, run](int which) {
      return [&, run, which](const GeneratedToken& t) {
        got[run][which].tokens.push_back(t.token);
        got[run][which].logits.emplace_back(t.logits, t.logits + vocab);
        return true;
      };
    };
    const uint64_t a = batch.admit(running, sink(0));
    batch.step();
    const uint64_t b = batch.admit(long_one, sink(1));
    while (batch.phase1_progress(b)) {
      for (const EngineBatch::Ended& e : batch.step()) EXPECT_TRUE(e.end.ok) << e.end.error;
      ++steps[run];
    }
    batch.cancel(a);
    while (batch.running() > 0) batch.step();
  }
  EXPECT_GT(steps[1], 2 * steps[0]) << "the sliced encode should take several steps a chunk";
  // The long request: its K/V from the same chunk forwards, its decode in a batch of two in both
  // runs. (The running stream is not compared: it decoded alone for more steps in the sliced run,
  // and a GEMM over one row may round differently from one over two.)
  const Outcome& whole = got[0][1];
  const Outcome& sliced = got[1][1];
  ASSERT_EQ(whole.tokens.size(), 4u);
  EXPECT_EQ(sliced.tokens, whole.tokens);
  ASSERT_EQ(sliced.logits.size(), whole.logits.size());
  for (size_t i = 0; i < whole.logits.size(); ++i) EXPECT_TRUE(sliced.logits[i] == whole.logits[i]) << "token " << i;
}

INSTANTIATE_TEST_SUITE_P(HeadSizes, CudaEngine, ::testing::Values(64, 128),
                         [](const ::testing::TestParamInfo<int>& i) { return "D" + std::to_string(i.param); });

class CudaMemoryPlan : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(CudaMemoryPlan, FreeBytesFollowsAllocations) {
  auto be = make_backend("cuda", 0);
  const int64_t before = be->free_bytes();
  ASSERT_GT(before, int64_t{1} << 30);
  {
    Buffer b = be->alloc(int64_t{1} << 18, 2048, DType::bf16);  // 1 GiB
    be->synchronize();
    const int64_t during = be->free_bytes();
    EXPECT_NEAR(static_cast<double>(before - during), static_cast<double>(int64_t{1} << 30), 64.0 * (1 << 20));
  }
  EXPECT_NEAR(static_cast<double>(be->free_bytes()), static_cast<double>(before), 64.0 * (1 << 20));
}

// Parses the "at most N context tokens fit" of the engine's capacity error.
int64_t tokens_that_fit(const std::string& msg) {
  const std::string key = "at most ";
  const size_t p = msg.find(key);
  if (p == std::string::npos) return -1;
  return std::stoll(msg.substr(p + key.size()));
}

TEST_F(CudaMemoryPlan, ContextThatDoesNotFitFailsSayingHowManyTokensFit) {
  const ModelDir dir(gpu_config(128));
  // A budget of 1% of the free memory (about 1.4 GB on an H200): the model's 4 KiB of KV and
  // 12 KiB of activations per token put the limit near 80K tokens.
  auto gpu = make_engine(dir.config(), "cuda", 2, kWeightSeed, 0.01);
  const int64_t free_before = gpu->backend().free_bytes();
  int64_t fit_full = -1;
  for (AttentionMode mode : {AttentionMode::full, AttentionMode::star}) {
    RequestSpec r = random_request(400000, 4, mode, 0, 2, 3);
    r.beyond_positions = true;  // the memory plan is under test, not the model's positions
    try {
      generate(*gpu, r);
      FAIL() << "expected a capacity error for " << r.prompt.context.size() << " tokens";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::capacity);
      const std::string msg = e.what();
      EXPECT_NE(msg.find("does not fit"), std::string::npos) << msg;
      const int64_t fit = tokens_that_fit(msg);
      EXPECT_GT(fit, 1000) << msg;
      EXPECT_LT(fit, 400000) << msg;
      if (mode == AttentionMode::full) fit_full = fit;
      std::printf("capacity error (%s): %s\n", mode_name(mode), msg.c_str());
    }
  }
  // Nothing was allocated by the failed requests, and a context that fits still runs.
  EXPECT_NEAR(static_cast<double>(gpu->backend().free_bytes()), static_cast<double>(free_before),
              64.0 * (1 << 20));
  const Outcome ok = generate(*gpu, random_request(2000, 4, AttentionMode::star, 500, 2, 3));
  EXPECT_EQ(ok.tokens.size(), 2u);
  // A context just under the stated limit runs to completion without a cudaMalloc failure (full
  // mode, the most memory-hungry plan).
  if (fit_full > 64) {
    RequestSpec fits = random_request(std::min<int64_t>(fit_full - 64, 60000), 4, AttentionMode::full, 0, 2, 4);
    fits.beyond_positions = true;
    const Outcome near = generate(*gpu, fits);
    EXPECT_EQ(near.tokens.size(), 2u);
  }
}

}  // namespace
}  // namespace starattn
