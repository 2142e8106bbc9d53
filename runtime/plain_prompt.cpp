#include "runtime/plain_prompt.h"

#include <stdexcept>

namespace starattn {

// The openings of the prompt formats people paste into completions: QA datasets ("Question:",
// "Q:"), chat transcripts ("User:", "Human:"), instruction formats (Alpaca's "### Instruction",
// Mistral's "[INST]").
const std::vector<std::string> kTurnMarkers = {
    "Question:", "Q:", "User:", "Human:", "Instruction:", "Query:",
    "### Instruction", "### Question", "### User", "[INST]",
};

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v'; }

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool starts_with_nocase(const std::string& s, size_t at, const std::string& prefix) {
  if (s.size() - at < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i)
    if (lower(s[at + i]) != lower(prefix[i])) return false;
  return true;
}

struct Line {
  size_t begin = 0;  // first byte
  size_t end = 0;    // one past the last byte before '\n' (or the end of the prompt)
};

std::vector<Line> lines_of(const std::string& s) {
  std::vector<Line> out;
  size_t begin = 0;
  for (;;) {
    const size_t nl = s.find('\n', begin);
    if (nl == std::string::npos) {
      out.push_back({begin, s.size()});
      return out;
    }
    out.push_back({begin, nl});
    begin = nl + 1;
  }
}

bool blank(const std::string& s, const Line& l) {
  for (size_t i = l.begin; i < l.end; ++i)
    if (!is_space(s[i])) return false;
  return true;
}

bool opens_turn(const std::string& s, const Line& l) {
  size_t at = l.begin;
  while (at < l.end && (s[at] == ' ' || s[at] == '\t')) ++at;
  for (const auto& marker : kTurnMarkers)
    if (at + marker.size() <= l.end && starts_with_nocase(s, at, marker)) return true;
  return false;
}

// The last `max_bytes` bytes of s, started at a UTF-8 character and, when the window has one,
// at the start of a word.
size_t tail_start(const std::string& s, size_t max_bytes) {
  size_t start = s.size() - max_bytes;
  while (start < s.size() && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) ++start;
  if (start == 0 || is_space(s[start - 1])) return start;
  size_t word = start;
  while (word < s.size() && !is_space(s[word])) ++word;
  while (word < s.size() && is_space(s[word])) ++word;
  return word < s.size() ? word : start;
}

}  // namespace

const char* rule_name(PlainPromptRule rule) {
  switch (rule) {
    case PlainPromptRule::turn: return "turn";
    case PlainPromptRule::paragraph: return "paragraph";
    case PlainPromptRule::line: return "line";
    case PlainPromptRule::whole: return "whole";
    case PlainPromptRule::tail: return "tail";
  }
  return "?";
}

PlainPromptSplit split_plain_prompt(const std::string& prompt, const PlainPromptLimits& limits) {
  if (limits.max_query_bytes == 0)
    throw std::invalid_argument("split_plain_prompt: max_query_bytes must be at least 1");
  const std::vector<Line> lines = lines_of(prompt);
  // The last line with text; trailing blank lines belong to the query.
  size_t last = lines.size();
  while (last > 0 && blank(prompt, lines[last - 1])) --last;

  std::vector<std::pair<PlainPromptRule, size_t>> candidates;  // rule, query start; in order
  if (last > 0) {
    const size_t last_line = last - 1;
    for (size_t i = last; i-- > 0;) {
      if (opens_turn(prompt, lines[i])) {
        candidates.push_back({PlainPromptRule::turn, lines[i].begin});
        break;
      }
    }
    size_t first = last_line;
    while (first > 0 && !blank(prompt, lines[first - 1])) --first;
    if (first > 0) candidates.push_back({PlainPromptRule::paragraph, lines[first].begin});
    if (last_line > 0) candidates.push_back({PlainPromptRule::line, lines[last_line].begin});
  }
  candidates.push_back({PlainPromptRule::whole, 0});

  PlainPromptSplit out;
  size_t start = std::string::npos;
  for (const auto& [rule, begin] : candidates) {
    if (prompt.size() - begin <= limits.max_query_bytes) {
      out.rule = rule;
      start = begin;
      break;
    }
  }
  if (start == std::string::npos) {
    out.rule = PlainPromptRule::tail;
    start = tail_start(prompt, limits.max_query_bytes);
  }
  out.context = prompt.substr(0, start);
  out.query = prompt.substr(start);
  return out;
}

PlainPromptIdsSplit split_plain_prompt_ids(const std::vector<int32_t>& ids, const PlainPromptLimits& limits) {
  if (limits.max_query_tokens == 0)
    throw std::invalid_argument("split_plain_prompt_ids: max_query_tokens must be at least 1");
  const size_t q = ids.size() < limits.max_query_tokens ? ids.size() : limits.max_query_tokens;
  const auto cut = ids.begin() + static_cast<std::ptrdiff_t>(ids.size() - q);
  return {std::vector<int32_t>(ids.begin(), cut), std::vector<int32_t>(cut, ids.end())};
}

}  // namespace starattn
