// starattn bench interleave: what a long request's phase 1 does to the streams already decoding
// (issue 15: a 128K encode may not stall the other streams' tokens; p99 inter-token latency
// during it at most 2x the unloaded value). One Engine, one EngineBatch: S streams decode, their
// inter-token gaps are recorded unloaded, then one long-context request is admitted and the gaps
// are recorded until its phase 1 is done. Once per phase-1 chunk size, and with chunk 0 (the
// whole encode at admission) as the baseline. Runs on any backend (cpu for a smoke run, cuda for
// the figures in docs/PERFORMANCE.md). Not a test: it measures, the reader judges.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "runtime/engine_batch.h"
#include "tools/starattn/args.h"
#include "tools/starattn/commands.h"
#include "tools/starattn/model_options.h"

namespace starattn::cli {

const char* kBenchInterleaveHelp =
    "usage: starattn bench interleave --random-weights CONFIG [--device cuda] [--gpu N] [--streams 4]\n"
    "                                 [--context 8192] [--long-context 131072] [--chunk 512,2048]\n"
    "                                 [--share 0,0.5] [--workers 4] [--unloaded-steps 32] [--query 16]\n"
    "S streams (--context tokens each) decode together in one EngineBatch; after --unloaded-steps\n"
    "steps one request with --long-context tokens is admitted. Prints p50/p99 inter-token latency\n"
    "of the streams unloaded and while the long request's phase 1 runs, and their ratio (goal <= 2),\n"
    "for each --chunk size (rows of phase 1 per decode step) with each --share (a step runs the\n"
    "layers of a chunk that fit that fraction of a decode step's time; 0: whole chunks), and for\n"
    "chunk 0 (all of phase 1 at admission).\n";

namespace {

using Clock = std::chrono::steady_clock;

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  const double rank = p / 100.0 * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (rank - static_cast<double>(lo));
}

struct Run {
  int64_t chunk = 0;
  double share = 0;
  std::vector<double> unloaded, during;  // inter-token gaps, ms
  double encode_ms = 0;                   // admission to the long request's first token
  int encode_steps = 0;                   // steps that ran a chunk of its phase 1
  bool streams_lasted = true;
};

}  // namespace

