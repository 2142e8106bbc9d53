// The seam between the network front ends (HTTP, framed TCP) and whatever generates tokens: the
// in-process Engine (EngineService) or, in a cluster, the head's scheduler actor. Requests and
// results are the runtime's request vocabulary (runtime/request.h), mostly text-level: the
// service owns tokenization, chat templates and stop strings, so a front end never needs the
// model.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/context_cache.h"
#include "runtime/errors.h"
#include "runtime/request.h"

namespace starattn {

// Exactly one of on_done / on_error is called, exactly once, after every on_token. Callbacks run
// on a service thread; they must not block for long (front ends post to their own executors).
// on_token returning false cancels the request (on_done then reports "cancelled").
// on_done's stats carry queue_ms; their text_tail has already been streamed as a last token.
struct StreamCallbacks {
  std::function<bool(const TokenEvent&)> on_token;
  std::function<void(const RequestStats&)> on_done;
  std::function<void(const Error&)> on_error;
};

// A submitted request. cancel() is thread-safe and idempotent; a queued request is dropped
// without running, a running one stops at its next token and frees its KV.
class RequestHandle {
 public:
  virtual ~RequestHandle() = default;
  virtual void cancel() = 0;
};

// KV held by one worker (an engine of a pool, or a context actor of a cluster), for /metrics.
struct WorkerLoad {
  std::string worker;
  int64_t kv_tokens = 0;  // tokens whose K/V the worker holds right now
  int active_requests = 0;
  // Empty while the worker answers; else why nothing is placed on it (it stopped answering
  // heartbeats). /health reports "degraded" naming such workers.
  std::string unhealthy;
  // Its block cache (context reuse); budget_bytes 0 where it keeps none.
  ContextCacheMetrics context_cache;
};

struct ServiceInfo {
  std::string model;            // the name clients see in "model"
  int64_t max_context_tokens = 0;  // what one request's context may hold (0: unknown)
  int max_queue = 0;
  // Raw bytes of a token id, for the tokens named in logprobs; empty when the service cannot
  // name tokens (front ends then refuse logprobs requests).
  std::function<std::string(int32_t)> token_bytes;
};

// How a service's decode steps were batched since it started (all its engines); /metrics
// reports it where the service counts it.
struct BatchCounters {
  int64_t steps = 0;          // decode steps run
  int64_t batched_steps = 0;  // of them, steps that advanced more than one request
  int largest_batch = 0;      // most requests one step advanced
};

class GenerationService {
 public:
  virtual ~GenerationService() = default;
  // Thread-safe. Never throws for a bad request: errors arrive through on_error (possibly
  // before submit returns, on the calling thread).
  virtual std::shared_ptr<RequestHandle> submit(RequestSpec request, StreamCallbacks callbacks) = 0;
  virtual ServiceInfo info() const = 0;
  virtual std::vector<WorkerLoad> load() const = 0;
  // Requests waiting for a worker.
  virtual int queued() const = 0;
  // Context reuse: every worker unpins the blocks pinned under `context_id`
  // (RequestSpec::pin_context); they stay cached, evictable. Thread-safe.
  virtual void release_context(const std::string& context_id) = 0;
  // Decode batching counters; none where the service does not count them.
  virtual std::optional<BatchCounters> batching() const { return std::nullopt; }
};


}  // namespace starattn
