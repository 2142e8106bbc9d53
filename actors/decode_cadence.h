// The rhythm of the decode steps a context worker serves, seen from its side (issue 15: a long
// encode may not stall the streams decoding over the same worker).
//
// Every decode step of the head's query actor asks this worker for layer 0 first, then the
// others in order, so the time between two layer-0 exchanges is a step. The worker's phase 1
// takes one slice of a chunk's layers per step, sized to a share of that time (the same rule as
// EngineBatch's in one process, runtime/phase1_pacer.h). Written by the data plane's thread,
// read by the worker actor's: a mutex, a few times per step.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <mutex>

namespace starattn::actors {

class DecodeCadence {
 public:
  using clock = std::chrono::steady_clock;

  // An exchange for `layer` arrived at `now`. A layer-0 exchange starts a step when another
  // layer's came since the last step began (requests whose exchanges are not batched into one
  // each send their own layer 0 at the start of the same step), or when only layer 0 exists.
  void on_exchange(int layer, clock::time_point now) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (layer != 0) {
      // The first other layer: the intervals so far may be between two requests' layer 0 of one
      // step (a one-layer model could not be told apart until now). Forget them.
      if (!other_layer_ever_) {
        next_interval_ = 0;
        step_ms_ = 0;
      }
      other_layer_since_step_ = other_layer_ever_ = true;
      return;
    }
    if (steps_ > 0 && other_layer_ever_ && !other_layer_since_step_) return;
    if (steps_ > 0) {
      intervals_[next_interval_++ % kIntervals] = std::chrono::duration<double, std::milli>(now - last_).count();
      // The shortest of the last few: the gap before a request's first step (an idle worker) is
      // no step, and a budget from it would let phase 1 stall the steps after it.
      const size_t n = std::min<size_t>(next_interval_, kIntervals);
      step_ms_ = *std::min_element(intervals_, intervals_ + n);
    }
    ++steps_;
    last_ = now;
    other_layer_since_step_ = false;
  }

  struct Reading {
    uint64_t steps = 0;    // steps begun so far
    double step_ms = 0;    // a step's length: the shortest of the last 4 (0 before two steps)
    bool decoding = false; // a step began within two steps (at least `idle_ms`) of now
  };
  Reading read(clock::time_point now, double idle_ms = 50) const {
    std::lock_guard<std::mutex> lock(mutex_);
    Reading r;
    r.steps = steps_;
    r.step_ms = step_ms_;
    if (steps_ > 1) {
      const double since = std::chrono::duration<double, std::milli>(now - last_).count();
      r.decoding = since < std::max(2 * step_ms_, idle_ms);
    }
    return r;
  }

 private:
  static constexpr size_t kIntervals = 4;
  mutable std::mutex mutex_;
  uint64_t steps_ = 0;
  double step_ms_ = 0;
  double intervals_[kIntervals] = {};
  size_t next_interval_ = 0;
  bool other_layer_since_step_ = false, other_layer_ever_ = false;
  clock::time_point last_{};
};

}  // namespace starattn::actors
