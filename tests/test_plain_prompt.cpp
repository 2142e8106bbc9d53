// The split of a plain completions prompt into context and query (runtime/plain_prompt.h): each
// rule on prompts built for it, the cap, and invariants on random prompts (context + query is the
// prompt, the query fits the cap and starts on a UTF-8 character).
#include <gtest/gtest.h>

#include <random>

#include "runtime/plain_prompt.h"

namespace starattn {
namespace {

// Random words of ASCII and two-byte and three-byte UTF-8 characters, never a turn marker.
std::string random_words(std::mt19937& rng, int words) {
  static const std::vector<std::string> pieces = {"star", "block", "anchor", "ctx", "é", "ü", "ß",
                                                  "日本", "€", "42", "x", "attention"};
  std::string out;
  for (int w = 0; w < words; ++w) {
    if (w) out += ' ';
    const int n = 1 + static_cast<int>(rng() % 3);
    for (int i = 0; i < n; ++i) out += pieces[rng() % pieces.size()];
  }
  return out;
}

std::string random_document(std::mt19937& rng, int paragraphs) {
  std::string doc;
  for (int p = 0; p < paragraphs; ++p) {
    if (p) doc += "\n\n";
    const int lines = 1 + static_cast<int>(rng() % 4);
    for (int l = 0; l < lines; ++l) {
      if (l) doc += '\n';
      doc += random_words(rng, 3 + static_cast<int>(rng() % 12));
    }
  }
  return doc;
}

bool starts_a_character(const std::string& s) {
  return s.empty() || (static_cast<unsigned char>(s[0]) & 0xC0) != 0x80;
}

TEST(PlainPrompt, TheLastTurnIsTheQueryWithWhatFollowsIt) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 50; ++trial) {
    const std::string marker = kTurnMarkers[rng() % kTurnMarkers.size()];
    // An earlier turn in the document must not be taken: only the last one is the query.
    const std::string doc = random_document(rng, 2) + "\n" + marker + " an earlier one?\n" +
                            random_document(rng, 1 + static_cast<int>(rng() % 3)) + "\n\n";
    const std::string turn = (trial % 2 ? "  " : "") + marker + " " + random_words(rng, 6) + "?\nAnswer:";
    const PlainPromptSplit s = split_plain_prompt(doc + turn);
    EXPECT_EQ(s.rule, PlainPromptRule::turn) << marker;
    EXPECT_EQ(s.context, doc);
    EXPECT_EQ(s.query, turn);
  }
  // Markers match whatever the case; a word that merely begins like one does not.
  EXPECT_EQ(split_plain_prompt("doc\nquestion: why?").query, "question: why?");
  EXPECT_EQ(split_plain_prompt("doc one\nQuick fox\nlast line").rule, PlainPromptRule::line);
}

TEST(PlainPrompt, WithoutATurnTheLastParagraphThenTheLastLine) {
  std::mt19937 rng(12);
  for (int trial = 0; trial < 50; ++trial) {
    const std::string doc = random_document(rng, 1 + static_cast<int>(rng() % 5));
    const std::string para = random_words(rng, 5) + "\n" + random_words(rng, 4);
    const std::string trailing = trial % 3 == 0 ? "\n\n" : "";
    const PlainPromptSplit s = split_plain_prompt(doc + "\n\n" + para + trailing);
    EXPECT_EQ(s.rule, PlainPromptRule::paragraph);
    EXPECT_EQ(s.context, doc + "\n\n");
    EXPECT_EQ(s.query, para + trailing);
  }
  const PlainPromptSplit line = split_plain_prompt("first line\nsecond line\nWhat is it?");
  EXPECT_EQ(line.rule, PlainPromptRule::line);
  EXPECT_EQ(line.context, "first line\nsecond line\n");
  EXPECT_EQ(line.query, "What is it?");
  const PlainPromptSplit whole = split_plain_prompt("Once upon a time");
  EXPECT_EQ(whole.rule, PlainPromptRule::whole);
  EXPECT_EQ(whole.context, "");
  EXPECT_EQ(whole.query, "Once upon a time");
}

TEST(PlainPrompt, ASegmentOverTheCapFallsToTheNextRuleThenToTheTail) {
  PlainPromptLimits limits;
  limits.max_query_bytes = 40;
  // The turn is too long, its last paragraph fits.
  const std::string turn_head = "Question: " + std::string(60, 'a') + "\n\n";
  PlainPromptSplit s = split_plain_prompt("doc\n" + turn_head + "short end", limits);
  EXPECT_EQ(s.rule, PlainPromptRule::paragraph);
  EXPECT_EQ(s.query, "short end");
  // One long line: the tail, started at a word.
  const std::string words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu";
  s = split_plain_prompt(words, limits);
  EXPECT_EQ(s.rule, PlainPromptRule::tail);
  EXPECT_LE(s.query.size(), 40u);
  EXPECT_EQ(s.query, "zeta eta theta iota kappa lambda mu");
  EXPECT_EQ(s.context + s.query, words);
  // No spaces at all: the tail starts on a character, not inside one.
  const std::string wide = std::string(30, 'x') + [] {
    std::string e;
    for (int i = 0; i < 30; ++i) e += "\xE2\x82\xAC";  // €
    return e;
  }();
  s = split_plain_prompt(wide, limits);
  EXPECT_EQ(s.rule, PlainPromptRule::tail);
  EXPECT_EQ(s.query.size(), 39u);  // 13 whole three-byte characters
  EXPECT_TRUE(starts_a_character(s.query));
}

TEST(PlainPrompt, RandomPromptsKeepEveryByteAndFitTheCap) {
  std::mt19937 rng(13);
  for (int trial = 0; trial < 300; ++trial) {
    PlainPromptLimits limits;
    limits.max_query_bytes = 1 + rng() % 200;
    std::string prompt = random_document(rng, 1 + static_cast<int>(rng() % 8));
    if (rng() % 2) prompt += "\n" + kTurnMarkers[rng() % kTurnMarkers.size()] + random_words(rng, 1 + rng() % 30);
    if (rng() % 4 == 0) prompt += "\n \n";
    const PlainPromptSplit s = split_plain_prompt(prompt, limits);
    ASSERT_EQ(s.context + s.query, prompt) << "trial " << trial;
    EXPECT_LE(s.query.size(), limits.max_query_bytes) << "trial " << trial;
    EXPECT_TRUE(starts_a_character(s.query)) << "trial " << trial;
    // Only a prompt that fits whole has an empty context.
    if (s.context.empty()) {
      EXPECT_LE(prompt.size(), limits.max_query_bytes);
    }
  }
}

TEST(PlainPrompt, TokenIdsLeaveTheLastIdsToTheQuery) {
  std::mt19937 rng(14);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<int32_t> ids(rng() % 40);
    for (auto& id : ids) id = static_cast<int32_t>(rng() % 50000);
    PlainPromptLimits limits;
    limits.max_query_tokens = 1 + rng() % 20;
    const PlainPromptIdsSplit s = split_plain_prompt_ids(ids, limits);
    const size_t q = std::min(ids.size(), limits.max_query_tokens);
    ASSERT_EQ(s.query.size(), q);
    ASSERT_EQ(s.context.size(), ids.size() - q);
    std::vector<int32_t> joined = s.context;
    joined.insert(joined.end(), s.query.begin(), s.query.end());
    EXPECT_EQ(joined, ids);
  }
  PlainPromptLimits zero;
  zero.max_query_tokens = 0;
  EXPECT_THROW(split_plain_prompt_ids({1, 2}, zero), std::invalid_argument);
}

}  // namespace
}  // namespace starattn
