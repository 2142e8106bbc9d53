// `starattn eval --dump-instances` and the reference answers behind tools/train/: the dump is
// deterministic in its seed, holds the ids the engine would see (document_prompt plus the answer
// prefix), and every reference answer scores 1 and fits the answer budget.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "eval/eval_runner.h"
#include "eval/ruler_tasks.h"
#include "runtime/prompt.h"
#include "runtime/tokenizer.h"
#include "tests/support/test_models.h"

namespace starattn::eval {
namespace {

const ByteTokenizer& bytes() {
  static const ByteTokenizer tokenizer;
  return tokenizer;
}

Layout byte_layout() { return chat_layout(bytes(), std::nullopt); }

EvalConfig config(uint64_t seed, std::vector<int64_t> lengths, int samples) {
  EvalConfig c;
  c.tasks = task_names();
  c.lengths = std::move(lengths);
  c.samples = samples;
  c.seed = seed;
  return c;
}

std::string dump(const EvalConfig& c) {
  std::ostringstream out;
  dump_instances(byte_layout(), c, out);
  return out.str();
}

std::vector<nlohmann::json> lines(const std::string& text) {
  std::vector<nlohmann::json> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line));
  return out;
}

TEST(EvalDump, SameSeedSameLinesOtherSeedOtherLines) {
  const std::string a = dump(config(1000, {1024}, 2));
  EXPECT_EQ(a, dump(config(1000, {1024}, 2)));
  EXPECT_NE(a, dump(config(1001, {1024}, 2)));
  EXPECT_EQ(lines(a).size(), task_names().size() * 2);
}

TEST(EvalDump, LinesAreTheInstancesRunEvalRuns) {
  const auto c = config(1000, {1024, 2048}, 2);
  const auto all = lines(dump(c));
  ASSERT_EQ(all.size(), task_names().size() * 2 * 2);
  size_t at = 0;
  for (const auto& task : c.tasks)
    for (const int64_t length : c.lengths)
      for (int i = 0; i < c.samples; ++i) {
        const auto& j = all[at++];
        const uint64_t seed = instance_seed(c.seed, task, length, i);
        const Instance inst = make_instance(task, length, seed, byte_layout());
        EXPECT_EQ(j["task"], task);
        EXPECT_EQ(j["length"], length);
        EXPECT_EQ(j["sample"], i);
        EXPECT_EQ(j["seed"].get<uint64_t>(), seed);
        EXPECT_EQ(j["max_tokens"], inst.max_tokens);
        EXPECT_EQ(j["document"], inst.document);
        EXPECT_EQ(j["expected"].get<std::vector<std::string>>(), inst.expected);
        EXPECT_EQ(j["answer"], inst.answer);
      }
}

TEST(EvalDump, IdsAreTheEnginesLayout) {
  for (const auto& j : lines(dump(config(1000, {1024}, 1)))) {
    const std::string document = j["document"], question = j["question"],
                      prefix = j["answer_prefix"];
    const auto context = j["context_ids"].get<std::vector<int32_t>>();
    const auto query = j["query_ids"].get<std::vector<int32_t>>();
    // document_prompt for a byte model: BOS + the document; the question; then, with no chat
    // template, a newline and the answer prefix.
    const PromptIds ids = document_prompt(bytes(), std::nullopt, document, question);
    std::vector<int32_t> want_query = ids.query;
    for (const char ch : "\n" + prefix) want_query.push_back(static_cast<unsigned char>(ch));
    EXPECT_EQ(context, ids.context) << j["task"];
    EXPECT_EQ(query, want_query) << j["task"];
    ASSERT_FALSE(context.empty());
    EXPECT_EQ(context[0], ByteTokenizer::kBos);
    EXPECT_EQ(context.size(), document.size() + 1);
    EXPECT_LE(static_cast<int64_t>(context.size() + query.size()),
              j["length"].get<int64_t>() - j["max_tokens"].get<int64_t>());
  }
}

TEST(EvalDump, ReferenceAnswersScoreOneAndFitTheBudget) {
  for (const int64_t length : {1024, 4096, 16384}) {
    for (const auto& task : task_names()) {
      for (int i = 0; i < 8; ++i) {
        const Instance inst =
            make_instance(task, length, instance_seed(77, task, length, i), byte_layout());
        SCOPED_TRACE(task + " " + std::to_string(length) + ": '" + inst.answer + "'");
        EXPECT_EQ(score_answer(inst.answer, inst.expected), 1.0);
        ASSERT_FALSE(inst.answer.empty());
        EXPECT_EQ(inst.answer[0], ' ');  // follows the prefix ("... is", "... are:")
        if (task != "cwe") {
          EXPECT_LE(static_cast<int>(inst.answer.size()), inst.max_tokens);
        }
      }
    }
  }
}

TEST(EvalDump, NeedleAnswersFollowTheTextOrQuestion) {
  const Instance mv =
      make_instance("niah_multivalue", 2048, instance_seed(5, "niah_multivalue", 2048, 0),
                    byte_layout());
  // The values in the order the needles appear in the document.
  size_t last = 0;
  for (const auto& v : mv.expected) EXPECT_NE(mv.document.find(v), std::string::npos);
  std::istringstream answer(mv.answer);
  std::string word;
  while (answer >> word) {
    if (word == "and") continue;
    const std::string value = word.substr(0, 7);
    const size_t at = mv.document.find(value);
    ASSERT_NE(at, std::string::npos) << value;
    EXPECT_GE(at, last);
    last = at;
  }
  const Instance mq =
      make_instance("niah_multiquery", 2048, instance_seed(5, "niah_multiquery", 2048, 0),
                    byte_layout());
  EXPECT_EQ(mq.answer, " " + mq.expected[0] + ", " + mq.expected[1] + ", " + mq.expected[2] +
                           ", and " + mq.expected[3] + ".");
  const Instance one = make_instance("niah_single", 1024, 9, byte_layout());
  EXPECT_EQ(one.answer, " " + one.expected[0] + ".");
}

// The command line writes the same lines as the library, with or without a byte model's --model.
std::string run_cli(const std::string& args, const testing::TempDir& tmp, int* status) {
  const char* env = std::getenv("STARATTN_CLI");
  const std::string cmd =
      std::string(env ? env : STARATTN_CLI) + " " + args + " 2>" + tmp.file("stderr.txt");
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return out;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  *status = pclose(p);
  return out;
}

TEST(EvalDump, CommandLineWritesTheLibrarysLines) {
  testing::TempDir tmp;
  int status = -1;
  const std::string args = "eval --task all --length 1024 --samples 2 --seed 1000 --quiet";
  const std::string out = run_cli(args + " --dump-instances -", tmp, &status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(out, dump(config(1000, {1024}, 2)));

  const std::string model = tmp.file("model");
  ASSERT_EQ(run_cli("init-model --preset tiny --out " + model, tmp, &status), "");
  ASSERT_EQ(status, 0);
  const std::string file = tmp.file("instances.jsonl");
  run_cli(args + " --model " + model + " --dump-instances " + file, tmp, &status);
  ASSERT_EQ(status, 0);
  std::ifstream in(file);
  std::stringstream written;
  written << in.rdbuf();
  EXPECT_EQ(written.str(), out);
}

}  // namespace
}  // namespace starattn::eval
