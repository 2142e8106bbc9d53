// The request vocabulary every path shares: what a request asks for (RequestSpec: a prompt,
// sampling and limits), what it streams (TokenEvent) and what it reports at the end
// (RequestStats, or an Error of one ErrorKind, runtime/errors.h). The in-process Engine, the
// GenerationService and its front ends, the scheduler, the query actor and `starattn run` all
// speak it; protobuf messages are only its images on a wire (transport/wire_convert.h for the
// control plane, server/framed_protocol.cpp for serving.proto).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "runtime/chat_template.h"
#include "runtime/errors.h"
#include "runtime/sampling.h"

namespace starattn {

enum class AttentionMode { star, full };
// "star" (or empty) and "full"; anything else throws Error(invalid_request).
AttentionMode parse_mode(const std::string& name);
const char* mode_name(AttentionMode mode);

// What the model reads: the context (encoded blockwise in phase 1) and the query (phase 2),
// given as token ids, as text, or as a chat. Laid out into ids by resolve_prompt()
// (runtime/prompt.h), the same way on every path.
struct PromptSpec {
  // A chat: context and query come from these turns laid out with the chat template
  // (everything before the last user turn is the context); the fields below stay empty.
  bool chat = false;
  std::vector<ChatMessage> messages;
  // Token ids, used as they are unless the matching text is given.
  std::vector<int32_t> context, query;
  // Text: a context text with a query text is a question over a document (the chat template's
  // layout); a context text alone is tokenized with the model's BOS; a query text alone as is.
  bool context_is_text = false, query_is_text = false;
  std::string context_text, query_text;
};

struct RequestSpec {
  PromptSpec prompt;
  AttentionMode mode = AttentionMode::star;
  int64_t block_size = 0;   // 0: ceil(context / workers)
  int64_t anchor_size = 0;  // 0: the block size (a = b)
  bool use_anchor = true;   // false: the no-anchor ablation (blocks encoded alone)
  int max_tokens = 64;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;          // empty: the model's EOS ids
  bool ignore_eos = false;                // generate exactly max_tokens (benchmarks, tests)
  std::vector<std::string> stop_strings;  // the text ends before the first match
  LogitsProcessing logits;                // penalties, bias, logprobs
  bool want_logits = false;               // stream each token's distribution (float32 [vocab])
  bool beyond_positions = false;  // allow context + query + max_tokens past the model's positions
  // Context reuse: pin the context's cached blocks under this id (POST /v1/contexts) until it
  // is released; empty: the blocks are cached (where a cache is on) but evictable.
  std::string pin_context;
};

// One streamed step of a request.
struct TokenEvent {
  std::string text;              // decoded text released by this token; may be empty (held
                                 // back: an incomplete UTF-8 character or a stop-string prefix)
  std::vector<int32_t> tokens;  // the token id(s) this event stands for
  // One entry per token in `tokens` when the request asked for logprobs
  // (LogitsProcessing::top_logprobs >= 0), else empty.
  std::vector<TokenLogprob> logprobs;
  std::vector<float> logits;  // float32 [vocab] when the request asked for logits, else empty
};

// How a request went: its shape, its timings and why it ended.
struct RequestStats {
  std::string finish_reason;  // "length", "stop" or "cancelled"
  std::string text_tail;      // text the decoder still held at the end (stop strings applied)
  int64_t context_tokens = 0;
  int64_t query_tokens = 0;
  int64_t block_size = 0;
  int64_t anchor_size = 0;
  int blocks = 0;
  int workers_used = 0;
  int blocks_reused = 0;      // blocks whose K/V came from a context cache (phase 1 skipped)
  int generated = 0;          // completion tokens
  double queue_ms = 0;        // waiting for an engine or a slot
  double phase1_ms = 0;       // context encoding
  double first_token_ms = 0;  // query prefill + first sample, after phase 1
  double decode_ms = 0;       // all later steps
  // Data plane (actors): Q -> (O, lse) exchanges of this request, one per layer and step.
  int64_t exchanges = 0;
  double exchange_mean_us = 0, exchange_p50_us = 0, exchange_max_us = 0;
  int64_t prompt_tokens() const { return context_tokens + query_tokens; }
};

// The end of a request as a stream reports it: its stats, or the error that ended it.
struct RequestEnd {
  bool ok = true;
  ErrorKind error_kind = ErrorKind::internal;  // when !ok
  std::string error;                           // when !ok
  RequestStats stats;
};

}  // namespace starattn