int bench_interleave(const Args& args) {
  const std::string config = args.require("random-weights");
  const int streams = static_cast<int>(args.get_int("streams", 4));
  const int64_t context = args.get_int("context", 8192);
  const int64_t long_context = args.get_int("long-context", 131072);
  const int64_t query = args.get_int("query", 16);
  const int workers = static_cast<int>(args.get_int("workers", 4));
  const int unloaded_steps = static_cast<int>(args.get_int("unloaded-steps", 32));
  // (chunk rows, step share) of each run; the last is the whole encode at admission.
  std::vector<std::pair<int64_t, double>> settings;
  std::vector<double> shares;
  {
    std::stringstream list(args.get("share", "0,0.5"));
    for (std::string item; std::getline(list, item, ',');) {
      char* end = nullptr;
      const double v = std::strtod(item.c_str(), &end);
      if (item.empty() || *end != '\0' || !(v >= 0))
        throw std::invalid_argument("--share: a comma-separated list of fractions >= 0, got '" + item + "'");
      shares.push_back(v);
    }
  }
  for (int32_t c : parse_id_list(args.get("chunk", "512,2048"), "--chunk"))
    if (c > 0)
      for (double share : shares) settings.emplace_back(c, share);
  settings.emplace_back(0, 0.0);
  if (streams < 1 || context < 1 || long_context < 1 || query < 1 || unloaded_steps < 2)
    throw std::invalid_argument("--streams, --context, --long-context, --query must be positive, "
                                "--unloaded-steps at least 2");

  EngineOptions o = random_weights_engine_options(args, workers);
  Engine engine(o);
  engine.backend().synchronize();
  const ModelConfig& cfg = engine.config();
  std::mt19937_64 rng(11);
  std::uniform_int_distribution<int32_t> tok(0, cfg.vocab_size - 1);
  auto random_ids = [&](int64_t n) {
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int32_t& t : ids) t = tok(rng);
    return ids;
  };
  auto request = [&](int64_t ctx, int max_tokens) {
    RequestSpec r;
    r.prompt.context = random_ids(ctx);
    r.prompt.query = random_ids(query);
    r.block_size = (ctx + workers - 1) / workers;
    r.max_tokens = max_tokens;
    r.ignore_eos = true;
    r.beyond_positions = true;  // random weights: the context length is the point, not the config's limit
    return r;
  };
  // One-time costs (handles, workspaces) belong to start-up, not to the first run.
  engine.generate(request(std::min<int64_t>(context, 64 * workers), 2), [](int32_t, const float*) { return true; });

  std::vector<Run> runs;
  for (const auto& [chunk, share] : settings) {
    Run run;
    run.chunk = chunk;
    run.share = share;
    EngineBatch batch(engine, chunk, share);
    // Enough tokens for the streams to outlast the long encode: its rows (context and anchors,
    // about twice the context in star mode) one chunk a step (a layer a step at worst when
    // paced), and a margin.
    const int64_t encode_steps =
        chunk > 0 ? (2 * long_context + chunk - 1) / chunk * (share > 0 ? cfg.num_layers : 1) : 1;
    const int max_tokens = static_cast<int>(unloaded_steps + encode_steps + 64);
    std::vector<Clock::time_point> last(static_cast<size_t>(streams));
    std::vector<bool> seen(static_cast<size_t>(streams), false);
    std::vector<double>* sink = nullptr;  // where gaps go now (null: warming up)
    for (int s = 0; s < streams; ++s)
      batch.admit(request(context, max_tokens), [&, s](const GeneratedToken&) {
        const auto now = Clock::now();
        if (seen[s] && sink) sink->push_back(std::chrono::duration<double, std::milli>(now - last[s]).count());
        last[s] = now;
        seen[s] = true;
        return true;
      });
    // Until every stream decodes (their own phase 1 and first tokens), then a few steps more.
    while (batch.encoding() > 0) batch.step();
    for (int i = 0; i < 4; ++i) batch.step();
    sink = &run.unloaded;
    for (int i = 0; i < unloaded_steps; ++i) batch.step();
    sink = &run.during;
    const auto t0 = Clock::now();
    bool long_done = false;
    const uint64_t id = batch.admit(request(long_context, 1), [&](const GeneratedToken&) {
      long_done = true;
      return true;
    });
    while (!long_done && batch.running() > 0) {
      const bool was_encoding = batch.phase1_progress(id).has_value();
      for (const EngineBatch::Ended& e : batch.step())
        if (e.id == id && !e.end.ok) throw std::runtime_error("the long request failed: " + e.end.error);
      if (was_encoding) ++run.encode_steps;
    }
    run.encode_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    run.streams_lasted = batch.running() >= static_cast<size_t>(streams);
    sink = nullptr;
    while (batch.running() > 0) {
      for (uint64_t s = 1; s <= static_cast<uint64_t>(streams); ++s) batch.cancel(s);
      batch.step();
    }
    std::fprintf(stderr, "chunk %lld share %.2f: %zu unloaded gaps, %zu during the long encode (%.0f ms, %d steps)\n",
                 static_cast<long long>(chunk), share, run.unloaded.size(), run.during.size(), run.encode_ms,
                 run.encode_steps);
    runs.push_back(std::move(run));
  }

  std::printf("\n%s on %s: %d streams of %lld context tokens decoding; one request of %lld context tokens\n"
              "admitted mid-way (star mode, %d workers). Inter-token gaps of the streams, ms.\n",
              config.c_str(), o.device.c_str(), streams, static_cast<long long>(context),
              static_cast<long long>(long_context), workers);
  std::printf("%-9s %6s %11s %11s %11s %11s %10s %13s %12s\n", "chunk", "share", "unl. p50", "unl. p99",
              "during p50", "during p99", "p99 ratio", "long TTFT ms", "gaps during");
  for (const Run& r : runs) {
    const double up99 = percentile(r.unloaded, 99), dp99 = percentile(r.during, 99);
    std::printf("%-9s %6.2f %11.2f %11.2f %11.2f %11.2f %9.2fx %13.0f %12zu%s\n",
                r.chunk == 0 ? "0 (whole)" : std::to_string(r.chunk).c_str(), r.share, percentile(r.unloaded, 50), up99,
                percentile(r.during, 50), dp99, dp99 / up99, r.encode_ms, r.during.size(),
                r.streams_lasted ? "" : "  (a stream ended early)");
  }
  std::printf("during = gaps of tokens from the long request's admission to its first token; goal: p99 ratio <= 2.\n"
              "long TTFT = its admission to its first token (phase 1 interleaved with the streams' steps).\n");
  return 0;
}

}  // namespace starattn::cli
