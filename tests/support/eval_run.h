// One task at one length through the eval harness, for the suites that run a real model
// (test_eval_*: they link starattn_eval, so this stays header-only).
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "eval/eval_runner.h"
#include "runtime/engine.h"

namespace starattn::testing {

// Seed 0, so every mode sees the same prompts; block "" is full attention's default, "L/4" etc.
// for star mode (anchor = block). A max_tokens below RULER's budget bounds the time of a model
// that keeps talking after its answer; the prompt then fills L - max_tokens.
inline eval::TaskResult run_task(Engine& engine, const std::string& task, int64_t length,
                                 int samples, AttentionMode mode, const std::string& block,
                                 int max_tokens) {
  eval::EvalConfig c;
  c.tasks = {task};
  c.lengths = {length};
  c.samples = samples;
  c.seed = 0;
  c.mode = mode;
  c.block = eval::parse_size_spec(block, "block-size");
  c.max_tokens = max_tokens;
  const auto results = eval::run_eval(engine, c);
  EXPECT_EQ(results.size(), 1u);
  return results.at(0);
}

// The checks every full-vs-star comparison makes before its scores mean anything: both runs
// have every sample, star used B = A = L/4, and each sample is the same prompt in both modes
// (paired by seed) with a filled haystack. Prints each pair of answers.
inline void expect_paired_quarter_blocks(const eval::TaskResult& full, const eval::TaskResult& star,
                                         int samples, int64_t length) {
  ASSERT_EQ(full.samples.size(), static_cast<size_t>(samples));
  ASSERT_EQ(star.samples.size(), static_cast<size_t>(samples));
  EXPECT_EQ(star.block_size, length / 4);
  EXPECT_EQ(star.anchor_size, length / 4);
  for (int i = 0; i < samples; ++i) {
    EXPECT_EQ(full.samples[i].expected, star.samples[i].expected);
    EXPECT_EQ(full.samples[i].context_tokens, star.samples[i].context_tokens);
    EXPECT_GT(full.samples[i].context_tokens, 3 * length / 4);  // the haystack is filled
    std::printf("%s sample %d: expected %s; full: '%s'; star: '%s'\n", full.task.c_str(), i,
                full.samples[i].expected.at(0).c_str(), full.samples[i].output.c_str(),
                star.samples[i].output.c_str());
  }
}

}  // namespace starattn::testing
