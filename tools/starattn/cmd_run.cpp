#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>

#include "runtime/engine.h"
#include "tools/starattn/args.h"
#include "tools/starattn/commands.h"

namespace starattn::cli {
namespace {

const char* kRunHelp =
    "usage: starattn run --model DIR (--context-file F | --context-ids \"1,2,..\")\n"
    "                    (--query TEXT | --query-ids \"..\") [options]\n"
    "Answers the query over the context with Star Attention and streams the answer to stdout;\n"
    "per-phase timings go to stderr.\n\n"
    "  --mode star|full       Star Attention (default) or the full-attention baseline\n"
    "  --workers W            in-process context workers (default 1)\n"
    "  --block-size B         context block size (default ceil(context / workers))\n"
    "  --anchor-size A        anchor size, 1 <= A <= B (default B)\n"
    "  --no-anchor            encode blocks without the anchor (ablation)\n"
    "  --max-tokens N         tokens to generate at most (default 64)\n"
    "  --temperature T        0 = greedy (default); with --top-k K, --top-p P, --seed S\n"
    "  --ignore-eos           do not stop at the model's end-of-sequence ids\n"
    "  --output text|ids      decoded text (default) or token ids separated by spaces\n"
    "  --dump-logits FILE     write each generated token's logits (float32 rows of vocab size)\n"
    "  --device cpu|cuda      backend (default cpu); --gpu N picks the device\n"
    "  --random-weights CONFIG  random weights of a config.json's shape instead of --model\n"
    "  --threads N            cpu threads (default: all cores)\n";

}  // namespace

int cmd_run(int argc, char** argv) {
  if (argc > 2 && !std::strcmp(argv[2], "--help")) {
    std::fputs(kRunHelp, stdout);
    return 0;
  }
  const Args args(argc, argv, 2,
                  {"model", "context-file", "context-ids", "query", "query-ids", "max-tokens",
                   "mode", "workers", "block-size", "anchor-size", "seed", "output", "device",
                   "gpu", "threads", "temperature", "top-k", "top-p", "dump-logits",
                   "random-weights"},
                  {"ignore-eos", "no-anchor"});
  const std::string output = args.get("output", "text");
  if (output != "text" && output != "ids")
    throw std::invalid_argument("--output must be text or ids, got '" + output + "'");
  if (args.has("context-file") == args.has("context-ids"))
    throw std::invalid_argument("give exactly one of --context-file and --context-ids");
  if (args.has("query") == args.has("query-ids"))
    throw std::invalid_argument("give exactly one of --query and --query-ids");

  EngineOptions options;
  if (args.has("random-weights") == args.has("model"))
    throw std::invalid_argument("give exactly one of --model and --random-weights");
  options.random_weights = args.has("random-weights");
  options.model = options.random_weights ? args.get("random-weights", "") : args.get("model", "");
  options.device = args.get("device", "cpu");
  options.gpu = static_cast<int>(args.get_int("gpu", 0));
  options.workers = static_cast<int>(args.get_int("workers", 1));
  options.threads = static_cast<int>(args.get_int("threads", 0));
  Engine engine(options);
  const Tokenizer& tok = engine.tokenizer();

  GenerateRequest req;
  if (args.has("context-ids")) {
    req.context = parse_id_list(args.get("context-ids", ""), "context-ids");
  } else {
    // Text contexts start a sequence, so they get the model's BOS like any prompt would.
    if (engine.config().bos_token_id >= 0) req.context.push_back(engine.config().bos_token_id);
    const auto ids = tok.encode(read_file(args.get("context-file", "")));
    req.context.insert(req.context.end(), ids.begin(), ids.end());
  }
  req.query = args.has("query-ids") ? parse_id_list(args.get("query-ids", ""), "query-ids")
                                    : tok.encode(args.get("query", ""));
  req.mode = parse_mode(args.get("mode", "star"));
  req.block_size = args.get_int("block-size", 0);
  req.anchor_size = args.get_int("anchor-size", 0);
  req.use_anchor = !args.flag("no-anchor");
  req.max_tokens = static_cast<int>(args.get_int("max-tokens", 64));
  req.ignore_eos = args.flag("ignore-eos");
  req.sampling.temperature = static_cast<float>(args.get_double("temperature", 0.0));
  req.sampling.top_k = static_cast<int>(args.get_int("top-k", 0));
  req.sampling.top_p = static_cast<float>(args.get_double("top-p", 1.0));
  req.sampling.seed = static_cast<uint64_t>(args.get_int("seed", 0));

  std::unique_ptr<std::ofstream> dump;
  if (args.has("dump-logits")) {
    dump = std::make_unique<std::ofstream>(args.get("dump-logits", ""), std::ios::binary);
    if (!*dump) throw std::runtime_error("cannot write " + args.get("dump-logits", ""));
  }
  const size_t vocab = static_cast<size_t>(engine.config().vocab_size);
  StreamDecoder decoder(tok);
  bool first = true;
  const GenerateStats s = engine.generate(
      req,
      [&](int32_t id, const float* logits) {
        if (dump) dump->write(reinterpret_cast<const char*>(logits),
                              static_cast<std::streamsize>(vocab * sizeof(float)));
        if (output == "ids") {
          std::printf(first ? "%d" : " %d", id);
        } else {
          const std::string piece = decoder.push(id);
          std::fwrite(piece.data(), 1, piece.size(), stdout);
        }
        first = false;
        std::fflush(stdout);
        return true;
      },
      dump != nullptr);
  if (output == "text") {
    const std::string rest = decoder.flush();
    std::fwrite(rest.data(), 1, rest.size(), stdout);
  }
  std::printf("\n");
  std::fflush(stdout);
  if (dump && !*dump) throw std::runtime_error("writing the logits dump failed");

  std::fprintf(stderr,
               "[%s] context %lld tokens, query %lld tokens; %d blocks of %lld (anchor %lld) on "
               "%d of %d workers\n",
               mode_name(req.mode), static_cast<long long>(s.context_tokens),
               static_cast<long long>(s.query_tokens), s.blocks,
               static_cast<long long>(s.block_size), static_cast<long long>(s.anchor_size),
               s.workers_used, options.workers);
  std::fprintf(stderr, "phase 1 (context encoding): %.1f ms\n", s.phase1_ms);
  std::fprintf(stderr, "first token (query prefill): %.1f ms\n", s.first_token_ms);
  if (s.generated > 1)
    std::fprintf(stderr, "decode: %.2f ms/token over %d tokens\n",
                 s.decode_ms / (s.generated - 1), s.generated - 1);
  std::fprintf(stderr, "generated %d tokens, finish: %s\n", s.generated, s.finish_reason.c_str());
  return 0;
}

}  // namespace starattn::cli
