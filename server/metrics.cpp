#include "server/metrics.h"

#include <algorithm>
#include <cstdio>
#include <optional>

namespace starattn::server {
namespace {

std::string number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

// Label values are ours or short endpoint names, but escape anyway: a broken line breaks the
// whole scrape.
std::string label(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) {
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  ++counts_[i];
  sum_ += value;
  ++count_;
}

void Histogram::render(const std::string& name, std::string& out) const {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += name + "_bucket{le=\"" + number(bounds_[i]) + "\"} " + std::to_string(cumulative) + "\n";
  }
  out += name + "_bucket{le=\"+Inf\"} " + std::to_string(count_) + "\n";
  out += name + "_sum " + number(sum_) + "\n";
  out += name + "_count " + std::to_string(count_) + "\n";
}

Metrics::Metrics()
    : ttft_({0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}),
      itl_({0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}) {}

void Metrics::count_request(const std::string& endpoint, const std::string& status) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++requests_[{endpoint, status}];
}

void Metrics::count_error(const std::string& type) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++errors_[type];
}

void Metrics::observe_time_to_first_token(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  ttft_.observe(seconds);
}

void Metrics::observe_inter_token_latency(double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  itl_.observe(seconds);
}

void Metrics::advance_window(int64_t now_s) const {
  // Slots of seconds that passed without tokens are cleared before they are reused.
  for (int64_t s = window_second_ + 1; s <= now_s && s <= window_second_ + kWindow; ++s)
    window_[static_cast<size_t>(s % kWindow)] = 0;
  if (now_s > window_second_) window_second_ = now_s;
}

void Metrics::count_tokens(int64_t n) {
  std::lock_guard<std::mutex> lock(mutex_);
  tokens_ += static_cast<uint64_t>(n);
  const int64_t now_s = std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - start_).count();
  advance_window(now_s);
  window_[static_cast<size_t>(now_s % kWindow)] += n;
}

void Metrics::connection_opened() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++open_connections_;
}
void Metrics::connection_closed() {
  std::lock_guard<std::mutex> lock(mutex_);
  --open_connections_;
}
void Metrics::connection_admitted(const std::string& port) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++port_connections_[port];
}
void Metrics::connection_released(const std::string& port) {
  std::lock_guard<std::mutex> lock(mutex_);
  --port_connections_[port];
}
void Metrics::count_refused(const std::string& port, const std::string& reason) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++refused_[{port, reason}];
}
void Metrics::stream_started() {
  std::lock_guard<std::mutex> lock(mutex_);
  ++active_streams_;
}
void Metrics::stream_ended() {
  std::lock_guard<std::mutex> lock(mutex_);
  --active_streams_;
}

