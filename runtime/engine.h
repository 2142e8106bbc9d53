// The public C++ API: one Engine object owns a model on a backend and runs Star Attention
// requests, yielding tokens as they are generated.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "runtime/generation.h"
#include "runtime/request_plan.h"
#include "runtime/chat_template.h"
#include "runtime/context_cache.h"
#include "runtime/model_config.h"
#include "runtime/prompt.h"
#include "runtime/tokenizer.h"

namespace starattn {

// Where `starattn run` looks for the default model (SmolLM2-135M-Instruct, fetched by
// deploy/fetch-model.sh): $STARATTN_MODELS or ~/.cache/starattn/models.
std::string default_model_path();


struct EngineOptions {
  std::string model;           // Hugging Face directory (or config.json with random_weights)
  bool random_weights = false;  // build random weights of the config's shape (benchmarks)
  uint64_t weight_seed = 0;
  std::string device = "cpu";  // backend name
  int gpu = 0;                 // device index for gpu backends
  int workers = 1;             // in-process context workers
  int threads = 0;             // cpu threads (0 = all)
  // Fraction of the backend's free memory the KV caches of one request may take.
  double kv_memory_fraction = 0.8;
  // Context reuse (runtime/context_cache.h): bytes of block K/V kept after a request ends, so
  // later requests sharing whole blocks skip phase 1 for them; 0 keeps nothing. Counted as free
  // room when a request is planned: a request that needs it evicts cached blocks.
  int64_t context_cache_bytes = 0;
};

struct GenerateRequest {
  std::vector<int32_t> context;
  std::vector<int32_t> query;
  AttentionMode mode = AttentionMode::star;
  int64_t block_size = 0;   // 0: ceil(context / workers)
  int64_t anchor_size = 0;  // 0: the block size (a = b)
  bool use_anchor = true;   // false: the no-anchor ablation (blocks encoded alone)
  int max_tokens = 64;
  SamplingParams sampling;
  std::vector<int32_t> stop_ids;  // empty: the model's EOS ids
  bool ignore_eos = false;        // generate exactly max_tokens (comparisons, benchmarks)
  std::vector<std::string> stop_strings;  // the text ends before the first match
  LogitsProcessing logits;                // penalties, bias, logprobs
  bool beyond_positions = false;  // allow context + query + max_tokens past the model's positions
  // Pins the context's cached blocks under this name until release_context(name) (the
  // explicit API, POST /v1/contexts); empty: the blocks are cached but evictable.
  std::string pin_context;
};

// The stop ids a request runs with: its own, else the model's EOS ids; none with ignore_eos.
std::vector<int32_t> resolve_stop_ids(const std::vector<int32_t>& requested, bool ignore_eos,
                                      const ModelConfig& config);

struct GenerateStats {
  int64_t context_tokens = 0;
  int64_t query_tokens = 0;
  int64_t block_size = 0;
  int64_t anchor_size = 0;
  int blocks = 0;
  int workers_used = 0;
  int blocks_reused = 0;  // blocks whose K/V came from the context cache (phase 1 skipped)
  int generated = 0;
  double phase1_ms = 0;       // context encoding
  double first_token_ms = 0;  // query prefill + first sample, after phase 1
  double decode_ms = 0;       // all later steps
  std::string finish_reason;  // "length", "stop" or "cancelled"
  std::string text_tail;      // text the decoder held at the end (stop strings applied)
};

// Called for each generated token (stop tokens are not passed). `logits` is the host copy of
// the distribution it was drawn from when the request asked for logits, else null. Return false
// to cancel the request.
using TokenCallback = std::function<bool(int32_t token, const float* logits)>;
// The same with everything a step produced: text (stop strings applied), logits, logprobs.
using GeneratedCallback = std::function<bool(const GeneratedToken& token)>;

class Engine {
 public:
  explicit Engine(const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  GenerateStats generate(const GenerateRequest& request, const TokenCallback& on_token,
                         bool want_logits = false);
  GenerateStats generate(const GenerateRequest& request, const GeneratedCallback& on_token,
                         bool want_logits = false);

  const ModelConfig& config() const;
  const Tokenizer& tokenizer() const;
  // The model's chat template; empty for models without one (byte-level test models).
  const std::optional<ChatTemplate>& chat_template() const;
  // The template chats use (the model's, or the fallback for template-less models).
  ChatTemplate chat_for_messages() const;
  // Context and query ids for a question over a document (runtime/prompt.h).
  PromptIds document_prompt(const std::string& document, const std::string& question) const;
  Backend& backend();
  // Tokens of KV the in-process context workers can hold for one request, in all.
  int64_t kv_capacity_tokens() const;
  // Context reuse: unpins the blocks pinned under `name` (GenerateRequest::pin_context); they
  // stay cached, evictable. Returns how many blocks carried the pin.
  int64_t release_context(const std::string& name);
  ContextCacheMetrics context_cache_metrics() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace starattn
