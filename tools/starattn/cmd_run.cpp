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
    "  --phase1-chunk N       in-process actors: rows per phase-1 forward (default: whole\n"
    "                         blocks, as the Engine, where they fit the workers' room, else 2048)\n"
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

void print_stats(const RequestStats& s, AttentionMode mode, const std::string& where) {
  std::fprintf(stderr,
               "[%s] context %lld tokens, query %lld tokens; %d blocks of %lld (anchor %lld) on "
               "%d workers (%s)\n",
               mode_name(mode), static_cast<long long>(s.context_tokens),
               static_cast<long long>(s.query_tokens), s.blocks,
               static_cast<long long>(s.block_size), static_cast<long long>(s.anchor_size),
               s.workers_used, where.c_str());
  std::fprintf(stderr, "phase 1 (context encoding): %.1f ms (%d of %d blocks reused)\n",
               s.phase1_ms, s.blocks_reused, s.blocks);
  std::fprintf(stderr, "first token (query prefill): %.1f ms\n", s.first_token_ms);
  if (s.generated > 1)
    std::fprintf(stderr, "decode: %.2f ms/token over %d tokens\n",
                 s.decode_ms / (s.generated - 1), s.generated - 1);
  if (s.exchanges > 0)
    std::fprintf(stderr,
                 "data plane: %lld Q->(O,lse) exchanges, round trip mean %.1f us, p50 %.1f us, "
                 "max %.1f us\n",
                 static_cast<long long>(s.exchanges), s.exchange_mean_us, s.exchange_p50_us,
                 s.exchange_max_us);
  std::fprintf(stderr, "generated %d tokens, finish: %s\n", s.generated, s.finish_reason.c_str());
}

// A chat file: [{"role": ..., "content": ...}, ...] or an OpenAI request body with "messages".
void read_messages(const std::string& path, PromptSpec& p) {
  const nlohmann::json doc = nlohmann::json::parse(read_file(path), nullptr, false);
  const nlohmann::json& list = doc.is_object() && doc.contains("messages") ? doc["messages"] : doc;
  if (!list.is_array() || list.empty())
    throw std::invalid_argument(path + ": expected a non-empty JSON list of {role, content} messages");
  for (const auto& m : list) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
        !m["content"].is_string())
      throw std::invalid_argument(path + ": every message needs string fields role and content");
    p.messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  p.chat = true;
}

// The request the options describe; the Engine and the actors (here or a remote head) lay its
// prompt out the same way (resolve_prompt, runtime/prompt.h).
RequestSpec build_request(const Args& args, bool want_logits) {
  const bool chat = args.has("messages-file");
  if (chat && (args.has("context-file") || args.has("context-ids") || args.has("query") ||
               args.has("query-ids")))
    throw std::invalid_argument("--messages-file holds the whole prompt: no --context-* or --query*");
  if (!chat && args.has("context-file") == args.has("context-ids"))
    throw std::invalid_argument("give exactly one of --context-file and --context-ids");
  if (!chat && args.has("query") == args.has("query-ids"))
    throw std::invalid_argument("give exactly one of --query and --query-ids");
  RequestSpec r;
  PromptSpec& p = r.prompt;
  if (chat) {
    read_messages(args.get("messages-file", ""), p);
  } else if (args.has("context-ids")) {
    p.context = parse_id_list(args.get("context-ids", ""), "context-ids");
  } else {
    p.context_is_text = true;
    p.context_text = read_file(args.get("context-file", ""));
  }
  if (args.has("query-ids")) {
    p.query = parse_id_list(args.get("query-ids", ""), "query-ids");
  } else if (!chat) {
    p.query_is_text = true;
    p.query_text = args.get("query", "");
  }
  r.mode = parse_mode(args.get("mode", "star"));
  r.block_size = args.get_int("block-size", 0);
  r.anchor_size = args.get_int("anchor-size", 0);
  r.use_anchor = !args.flag("no-anchor");
  r.max_tokens = static_cast<int>(args.get_int("max-tokens", 64));
  r.ignore_eos = args.flag("ignore-eos");
  r.sampling.temperature = static_cast<float>(args.get_double("temperature", 0.0));
  r.sampling.top_k = static_cast<int>(args.get_int("top-k", 0));
  r.sampling.top_p = static_cast<float>(args.get_double("top-p", 1.0));
  r.sampling.seed = static_cast<uint64_t>(args.get_int("seed", 0));
  r.want_logits = want_logits;
  return r;
}

void print_token(Printer& out, const TokenEvent& ev) {
  out.token(ev.tokens.empty() ? -1 : ev.tokens.front(), ev.text,
            reinterpret_cast<const char*>(ev.logits.data()), ev.logits.size() * sizeof(float));
}

// The request through a scheduler (in this process or a remote head), streamed to the printer.
int run_on_actors(caf::actor_system& system, const caf::actor& scheduler, const RequestSpec& req,
                  Printer& out, std::chrono::milliseconds idle, const std::string& where) {
  const RequestEnd end = actors::submit(
      system, scheduler, req, [&](const TokenEvent& ev) { print_token(out, ev); }, idle);
  out.end(end.stats.text_tail);
  if (!end.ok) {
    std::fprintf(stderr, "starattn run: error: %s\n", end.error.c_str());
    return 1;
  }
  print_stats(end.stats, req.mode, where);
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
  const RequestSpec req = build_request(args, out.want_logits());
  const size_t vocab_bytes = static_cast<size_t>(engine.config().vocab_size) * sizeof(float);
  const RequestStats s = engine.generate(req, [&](const GeneratedToken& t) {
    out.token(t.token, t.text, reinterpret_cast<const char*>(t.logits), vocab_bytes);
    return true;
  });
  out.end(s.text_tail);
  print_stats(s, req.mode, "engine, " + std::to_string(options.workers) + " in-process");
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
                   "mode", "workers", "phase1-chunk", "block-size", "anchor-size", "seed", "output", "device",
                   "gpu", "threads", "temperature", "top-k", "top-p", "dump-logits", "head",
                   "min-workers", "timeout", "random-weights", "weight-seed", "connect-timeout", "messages-file", "tls-cert",
                   "tls-key", "tls-ca"},
                  {"ignore-eos", "no-anchor", "engine"});
  Printer out(args);
  // Random weights exist only in the Engine library path (benchmarks).
  if (args.has("phase1-chunk") && (args.flag("engine") || args.has("head")))
    throw std::invalid_argument("--phase1-chunk sets the in-process actors' phase 1: not with "
                                "--engine (whole blocks) or --head (the workers' own option)");
  if (args.flag("engine")) return run_engine(args, out);
  const RequestSpec req = build_request(args, out.want_logits());

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
  // A worker of a server encodes in chunks of 512 rows so that other requests' exchanges are
  // answered in between. This process serves one request, and chunks only cost: each is another
  // pass over the weights at a smaller GEMM, and ends in a synchronisation and a hand-over of the
  // compute lock (8B, 4 workers, H100: phase 1 +7% over the Engine's at 512 rows, +2-7% at 2048,
  // +0-2% whole). So whole blocks where the worker's room holds their activation rows, else
  // 2048-row chunks (130K on 4 workers of an 80 GB card).
  const bool chunk_given = args.has("phase1-chunk");
  const int64_t phase1_chunk = args.get_int("phase1-chunk", 2048);
  if (phase1_chunk < 0)
    throw std::invalid_argument("--phase1-chunk must be >= 0, got " + std::to_string(phase1_chunk));
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
      o.phase1_chunk_tokens = phase1_chunk;
      o.phase1_whole_blocks_if_room = !chunk_given;
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
