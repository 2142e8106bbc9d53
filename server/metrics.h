// Counters and histograms of the front ends, rendered as Prometheus text (format 0.0.4) together
// with the service's live load (KV tokens held per worker, queue length). Thread-safe.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "runtime/generation_service.h"

namespace starattn::server {

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  // Appends NAME_bucket{le=...}, NAME_sum and NAME_count lines.
  void render(const std::string& name, std::string& out) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bound, not cumulative; one more for +Inf
  double sum_ = 0;
  uint64_t count_ = 0;
};

class Metrics {
 public:
  Metrics();
  // One finished request (or refused one) of an endpoint ("/v1/completions", "tcp", ...) with
  // its status ("200", "400", ... or a TCP error code).
  void count_request(const std::string& endpoint, const std::string& status);
  void count_error(const std::string& type);
  void observe_time_to_first_token(double seconds);
  void observe_inter_token_latency(double seconds);
  void count_tokens(int64_t n);
  void connection_opened();
  void connection_closed();
  // The acceptor of a port ("http", "tcp", "worker"): connections admitted and released, and
  // refused ones by reason ("max_connections", "max_per_peer", "accept_failed").
  void connection_admitted(const std::string& port);
  void connection_released(const std::string& port);
  void count_refused(const std::string& port, const std::string& reason);
  void stream_started();
  void stream_ended();

  std::string render(const GenerationService& service) const;

 private:
  using Clock = std::chrono::steady_clock;
  // Tokens per second over the last kWindow seconds, one slot per second.
  static constexpr int kWindow = 10;
  void advance_window(int64_t now_s) const;

  mutable std::mutex mutex_;
  std::map<std::pair<std::string, std::string>, uint64_t> requests_;
  std::map<std::string, uint64_t> errors_;
  Histogram ttft_, itl_;
  uint64_t tokens_ = 0;
  int64_t open_connections_ = 0, active_streams_ = 0;
  std::map<std::string, int64_t> port_connections_;
  std::map<std::pair<std::string, std::string>, uint64_t> refused_;
  Clock::time_point start_ = Clock::now();
  mutable std::array<int64_t, kWindow> window_{};
  mutable int64_t window_second_ = 0;
};

}  // namespace starattn::server
