// The RULER-style task generator and scorer (eval/): seeded determinism, needles present exactly
// once, prompt lengths in SmolLM2 tokens, varied filler, and RULER's string-match scoring.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "eval/eval_runner.h"
#include "eval/filler.h"
#include "eval/ruler_tasks.h"
#include "runtime/bpe_tokenizer.h"
#include "tests/support/smollm2.h"

namespace starattn::eval {
namespace {

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// The real tokenizer and chat template, without the weights (lengths are SmolLM2 tokens).
class Tasks : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = starattn::testing::smollm2_gguf_path();
    if (path.empty()) return;
    tokenizer_ = load_tokenizer(path).release();
    chat_ = new std::optional<ChatTemplate>(
        resolve_chat_template(read_chat_template(path), *tokenizer_));
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete chat_;
    tokenizer_ = nullptr;
    chat_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(tokenizer_, nullptr) << starattn::testing::smollm2_missing_message();
  }
  static Layout layout() { return chat_layout(*tokenizer_, *chat_); }
  static Tokenizer* tokenizer_;
  static std::optional<ChatTemplate>* chat_;
};
Tokenizer* Tasks::tokenizer_ = nullptr;
std::optional<ChatTemplate>* Tasks::chat_ = nullptr;

TEST_F(Tasks, SameSeedSameInstanceOtherSeedOtherInstance) {
  for (const auto& task : task_names()) {
    const Instance a = make_instance(task, 1024, 7, layout());
    const Instance b = make_instance(task, 1024, 7, layout());
    const Instance c = make_instance(task, 1024, 8, layout());
    EXPECT_EQ(a.document, b.document) << task;
    EXPECT_EQ(a.question, b.question) << task;
    EXPECT_EQ(a.expected, b.expected) << task;
    EXPECT_EQ(a.ids.context, b.ids.context) << task;
    EXPECT_EQ(a.ids.query, b.ids.query) << task;
    EXPECT_NE(a.document, c.document) << task;
    EXPECT_NE(a.expected, c.expected) << task;
  }
}

TEST(TaskSeeds, DependOnTaskLengthAndIndexOnly) {
  std::set<uint64_t> seeds;
  for (const auto& task : task_names())
    for (int64_t len : {1024, 2048})
      for (int i = 0; i < 4; ++i) seeds.insert(instance_seed(3, task, len, i));
  EXPECT_EQ(seeds.size(), task_names().size() * 2 * 4);
  EXPECT_EQ(instance_seed(3, "vt", 1024, 2), instance_seed(3, "vt", 1024, 2));
  EXPECT_NE(instance_seed(3, "vt", 1024, 2), instance_seed(4, "vt", 1024, 2));
}

TEST_F(Tasks, EveryNeedleAndValueIsInTheHaystackExactlyOnce) {
  const std::map<std::string, size_t> needles = {{"niah_single", 1},
                                                 {"niah_multikey", 4},
                                                 {"niah_multivalue", 4},
                                                 {"niah_multiquery", 4}};
  for (const auto& [task, n] : needles) {
    for (uint64_t seed = 0; seed < 5; ++seed) {
      const Instance inst = make_instance(task, 2048, seed, layout());
      EXPECT_EQ(count(inst.document, "One of the special magic numbers for "), n) << task;
      EXPECT_EQ(inst.needles, static_cast<int>(n));
      const size_t want = task == "niah_multivalue" || task == "niah_multiquery" ? 4 : 1;
      ASSERT_EQ(inst.expected.size(), want) << task;
      for (const auto& v : inst.expected) {
        EXPECT_EQ(v.size(), 7u);
        EXPECT_EQ(count(inst.document, " is: " + v + "."), 1u) << task << " " << v;
        EXPECT_EQ(count(inst.document, v), 1u) << task << " " << v;
        // Nothing of the answer leaks into the query half.
        EXPECT_EQ(count(inst.question + inst.answer_prefix, v), 0u);
      }
    }
  }
}

