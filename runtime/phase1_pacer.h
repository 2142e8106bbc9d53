// How much of a phase-1 chunk runs between two decode steps (issue 15: a 128K-token encode may
// not raise the other streams' p99 inter-token latency above 2x).
//
// A chunk's forward costs its weight reads plus its attention over every key before it, which
// grows to tens of thousands of keys late in a long block: on an H200 one 128-row chunk of the 8B
// shape took longer than the decode step it was added to. Fewer rows do not fix that (the
// attention sweep over the keys stays), so a chunk's forward is split by layers instead
// (ContextShard::encode_chunk's max_layers), and the pacer picks how many layers fit a budget of
// wall time per step from the time per layer measured on the slices before. Layers of a chunk
// cost about the same, and successive chunks only slowly more, so the last measurement is a good
// forecast; the first slice runs one layer to take it.
#pragma once

#include <algorithm>
#include <cmath>

namespace starattn {

class Phase1Pacer {
 public:
  // budget_ms <= 0: no pacing, whole chunks.
  explicit Phase1Pacer(double budget_ms = 0) : budget_ms_(budget_ms) {}
  void set_budget_ms(double ms) { budget_ms_ = ms; }
  double budget_ms() const { return budget_ms_; }

  // Layers the next slice may run (0: the whole chunk).
  int next_layers(int num_layers) const {
    if (budget_ms_ <= 0) return 0;
    if (ms_per_layer_ <= 0) return 1;
    const double fit = std::floor(budget_ms_ / ms_per_layer_);
    if (fit >= num_layers) return 0;
    return std::max(1, static_cast<int>(fit));
  }
  // A slice ran `layers` layers in `ms` (the backend waited for). Slices without a forward (a
  // block taken from the cache) say nothing about the layers' cost.
  void measured(int layers, double ms) {
    if (layers > 0 && ms > 0) ms_per_layer_ = ms / layers;
  }
  double ms_per_layer() const { return ms_per_layer_; }

 private:
  double budget_ms_ = 0;
  double ms_per_layer_ = 0;
};

}  // namespace starattn
