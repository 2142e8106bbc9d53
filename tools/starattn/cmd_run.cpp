#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>

#include <nlohmann/json.hpp>

#include "actors/cluster.h"
#include "transport/address.h"
#include "transport/net_devices.h"
#include "actors/context_block.h"
#include "runtime/chat_template.h"
#include "runtime/engine.h"
#include "tools/starattn/args.h"
#include "tools/starattn/model_options.h"
#include "tools/starattn/commands.h"

namespace starattn::cli {
namespace {

const char* kRunHelp =
    "usage: starattn run [--model DIR|FILE.gguf] (--context-file F | --context-ids \"1,2,..\")\n"
    "                    (--query TEXT | --query-ids \"..\") [options]\n"
    "       starattn run [--model DIR|FILE.gguf] --messages-file CHAT.json [options]\n"
    "       starattn run --head HOST:PORT (--context-file F | ...) (--query ...) [options]\n"
    "Answers the query over the context with Star Attention and streams the answer to stdout;\n"
    "per-phase timings go to stderr. Without --head it runs the scheduler, the query actor and\n"
    "--workers context actors in this process; with --head it submits to a running head.\n"
    "Without --model it uses the default model (SmolLM2-135M-Instruct, deploy/fetch-model.sh).\n"
    "A text context with a text query is laid out with the model's chat template.\n"
    "A chat (--messages-file: a JSON list of {role, content}, or an object with \"messages\")\n"
    "uses the chat template too: everything before the last user message is the context.\n\n"
    "  --head HOST:PORT       submit to the head of a cluster (starattn serve)\n"
    "  --min-workers N        with --head: wait until N workers are registered (default 1)\n"
    "  --connect-timeout S    with --head: how long to keep trying to reach it (default 60)\n"
    "  --timeout S            with --head: give up when nothing arrives for S seconds (120)\n"
    "  --tls-cert F --tls-key F --tls-ca F  with --head: reach a head that runs with TLS\n"
    "  --mode star|full       Star Attention (default) or the full-attention baseline\n"
    "  --workers W            in-process context workers (default 1)\n"
    "  --engine               run on the in-process Engine library instead of the actors\n"
    "  --block-size B         context block size (default ceil(context / workers))\n"
    "  --anchor-size A        anchor size, 1 <= A <= B (default B)\n"
    "  --no-anchor            encode blocks without the anchor (ablation)\n"
    "  --max-tokens N         tokens to generate at most (default 64)\n"
    "  --temperature T        0 = greedy (default); with --top-k K, --top-p P, --seed S\n"
    "  --ignore-eos           do not stop at the model's end-of-sequence ids\n"
    "  --output text|ids      decoded text (default) or token ids separated by spaces\n"
    "  --dump-logits FILE     write each generated token's logits (float32 rows of vocab size)\n"
    "  --device cpu|cuda      backend (default cpu); --gpu N picks the device\n"
    "  --threads N            cpu threads (default: all cores)\n"
    "  --random-weights CONFIG  random weights of a config.json's shape (Engine path, benchmarks)\n";

// Where tokens go: stdout (text or ids) and the logits dump.
class Printer {
 public:
  Printer(const Args& args) : ids_(args.get("output", "text") == "ids") {
    const std::string output = args.get("output", "text");
    if (output != "text" && output != "ids")
      throw std::invalid_argument("--output must be text or ids, got '" + output + "'");
    if (args.has("dump-logits")) {
      dump_ = std::make_unique<std::ofstream>(args.get("dump-logits", ""), std::ios::binary);
      if (!*dump_) throw std::runtime_error("cannot write " + args.get("dump-logits", ""));
    }
  }
  bool want_logits() const { return dump_ != nullptr; }
  void token(int32_t id, const std::string& text, const char* logits, size_t logits_bytes) {
    if (dump_ && logits) dump_->write(logits, static_cast<std::streamsize>(logits_bytes));
    if (ids_) std::printf(first_ ? "%d" : " %d", id);
    else std::fwrite(text.data(), 1, text.size(), stdout);
    first_ = false;
    std::fflush(stdout);
  }
  void end(const std::string& tail) {
    if (!ids_) std::fwrite(tail.data(), 1, tail.size(), stdout);
    std::printf("\n");
    std::fflush(stdout);
    if (dump_ && !*dump_) throw std::runtime_error("writing the logits dump failed");
  }