TEST_F(Tasks, QueriedKeysAreNamedInTheQuestionAndOnlyTheirValuesExpected) {
  const Instance mk = make_instance("niah_multikey", 1024, 11, layout());
  // Four keys in the text, one asked: its needle holds the expected value.
  const std::string& value = mk.expected.at(0);
  const size_t at = mk.document.find(" is: " + value + ".");
  ASSERT_NE(at, std::string::npos);
  const size_t start = mk.document.rfind("numbers for ", at) + 12;
  const std::string key = mk.document.substr(start, at - start);
  EXPECT_THAT(mk.question, ::testing::HasSubstr(" for " + key + " mentioned"));
  EXPECT_THAT(mk.answer_prefix, ::testing::EndsWith(" is"));

  const Instance mq = make_instance("niah_multiquery", 1024, 11, layout());
  EXPECT_THAT(mq.question, ::testing::StartsWith("What are all the special magic numbers for "));
  EXPECT_EQ(count(mq.question, ", and "), 1u);
}

TEST_F(Tasks, VariableChainIsInOrderAndComplete) {
  for (uint64_t seed = 0; seed < 5; ++seed) {
    const Instance inst = make_instance("vt", 2048, seed, layout());
    ASSERT_EQ(inst.expected.size(), 5u);
    const std::string value = inst.question.substr(inst.question.find("value ") + 6, 5);
    size_t prev = inst.document.find("VAR " + inst.expected[0] + " = " + value + ".");
    ASSERT_NE(prev, std::string::npos);
    for (size_t i = 1; i < inst.expected.size(); ++i) {
      const size_t at =
          inst.document.find("VAR " + inst.expected[i] + " = VAR " + inst.expected[i - 1] + ".");
      ASSERT_NE(at, std::string::npos);
      EXPECT_GT(at, prev);
      prev = at;
    }
    EXPECT_EQ(count(inst.document, "VAR "), 9u);  // 5 assignments, 4 of them from a variable
    EXPECT_EQ(count(inst.document, value), 1u);
    EXPECT_EQ(inst.max_tokens, 30);
  }
}

TEST_F(Tasks, CommonWordsAppearFarMoreOftenThanTheRest) {
  for (int64_t len : {1024, 4096}) {
    const Instance inst = make_instance("cwe", len, 5, layout());
    ASSERT_EQ(inst.expected.size(), 10u);
    std::map<std::string, int> freq;
    std::istringstream in(inst.document.substr(inst.document.find("often.\n") + 7));
    std::string line;
    while (std::getline(in, line)) ++freq[line.substr(line.find(". ") + 2)];
    int least_common = 1 << 30, most_rare = 0;
    for (const auto& [w, n] : freq) {
      const bool common = std::count(inst.expected.begin(), inst.expected.end(), w) > 0;
      if (common) least_common = std::min(least_common, n);
      else most_rare = std::max(most_rare, n);
    }
    EXPECT_GE(freq.size(), 40u) << len;  // a real list, not the ten words alone
    EXPECT_GE(least_common, 3 * most_rare) << len;
    EXPECT_EQ(inst.max_tokens, 120);
  }
}

TEST_F(Tasks, PromptReachesTheRequestedLengthWithinASentence) {
  for (const auto& task : task_names()) {
    for (int64_t len : {1024, 2048, 4096}) {
      const Instance inst = make_instance(task, len, 1, layout());
      const int64_t budget = len - inst.max_tokens;
      EXPECT_LE(inst.prompt_tokens(), budget) << task << " " << len;
      // One filler sentence (or one more list word) is at most ~40 tokens.
      EXPECT_GE(inst.prompt_tokens(), budget - 40) << task << " " << len;
      // The ids are the template's: the context starts with the system turn and the query
      // ends with the answer prefix.
      std::string query;
      for (int32_t id : inst.ids.query) query += tokenizer_->token_bytes(id);
      EXPECT_THAT(query, ::testing::HasSubstr("<|im_start|>assistant\n"));
      EXPECT_THAT(query, ::testing::EndsWith(inst.answer_prefix));
    }
  }
}

