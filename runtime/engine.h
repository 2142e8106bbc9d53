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
#include "runtime/request.h"
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
  // later requests sharing whole blocks skip phase 1 for them; 0 keeps nothing. The cache
  // keeps only what a running request's memory plan leaves it (unused blocks are evicted first).
  int64_t context_cache_bytes = 0;
  // EngineBatch: a request admitted while others decode runs its phase 1 in chunks of this many
  // rows, one chunk per decode step, so its encode does not stall their tokens (0: all of it at
  // admission). Engine::generate, with nothing to interleave, encodes whole blocks.
  // 512: a chunk costs about a decode step of a mid-size model on a GPU (bench interleave).
  int64_t phase1_chunk_tokens = 512;
  // EngineBatch: how long a step's share of phase 1 may take, as a fraction of the last decode
  // step's time; a chunk's forward is then split by layers over several steps
  // (runtime/phase1_pacer.h). 0.5 keeps each token's wait at about 1.5x its unloaded value; the
  // long request's encode then takes about 3x as long while others decode. 0: whole chunks.
  double phase1_step_share = 0.5;
};

// The stop ids a request runs with: its own, else the model's EOS ids; none with ignore_eos.
std::vector<int32_t> resolve_stop_ids(const std::vector<int32_t>& requested, bool ignore_eos,
                                      const ModelConfig& config);

// Called for each generated token (stop tokens are not passed). `logits` is the host copy of
// the distribution it was drawn from when the request asked for logits, else null. Return false
// to cancel the request.
using TokenCallback = std::function<bool(int32_t token, const float* logits)>;
// The same with everything a step produced: text (stop strings applied), logits, logprobs.
using GeneratedCallback = std::function<bool(const GeneratedToken& token)>;

struct AdmittedRequest;  // runtime/engine_request.h

class Engine {
 public:
  explicit Engine(const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Lays out the request's prompt (resolve_prompt, runtime/prompt.h), plans it on the
  // in-process workers and runs it to the end. Throws Error for a request it refuses.
  RequestStats generate(const RequestSpec& request, const TokenCallback& on_token);
  RequestStats generate(const RequestSpec& request, const GeneratedCallback& on_token);

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
  // Context reuse: unpins the blocks pinned under `name` (RequestSpec::pin_context); they stay
  // cached, evictable. Returns how many blocks carried the pin.
  int64_t release_context(const std::string& name);
  ContextCacheMetrics context_cache_metrics() const;

 private:
  friend class EngineBatch;  // runtime/engine_batch.h: admits requests, decodes them together
  // Lays out, validates and plans the request and runs its phase 1 on the in-process workers;
  // the result is ready to decode. Throws Error for a request it refuses.
  std::unique_ptr<AdmittedRequest> admit(const RequestSpec& request);
  // The same with phase 1 only begun: the caller runs its chunks of at most `chunk_tokens` rows
  // (0: a whole anchor or block each) with AdmittedRequest::encode_chunk.
  std::unique_ptr<AdmittedRequest> start_request(const RequestSpec& request, int64_t chunk_tokens);
  const Transformer& model() const;
  int64_t phase1_chunk_tokens() const;
  double phase1_step_share() const;

  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace starattn
