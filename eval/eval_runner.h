// Runs RULER-style tasks (eval/ruler_tasks.h) through the engine in one attention configuration and
// scores them: the library behind `starattn eval` and its end-to-end test.
#pragma once

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/ruler_tasks.h"
#include "runtime/engine.h"

namespace starattn::eval {

// A size given as tokens ("1024") or as a fraction of the sequence length ("L/4"), so one command
// can run several lengths with the paper's B = L/4.
struct SizeSpec {
  int64_t tokens = 0;   // used when divisor == 0; 0 = the engine's default
  int64_t divisor = 0;  // > 0: length / divisor
  int64_t resolve(int64_t length) const { return divisor > 0 ? length / divisor : tokens; }
  std::string text() const;
};
// "" or "0" -> default; "512"; "L/4". Throws std::invalid_argument naming `option` otherwise.
SizeSpec parse_size_spec(const std::string& text, const std::string& option);

struct EvalConfig {
  std::vector<std::string> tasks;
  std::vector<int64_t> lengths;
  int samples = 4;
  uint64_t seed = 0;
  AttentionMode mode = AttentionMode::star;
  SizeSpec block;   // default: the engine's (context split over the workers)
  SizeSpec anchor;  // default: the block size
  bool use_anchor = true;
  int max_tokens = 0;  // 0: each task's RULER budget
};

struct SampleResult {
  int index = 0;
  uint64_t seed = 0;
  int64_t context_tokens = 0;
  int64_t query_tokens = 0;
  std::vector<std::string> expected;
  std::string output;
  double score = 0;  // in [0, 1]
  int generated = 0;
  double phase1_ms = 0, first_token_ms = 0, decode_ms = 0;
};

struct TaskResult {
  std::string task;
  int64_t length = 0;
  std::string mode;
  int64_t block_size = 0;   // as the engine used it (full: the context)
  int64_t anchor_size = 0;  // 0 in full mode and without an anchor
  bool use_anchor = true;
  int max_tokens = 0;
  double score = 0;  // mean sample score, in percent (RULER reports 0-100)
  double seconds = 0;
  std::vector<SampleResult> samples;
};

// Called after each sample (progress reports).
using SampleCallback = std::function<void(const TaskResult&, const SampleResult&)>;

// One instance as JSON: task, length, sample (index), seed, max_tokens, document, question,
// answer_prefix, expected, answer (Instance::answer) and the ids as the engine lays them out:
// context_ids and query_ids (the question followed by the answer prefix).
nlohmann::json instance_json(const Instance& inst, int index);

// Writes every instance run_eval would run with this config (the same seeds) to `out`, one JSON
// object per line (instance_json), without running a model: the data behind tools/train/.
// Returns how many were written.
size_t dump_instances(const Layout& layout, const EvalConfig& config, std::ostream& out);

// Every task at every length, `samples` instances each, in the configured mode.
std::vector<TaskResult> run_eval(Engine& engine, const EvalConfig& config,
                                 const SampleCallback& on_sample = nullptr);

// A fixed-width table: task, length, mode, block, anchor, samples, score.
std::string format_table(const std::vector<TaskResult>& results);

nlohmann::json to_json(const std::vector<TaskResult>& results, const EvalConfig& config,
                       const std::string& model);

}  // namespace starattn::eval
