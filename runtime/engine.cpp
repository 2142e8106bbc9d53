#include "runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <stdexcept>

#include "runtime/block_plan.h"
#include "runtime/bpe_tokenizer.h"
#include "runtime/random_model.h"
#include "runtime/star_attention.h"
#include "runtime/transformer.h"
#include "runtime/weight_source.h"

namespace starattn {

AttentionMode parse_mode(const std::string& name) {
  if (name == "star") return AttentionMode::star;
  if (name == "full") return AttentionMode::full;
  throw std::invalid_argument("unknown attention mode '" + name + "' (expected star or full)");
}

const char* mode_name(AttentionMode mode) { return mode == AttentionMode::star ? "star" : "full"; }

struct Engine::Impl {
  EngineOptions options;
  std::unique_ptr<Backend> backend;
  LoadedModel loaded;
  std::unique_ptr<Transformer> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::optional<ChatTemplate> chat;
};

std::string default_model_path() {
  std::string dir;
  if (const char* env = std::getenv("STARATTN_MODELS"); env && *env) {
    dir = env;
  } else if (const char* home = std::getenv("HOME"); home && *home) {
    dir = std::string(home) + "/.cache/starattn/models";
  } else {
    dir = ".cache/starattn/models";
  }
  return dir + "/SmolLM2-135M-Instruct.Q4_1.gguf";
}

Engine::Engine(const EngineOptions& options) : impl_(std::make_unique<Impl>()) {
  if (options.workers < 1)
    throw std::invalid_argument("workers must be at least 1, got " +
                                std::to_string(options.workers));
  impl_->options = options;
  impl_->backend = make_backend(options.device, options.gpu, options.threads);
  if (options.random_weights) {
    // A config.json path, or a directory holding one.
    std::string path = options.model;
    if (path.size() < 5 || path.compare(path.size() - 5, 5, ".json") != 0) path += "/config.json";
    impl_->loaded.config = ModelConfig::from_file(path);
    impl_->loaded.weights = random_weight_source(impl_->loaded.config, options.weight_seed);
    impl_->loaded.path = path;
    impl_->tokenizer = std::make_unique<ByteTokenizer>(impl_->loaded.config.vocab_size);
  } else {
    impl_->loaded = open_model(options.model);
    impl_->tokenizer = load_tokenizer(options.model);
    if (dynamic_cast<const ByteTokenizer*>(impl_->tokenizer.get()))
      impl_->tokenizer = std::make_unique<ByteTokenizer>(impl_->loaded.config.vocab_size);
    // Byte-level models have no chat template; every real vocabulary gets one (guessed with a
    // note when the model does not say).
    if (!dynamic_cast<const ByteTokenizer*>(impl_->tokenizer.get()))
      impl_->chat = detect_chat_template(read_chat_template(options.model), *impl_->tokenizer);
  }
  impl_->model = std::make_unique<Transformer>(impl_->loaded.config, *impl_->loaded.weights,
                                               *impl_->backend);
}

Engine::~Engine() = default;

const ModelConfig& Engine::config() const { return impl_->model->config(); }
const Tokenizer& Engine::tokenizer() const { return *impl_->tokenizer; }
const std::optional<ChatTemplate>& Engine::chat_template() const { return impl_->chat; }

PromptIds Engine::document_prompt(const std::string& document, const std::string& question) const {
  return starattn::document_prompt(*impl_->tokenizer, impl_->chat, document, question);
}
Backend& Engine::backend() { return *impl_->backend; }

int64_t Engine::kv_capacity_tokens() const {
  const Backend& be = *impl_->backend;
  const int64_t per_token = config().kv_bytes_per_token(dtype_size(be.activation_dtype()));
  return static_cast<int64_t>(static_cast<double>(be.free_bytes()) *
                              impl_->options.kv_memory_fraction) /
         per_token;
}

namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

GenerateStats Engine::generate(const GenerateRequest& req, const TokenCallback& on_token,
                               bool want_logits) {
  using clock = std::chrono::steady_clock;
  const Transformer& model = *impl_->model;
  Backend& be = *impl_->backend;
  const ModelConfig& cfg = model.config();
  if (req.query.empty()) throw std::invalid_argument("the query is empty: it needs at least one token");
  if (req.max_tokens < 0) throw std::invalid_argument("max_tokens must not be negative");
  for (const auto* ids : {&req.context, &req.query})
    for (int32_t id : *ids)
      if (id < 0 || id >= cfg.vocab_size)
        throw std::invalid_argument("token id " + std::to_string(id) +
                                    " is outside the vocabulary (size " +
                                    std::to_string(cfg.vocab_size) + ")");

  GenerateStats stats;
  const int64_t C = static_cast<int64_t>(req.context.size());
  stats.context_tokens = C;
  stats.query_tokens = static_cast<int64_t>(req.query.size());
  int workers = impl_->options.workers;
  int64_t b, a;
  if (req.mode == AttentionMode::full) {
    // The baseline: one block covering the whole context on one worker, no anchor.
    b = std::max<int64_t>(C, 1);
    a = 0;
    workers = 1;
  } else {
    b = req.block_size > 0 ? req.block_size : std::max<int64_t>(1, (C + workers - 1) / workers);
    a = req.anchor_size > 0 ? req.anchor_size : b;
    check_block_sizes(b, a);
    if (!req.use_anchor) a = 0;
  }
  stats.block_size = b;
  stats.anchor_size = a;
  const std::vector<BlockSpec> blocks = split_blocks(C, b);
  stats.blocks = static_cast<int>(blocks.size());

  // Memory plan, before anything is allocated: in-process workers share one backend's memory.
  // Per context token a worker keeps its K/V and (in its workspace) one row of activations;
  // each encode also needs a scratch KV cache of a + b rows (b = C in full mode), and the query
  // side its own K/V and activations. Counting all of it means a context that passes this check
  // does not run out of device memory later in the forward.
  const int64_t es = static_cast<int64_t>(dtype_size(be.activation_dtype()));
  const int64_t kv_tok = cfg.kv_bytes_per_token(static_cast<size_t>(es));
  const int64_t act_tok =
      es * (3 * int64_t{cfg.hidden_size} + 2 * int64_t{cfg.q_dim()} + 2 * int64_t{cfg.kv_dim()} +
            3 * int64_t{cfg.intermediate_size});
  const int64_t query_need = stats.query_tokens + req.max_tokens;
  // Bytes a context of n tokens needs with this request's block rules.
  const auto need_bytes = [&](int64_t n) {
    int64_t nb, na;
    if (req.mode == AttentionMode::full) {
      nb = n;
      na = 0;
    } else {
      nb = req.block_size > 0 ? req.block_size : (n + workers - 1) / workers;
      na = req.use_anchor ? (req.anchor_size > 0 ? req.anchor_size : nb) : 0;
    }
    const double scratch = static_cast<double>(std::min(na, n) + std::min(nb, n));
    return static_cast<double>(n) * static_cast<double>(kv_tok + act_tok) +
           scratch * static_cast<double>(kv_tok + 4 * cfg.num_heads) +
           static_cast<double>(query_need) * static_cast<double>(kv_tok + act_tok) +
           8.0 * cfg.vocab_size + static_cast<double>(int64_t{64} << 20);
  };
  const int64_t free_bytes = be.free_bytes();
  const double budget = static_cast<double>(free_bytes) * impl_->options.kv_memory_fraction;
  if (need_bytes(C) > budget) {
    int64_t lo = 0, hi = C;  // need_bytes grows with n: the largest n that fits is in [lo, hi)
    while (hi - lo > 1) {
      const int64_t mid = lo + (hi - lo) / 2;
      (need_bytes(mid) <= budget ? lo : hi) = mid;
    }
    if (need_bytes(lo) > budget) lo = 0;
    const auto mib = [](double bytes) { return std::to_string(static_cast<int64_t>(bytes / (1 << 20))); };
    throw std::length_error(
        "context of " + std::to_string(C) + " tokens does not fit: at most " + std::to_string(lo) +
        " context tokens fit (" + mode_name(req.mode) + " mode) in " + mib(budget) + " MiB (" +
        std::to_string(impl_->options.kv_memory_fraction) + " of the " + mib(static_cast<double>(free_bytes)) +
        " MiB free on " + be.name() + "), at " + std::to_string(kv_tok) + " bytes of KV and " +
        std::to_string(act_tok) + " bytes of activations per token plus the encoding scratch; this one needs " +
        mib(need_bytes(C)) + " MiB");
  }
  const int64_t fit = std::max<int64_t>(C, 1);
  // The workers share this memory: the total was checked above, so each may take all of it
  // (equal capacities still balance the blocks over the workers).
  const int64_t per_worker = std::max<int64_t>(fit, 1);
  const auto runs = assign_blocks(blocks, std::vector<int64_t>(workers, per_worker));

  const auto t0 = clock::now();
  be.profile_section("phase1");
  const std::vector<int32_t> anchor(req.context.begin(),
                                    req.context.begin() + std::min<int64_t>(a, C));
  std::vector<std::unique_ptr<ContextShard>> shards;
  std::vector<ContextShard*> shard_ptrs;
  for (const auto& run : runs) {
    if (run.empty()) continue;
    int64_t n = 0;
    std::vector<std::vector<int32_t>> toks;
    for (const BlockSpec& blk : run) {
      n += blk.length;
      toks.emplace_back(req.context.begin() + blk.start,
                        req.context.begin() + blk.start + blk.length);
    }
    shards.push_back(std::make_unique<ContextShard>(model, n));
    shards.back()->encode(anchor, run, toks);
    shard_ptrs.push_back(shards.back().get());
  }
  be.synchronize();
  stats.phase1_ms = ms_since(t0);
  stats.workers_used = static_cast<int>(shards.size());

  LocalShards local(shard_ptrs);
  QuerySession session(model, local, C, query_need);
  std::vector<int32_t> stop = req.stop_ids.empty() ? cfg.eos_token_ids : req.stop_ids;
  if (req.ignore_eos) stop.clear();
  std::vector<float> host_logits(want_logits ? static_cast<size_t>(cfg.vocab_size) : 0);

  const auto t1 = clock::now();
  auto t_decode = t1;
  stats.finish_reason = "length";
  be.profile_section("prefill");
  session.feed(req.query);
  for (int step = 0; step < req.max_tokens; ++step) {
    const int32_t token = be.sample(session.logits(), req.sampling, static_cast<uint64_t>(step));
    if (want_logits) be.download(session.logits(), host_logits.data());
    if (step == 0) {
      stats.first_token_ms = ms_since(t1);
      t_decode = clock::now();
      be.profile_section("decode");
    }
    if (std::find(stop.begin(), stop.end(), token) != stop.end()) {
      stats.finish_reason = "stop";
      break;
    }
    ++stats.generated;
    if (!on_token(token, want_logits ? host_logits.data() : nullptr)) {
      stats.finish_reason = "cancelled";
      break;
    }
    if (step + 1 < req.max_tokens) session.feed({token});
  }
  be.synchronize();
  if (stats.generated > 0) stats.decode_ms = ms_since(t_decode);
  be.profile_section(nullptr);
  return stats;
}

}  // namespace starattn
