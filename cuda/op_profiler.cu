// The per-op GPU profile (op_profiler.h).
#include "cuda/op_profiler.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "cuda/common.cuh"

namespace starattn::cuda_detail {

using cuda::check_cuda;

OpProfiler::~OpProfiler() {
  for (const Pending& p : pending_) {
    cudaEventDestroy(p.a);
    cudaEventDestroy(p.b);
  }
  for (const ClosedSpan& c : spans_) {
    cudaEventDestroy(c.a);
    cudaEventDestroy(c.b);
  }
  if (open_event_) cudaEventDestroy(open_event_);
  for (cudaEvent_t e : pool_) cudaEventDestroy(e);
}

cudaEvent_t OpProfiler::take() {
  if (!pool_.empty()) {
    cudaEvent_t e = pool_.back();
    pool_.pop_back();
    return e;
  }
  cudaEvent_t e = nullptr;
  if (cudaEventCreate(&e) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return e;
}

namespace {
double wall_now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

size_t OpProfiler::section_index(const std::string& name) {
  for (size_t i = 0; i < sections_.size(); ++i)
    if (sections_[i].name == name) return i;
  sections_.push_back(SectionStats{});
  sections_.back().name = name;
  return sections_.size() - 1;
}

cudaEvent_t OpProfiler::begin() {
  cudaEvent_t e = take();
  if (e && cudaEventRecord(e, stream_) != cudaSuccess) cudaGetLastError();
  return e;
}

void OpProfiler::end(cudaEvent_t start, std::string key) {
  if (start == nullptr) return;
  cudaEvent_t e = take();
  if (e == nullptr) {
    pool_.push_back(start);
    return;
  }
  if (cudaEventRecord(e, stream_) != cudaSuccess) cudaGetLastError();
  const size_t sec = current_ == SIZE_MAX ? section_index("other") : current_;
  pending_.push_back({sec, std::move(key), start, e});
  if (pending_.size() >= 4096) {
    try {
      resolve();
    } catch (...) {
    }
  }
}

void OpProfiler::section(const char* name) {
  cudaEvent_t e = take();
  if (e && cudaEventRecord(e, stream_) != cudaSuccess) cudaGetLastError();
  const double now = wall_now_ms();
  if (current_ != SIZE_MAX && open_event_ && e) {
    cudaEvent_t close = take();
    if (close && cudaEventRecord(close, stream_) != cudaSuccess) cudaGetLastError();
    if (close) spans_.push_back({current_, open_event_, close, now - open_wall_ms_});
    else pool_.push_back(open_event_);
    open_event_ = nullptr;
  } else if (open_event_) {
    pool_.push_back(open_event_);
    open_event_ = nullptr;
  }
  if (name == nullptr) {
    current_ = SIZE_MAX;
    if (e) pool_.push_back(e);
    return;
  }
  current_ = section_index(name);
  open_event_ = e;
  open_wall_ms_ = now;
}

void OpProfiler::resolve() {
  check_cuda(cudaStreamSynchronize(stream_), "profile");
  for (const Pending& p : pending_) {
    float ms = 0.0f;
    if (cudaEventElapsedTime(&ms, p.a, p.b) != cudaSuccess) cudaGetLastError();
    Stat& st = sections_[p.section].ops[p.key];
    ++st.count;
    st.ms += ms;
    pool_.push_back(p.a);
    pool_.push_back(p.b);
  }
  pending_.clear();
  for (const ClosedSpan& c : spans_) {
    float ms = 0.0f;
    if (cudaEventElapsedTime(&ms, c.a, c.b) != cudaSuccess) cudaGetLastError();
    SectionStats& sec = sections_[c.section];
    sec.span_ms += ms;
    sec.wall_ms += c.wall_ms;
    ++sec.spans;
    pool_.push_back(c.a);
    pool_.push_back(c.b);
  }
  spans_.clear();
}

void OpProfiler::report(std::FILE* out, const std::string& label) {
  resolve();
  std::fprintf(out, "== cuda op profile (STARATTN_PROFILE=1)%s%s ==\n", label.empty() ? "" : ": ", label.c_str());
  for (const SectionStats& sec : sections_) {
    double total = 0;
    int64_t launches = 0;
    for (const auto& [key, st] : sec.ops) {
      total += st.ms;
      launches += st.count;
    }
    if (launches == 0 && sec.spans == 0) continue;
    std::fprintf(out, "-- section %s: %lld ops, %.3f ms in ops", sec.name.c_str(), static_cast<long long>(launches), total);
    if (sec.spans > 0)
      std::fprintf(out, "; GPU span %.3f ms (%.1f%% in ops, the rest idle or between ops), host wall %.3f ms over %lld span(s)",
                   sec.span_ms, sec.span_ms > 0 ? 100.0 * total / sec.span_ms : 0.0, sec.wall_ms,
                   static_cast<long long>(sec.spans));
    std::fprintf(out, "\n");
    std::vector<std::pair<std::string, Stat>> rows(sec.ops.begin(), sec.ops.end());
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
    std::fprintf(out, "   %-44s %9s %11s %10s %7s\n", "op", "count", "total ms", "mean us", "% ops");
    for (const auto& [key, st] : rows)
      std::fprintf(out, "   %-44s %9lld %11.3f %10.2f %6.1f%%\n", key.c_str(), static_cast<long long>(st.count), st.ms,
                   st.count ? 1e3 * st.ms / static_cast<double>(st.count) : 0.0, total > 0 ? 100.0 * st.ms / total : 0.0);
  }
  std::fflush(out);
  for (SectionStats& sec : sections_) {
    sec.ops.clear();
    sec.span_ms = sec.wall_ms = 0;
    sec.spans = 0;
  }
}

}  // namespace starattn::cuda_detail
