// DecodeCadence (actors/decode_cadence.h): a worker's view of the decode steps it serves, from
// the times its exchanges arrive. Synthetic times with random jitter; a step's length is the
// shortest of the last four intervals between steps (an idle gap is no step), a second request's
// layer 0 inside the same step is not a step, and decoding ends two steps (at least the idle
// floor) after the last one.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "actors/decode_cadence.h"

namespace starattn::actors {
namespace {

using clock = DecodeCadence::clock;
using ms = std::chrono::duration<double, std::milli>;

clock::time_point at(clock::time_point t0, double millis) {
  return t0 + std::chrono::duration_cast<clock::duration>(ms(millis));
}

// One step: layer 0 at `t`, the other layers spread over the step after it.
void step(DecodeCadence& c, clock::time_point t0, double t, double len, int layers = 32) {
  c.on_exchange(0, at(t0, t));
  for (int layer = 1; layer < layers; ++layer) c.on_exchange(layer, at(t0, t + len * layer / layers));
}

TEST(DecodeCadence, AStepIsTheShortestOfTheLastFourIntervals) {
  const clock::time_point t0 = clock::now();
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> length(8.0, 40.0);
  DecodeCadence c;
  EXPECT_FALSE(c.read(t0).decoding) << "nothing seen yet";
  double t = 0;
  std::vector<double> lens;
  for (int i = 0; i < 50; ++i) {
    lens.push_back(length(rng));
    step(c, t0, t, lens.back());
    const DecodeCadence::Reading r = c.read(at(t0, t + 1));
    EXPECT_EQ(r.steps, static_cast<uint64_t>(i + 1));
    if (i == 0) {
      EXPECT_EQ(r.step_ms, 0) << "one step says nothing of its length";
      EXPECT_FALSE(r.decoding);
    } else {
      // Steps 1..i ended; the last four of their lengths.
      const size_t first = lens.size() >= 5 ? lens.size() - 5 : 0;
      const double want = *std::min_element(lens.begin() + static_cast<long>(first), lens.end() - 1);
      EXPECT_NEAR(r.step_ms, want, 1e-3) << "step " << i;
      EXPECT_TRUE(r.decoding);
    }
    t += lens.back();
  }
}

TEST(DecodeCadence, AnIdleGapIsNoStep) {
  const clock::time_point t0 = clock::now();
  DecodeCadence c;
  for (double t : {0.0, 20.0, 40.0}) step(c, t0, t, 20);
  step(c, t0, 5000, 20);  // a new request after five idle seconds
  EXPECT_NEAR(c.read(at(t0, 5001)).step_ms, 20, 1e-3);
  EXPECT_TRUE(c.read(at(t0, 5001)).decoding);
}

TEST(DecodeCadence, ASecondRequestsLayerZeroInTheSameStepIsNotAStep) {
  const clock::time_point t0 = clock::now();
  DecodeCadence c;
  // Two requests whose exchanges are not batched: each sends its own layer 0, then 1, ...
  for (double t : {0.0, 20.0, 42.0}) {
    c.on_exchange(0, at(t0, t));
    c.on_exchange(0, at(t0, t + 0.5));
    c.on_exchange(1, at(t0, t + 5));
    c.on_exchange(1, at(t0, t + 5.5));
  }
  // The first step's second layer 0 counts (until another layer shows, this could be a
  // one-layer model), and its 0.5 ms interval is forgotten when layer 1 arrives; from then on
  // a second layer 0 is part of its step. Steps at 0, 0.5, 20, 42: lengths 19.5 and 22.
  EXPECT_EQ(c.read(at(t0, 43)).steps, 4u);
  EXPECT_NEAR(c.read(at(t0, 43)).step_ms, 19.5, 1e-3);
  // A one-layer model has only layer 0: every exchange is a step.
  DecodeCadence one;
  for (double t : {0.0, 3.0, 6.0}) one.on_exchange(0, at(t0, t));
  EXPECT_EQ(one.read(at(t0, 6)).steps, 3u);
  EXPECT_NEAR(one.read(at(t0, 6)).step_ms, 3, 1e-3);
}

TEST(DecodeCadence, DecodingEndsTwoStepsAfterTheLastOneButNotBeforeTheFloor) {
  const clock::time_point t0 = clock::now();
  DecodeCadence c;
  step(c, t0, 0, 40);
  step(c, t0, 40, 40);  // 40 ms steps: decoding until 80 ms after the last
  EXPECT_TRUE(c.read(at(t0, 40 + 79)).decoding);
  EXPECT_FALSE(c.read(at(t0, 40 + 81)).decoding);
  DecodeCadence fast;
  step(fast, t0, 0, 5);
  step(fast, t0, 5, 5);  // 5 ms steps: the 50 ms floor holds
  EXPECT_TRUE(fast.read(at(t0, 5 + 49)).decoding);
  EXPECT_FALSE(fast.read(at(t0, 5 + 51)).decoding);
  EXPECT_TRUE(fast.read(at(t0, 5 + 9), 10).decoding);
  EXPECT_FALSE(fast.read(at(t0, 5 + 11), 10).decoding) << "a floor of 10 ms: two steps";
}

}  // namespace
}  // namespace starattn::actors
