#include "eval/eval_runner.h"

#include <chrono>
#include <cstdio>
#include <stdexcept>

namespace starattn::eval {

std::string SizeSpec::text() const {
  if (divisor > 0) return "L/" + std::to_string(divisor);
  return tokens > 0 ? std::to_string(tokens) : "default";
}

SizeSpec parse_size_spec(const std::string& text, const std::string& option) {
  SizeSpec spec;
  if (text.empty() || text == "0") return spec;
  const auto whole_number = [&](const std::string& digits) {
    if (digits.empty() || digits.size() > 12 ||
        digits.find_first_not_of("0123456789") != std::string::npos)
      throw std::invalid_argument("--" + option + " must be a token count or L/k (e.g. L/4), got '" +
                                  text + "'");
    return std::stoll(digits);
  };
  if (text.size() > 2 && (text[0] == 'L' || text[0] == 'l') && text[1] == '/') {
    spec.divisor = whole_number(text.substr(2));
    if (spec.divisor < 1) throw std::invalid_argument("--" + option + ": L/0 is not a size");
  } else {
    spec.tokens = whole_number(text);
  }
  return spec;
}

nlohmann::json instance_json(const Instance& inst, int index) {
  return {{"task", inst.task},
          {"length", inst.length},
          {"sample", index},
          {"seed", inst.seed},
          {"max_tokens", inst.max_tokens},
          {"document", inst.document},
          {"question", inst.question},
          {"answer_prefix", inst.answer_prefix},
          {"expected", inst.expected},
          {"answer", inst.answer},
          {"context_ids", inst.ids.context},
          {"query_ids", inst.ids.query}};
}

size_t dump_instances(const Layout& layout, const EvalConfig& config, std::ostream& out) {
  if (config.samples < 1) throw std::invalid_argument("samples must be at least 1");
  size_t written = 0;
  for (const auto& task : config.tasks) {
    if (!is_task(task)) throw std::invalid_argument("unknown task '" + task + "'");
    for (const int64_t length : config.lengths) {
      for (int i = 0; i < config.samples; ++i) {
        const uint64_t seed = instance_seed(config.seed, task, length, i);
        const Instance inst = make_instance(task, length, seed, layout, config.max_tokens);
        // The filler is ASCII; replace rather than fail should a tokenizer's text ever not be.
        out << instance_json(inst, i).dump(-1, ' ', false,
                                           nlohmann::json::error_handler_t::replace)
            << "\n";
        ++written;
      }
    }
  }
  out.flush();
  if (!out) throw std::runtime_error("writing the instances failed");
  return written;
}

std::vector<TaskResult> run_eval(Engine& engine, const EvalConfig& config,
                                 const SampleCallback& on_sample) {
  if (config.samples < 1) throw std::invalid_argument("samples must be at least 1");
  for (const auto& t : config.tasks)
    if (!is_task(t)) throw std::invalid_argument("unknown task '" + t + "'");
  const Layout layout = chat_layout(engine.tokenizer(), engine.chat_template());
  std::vector<TaskResult> results;
  for (const auto& task : config.tasks) {
    for (const int64_t length : config.lengths) {
      const auto start = std::chrono::steady_clock::now();
      TaskResult tr;
      tr.task = task;
      tr.length = length;
      tr.mode = mode_name(config.mode);
      tr.use_anchor = config.use_anchor;
      for (int i = 0; i < config.samples; ++i) {
        const uint64_t seed = instance_seed(config.seed, task, length, i);
        const Instance inst = make_instance(task, length, seed, layout, config.max_tokens);
        RequestSpec req;
        req.prompt.context = inst.ids.context;
        req.prompt.query = inst.ids.query;
        req.mode = config.mode;
        req.block_size = config.block.resolve(length);
        req.anchor_size = config.anchor.resolve(length);
        req.use_anchor = config.use_anchor;
        req.max_tokens = inst.max_tokens;  // greedy sampling: the default SamplingParams
        SampleResult s;
        s.index = i;
        s.seed = seed;
        s.context_tokens = static_cast<int64_t>(req.prompt.context.size());
        s.query_tokens = static_cast<int64_t>(req.prompt.query.size());
        s.expected = inst.expected;
        StreamDecoder decoder(engine.tokenizer());
        const RequestStats st = engine.generate(req, [&](int32_t id, const float*) {
          s.output += decoder.push(id);
          return true;
        });
        s.output += decoder.flush();
        s.score = score_answer(s.output, inst.expected);
        s.generated = st.generated;
        s.phase1_ms = st.phase1_ms;
        s.first_token_ms = st.first_token_ms;
        s.decode_ms = st.decode_ms;
        tr.block_size = st.block_size;
        tr.anchor_size = st.anchor_size;
        tr.max_tokens = inst.max_tokens;
        tr.samples.push_back(std::move(s));
        double sum = 0;
        for (const auto& x : tr.samples) sum += x.score;
        tr.score = 100.0 * sum / static_cast<double>(tr.samples.size());
        tr.seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        if (on_sample) on_sample(tr, tr.samples.back());
      }
      results.push_back(std::move(tr));
    }
  }
  return results;
}

std::string format_table(const std::vector<TaskResult>& results) {
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "%-16s %7s %5s %7s %7s %8s %7s %9s\n", "task", "length", "mode",
                "block", "anchor", "samples", "score", "seconds");
  out += line;
  for (const auto& r : results) {
    const std::string anchor = r.mode == "full" ? "-" : (r.use_anchor ? std::to_string(r.anchor_size) : "none");
    std::snprintf(line, sizeof line, "%-16s %7lld %5s %7lld %7s %8zu %7.1f %9.1f\n", r.task.c_str(),
                  static_cast<long long>(r.length), r.mode.c_str(),
                  static_cast<long long>(r.block_size), anchor.c_str(), r.samples.size(), r.score,
                  r.seconds);
    out += line;
  }
  return out;
}

nlohmann::json to_json(const std::vector<TaskResult>& results, const EvalConfig& config,
                       const std::string& model) {
  nlohmann::json j;
  j["model"] = model;
  j["seed"] = config.seed;
  j["mode"] = mode_name(config.mode);
  j["block_size"] = config.block.text();
  j["anchor_size"] = config.anchor.text();
  j["use_anchor"] = config.use_anchor;
  j["samples"] = config.samples;
  j["results"] = nlohmann::json::array();
  for (const auto& r : results) {
    nlohmann::json jr;
    jr["task"] = r.task;
    jr["length"] = r.length;
    jr["mode"] = r.mode;
    jr["block_size"] = r.block_size;
    jr["anchor_size"] = r.anchor_size;
    jr["use_anchor"] = r.use_anchor;
    jr["max_tokens"] = r.max_tokens;
    jr["score"] = r.score;
    jr["seconds"] = r.seconds;
    jr["samples"] = nlohmann::json::array();
    for (const auto& s : r.samples) {
      jr["samples"].push_back({{"index", s.index},
                               {"seed", s.seed},
                               {"context_tokens", s.context_tokens},
                               {"query_tokens", s.query_tokens},
                               {"expected", s.expected},
                               {"output", s.output},
                               {"score", s.score},
                               {"generated", s.generated},
                               {"phase1_ms", s.phase1_ms},
                               {"first_token_ms", s.first_token_ms},
                               {"decode_ms", s.decode_ms}});
    }
    j["results"].push_back(std::move(jr));
  }
  return j;
}

}  // namespace starattn::eval
