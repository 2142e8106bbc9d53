#include "runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <stdexcept>

#include "runtime/engine_request.h"
#include "runtime/errors.h"
#include "runtime/model_loader.h"
#include "runtime/star_attention.h"

namespace starattn {

struct Engine::Impl {
  EngineOptions options;
  ModelRuntime rt;
  std::shared_ptr<ContextCache> blocks;  // after rt: it holds K/V on rt's backend
  ~Impl() { blocks.reset(); }
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

std::vector<int32_t> resolve_stop_ids(const std::vector<int32_t>& requested, bool ignore_eos,
                                      const ModelConfig& config) {
  if (ignore_eos) return {};
  return requested.empty() ? config.eos_token_ids : requested;
}

Engine::Engine(const EngineOptions& options) : impl_(std::make_unique<Impl>()) {
  if (options.phase1_chunk_tokens < 0)
    throw std::invalid_argument("phase1_chunk_tokens must be 0 (whole blocks) or more, got " +
                                std::to_string(options.phase1_chunk_tokens));
  if (!(options.phase1_step_share >= 0) || options.phase1_step_share > 100)
    throw std::invalid_argument("phase1_step_share must be 0 (whole chunks) or a positive fraction of a "
                                "decode step, got " + std::to_string(options.phase1_step_share));
  if (options.workers < 1)
    throw std::invalid_argument("workers must be at least 1, got " +
                                std::to_string(options.workers));
  impl_->options = options;
  ModelLoadOptions load;
  load.model = options.model;
  load.random_weights = options.random_weights;
  load.weight_seed = options.weight_seed;
  load.device = options.device;
  load.gpu = options.gpu;
  load.threads = options.threads;
  impl_->rt = load_model_runtime(load);
  impl_->blocks = std::make_shared<ContextCache>(
      options.context_cache_bytes,
      impl_->rt.digest + "/" + dtype_name(impl_->rt.backend->activation_dtype()));
}

Engine::~Engine() = default;

const ModelConfig& Engine::config() const { return impl_->rt.model->config(); }
const Tokenizer& Engine::tokenizer() const { return *impl_->rt.tokenizer; }
const std::optional<ChatTemplate>& Engine::chat_template() const { return impl_->rt.chat; }
ChatTemplate Engine::chat_for_messages() const { return impl_->rt.chat_for_messages(); }

PromptIds Engine::document_prompt(const std::string& document, const std::string& question) const {
  return starattn::document_prompt(*impl_->rt.tokenizer, impl_->rt.chat, document, question);
}
Backend& Engine::backend() { return *impl_->rt.backend; }
const Transformer& Engine::model() const { return *impl_->rt.model; }
int64_t Engine::phase1_chunk_tokens() const { return impl_->options.phase1_chunk_tokens; }
double Engine::phase1_step_share() const { return impl_->options.phase1_step_share; }

int64_t Engine::kv_capacity_tokens() const {
  const Backend& be = *impl_->rt.backend;
  const int64_t per_token = config().kv_bytes_per_token(dtype_size(be.activation_dtype()));
  return static_cast<int64_t>(static_cast<double>(be.free_bytes()) *
                              impl_->options.kv_memory_fraction) /
         per_token;
}

int64_t Engine::release_context(const std::string& name) { return impl_->blocks->unpin(name); }
ContextCacheMetrics Engine::context_cache_metrics() const { return impl_->blocks->metrics(); }

namespace {
double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// The tokens of each block of `run`, cut from the context; returns how many there are.
int64_t run_tokens(const std::vector<int32_t>& context, const std::vector<BlockSpec>& run,
                   std::vector<std::vector<int32_t>>& toks) {
  int64_t n = 0;
  for (const BlockSpec& blk : run) {
    n += blk.length;
    toks.emplace_back(context.begin() + blk.start, context.begin() + blk.start + blk.length);
  }
  return n;
}

// Tokens of `plan`'s runs whose K/V a running request holds (ContextCache::has_shard): the keys
// are those ContextShard::begin_encode will look up.
int64_t shared_run_tokens(const RequestPlan& plan, const std::vector<int32_t>& context, const ContextCache& blocks) {
  const auto C = static_cast<int64_t>(context.size());
  const std::vector<int32_t> anchor(context.begin(), context.begin() + std::min<int64_t>(plan.anchor_size, C));
  int64_t shared = 0;
  for (const auto& run : plan.runs) {
    if (run.empty()) continue;
    std::vector<std::vector<int32_t>> toks;
    const int64_t n = run_tokens(context, run, toks);
    if (blocks.has_shard(block_keys(anchor, run, toks))) shared += n;
  }
  return shared;
}
}  // namespace

RequestStats Engine::generate(const RequestSpec& req, const TokenCallback& on_token) {
  return generate(req, [&](const GeneratedToken& t) { return on_token(t.token, t.logits); });
}

RequestStats Engine::generate(const RequestSpec& req, const GeneratedCallback& on_token) {
  const std::unique_ptr<AdmittedRequest> r = admit(req);
  Generation& gen = *r->generation;
  GeneratedToken token;
  while (gen.step(token))
    if (!on_token(token)) gen.cancel();
  return r->end(*impl_->rt.backend);
}

std::unique_ptr<AdmittedRequest> Engine::admit(const RequestSpec& req) {
  // Nothing runs in between: each chunk is a whole anchor or block, the forwards phase 1 has
  // always run.
  std::unique_ptr<AdmittedRequest> r = start_request(req, 0);
  while (r->encode_chunk(*impl_->rt.backend)) {
  }
  return r;
}

std::unique_ptr<AdmittedRequest> Engine::start_request(const RequestSpec& req, int64_t chunk_tokens) {
  auto admitted = std::make_unique<AdmittedRequest>();
  const Transformer& model = *impl_->rt.model;
  Backend& be = *impl_->rt.backend;
  const ModelConfig& cfg = model.config();
  // The chat layout only for chats: a template-less model's fallback is looked up (and logged)
  // when a chat needs it.
  const PromptIds prompt =
      resolve_prompt(req.prompt, *impl_->rt.tokenizer, impl_->rt.chat,
                     req.prompt.chat ? chat_for_messages() : ChatTemplate(), cfg.bos_token_id);
  const std::vector<int32_t>& context = prompt.context;
  validate_request(context, prompt.query, req.max_tokens, cfg, req.beyond_positions);

  RequestStats& stats = admitted->stats;
  const int64_t C = static_cast<int64_t>(context.size());
  stats.context_tokens = C;
  stats.query_tokens = static_cast<int64_t>(prompt.query.size());

  // Memory plan, before anything is allocated: the in-process workers share one backend's
  // memory, which the query side also needs (its K/V and activations).
  const MemoryModel memory = MemoryModel::of(cfg, be.activation_dtype());
  const int W = impl_->options.workers;
  // Cached blocks nobody uses count as free: this request evicts them if it needs the room.
  ContextCache& blocks = *impl_->blocks;
  const int64_t evictable = blocks.evictable_bytes();
  const int64_t free_bytes = be.free_bytes() + evictable;
  const auto budget = static_cast<int64_t>(static_cast<double>(free_bytes) *
                                           impl_->options.kv_memory_fraction);
  const int64_t query_bytes = (stats.query_tokens + req.max_tokens) * memory.per_token +
                              stats.query_tokens * memory.per_forward_row;
  // The in-process workers encode one after another in one area (ContextShard's EncodeArea):
  // their K/V and one encode's scratch share what the query side leaves.
  const std::vector<int64_t> pool{std::max<int64_t>(budget - query_bytes, 0)};
  BlockRequest br;
  br.context_len = C;
  br.mode = req.mode;
  br.block_size = req.block_size;
  br.anchor_size = req.anchor_size;
  br.use_anchor = req.use_anchor;
  br.phase1_chunk = chunk_tokens;
  const std::string where = "the engine's " + std::to_string(W) + " in-process worker(s) (" +
                            std::to_string(impl_->options.kv_memory_fraction) + " of the " +
                            std::to_string(free_bytes >> 20) + " MiB free on " + be.name() + ")";
  RequestPlan plan;
  // Runs whose blocks a running request holds already (the same document, split alike) share
  // its K/V (ContextShard::shares_kv) and allocate none: that room is given back before the
  // plan is checked. The runs are cut from an unbounded pool first to find them; the plan made
  // with the room given back must hold at least those shared tokens, else it is made again
  // without them (placement can depend on the room).
  const int64_t shared_tokens = C > 0 && blocks.enabled() && req.pin_context.empty()
                                    ? shared_run_tokens(plan_request(br, {int64_t{1} << 60}, memory, where,
                                                                     WorkerMemory::shared_pool, W),
                                                        context, blocks)
                                    : 0;
  int64_t shared_in_plan = 0;  // of the plan taken: its runs that will share
  if (shared_tokens > 0) {
    std::vector<int64_t> more{pool[0] + shared_tokens * memory.per_token};
    try {
      plan = plan_request(br, more, memory, where, WorkerMemory::shared_pool, W);
      shared_in_plan = shared_run_tokens(plan, context, blocks);
      if (shared_in_plan < shared_tokens) plan = RequestPlan{};
    } catch (const Error&) {
      plan = RequestPlan{};
    }
  }
  if (plan.blocks.empty()) {
    plan = plan_request(br, pool, memory, where, WorkerMemory::shared_pool, W);
    shared_in_plan = 0;  // (its runs may share all the same: counted as encoding, the safe side)
  }
  stats.block_size = plan.block_size;
  stats.anchor_size = plan.anchor_size;
  stats.blocks = static_cast<int>(plan.blocks.size());
  if (blocks.enabled()) {
    // What this request allocates; the cache keeps (and adds this request's blocks to) only
    // what is left of the room, evicting unused blocks down to it first.
    int64_t need = query_bytes + memory.fixed;
    if (C > 0) need += C * memory.per_token + memory.encode_bytes(plan.scratch_rows, plan.forward_rows);
    // `budget` counted the evictable blocks as free; pinned ones are already spent.
    const int64_t held = blocks.metrics().bytes - evictable;
    blocks.set_room(std::max<int64_t>(budget - need, 0) + held);
  }

  admitted->phase1_start = std::chrono::steady_clock::now();
  be.profile_section("phase1");
  const std::vector<int32_t> anchor(context.begin(),
                                    context.begin() + std::min<int64_t>(plan.anchor_size, C));
  std::vector<std::unique_ptr<ContextShard>>& shards = admitted->shards;
  // One area for all shards: they encode in turn (encode_chunk goes shard by shard), and the
  // area goes when the last of them is done.
  // (None when every run shares a running request's K/V: nothing is encoded. A shard that
  // encodes without one makes its own.)
  const bool all_shared = C > 0 && shared_in_plan == C;
  const auto area = C > 0 && !all_shared ? std::make_shared<EncodeArea>(model, plan.scratch_rows) : nullptr;
  for (const auto& run : plan.runs) {
    if (run.empty()) continue;
    std::vector<std::vector<int32_t>> toks;
    const int64_t n = run_tokens(context, run, toks);
    shards.push_back(std::make_unique<ContextShard>(model, n));
    if (blocks.enabled()) shards.back()->use_cache(impl_->blocks, req.pin_context);
    shards.back()->begin_encode(anchor, run, std::move(toks), chunk_tokens, area);
    admitted->rows_total += shards.back()->encode_rows_total();
  }
  stats.workers_used = static_cast<int>(shards.size());

  admitted->model = &model;
  admitted->tokenizer = impl_->rt.tokenizer.get();
  GenerationSpec& spec = admitted->spec;
  spec.query = prompt.query;
  spec.max_tokens = req.max_tokens;
  spec.sampling = req.sampling;
  spec.stop_ids = resolve_stop_ids(req.stop_ids, req.ignore_eos, cfg);
  spec.stop_strings = req.stop_strings;
  spec.logits = req.logits;
  spec.want_logits = req.want_logits;
  return admitted;
}

bool AdmittedRequest::encode_chunk(Backend& be, int max_layers) {
  if (generation) throw std::logic_error("AdmittedRequest::encode_chunk: phase 1 is done");
  last_layers = 0;
  while (next_shard < shards.size() && !shards[next_shard]->encoding()) ++next_shard;
  if (next_shard < shards.size()) {
    ++chunks;
    const bool more = shards[next_shard]->encode_chunk(max_layers);
    last_layers = shards[next_shard]->layers_last_call();
    if (more) return true;
    ++next_shard;
    while (next_shard < shards.size() && !shards[next_shard]->encoding()) ++next_shard;
    if (next_shard < shards.size()) return true;
  }
  // Phase 1 is done: the request decodes from here.
  be.synchronize();
  stats.phase1_ms = ms_since(phase1_start);
  std::vector<ContextShard*> ptrs;
  for (const auto& s : shards) {
    stats.blocks_reused += s->blocks_reused();
    ptrs.push_back(s.get());
  }
  local = std::make_unique<LocalShards>(ptrs);
  generation = std::make_unique<Generation>(*model, *local, stats.context_tokens, std::move(spec),
                                            tokenizer);
  return false;
}

int64_t AdmittedRequest::encode_rows_left() const {
  int64_t n = 0;
  for (const auto& s : shards) n += s->encode_rows_left();
  return n;
}

RequestStats AdmittedRequest::end(Backend& be) {
  be.synchronize();
  const Generation& gen = *generation;
  stats.generated = gen.generated();
  stats.first_token_ms = gen.first_token_ms();
  stats.decode_ms = gen.decode_ms();
  stats.finish_reason = gen.finish_reason();
  stats.text_tail = generation->text_tail();
  be.profile_section(nullptr);
  return stats;
}

}  // namespace starattn
