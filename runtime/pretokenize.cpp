// Hand-written scanners for the GPT-2, Llama 3 and Qwen2 split patterns, and the Digits and
// prefix-space steps. Each scanner returns the length of the regex match at a position; the
// alternatives are tried in the pattern's order, exactly as a backtracking regex engine would.
#include "runtime/pretokenize.h"

#include <cstdint>

#include "runtime/unicode.h"

namespace starattn {
namespace {

// The text as code points, with the byte offset where each starts (plus the end offset).
struct CodePoints {
  std::vector<uint32_t> cp;
  std::vector<size_t> offset;

  explicit CodePoints(const std::string& text) {
    size_t pos = 0;
    while (pos < text.size()) {
      size_t len = 1;
      cp.push_back(decode_utf8(text, pos, len));
      offset.push_back(pos);
      pos += len;
    }
    offset.push_back(text.size());
  }
  size_t size() const { return cp.size(); }
};

bool is_other(uint32_t c) { return !is_white_space(c) && !is_letter(c) && !is_number(c); }
bool is_crlf(uint32_t c) { return c == '\r' || c == '\n'; }

// ASCII lower case, plus U+017F (long s), which case-insensitive matching folds to 's'.
uint32_t fold(uint32_t c) {
  if (c >= 'A' && c <= 'Z') return c + ('a' - 'A');
  if (c == 0x17F) return 's';
  return c;
}

// 's|'t|'re|'ve|'m|'ll|'d at i; 0 when none matches.
size_t contraction(const CodePoints& t, size_t i, bool ignore_case) {
  if (t.cp[i] != '\'' || i + 1 >= t.size()) return 0;
  auto at = [&](size_t k) { return ignore_case ? fold(t.cp[k]) : t.cp[k]; };
  const uint32_t a = at(i + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 >= t.size()) return 0;
  const uint32_t b = at(i + 2);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

template <typename Pred>
size_t run(const CodePoints& t, size_t i, Pred pred) {
  size_t j = i;
  while (j < t.size() && pred(t.cp[j])) ++j;
  return j - i;
}

// \s+(?!\S) then \s+, both starting at a white-space character i: the greedy run, except that
// a run followed by a non-space gives back its last character to it (when it has more than one).
size_t trailing_space(const CodePoints& t, size_t i) {
  const size_t n = run(t, i, is_white_space);
  if (i + n == t.size() || n == 1) return n;
  return n - 1;
}

size_t match_gpt2(const CodePoints& t, size_t i) {
  if (size_t n = contraction(t, i, false)) return n;
  const uint32_t c = t.cp[i];
  const bool space_then = c == ' ' && i + 1 < t.size();
  const uint32_t next = space_then ? t.cp[i + 1] : 0;
  if (is_letter(c)) return run(t, i, is_letter);                      //  ?\p{L}+
  if (space_then && is_letter(next)) return 1 + run(t, i + 1, is_letter);
  if (is_number(c)) return run(t, i, is_number);                      //  ?\p{N}+
  if (space_then && is_number(next)) return 1 + run(t, i + 1, is_number);
  if (is_other(c)) return run(t, i, is_other);                        //  ?[^\s\p{L}\p{N}]+
  if (space_then && is_other(next)) return 1 + run(t, i + 1, is_other);
  return trailing_space(t, i);                                        // c is white space
}

// The Llama 3 pattern; `max_digits` is 3 for Llama 3 and 1 for Qwen2.
size_t match_llama3(const CodePoints& t, size_t i, size_t max_digits) {
  if (size_t n = contraction(t, i, true)) return n;
  const uint32_t c = t.cp[i];
  const bool has_next = i + 1 < t.size();
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (is_letter(c)) return run(t, i, is_letter);
  if (!is_crlf(c) && !is_number(c) && has_next && is_letter(t.cp[i + 1]))
    return 1 + run(t, i + 1, is_letter);
  // \p{N}{1,max_digits}
  if (is_number(c)) {
    const size_t n = run(t, i, is_number);
    return n < max_digits ? n : max_digits;
  }
  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  size_t start = i;
  if (c == ' ' && has_next && is_other(t.cp[i + 1])) start = i + 1;
  if (is_other(t.cp[start])) {
    size_t end = start + run(t, start, is_other);
    end += run(t, end, is_crlf);
    return end - i;
  }
  // c is white space from here on. \s*[\r\n]+: the greedy \s* backs off to the last line break
  // of the run, and [\r\n]+ then takes that one character.
  const size_t n = run(t, i, is_white_space);
  for (size_t k = n; k-- > 0;)
    if (is_crlf(t.cp[i + k])) return k + 1;
  return trailing_space(t, i);  // \s+(?!\S)|\s+
}

template <typename Match>
std::vector<std::string> split_with(const std::string& piece, Match match) {
  const CodePoints t(piece);
  std::vector<std::string> out;
  size_t i = 0;
  while (i < t.size()) {
    size_t n = match(t, i);
    if (n == 0) n = 1;  // cannot happen with these patterns; never loop forever
    out.push_back(piece.substr(t.offset[i], t.offset[i + n] - t.offset[i]));
    i += n;
  }
  return out;
}

std::vector<std::string> split_digits(const std::string& piece, bool individual) {
  const CodePoints t(piece);
  std::vector<std::string> out;
  size_t i = 0;
  while (i < t.size()) {
    size_t n;
    if (is_number(t.cp[i]))
      n = individual ? 1 : run(t, i, is_number);
    else
      n = run(t, i, [](uint32_t c) { return !is_number(c); });
    out.push_back(piece.substr(t.offset[i], t.offset[i + n] - t.offset[i]));
    i += n;
  }
  return out;
}

}  // namespace

const char* pre_step_name(PreStep step) {
  switch (step) {
    case PreStep::gpt2: return "gpt2";
    case PreStep::llama3: return "llama3";
    case PreStep::qwen2: return "qwen2";
    case PreStep::digits: return "digits";
    case PreStep::digits_individual: return "digits_individual";
    case PreStep::prefix_space: return "prefix_space";
  }
  return "?";
}

bool pre_step_from_regex(const std::string& regex, PreStep& step) {
  static const char* const kGpt2 =
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
  static const char* const kLlama3 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  static const char* const kQwen2 =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  if (regex == kGpt2) {
    step = PreStep::gpt2;
  } else if (regex == kLlama3) {
    step = PreStep::llama3;
  } else if (regex == kQwen2) {
    step = PreStep::qwen2;
  } else {
    return false;
  }
  return true;
}

std::vector<std::string> split_piece(const std::string& piece, PreStep step) {
  switch (step) {
    case PreStep::gpt2: return split_with(piece, match_gpt2);
    case PreStep::llama3:
      return split_with(piece, [](const CodePoints& t, size_t i) { return match_llama3(t, i, 3); });
    case PreStep::qwen2:
      return split_with(piece, [](const CodePoints& t, size_t i) { return match_llama3(t, i, 1); });
    case PreStep::digits: return split_digits(piece, false);
    case PreStep::digits_individual: return split_digits(piece, true);
    case PreStep::prefix_space:
      if (!piece.empty() && piece[0] != ' ') return {" " + piece};
      return {piece};
  }
  return {piece};
}

std::vector<std::string> pre_tokenize(const std::string& text, const std::vector<PreStep>& steps) {
  std::vector<std::string> pieces{text};
  for (PreStep step : steps) {
    std::vector<std::string> next;
    for (const std::string& piece : pieces)
      for (std::string& sub : split_piece(piece, step)) next.push_back(std::move(sub));
    pieces.swap(next);
  }
  if (pieces.size() == 1 && pieces[0].empty()) pieces.clear();
  return pieces;
}

}  // namespace starattn