 private:
  bool ids_;
  bool first_ = true;
  std::unique_ptr<std::ofstream> dump_;
};

void print_stats(const wire::Finished& s, const std::string& mode, const std::string& where) {
  std::fprintf(stderr,
               "[%s] context %lld tokens, query %lld tokens; %d blocks of %lld (anchor %lld) on "
               "%d workers (%s)\n",
               mode.c_str(), static_cast<long long>(s.context_tokens()),
               static_cast<long long>(s.query_tokens()), s.blocks(),
               static_cast<long long>(s.block_size()), static_cast<long long>(s.anchor_size()),
               s.workers_used(), where.c_str());
  std::fprintf(stderr, "phase 1 (context encoding): %.1f ms\n", s.phase1_ms());
  std::fprintf(stderr, "first token (query prefill): %.1f ms\n", s.first_token_ms());
  if (s.generated() > 1)
    std::fprintf(stderr, "decode: %.2f ms/token over %d tokens\n",
                 s.decode_ms() / (s.generated() - 1), s.generated() - 1);
  if (s.exchanges() > 0)
    std::fprintf(stderr,
                 "data plane: %lld Q->(O,lse) exchanges, round trip mean %.1f us, p50 %.1f us, "
                 "max %.1f us\n",
                 static_cast<long long>(s.exchanges()), s.exchange_mean_us(), s.exchange_p50_us(),
                 s.exchange_max_us());
  std::fprintf(stderr, "generated %d tokens, finish: %s\n", s.generated(), s.finish_reason().c_str());
}

// A chat file: [{"role": ..., "content": ...}, ...] or an OpenAI request body with "messages".
void read_messages(const std::string& path, wire::SubmitRequest& r) {
  const nlohmann::json doc = nlohmann::json::parse(read_file(path), nullptr, false);
  const nlohmann::json& list = doc.is_object() && doc.contains("messages") ? doc["messages"] : doc;
  if (!list.is_array() || list.empty())
    throw std::invalid_argument(path + ": expected a non-empty JSON list of {role, content} messages");
  for (const auto& m : list) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
        !m["content"].is_string())
      throw std::invalid_argument(path + ": every message needs string fields role and content");
    auto* turn = r.add_messages();
    turn->set_role(m["role"].get<std::string>());
    turn->set_content(m["content"].get<std::string>());
  }
}

wire::SubmitRequest build_request(const Args& args, bool want_logits) {
  const bool chat = args.has("messages-file");
  if (chat && (args.has("context-file") || args.has("context-ids") || args.has("query") ||
               args.has("query-ids")))
    throw std::invalid_argument("--messages-file holds the whole prompt: no --context-* or --query*");
  if (!chat && args.has("context-file") == args.has("context-ids"))
    throw std::invalid_argument("give exactly one of --context-file and --context-ids");
  if (!chat && args.has("query") == args.has("query-ids"))
    throw std::invalid_argument("give exactly one of --query and --query-ids");
  wire::SubmitRequest r;
  r.set_protocol_version(wire::kProtocolVersion);
  if (chat) {
    read_messages(args.get("messages-file", ""), r);
  } else if (args.has("context-ids")) {
    for (int32_t id : parse_id_list(args.get("context-ids", ""), "context-ids")) r.add_context(id);
  } else {
    r.set_context_is_text(true);
    r.set_context_text(read_file(args.get("context-file", "")));
  }
  if (args.has("query-ids")) {
    for (int32_t id : parse_id_list(args.get("query-ids", ""), "query-ids")) r.add_query(id);
  } else if (!chat) {
    r.set_query_is_text(true);
    r.set_query_text(args.get("query", ""));
  }
  r.set_mode(mode_name(parse_mode(args.get("mode", "star"))));
  r.set_block_size(args.get_int("block-size", 0));
  r.set_anchor_size(args.get_int("anchor-size", 0));
  r.set_no_anchor(args.flag("no-anchor"));
  r.set_max_tokens(static_cast<int32_t>(args.get_int("max-tokens", 64)));
  r.set_ignore_eos(args.flag("ignore-eos"));
  r.mutable_sampling()->set_temperature(static_cast<float>(args.get_double("temperature", 0.0)));
  r.mutable_sampling()->set_top_k(static_cast<int32_t>(args.get_int("top-k", 0)));
  r.mutable_sampling()->set_top_p(static_cast<float>(args.get_double("top-p", 1.0)));
  r.mutable_sampling()->set_seed(static_cast<uint64_t>(args.get_int("seed", 0)));
  r.set_want_logits(want_logits);
  return r;
}