std::string Metrics::render(const GenerationService& service) const {
  // Ask the service first: it takes its own lock, and we never hold both.
  const std::vector<WorkerLoad> load = service.load();
  const int queued = service.queued();
  const std::optional<BatchCounters> batching = service.batching();
  std::string out;
  std::lock_guard<std::mutex> lock(mutex_);

  header(out, "starattn_requests_total", "counter", "Requests by endpoint and status.");
  for (const auto& [key, n] : requests_)
    out += "starattn_requests_total{endpoint=\"" + label(key.first) + "\",status=\"" +
           label(key.second) + "\"} " + std::to_string(n) + "\n";
  header(out, "starattn_errors_total", "counter", "Failed requests by error type.");
  for (const auto& [type, n] : errors_)
    out += "starattn_errors_total{type=\"" + label(type) + "\"} " + std::to_string(n) + "\n";
  header(out, "starattn_time_to_first_token_seconds", "histogram",
         "From a request's arrival to its first generated token.");
  ttft_.render("starattn_time_to_first_token_seconds", out);
  header(out, "starattn_inter_token_latency_seconds", "histogram",
         "Between consecutive generated tokens of one request.");
  itl_.render("starattn_inter_token_latency_seconds", out);
  header(out, "starattn_generated_tokens_total", "counter", "Tokens generated (rate() gives tokens/s).");
  out += "starattn_generated_tokens_total " + std::to_string(tokens_) + "\n";

  const int64_t now_s = std::chrono::duration_cast<std::chrono::seconds>(Clock::now() - start_).count();
  advance_window(now_s);
  int64_t recent = 0;
  for (int64_t s = now_s - kWindow + 1; s <= now_s; ++s)
    if (s >= 0 && s != now_s) recent += window_[static_cast<size_t>(s % kWindow)];
  header(out, "starattn_tokens_per_second", "gauge",
         "Tokens generated per second over the last complete seconds (up to 9).");
  const int64_t span = std::min<int64_t>(kWindow - 1, now_s);
  out += "starattn_tokens_per_second " + number(span > 0 ? static_cast<double>(recent) / static_cast<double>(span) : 0.0) + "\n";

  header(out, "starattn_kv_tokens_held", "gauge", "Tokens whose K/V a worker holds now.");
  for (const auto& w : load)
    out += "starattn_kv_tokens_held{worker=\"" + label(w.worker) + "\"} " + std::to_string(w.kv_tokens) + "\n";
  // Context reuse: each worker's block cache.
  const auto cache_line = [&](const char* name, const char* type, const char* help, auto field) {
    header(out, name, type, help);
    for (const auto& w : load)
      out += std::string(name) + "{worker=\"" + label(w.worker) + "\"} " +
             std::to_string(field(w.context_cache)) + "\n";
  };
  cache_line("starattn_context_cache_hits_total", "counter",
             "Blocks whose K/V came from the worker's cache (phase 1 skipped).",
             [](const ContextCacheMetrics& m) { return m.hits; });
  cache_line("starattn_context_cache_misses_total", "counter",
             "Blocks looked up in the worker's cache and encoded.",
             [](const ContextCacheMetrics& m) { return m.misses; });
  cache_line("starattn_context_cache_evictions_total", "counter",
             "Cached blocks evicted (least recently used, unpinned, unused).",
             [](const ContextCacheMetrics& m) { return m.evictions; });
  cache_line("starattn_context_shared_shards_total", "counter",
             "Shards that attended over a running request's K/V of the same blocks (no encode, no copy).",
             [](const ContextCacheMetrics& m) { return m.shared_shards; });
  cache_line("starattn_context_cache_bytes", "gauge", "Bytes of block K/V the worker keeps.",
             [](const ContextCacheMetrics& m) { return m.bytes; });
  cache_line("starattn_context_cache_pinned_blocks", "gauge",
             "Cached blocks pinned by POST /v1/contexts.",
             [](const ContextCacheMetrics& m) { return m.pinned_entries; });
  header(out, "starattn_active_requests", "gauge", "Requests a worker is running now.");
  for (const auto& w : load)
    out += "starattn_active_requests{worker=\"" + label(w.worker) + "\"} " +
           std::to_string(w.active_requests) + "\n";
  header(out, "starattn_queued_requests", "gauge", "Requests waiting for a worker.");
  out += "starattn_queued_requests " + std::to_string(queued) + "\n";
  header(out, "starattn_open_connections", "gauge", "Client connections open (HTTP and TCP).");
  out += "starattn_open_connections " + std::to_string(open_connections_) + "\n";
  header(out, "starattn_port_connections", "gauge", "Connections admitted and open, by listening port.");
  for (const auto& [port, n] : port_connections_)
    out += "starattn_port_connections{port=\"" + label(port) + "\"} " + std::to_string(n) + "\n";
  header(out, "starattn_connections_refused_total", "counter",
         "Connections refused by a port's limits, by port and reason.");
  for (const auto& [key, n] : refused_)
    out += "starattn_connections_refused_total{port=\"" + label(key.first) + "\",reason=\"" + label(key.second) +
           "\"} " + std::to_string(n) + "\n";
  if (const std::optional<BatchCounters> b = batching) {
    header(out, "starattn_decode_steps_total", "counter", "Decode steps run (each advances every running request).");
    out += "starattn_decode_steps_total " + std::to_string(b->steps) + "\n";
    header(out, "starattn_decode_batched_steps_total", "counter", "Decode steps that advanced more than one request.");
    out += "starattn_decode_batched_steps_total " + std::to_string(b->batched_steps) + "\n";
    header(out, "starattn_decode_largest_batch", "gauge", "Most requests one decode step advanced so far.");
    out += "starattn_decode_largest_batch " + std::to_string(b->largest_batch) + "\n";
  }
  header(out, "starattn_active_streams", "gauge", "Requests being answered now.");
  out += "starattn_active_streams " + std::to_string(active_streams_) + "\n";
  return out;
}

}  // namespace starattn::server