TEST_F(Tasks, TooShortALengthIsAClearError) {
  EXPECT_THROW(make_instance("niah_single", 100, 1, layout()), std::invalid_argument);
  EXPECT_THROW(make_instance("cwe", 200, 1, layout()), std::invalid_argument);
  EXPECT_THROW(make_instance("nope", 1024, 1, layout()), std::invalid_argument);
}

TEST(Filler, IsVariedProseWithoutNeedleWords) {
  const auto sentences = filler_sentences(42, 400);
  const std::set<std::string> distinct(sentences.begin(), sentences.end());
  EXPECT_GE(distinct.size(), 390u);
  std::set<std::string> first_words;
  std::string all;
  for (const auto& s : sentences) {
    all += s;
    first_words.insert(s.substr(0, s.find(' ')));
  }
  EXPECT_GE(first_words.size(), 20u);  // many sentence shapes and subjects
  EXPECT_GE(count(all, "\n\n"), 40u);   // paragraphs
  EXPECT_EQ(std::count_if(all.begin(), all.end(),
                          [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }),
            0);
  for (const char* word : {"magic", "special", "number", "VAR "})
    EXPECT_EQ(count(all, word), 0u) << word;
  EXPECT_EQ(filler_sentences(42, 50), filler_sentences(42, 50));
  EXPECT_NE(filler_sentences(42, 50), filler_sentences(43, 50));
}

TEST(Filler, CommonWordVocabularyHasNoWordInsideAnother) {
  const auto& words = filler_words();
  EXPECT_GE(words.size(), 300u);
  for (const auto& a : words)
    for (const auto& b : words)
      if (a != b) {
        EXPECT_EQ(b.find(a), std::string::npos) << a << " in " << b;
      }
}

TEST(Score, IsTheFractionOfExpectedStringsFoundCaseInsensitively) {
  EXPECT_DOUBLE_EQ(score_answer(" 1234567.", {"1234567"}), 1.0);
  EXPECT_DOUBLE_EQ(score_answer(" 1234568.", {"1234567"}), 0.0);
  EXPECT_DOUBLE_EQ(score_answer("", {"1234567"}), 0.0);
  EXPECT_DOUBLE_EQ(score_answer(" 1111111, 2222222 and 4444444", {"1111111", "2222222", "3333333", "4444444"}), 0.75);
  EXPECT_DOUBLE_EQ(score_answer(" abcde, FGHIJ", {"ABCDE", "FGHIJ"}), 1.0);
  EXPECT_DOUBLE_EQ(score_answer("anything", {}), 0.0);
}

TEST(SizeSpec, ParsesTokensAndFractionsOfTheLength) {
  EXPECT_EQ(parse_size_spec("", "block-size").resolve(4096), 0);
  EXPECT_EQ(parse_size_spec("512", "block-size").resolve(4096), 512);
  EXPECT_EQ(parse_size_spec("L/4", "block-size").resolve(4096), 1024);
  EXPECT_EQ(parse_size_spec("L/8", "block-size").text(), "L/8");
  EXPECT_THROW(parse_size_spec("L/0", "block-size"), std::invalid_argument);
  EXPECT_THROW(parse_size_spec("quarter", "block-size"), std::invalid_argument);
  EXPECT_THROW(parse_size_spec("-5", "anchor-size"), std::invalid_argument);
}

TEST(ByteLayout, WorksWithoutAChatTemplate) {
  // Byte-level test models have no template: the prefix follows the question on a new line.
  ByteTokenizer bytes;
  const Instance inst = make_instance("niah_single", 3000, 2, chat_layout(bytes, std::nullopt));
  EXPECT_LE(inst.prompt_tokens(), 3000 - 128);
  EXPECT_GE(inst.prompt_tokens(), 3000 - 128 - 200);  // a sentence is up to ~200 bytes
  std::string query(inst.ids.query.begin(), inst.ids.query.end());
  EXPECT_THAT(query, ::testing::EndsWith("\n" + inst.answer_prefix));
}

}  // namespace
}  // namespace starattn::eval