// The request through a scheduler (in this process or a remote head), streamed to the printer.
int run_on_actors(caf::actor_system& system, const caf::actor& scheduler,
                  const wire::SubmitRequest& req, Printer& out, std::chrono::milliseconds idle,
                  const std::string& where) {
  const wire::Finished f = actors::submit(
      system, scheduler, req,
      [&](const wire::TokenEvent& ev) {
        out.token(ev.token(), ev.text(), ev.logits().data(), ev.logits().size());
      },
      idle);
  out.end(f.text_tail());
  if (!f.ok()) {
    std::fprintf(stderr, "starattn run: error: %s\n", f.error().c_str());
    return 1;
  }
  print_stats(f, req.mode(), where);
  return 0;
}

int run_engine(const Args& args, Printer& out) {
  EngineOptions options;
  options.random_weights = args.has("random-weights");
  if (options.random_weights && args.has("model"))
    throw std::invalid_argument("give one of --model and --random-weights");
  options.model = options.random_weights ? args.get("random-weights", "") : model_path(args);
  options.weight_seed = static_cast<uint64_t>(args.get_int("weight-seed", 0));
  options.device = args.get("device", "cpu");
  options.gpu = static_cast<int>(args.get_int("gpu", 0));
  options.workers = static_cast<int>(args.get_int("workers", 1));
  options.threads = static_cast<int>(args.get_int("threads", 0));
  Engine engine(options);
  const wire::SubmitRequest sub = build_request(args, out.want_logits());
  GenerateRequest req;
  if (sub.messages_size() > 0) {
    // The scheduler's layout (actors/scheduler.cpp), with its fallback template.
    std::vector<ChatMessage> messages;
    for (const auto& m : sub.messages()) messages.push_back({m.role(), m.content()});
    const ChatTemplate chat = engine.chat_for_messages();
    PromptIds p = chat_prompt(engine.tokenizer(), chat, messages);
    req.context = std::move(p.context);
    req.query = std::move(p.query);
  } else if (sub.context_is_text() && sub.query_is_text()) {
    PromptIds p = engine.document_prompt(sub.context_text(), sub.query_text());
    req.context = std::move(p.context);
    req.query = std::move(p.query);
  } else if (sub.context_is_text()) {
    // Text contexts start a sequence, so they get the model's BOS like any prompt would.
    if (engine.config().bos_token_id >= 0) req.context.push_back(engine.config().bos_token_id);
    const auto ids = engine.tokenizer().encode(sub.context_text());
    req.context.insert(req.context.end(), ids.begin(), ids.end());
  } else {
    req.context.assign(sub.context().begin(), sub.context().end());
  }
  if (sub.messages_size() > 0) {
    // the chat's query is laid out above
  } else if (!sub.query_is_text()) {
    req.query.assign(sub.query().begin(), sub.query().end());
  } else if (!sub.context_is_text()) {
    req.query = engine.tokenizer().encode(sub.query_text());
  }
  req.mode = parse_mode(sub.mode());
  req.block_size = sub.block_size();
  req.anchor_size = sub.anchor_size();
  req.use_anchor = !sub.no_anchor();
  req.max_tokens = sub.max_tokens();
  req.ignore_eos = sub.ignore_eos();
  req.sampling.temperature = sub.sampling().temperature();
  req.sampling.top_k = sub.sampling().top_k();
  req.sampling.top_p = sub.sampling().top_p();
  req.sampling.seed = sub.sampling().seed();
  const size_t vocab_bytes = static_cast<size_t>(engine.config().vocab_size) * sizeof(float);
  StreamDecoder decoder(engine.tokenizer());
  const GenerateStats s = engine.generate(
      req,
      [&](int32_t id, const float* logits) {
        out.token(id, decoder.push(id), reinterpret_cast<const char*>(logits), vocab_bytes);
        return true;
      },
      out.want_logits());
  out.end(decoder.flush());
  wire::Finished f;
  f.set_context_tokens(s.context_tokens);
  f.set_query_tokens(s.query_tokens);
  f.set_blocks(s.blocks);
  f.set_block_size(s.block_size);
  f.set_anchor_size(s.anchor_size);
  f.set_workers_used(s.workers_used);
  f.set_phase1_ms(s.phase1_ms);
  f.set_first_token_ms(s.first_token_ms);
  f.set_decode_ms(s.decode_ms);
  f.set_generated(s.generated);
  f.set_finish_reason(s.finish_reason);
  print_stats(f, mode_name(req.mode), "engine, " + std::to_string(options.workers) + " in-process");
  return 0;
}

}  // namespace

