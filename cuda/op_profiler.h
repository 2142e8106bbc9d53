// The per-op GPU profile of the cuda backend (STARATTN_PROFILE=1): CUDA events around every op on
// the backend's stream, grouped by the engine's sections (phase1, prefill, decode).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

namespace starattn::cuda_detail {

// STARATTN_PROFILE=1: every op of the backend is timed with a pair of CUDA events on its stream
// (name -> count, total ms), grouped by the section the engine names (Backend::profile_section).
// Events are resolved in batches (a stream synchronisation every few thousand ops, only while
// profiling) and printed, sorted by total time, by report(): at cuda_profile_report() and when
// the backend is destroyed. Off (no profiler object at all) unless the variable is set.
class OpProfiler {
 public:
  explicit OpProfiler(cudaStream_t stream) : stream_(stream) {}
  ~OpProfiler();
  OpProfiler(const OpProfiler&) = delete;
  OpProfiler& operator=(const OpProfiler&) = delete;

  // Records an op's start event; end() records its end event under `key`. Never throw.
  cudaEvent_t begin();
  void end(cudaEvent_t start, std::string key);
  // Closes the current section and opens `name` (null: none, ops go to "other").
  void section(const char* name);
  // Prints the summary of everything recorded since the last report (or the start), then forgets it.
  void report(std::FILE* out, const std::string& label);

 private:
  struct Pending {
    size_t section;
    std::string key;
    cudaEvent_t a, b;
  };
  struct Stat {
    int64_t count = 0;
    double ms = 0;
  };
  struct SectionStats {
    std::string name;
    std::map<std::string, Stat> ops;
    double span_ms = 0;  // GPU time between the section's boundary events (ops + idle gaps)
    double wall_ms = 0;  // host time between the boundaries
    int64_t spans = 0;
  };
  cudaEvent_t take();
  size_t section_index(const std::string& name);
  void resolve();  // synchronises the stream and folds finished events into the stats

  cudaStream_t stream_;
  std::vector<cudaEvent_t> pool_;
  std::vector<Pending> pending_;
  std::vector<SectionStats> sections_;
  size_t current_ = SIZE_MAX;  // open section, SIZE_MAX: none
  cudaEvent_t open_event_ = nullptr;
  double open_wall_ms_ = 0;
  struct ClosedSpan {
    size_t section;
    cudaEvent_t a, b;
    double wall_ms;
  };
  std::vector<ClosedSpan> spans_;
};

// Times one op when profiling (p non-null); costs one branch otherwise.
class ProfileScope {
 public:
  ProfileScope(OpProfiler* p, const char* name) : p_(p), key_(p ? name : "") {
    if (p_) start_ = p_->begin();
  }
  ~ProfileScope() {
    if (p_) p_->end(start_, std::move(key_));
  }
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;
  bool active() const { return p_ != nullptr; }
  // Adds detail to the key (call only when active()).
  void append(const std::string& s) { key_ += s; }

 private:
  OpProfiler* p_;
  std::string key_;
  cudaEvent_t start_ = nullptr;
};

}  // namespace starattn::cuda_detail
