// starattn bench reuse: what the second question about a document costs (issue 15, context
// reuse). One Engine with a context cache answers N questions over the same random context; the
// first encodes every block (phase 1), the later ones should find every block's K/V in the cache
// and pay only for their own query and first token. Runs on any backend (cpu for a smoke run,
// cuda for the numbers in docs/PERFORMANCE.md).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "tools/starattn/args.h"
#include "tools/starattn/commands.h"
#include "tools/starattn/model_options.h"

namespace starattn::cli {

const char* kBenchReuseHelp =
    "usage: starattn bench reuse --random-weights CONFIG [--device cuda] [--gpu N] [--context 131072]\n"
    "                            [--questions 3] [--query 16] [--decode-tokens 8] [--mode star|full]\n"
    "                            [--workers 4] [--cache-gib G]\n"
    "Asks --questions different random questions (--query tokens each) about one random context on\n"
    "an Engine with a context cache (default: room for the whole context's K/V and a tenth more), and\n"
    "prints each question's phase 1, first token and time to first token (TTFT), the blocks it took\n"
    "from the cache, and its TTFT as a share of the first question's.\n";

int bench_reuse(const Args& args) {
  const std::string config = args.require("random-weights");
  const int64_t context = args.get_int("context", 131072);
  const int questions = static_cast<int>(args.get_int("questions", 3));
  const int64_t query = args.get_int("query", 16);
  const int decode_tokens = static_cast<int>(args.get_int("decode-tokens", 8));
  const AttentionMode mode = parse_mode(args.get("mode", "star"));
  const int workers = static_cast<int>(args.get_int("workers", 4));
  if (questions < 2) throw std::invalid_argument("--questions: at least 2 (the second is the point)");
  if (context < 1 || query < 1) throw std::invalid_argument("--context and --query must be positive");

  // The cache's budget is a cap, not an allocation: room for the whole context's K/V at 4 bytes
  // an element (any backend's activation dtype fits) and a tenth more.
  double cache_gib = 0;
  if (args.has("cache-gib")) {
    cache_gib = std::stod(args.get("cache-gib", "0"));
  } else {
    std::ifstream in(config);
    if (!in) throw std::runtime_error("cannot read " + config);
    std::stringstream text;
    text << in.rdbuf();
    const ModelConfig shape = ModelConfig::from_json(text.str(), config);
    cache_gib = 1.1 * static_cast<double>(context * shape.kv_bytes_per_token(4)) / (1 << 30);
  }
  EngineOptions o = random_weights_engine_options(args, workers);
  o.context_cache_bytes = static_cast<int64_t>(cache_gib * (1 << 30));
  const auto t0 = std::chrono::steady_clock::now();
  Engine engine(o);
  engine.backend().synchronize();
  const ModelConfig& cfg = engine.config();
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::fprintf(stderr, "engine ready in %.1f s (%s, cache budget %.2f GiB)\n", load_s, o.device.c_str(), cache_gib);

  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int32_t> tok(0, cfg.vocab_size - 1);
  auto random_ids = [&](int64_t n) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int32_t& t : ids) t = tok(rng);
    return ids;
  };
  auto request = [&](const std::vector<int32_t>& ctx) {
    RequestSpec r;
    r.prompt.context = ctx;
    r.prompt.query = random_ids(query);
    r.mode = mode;
    r.block_size = mode == AttentionMode::star ? (static_cast<int64_t>(ctx.size()) + workers - 1) / workers : 0;
    r.max_tokens = decode_tokens;
    r.ignore_eos = true;
    return r;
  };
  // A small request on another context first: one-time costs (handles, kernel attributes,
  // workspaces) belong to start-up, not to the first question.
  engine.generate(request(random_ids(std::min<int64_t>(context, 64 * workers))),
                  [](int32_t, const float*) { return true; });

  const std::vector<int32_t> document = random_ids(context);
  struct Row {
    RequestStats s;
    double ttft = 0;
  };
  std::vector<Row> rows;
  for (int q = 0; q < questions; ++q) {
    Row row;
    row.s = engine.generate(request(document), [](int32_t, const float*) { return true; });
    row.ttft = row.s.phase1_ms + row.s.first_token_ms;
    std::fprintf(stderr, "question %d: %d/%d blocks reused, phase1 %.1f ms, first token %.1f ms\n", q + 1,
                 row.s.blocks_reused, row.s.blocks, row.s.phase1_ms, row.s.first_token_ms);
    rows.push_back(row);
  }
  const ContextCacheMetrics m = engine.context_cache_metrics();

  std::printf("\n%s, context %lld tokens, %s mode (%d blocks), query %lld tokens, %d tokens per answer\n",
              config.c_str(), static_cast<long long>(context), mode_name(mode), rows[0].s.blocks,
              static_cast<long long>(query), decode_tokens);
  std::printf("%-9s %8s %11s %11s %11s %9s %10s\n", "question", "reused", "phase1 ms", "first ms", "TTFT ms",
              "of first", "decode ms");
  for (size_t i = 0; i < rows.size(); ++i) {
    const RequestStats& s = rows[i].s;
    const double decode = s.generated > 1 ? s.decode_ms / (s.generated - 1) : NAN;
    std::printf("%-9zu %4d/%-3d %11.1f %11.1f %11.1f %8.2f%% %10.2f\n", i + 1, s.blocks_reused, s.blocks,
                s.phase1_ms, s.first_token_ms, rows[i].ttft, 100.0 * rows[i].ttft / rows[0].ttft, decode);
  }
  std::printf("cache: %lld hits, %lld misses, %.2f GiB held, %lld evictions\n", static_cast<long long>(m.hits),
              static_cast<long long>(m.misses), static_cast<double>(m.bytes) / (1 << 30),
              static_cast<long long>(m.evictions));
  std::printf("TTFT = phase 1 (encoding, or copying cached blocks) + query prefill and first sample.\n");
  // A later question that did not find every block is not what this benchmark measures: say so in
  // the exit status, so a script does not report its TTFT as the cost of reuse.
  for (size_t i = 1; i < rows.size(); ++i)
    if (rows[i].s.blocks_reused != rows[i].s.blocks) {
      std::fprintf(stderr, "question %zu reused only %d of %d blocks (cache too small?)\n", i + 1,
                   rows[i].s.blocks_reused, rows[i].s.blocks);
      return 1;
    }
  return 0;
}

}  // namespace starattn::cli