int cmd_run(int argc, char** argv) {
  if (argc > 2 && !std::strcmp(argv[2], "--help")) {
    std::fputs(kRunHelp, stdout);
    return 0;
  }
  const Args args(argc, argv, 2,
                  {"model", "context-file", "context-ids", "query", "query-ids", "max-tokens",
                   "mode", "workers", "block-size", "anchor-size", "seed", "output", "device",
                   "gpu", "threads", "temperature", "top-k", "top-p", "dump-logits", "head",
                   "min-workers", "timeout", "random-weights", "weight-seed", "connect-timeout", "messages-file", "tls-cert",
                   "tls-key", "tls-ca"},
                  {"ignore-eos", "no-anchor", "engine"});
  Printer out(args);
  // Random weights exist only in the Engine library path (benchmarks).
  if (args.flag("engine")) return run_engine(args, out);
  const wire::SubmitRequest req = build_request(args, out.want_logits());

  caf::actor_system_config config;
  // With --head: the certificate this client presents to the head (mutual TLS), see `serve`.
  actors::configure_caf(config, actors::tls_files(args.get("tls-cert", ""),
                                                  args.get("tls-key", ""), args.get("tls-ca", "")));
  caf::actor_system system{config};
  if (args.has("head")) {
    if (args.has("workers") || args.has("model"))
      throw std::invalid_argument("--head submits to a running cluster: --workers and --model "
                                  "belong to its head and workers");
    const auto [host, port] = transport::parse_host_port(args.get("head", ""), "--head");
    const caf::actor scheduler =
        actors::connect_remote(system, host, port,
                               std::chrono::milliseconds(static_cast<int64_t>(
                                   args.get_double("connect-timeout", 60) * 1000)));
    actors::wait_for_workers(system, scheduler, static_cast<int>(args.get_int("min-workers", 1)),
                             std::chrono::seconds(60));
    const auto idle = std::chrono::milliseconds(
        static_cast<int64_t>(args.get_double("timeout", 120) * 1000));
    return run_on_actors(system, scheduler, req, out, idle, "head " + args.get("head", ""));
  }

  // Nothing outside this process talks to its data plane.
  transport::restrict_ucx_net_devices("lo");
  // One process, the same actors as a cluster: scheduler, query actor, W context actors. They
  // share one copy of the weights (see actors/model_host.h).
  const int workers = static_cast<int>(args.get_int("workers", 1));
  if (workers < 1)
    throw std::invalid_argument("workers must be at least 1, got " + std::to_string(workers));
  auto model = std::make_shared<actors::ModelHost>(model_load_options(
      args, args.get("device", "cpu"), static_cast<int>(args.get_int("gpu", 0)),
      static_cast<int>(args.get_int("threads", 0)),
      args.has("random-weights") ? "" : model_path(args)));
  actors::Head head = actors::spawn_head(system, model, false);
  std::vector<caf::actor> all{head.scheduler, head.query};
  int rc = 1;
  try {
    for (int i = 0; i < workers; ++i) {
      actors::ContextBlockOptions o;
      // Every actor of this process shares one backend (one copy of the weights, one stream
      // under ModelHost's compute lock), so the query actor calls the context shards directly
      // on device buffers (the in-process data path), as the Engine does.
      o.model = model;
      o.scheduler = head.scheduler;
      o.device = args.get("device", "cpu");
      o.name = "local/" + std::to_string(i);
      // The workers share one backend's memory, as the Engine's in-process workers do.
      o.kv_fraction = 0.8 / workers;
      o.verbose = false;
      all.push_back(actors::spawn_context_block(system, o));
    }
    actors::wait_for_workers(system, head.scheduler, workers, std::chrono::seconds(60));
    rc = run_on_actors(system, head.scheduler, req, out, std::chrono::hours(24),
                       std::to_string(workers) + " in-process context actors");
  } catch (...) {
    actors::stop_actors(system, all);
    throw;
  }
  actors::stop_actors(system, all);
  return rc;
}

}  // namespace starattn::cli
