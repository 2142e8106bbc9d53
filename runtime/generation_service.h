// The seam between the network front ends (HTTP, framed TCP) and whatever generates tokens: the
// in-process Engine (EngineService) or, in a cluster, the head's scheduler actor. Requests and
// results are text-level: the service owns tokenization, chat templates and stop strings, so a
// front end never needs the model.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "runtime/chat_template.h"
#include "runtime/errors.h"
#include "runtime/generation.h"
#include "runtime/sampling.h"

namespace starattn {

struct TextRequest {
  // Either `context` + `query` (completions), or `messages` (chat: all but the last user
  // message become the context, the chat template applied; see chat_prompt() in runtime/prompt.h).
  bool chat = false;
  std::string context;
  std::string query;
  std::vector<ChatMessage> messages;
  std::string mode = "star";  // "star" or "full"
  int64_t block_size = 0;     // 0: the service's default
  int64_t anchor_size = 0;    // 0: the block size
  int max_tokens = 64;
  SamplingParams sampling;
  std::vector<std::string> stop;  // stop strings; the text ends before the first match
  bool ignore_eos = false;        // generate exactly max_tokens (benchmarks, tests)
  // Token ids instead of text (a completions prompt given as ids): when `ids` is set, the
  // service uses context_ids + query_ids as they are, with no template and no tokenizer.
  bool ids = false;
  std::vector<int32_t> context_ids, query_ids;
  // Penalties, logit bias and log-probabilities (runtime/sampling.h).
  LogitsProcessing logits;
};


struct ServiceError {
  ErrorKind kind = ErrorKind::internal;
  std::string message;
};

struct TokenEvent {
  std::string text;              // decoded text released by this token; may be empty (held
                                 // back: an incomplete UTF-8 character or a stop-string prefix)
  std::vector<int32_t> tokens;  // the token id(s) this event stands for
  // One entry per token in `tokens` when the request asked for logprobs
  // (LogitsProcessing::top_logprobs >= 0), else empty.
  std::vector<TokenLogprob> logprobs;
};

struct Completion {
  std::string finish_reason;  // "stop", "length" or "cancelled"
  int64_t prompt_tokens = 0;  // context + query tokens
  int64_t context_tokens = 0;
  int64_t completion_tokens = 0;
  int blocks = 0;
  int64_t block_size = 0;
  int64_t anchor_size = 0;
  double queue_ms = 0;        // waiting for an engine
  double phase1_ms = 0;       // context encoding
  double first_token_ms = 0;  // query prefill + first sample
  double decode_ms = 0;       // later tokens
};

// Exactly one of on_done / on_error is called, exactly once, after every on_token. Callbacks run
// on a service thread; they must not block for long (front ends post to their own executors).
// on_token returning false cancels the request (on_done then reports "cancelled").
struct StreamCallbacks {
  std::function<bool(const TokenEvent&)> on_token;
  std::function<void(const Completion&)> on_done;
  std::function<void(const ServiceError&)> on_error;
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
};

struct ServiceInfo {
  std::string model;            // the name clients see in "model"
  int64_t max_context_tokens = 0;  // what one request's context may hold (0: unknown)
  int max_queue = 0;
  // Raw bytes of a token id, for the tokens named in logprobs; empty when the service cannot
  // name tokens (front ends then refuse logprobs requests).
  std::function<std::string(int32_t)> token_bytes;
};

class GenerationService {
 public:
  virtual ~GenerationService() = default;
  // Thread-safe. Never throws for a bad request: errors arrive through on_error (possibly
  // before submit returns, on the calling thread).
  virtual std::shared_ptr<RequestHandle> submit(TextRequest request, StreamCallbacks callbacks) = 0;
  virtual ServiceInfo info() const = 0;
  virtual std::vector<WorkerLoad> load() const = 0;
  // Requests waiting for a worker.
  virtual int queued() const = 0;
};


}  // namespace starattn
