// starattn eval: RULER-style accuracy of one attention configuration (eval/).
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>

#include "eval/eval_runner.h"
#include "runtime/bpe_tokenizer.h"
#include "runtime/chat_template.h"
#include "runtime/engine.h"
#include "runtime/tokenizer.h"
#include "tools/starattn/args.h"
#include "tools/starattn/commands.h"

namespace starattn::cli {
namespace {

const char* kEvalHelp =
    "usage: starattn eval [--model DIR|FILE.gguf] --task NAME[,NAME..]|all --length L[,L..]\n"
    "                     [--samples N] [--mode star|full] [--block-size B] [--anchor-size A]\n"
    "                     [--no-anchor] [--seed S] [--json FILE] [options]\n"
    "       starattn eval [--model DIR] --task .. --length .. [--samples N] [--seed S]\n"
    "                     --dump-instances FILE\n"
    "Generates RULER-style instances (seeded), prompts the model through its chat template,\n"
    "answers greedily and scores as RULER does (the fraction of expected strings in the answer).\n"
    "Prints a table (task, length, mode, block, anchor, samples, score in percent).\n"
    "The same seed gives the same prompts in every mode, so runs can be compared sample by sample.\n\n"
    "  --task T           niah_single, niah_multikey, niah_multivalue, niah_multiquery, vt, cwe,\n"
    "                     a comma-separated list, or all\n"
    "  --length L         sequence length in model tokens, prompt plus answer budget (RULER's\n"
    "                     definition); a comma-separated list runs each\n"
    "  --samples N        instances per task and length (default 4)\n"
    "  --mode star|full   Star Attention (default) or the full-attention baseline\n"
    "  --block-size B     tokens, or L/k for a fraction of the length (e.g. L/4, the paper's)\n"
    "  --anchor-size A    tokens or L/k (default: the block size)\n"
    "  --no-anchor        encode blocks without the anchor (the paper's ablation)\n"
    "  --max-tokens N     answer budget for every task (default: RULER's, 128 niah, 30 vt, 120 cwe)\n"
    "  --seed S           instance seed (default 0)\n"
    "  --json FILE        also write every sample (prompt sizes, expected, output, score, timings)\n"
    "  --device cpu|cuda  backend (default cpu); --gpu N picks the device\n"
    "  --workers W        in-process context workers (default 1)\n"
    "  --threads N        cpu threads (default: all cores)\n"
    "  --quiet            no per-sample progress on stderr\n"
    "  --dump-instances FILE\n"
    "                     write the instances (one JSON object a line: task, length, sample, seed,\n"
    "                     document, question, answer_prefix, expected, a correct answer, and the\n"
    "                     context and query ids as the engine lays them out) to FILE ('-': stdout)\n"
    "                     instead of running a model; without --model, the byte-level layout of\n"
    "                     our byte models (no weights are read either way)\n";

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

// --dump-instances: the prompts only, laid out with the model's tokenizer and chat template (the
// engine's choice) or, without --model, as for a byte-level model.
int dump_instances(const Args& args, const eval::EvalConfig& config) {
  std::unique_ptr<Tokenizer> tokenizer;
  std::optional<ChatTemplate> chat;
  if (args.has("model")) {
    const std::string model = args.get("model", "");
    tokenizer = load_tokenizer(model);
    if (!dynamic_cast<const ByteTokenizer*>(tokenizer.get()))
      chat = resolve_chat_template(read_chat_template(model), *tokenizer);
  } else {
    tokenizer = std::make_unique<ByteTokenizer>();
  }
  const eval::Layout layout = eval::chat_layout(*tokenizer, chat);
  const std::string path = args.get("dump-instances", "");
  size_t written = 0;
  if (path == "-") {
    written = eval::dump_instances(layout, config, std::cout);
  } else {
    std::ofstream out(path);
    if (!out) throw std::runtime_error("cannot write " + path);
    written = eval::dump_instances(layout, config, out);
  }
  if (!args.flag("quiet"))
    std::fprintf(stderr, "wrote %zu instances to %s\n", written, path == "-" ? "stdout" : path.c_str());
  return 0;
}

}  // namespace

int cmd_eval(int argc, char** argv) {
  if (argc > 2 && !std::strcmp(argv[2], "--help")) {
    std::fputs(kEvalHelp, stdout);
    return 0;
  }
  const Args args(argc, argv, 2,
                  {"model", "task", "length", "samples", "mode", "block-size", "anchor-size", "seed",
                   "json", "device", "gpu", "workers", "threads", "max-tokens", "dump-instances"},
                  {"no-anchor", "quiet"});
  eval::EvalConfig config;
  const std::string tasks = args.require("task");
  config.tasks = tasks == "all" ? eval::task_names() : split_list(tasks);
  for (const auto& t : config.tasks)
    if (!eval::is_task(t))
      throw std::invalid_argument("unknown task '" + t +
                                  "' (niah_single, niah_multikey, niah_multivalue, niah_multiquery, "
                                  "vt, cwe or all)");
  for (const auto& l : split_list(args.require("length"))) {
    if (l.find_first_not_of("0123456789") != std::string::npos || l.size() > 9)
      throw std::invalid_argument("--length must be token counts, got '" + l + "'");
    config.lengths.push_back(std::stoll(l));
  }
  if (config.lengths.empty()) throw std::invalid_argument("--length needs at least one value");
  config.samples = static_cast<int>(args.get_int("samples", 4));
  config.seed = static_cast<uint64_t>(args.get_int("seed", 0));
  config.mode = parse_mode(args.get("mode", "star"));
  config.block = eval::parse_size_spec(args.get("block-size", ""), "block-size");
  config.anchor = eval::parse_size_spec(args.get("anchor-size", ""), "anchor-size");
  config.use_anchor = !args.flag("no-anchor");
  config.max_tokens = static_cast<int>(args.get_int("max-tokens", 0));
  if (config.mode == AttentionMode::full &&
      (args.has("block-size") || args.has("anchor-size") || args.flag("no-anchor")))
    throw std::invalid_argument("--block-size, --anchor-size and --no-anchor apply to star mode");
  if (args.has("dump-instances")) return dump_instances(args, config);

  EngineOptions options;
  options.model = args.has("model") ? args.get("model", "") : default_model_path();
  if (!args.has("model") && !std::ifstream(options.model))
    throw std::invalid_argument("no --model given and the default model is not at " +
                                options.model + ": run deploy/fetch-model.sh (or pass --model)");
  options.device = args.get("device", "cpu");
  options.gpu = static_cast<int>(args.get_int("gpu", 0));
  options.workers = static_cast<int>(args.get_int("workers", 1));
  options.threads = static_cast<int>(args.get_int("threads", 0));
  Engine engine(options);

  const bool quiet = args.flag("quiet");
  const auto results = eval::run_eval(
      engine, config, [&](const eval::TaskResult& t, const eval::SampleResult& s) {
        if (quiet) return;
        // One line per sample: the answer's newlines shown as spaces.
        std::string answer = s.output.substr(0, 160);
        for (char& c : answer)
          if (c == '\n' || c == '\r') c = ' ';
        std::fprintf(stderr, "%s L=%lld sample %d: %lld+%lld tokens, score %.2f (%.1f s) :: %s\n",
                     t.task.c_str(), static_cast<long long>(t.length), s.index,
                     static_cast<long long>(s.context_tokens), static_cast<long long>(s.query_tokens),
                     s.score, (s.phase1_ms + s.first_token_ms + s.decode_ms) / 1000.0,
                     answer.c_str());
      });
  std::fputs(eval::format_table(results).c_str(), stdout);
  if (args.has("json")) {
    std::ofstream out(args.get("json", ""));
    if (!out) throw std::runtime_error("cannot write " + args.get("json", ""));
    // Generated text may hold invalid UTF-8 (a cut character): replace it rather than fail.
    // The model's file or directory name, not where it sits on this machine.
    out << eval::to_json(results, config, std::filesystem::path(options.model).filename().string())
               .dump(2, ' ', false, nlohmann::json::error_handler_t::replace)
        << "\n";
    if (!out) throw std::runtime_error("writing " + args.get("json", "") + " failed");
  }
  return 0;
}

}  // namespace starattn::cli
