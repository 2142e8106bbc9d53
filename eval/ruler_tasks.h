// RULER-style synthetic long-context tasks (Hsieh et al., "RULER: What's the Real Context Size of
// Your Long-Context Language Models?"), generated in C++ from a seed. We follow RULER's task
// definitions, prompt wording and scoring; the haystack is our own varied filler (eval/filler.h).
//
//   niah_single      one needle "One of the special magic numbers for {key} is: {value}."; its
//                    value must be returned.
//   niah_multikey    four needles with different keys; one key is asked for.
//   niah_multivalue  four needles with the same key and different values; all four must be returned.
//   niah_multiquery  four needles with different keys; all four keys are asked for.
//   vt               variable tracking: a chain "VAR A = 12345.", "VAR B = VAR A.", ... (four hops)
//                    hidden in the haystack; every variable holding the value must be named.
//   cwe              common-word extraction: a numbered list of words in which ten words appear far
//                    more often than the rest; the ten must be named.
//
// Length: as in RULER, `length` is the whole sequence the model handles, prompt plus answer, so
// the prompt (context + query tokens) is filled up to `length - max_tokens` tokens of the model's
// own tokenizer and never beyond.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "runtime/chat_template.h"
#include "runtime/prompt.h"
#include "runtime/tokenizer.h"

namespace starattn::eval {

// Every task, in the order `--task all` runs them.
const std::vector<std::string>& task_names();
bool is_task(const std::string& name);

// RULER's answer budgets: 128 tokens for needle tasks, 30 for variable tracking, 120 for common
// words.
int default_max_tokens(const std::string& task);

// Turns an instance's text into model input. The prompt is the model's chat template with one user
// turn (the document, a blank line, the question) followed by the assistant header and then the
// answer prefix, as RULER does: the assistant's answer is started for it ("The special magic number
// for quiet-lantern mentioned in the provided text is") so the reply is the answer itself.
using Layout = std::function<PromptIds(const std::string& document, const std::string& question,
                                       const std::string& answer_prefix)>;
Layout chat_layout(const Tokenizer& tokenizer, const std::optional<ChatTemplate>& chat);

struct Instance {
  std::string task;
  int64_t length = 0;  // requested sequence length (prompt + answer budget)
  uint64_t seed = 0;
  int max_tokens = 0;  // answer budget
  std::string document;       // the context half: instructions and haystack
  std::string question;       // the query half, in the user turn
  std::string answer_prefix;  // the start of the assistant turn
  std::vector<std::string> expected;  // strings a correct answer contains
  // A reply that follows answer_prefix and scores 1 (training targets, tools/train/): the values
  // in the order the question or the text gives them (" 1234567.", " 1234567, 2345678, ... and
  // 4567890."; variables and words separated by spaces, words in order of first appearance). It
  // fits the answer budget in bytes, except cwe's at times (long words).
  std::string answer;
  int needles = 0;                    // inserted lines (needles, chain links); 0 for cwe
  PromptIds ids;                      // as laid out for the model
  int64_t prompt_tokens() const {
    return static_cast<int64_t>(ids.context.size() + ids.query.size());
  }
};

// The seed of sample `index` of `task` at `length`: instances do not depend on which others were
// generated, so every mode and block size sees exactly the same prompts.
uint64_t instance_seed(uint64_t seed, const std::string& task, int64_t length, int index);

// One instance; `max_tokens` 0 means the task's default budget. Throws std::invalid_argument for an
// unknown task or a length too short to hold the task's fixed text.
Instance make_instance(const std::string& task, int64_t length, uint64_t seed,
                       const Layout& layout, int max_tokens = 0);

// RULER's string_match_all for one answer: the fraction of expected strings found in the output,
// case-insensitively. With a single expected value it is all-or-nothing.
double score_answer(const std::string& output, const std::vector<std::string>& expected);

}  // namespace starattn::eval
