// The BPE engine: vocabulary checks, special-token splitting, normalization, merging, decoding.
// The loaders (tokenizer.json, GGUF) are in tokenizer_loaders.cpp.
#include "runtime/bpe_tokenizer.h"

#include <algorithm>
#include <queue>
#include <stdexcept>

#include "runtime/unicode.h"

namespace starattn {
namespace {

const char* const kMetaspace = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

uint64_t pair_key(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// "<0x41>" -> 0x41; -1 for anything else.
int parse_byte_token(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (int k = 3; k < 5; ++k) {
    const char c = t[static_cast<size_t>(k)];
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return -1;
    v = v * 16 + d;
  }
  return v;
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out += to;
    pos = hit + from.size();
  }
  out.append(s, pos, std::string::npos);
  return out;
}

bool is_word_char(uint32_t cp) { return is_letter(cp) || is_number(cp) || cp == '_'; }

// The code point that ends just before byte `pos` (pos > 0).
uint32_t code_point_before(const std::string& s, size_t pos) {
  size_t start = pos - 1;
  while (start > 0 && pos - start < 4 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80)
    --start;
  size_t len = 1;
  const uint32_t cp = decode_utf8(s, start, len);
  return start + len == pos ? cp : kInvalidCodePoint;
}

}  // namespace

const std::string& byte_to_unicode(uint8_t byte) {
  // Printable Latin-1 bytes stand for themselves; the others (controls, space, 0x7F-0xA0, 0xAD)
  // take the code points from U+0100 upwards, in byte order.
  static const std::vector<std::string> table = [] {
    std::vector<std::string> t(256);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
      append_utf8(t[static_cast<size_t>(b)], printable ? static_cast<uint32_t>(b) : next++);
    }
    return t;
  }();
  return table[byte];
}

BpeTokenizer::BpeTokenizer(BpeVocab vocab) : vocab_(std::move(vocab)) {
  const std::string& src = vocab_.source;
  const auto n_tokens = static_cast<int32_t>(vocab_.tokens.size());
  // First spelling wins: some GGUF vocabularies repeat placeholder tokens.
  for (int32_t id = 0; id < n_tokens; ++id) ids_.emplace(vocab_.tokens[static_cast<size_t>(id)], id);

  int32_t size = n_tokens;
  for (const AddedToken& t : vocab_.added) {
    if (t.id < 0) throw std::runtime_error(src + ": added token \"" + t.content + "\" has a negative id");
    if (t.content.empty()) throw std::runtime_error(src + ": added token " + std::to_string(t.id) + " is empty");
    size = std::max(size, t.id + 1);
  }
  if (size == 0) throw std::runtime_error(src + ": the vocabulary is empty");
  if (!vocab_.merges.empty() && !vocab_.scores.empty())
    throw std::runtime_error(src + ": a vocabulary has either merges or scores, not both");
  if (vocab_.merges.empty() && !vocab_.scores.empty() && vocab_.scores.size() != vocab_.tokens.size())
    throw std::runtime_error(src + ": " + std::to_string(vocab_.scores.size()) + " scores for " +
                             std::to_string(vocab_.tokens.size()) + " tokens");

  for (size_t rank = 0; rank < vocab_.merges.size(); ++rank) {
    const auto& [a, b] = vocab_.merges[rank];
    const auto ia = ids_.find(a), ib = ids_.find(b), im = ids_.find(a + b);
    if (ia == ids_.end() || ib == ids_.end() || im == ids_.end())
      throw std::runtime_error(src + ": merge " + std::to_string(rank) + " (\"" + a + "\" \"" + b +
                               "\") names a token missing from the vocabulary");
    merge_ranks_.emplace(pair_key(ia->second, ib->second),
                         std::make_pair(static_cast<int32_t>(rank), im->second));
  }
  for (int32_t& b : byte_token_) b = -1;
  for (bool& b : added_starts_) b = false;
  for (const AddedToken& t : vocab_.added) added_starts_[static_cast<unsigned char>(t.content[0])] = true;
  for (int32_t id = 0; id < n_tokens; ++id) {
    const int byte = vocab_.byte_level ? -1 : parse_byte_token(vocab_.tokens[static_cast<size_t>(id)]);
    if (byte >= 0 && byte_token_[byte] < 0) byte_token_[byte] = id;
  }
  if (vocab_.unk_id >= size)
    throw std::runtime_error(src + ": unknown-token id " + std::to_string(vocab_.unk_id) +
                             " is outside the vocabulary of " + std::to_string(size));

  // Decoded bytes of every token.
  std::unordered_map<std::string, uint8_t> from_unicode;
  if (vocab_.byte_level)
    for (int b = 0; b < 256; ++b) from_unicode[byte_to_unicode(static_cast<uint8_t>(b))] = static_cast<uint8_t>(b);
  bytes_.resize(static_cast<size_t>(size));
  for (int32_t id = 0; id < n_tokens; ++id) {
    const std::string& t = vocab_.tokens[static_cast<size_t>(id)];
    std::string& out = bytes_[static_cast<size_t>(id)];
    if (vocab_.byte_level) {
      size_t pos = 0;
      while (pos < t.size()) {
        size_t len = 1;
        decode_utf8(t, pos, len);
        const auto it = from_unicode.find(t.substr(pos, len));
        if (it != from_unicode.end()) out += static_cast<char>(it->second);
        else out.append(t, pos, len);  // not from the byte map: keep the text as it is
        pos += len;
      }
    } else if (parse_byte_token(t) >= 0) {
      out = std::string(1, static_cast<char>(parse_byte_token(t)));
    } else {
      out = replace_all(t, kMetaspace, " ");
    }
  }
  for (const AddedToken& t : vocab_.added) bytes_[static_cast<size_t>(t.id)] = t.content;
}

