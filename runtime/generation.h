// The decode loop of one request, written once: the in-process Engine runs it to the end, the
// query actor advances it one step per message. Each step feeds the query (first step) or the
// last token through the model with Star Attention's phase 2 (QuerySession over the request's
// ContextShards), applies penalties and bias, picks the next token, and applies the stop rules
// (stop ids, stop strings, max_tokens) here and nowhere else.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "runtime/sampling.h"
#include "runtime/star_attention.h"
#include "runtime/tokenizer.h"
#include "runtime/transformer.h"

namespace starattn {

// Holds back generated text that may be the start of a stop string, so a client never sees
// text past a stop. push() returns the text that is safe to emit; after a match, stopped() is
// true and the text before the match has been returned.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  std::string push(const std::string& text);
  std::string flush();  // at the end: whatever is still held back
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

// What phase 2 of a request needs, the context already placed on its shards.
struct GenerationSpec {
  std::vector<int32_t> query;
  int max_tokens = 64;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;         // resolved: the model's EOS ids unless the request gave
                                         // its own; empty to generate exactly max_tokens
  std::vector<std::string> stop_strings;  // need a tokenizer (text is decoded here)
  LogitsProcessing logits;
  bool want_logits = false;  // hand the host copy of each step's distribution to the caller
};

struct GeneratedToken {
  int32_t token = 0;
  std::string text;                    // text this token releases (with a tokenizer), may be empty
  const float* logits = nullptr;       // [vocab] host copy when want_logits, valid until next step
  std::optional<TokenLogprob> logprob;  // when the spec asked for logprobs
};

// What a batched decode step fetched of one request's logits row for Generation::end_step.
struct FetchedLogits {
  const float* host_row = nullptr;  // [vocab] host copy of the row
  int32_t greedy_token = -1;        // Backend::argmax_rows' pick for the row (-1: none)
};

class Generation {
 public:
  // `tokenizer` may be null (no text, no stop strings). The model, shards and tokenizer must
  // outlive the Generation.
  Generation(const Transformer& model, ContextShards& shards, int64_t context_len,
             GenerationSpec spec, const Tokenizer* tokenizer);
  ~Generation();

  // Advances by one step. True with `out` filled when a token was produced (the caller streams
  // it); false once the request has finished (finish_reason() says why). Throws what the model
  // or the shards throw (a failed worker).
  bool step(GeneratedToken& out);
  // step() in two parts around the forward, for a forward shared with other requests
  // (runtime/decode_batch.h); the rules stay here. begin_step() applies the ends that need no
  // forward (cancelled, a stop string hit last step, max_tokens) and gives the tokens to feed
  // through session() next (the query, then the last token); false once finished.
  bool begin_step(std::vector<int32_t>& input);
  // After the forward: `logits` [1, vocab] are the next-token logits of the input's last row.
  // Picks the token and applies the stop rules; returns what step() returns. A batched step
  // may hand over what it fetched for all its requests at once (`fetched`): the token is then
  // the one the logits alone would give, without a device round trip of its own.
  bool end_step(const Tensor& logits, GeneratedToken& out, const FetchedLogits& fetched = {});
  // Whether end_step reads the logits on the host (logprobs, penalties, bias, a temperature), or
  // only needs a greedy pick.
  bool picks_on_host() const { return !host_logits_.empty() || spec_.sampling.temperature != 0.0f; }
  QuerySession& session() { return *session_; }
  // The caller stops early: the next step() returns false with "cancelled".
  void cancel();
  bool finished() const { return !finish_reason_.empty(); }
  const std::string& finish_reason() const { return finish_reason_; }
  // Text the decoder still held at the end (empty when a stop string ended the request).
  std::string text_tail();
  int generated() const { return generated_; }
  double first_token_ms() const { return first_token_ms_; }
  // From the first token to the end (0 until a token was generated).
  double decode_ms() const;

 private:
  int32_t choose_token(const Tensor& logits, GeneratedToken& out, const FetchedLogits& fetched);
  bool finish(const char* reason);

  const Transformer& model_;
  GenerationSpec spec_;
  std::unique_ptr<QuerySession> session_;
  std::unique_ptr<StreamDecoder> decoder_;
  std::unique_ptr<StopMatcher> stops_;
  std::vector<float> host_logits_;
  std::vector<int32_t> history_;  // generated tokens (penalties)
  int step_ = 0;
  int generated_ = 0;
  int32_t last_ = -1;
  bool stop_after_this_ = false;
  std::string finish_reason_;
  std::chrono::steady_clock::time_point t_start_, t_first_, t_end_;
  double first_token_ms_ = 0;
};

}  // namespace starattn
