// A plain completions prompt (OpenAI's /v1/completions with only `prompt`) split into the two
// halves Star Attention needs: the context, encoded blockwise in phase 1, and the query, prefilled
// with attention over every block in phase 2. The query is the prompt's last question-like
// segment, never longer than a cap, so a long document always lands in phase 1.
//
// The rule, for text (first that applies):
//   1. turn: the last line that opens a turn, i.e. whose text (after leading spaces) starts with
//      one of kTurnMarkers (case-insensitive), through the end of the prompt;
//   2. paragraph: the last paragraph (after the last blank line), through the end;
//   3. line: the last line that has text, through the end;
//   4. whole: the whole prompt (one line);
// and a segment longer than max_query_bytes is not taken: the next rule is tried. When none fits,
//   5. tail: the last max_query_bytes bytes, started at a word (or at least a UTF-8 character).
// context + query is always exactly the prompt. For token ids the query is the last
// max_query_tokens ids (ids carry no text to look for turns in).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace starattn {

// Line openings that start a turn, matched case-insensitively after leading spaces and tabs.
extern const std::vector<std::string> kTurnMarkers;

struct PlainPromptLimits {
  size_t max_query_bytes = 2048;  // about 512 tokens of English text
  size_t max_query_tokens = 512;
};

enum class PlainPromptRule { turn, paragraph, line, whole, tail };
const char* rule_name(PlainPromptRule rule);

struct PlainPromptSplit {
  std::string context;
  std::string query;
  PlainPromptRule rule = PlainPromptRule::whole;
};

struct PlainPromptIdsSplit {
  std::vector<int32_t> context;
  std::vector<int32_t> query;
};

PlainPromptSplit split_plain_prompt(const std::string& prompt, const PlainPromptLimits& limits = {});
PlainPromptIdsSplit split_plain_prompt_ids(const std::vector<int32_t>& ids,
                                           const PlainPromptLimits& limits = {});

}  // namespace starattn