int32_t BpeTokenizer::token_id(const std::string& token) const {
  const auto it = ids_.find(token);
  if (it != ids_.end()) return it->second;
  for (const AddedToken& t : vocab_.added)
    if (t.content == token) return t.id;
  return -1;
}

const std::string& BpeTokenizer::token_text(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    throw std::out_of_range(vocab_.source + ": token id " + std::to_string(id) +
                            " is outside the vocabulary of " + std::to_string(vocab_size()));
  for (const AddedToken& t : vocab_.added)
    if (t.id == id) return t.content;
  return vocab_.tokens[static_cast<size_t>(id)];
}

std::string BpeTokenizer::token_bytes(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    throw std::out_of_range(vocab_.source + ": token id " + std::to_string(id) +
                            " is outside the vocabulary of " + std::to_string(vocab_size()));
  return bytes_[static_cast<size_t>(id)];
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) out += token_bytes(id);
  return out;
}

std::vector<int32_t> BpeTokenizer::encode(const std::string& text) const { return encode(text, true); }

std::vector<int32_t> BpeTokenizer::encode(const std::string& text, bool parse_special) const {
  std::vector<int32_t> out;
  size_t segment_start = 0;  // start of the text not yet encoded
  size_t pos = 0;
  while (parse_special && !vocab_.added.empty() && pos < text.size()) {
    if (!added_starts_[static_cast<unsigned char>(text[pos])]) {
      ++pos;
      continue;
    }
    // Leftmost-longest match among the added tokens at pos.
    const AddedToken* best = nullptr;
    for (const AddedToken& t : vocab_.added) {
      if (text.compare(pos, t.content.size(), t.content) != 0) continue;
      if (best && best->content.size() >= t.content.size()) continue;
      if (t.single_word) {
        const size_t end = pos + t.content.size();
        size_t len = 1;
        if (pos > 0 && is_word_char(code_point_before(text, pos))) continue;
        if (end < text.size() && is_word_char(decode_utf8(text, end, len))) continue;
      }
      best = &t;
    }
    if (!best) {
      ++pos;
      continue;
    }
    size_t begin = pos, end = pos + best->content.size();
    // lstrip/rstrip: the token absorbs neighbouring white space (never across another token).
    while (best->lstrip && begin > segment_start && is_white_space(code_point_before(text, begin))) {
      size_t len = 1;
      size_t start = begin - 1;
      while (start > segment_start && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
      decode_utf8(text, start, len);
      begin = start;
    }
    while (best->rstrip && end < text.size()) {
      size_t len = 1;
      if (!is_white_space(decode_utf8(text, end, len))) break;
      end += len;
    }
    if (begin > segment_start)
      encode_segment(text.substr(segment_start, begin - segment_start), segment_start == 0, out);
    out.push_back(best->id);
    segment_start = pos = end;
  }
  if (segment_start < text.size())
    encode_segment(text.substr(segment_start), segment_start == 0, out);
  return out;
}

void BpeTokenizer::encode_segment(const std::string& segment, bool at_start,
                                  std::vector<int32_t>& out) const {
  std::string text = segment;
  if (vocab_.spaces_to_metaspace) text = replace_all(text, " ", kMetaspace);
  const bool prefix = vocab_.space_prefix == SpacePrefix::always ||
                      (vocab_.space_prefix == SpacePrefix::first && at_start);
  if (prefix && !text.empty()) text = (vocab_.spaces_to_metaspace ? kMetaspace : " ") + text;
  if (vocab_.pre_steps.empty()) {
    encode_piece(text, out);
    return;
  }
  for (const std::string& piece : pre_tokenize(text, vocab_.pre_steps)) encode_piece(piece, out);
}

void BpeTokenizer::add_symbol_ids(const std::string& symbol, std::vector<int32_t>& out) const {
  const auto it = ids_.find(symbol);
  if (it != ids_.end()) {
    out.push_back(it->second);
    return;
  }
  if (vocab_.byte_fallback) {
    bool all = true;
    for (char c : symbol) all = all && byte_token_[static_cast<unsigned char>(c)] >= 0;
    if (all) {
      for (char c : symbol) out.push_back(byte_token_[static_cast<unsigned char>(c)]);
      return;
    }
  }
  if (vocab_.unk_id >= 0) out.push_back(vocab_.unk_id);
  // Without byte fallback or an unknown token the symbol is dropped, as the reference does.
}

void BpeTokenizer::encode_piece(const std::string& piece, std::vector<int32_t>& out) const {
  if (piece.empty()) return;
  std::string word;
  if (vocab_.byte_level) {
    for (char c : piece) word += byte_to_unicode(static_cast<uint8_t>(c));
  } else {
    word = piece;
  }
  if (vocab_.ignore_merges) {
    const auto it = ids_.find(word);
    if (it != ids_.end()) {
      out.push_back(it->second);
      return;
    }
  }

  // Symbols: a doubly linked list over byte ranges of `word`, starting as single characters.
  struct Symbol {
    size_t start, len;
    int32_t id;
    int prev, next;
  };
  std::vector<Symbol> sym;
  for (size_t pos = 0; pos < word.size();) {
    size_t len = 1;
    decode_utf8(word, pos, len);
    const auto it = ids_.find(word.substr(pos, len));
    const int index = static_cast<int>(sym.size());
    sym.push_back({pos, len, it == ids_.end() ? -1 : it->second, index - 1, index + 1});
    pos += len;
  }
  sym.back().next = -1;

  // Candidate merges, best first: lowest rank (or highest merged-token score), then leftmost.
  struct Candidate {
    double priority;
    int left, right;
    size_t left_len, right_len;  // to notice candidates made stale by other merges
    int32_t merged;
  };
  const auto worse = [](const Candidate& a, const Candidate& b) {
    return a.priority != b.priority ? a.priority > b.priority : a.left > b.left;
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> queue(worse);
  const bool by_rank = !vocab_.merges.empty();
  auto consider = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const Symbol& a = sym[static_cast<size_t>(left)];
    const Symbol& b = sym[static_cast<size_t>(right)];
    if (by_rank) {
      if (a.id < 0 || b.id < 0) return;
      const auto it = merge_ranks_.find(pair_key(a.id, b.id));
      if (it == merge_ranks_.end()) return;
      queue.push({static_cast<double>(it->second.first), left, right, a.len, b.len, it->second.second});
    } else if (!vocab_.scores.empty()) {
      const auto it = ids_.find(word.substr(a.start, a.len + b.len));
      if (it == ids_.end()) return;
      queue.push({-static_cast<double>(vocab_.scores[static_cast<size_t>(it->second)]), left, right,
                  a.len, b.len, it->second});
    }
  };
  for (size_t i = 0; i + 1 < sym.size(); ++i) consider(static_cast<int>(i), static_cast<int>(i + 1));

  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& a = sym[static_cast<size_t>(c.left)];
    Symbol& b = sym[static_cast<size_t>(c.right)];
    if (a.len == 0 || b.len == 0 || a.next != c.right || a.len != c.left_len || b.len != c.right_len)
      continue;  // stale: one side has been merged since
    a.len += b.len;
    a.id = c.merged;
    a.next = b.next;
    if (b.next >= 0) sym[static_cast<size_t>(b.next)].prev = c.left;
    b.len = 0;
    consider(a.prev, c.left);
    consider(c.left, a.next);
  }

  for (int i = 0; i >= 0; i = sym[static_cast<size_t>(i)].next) {
    const Symbol& s = sym[static_cast<size_t>(i)];
    if (s.id >= 0) out.push_back(s.id);
    else add_symbol_ids(word.substr(s.start, s.len), out);
  }
}

}  // namespace starattn
