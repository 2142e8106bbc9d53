// Byte tokenizer and the UTF-8-aware stream decoder.
#include "runtime/tokenizer.h"

#include <stdexcept>
#include <string>

namespace starattn {

std::vector<int32_t> ByteTokenizer::encode(const std::string& text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size());
  for (char c : text) ids.push_back(static_cast<int32_t>(static_cast<unsigned char>(c)));
  return ids;
}

std::string ByteTokenizer::token_bytes(int32_t id) const {
  if (id >= 0 && id < 256) return std::string(1, static_cast<char>(static_cast<unsigned char>(id)));
  if (id >= 256 && id < vocab_) return std::string();
  throw std::out_of_range("ByteTokenizer: token id " + std::to_string(id) +
                          " is outside the vocabulary of " + std::to_string(vocab_));
}

namespace {

// What the UTF-8 sequence starting at s[pos] looks like with the bytes available so far.
enum class Seq { complete, incomplete, invalid };

// Checks the sequence at s[pos] against the well-formed byte ranges of Unicode (no overlongs,
// no surrogates, nothing above U+10FFFF). `len` gets the sequence length when complete.
Seq classify(const std::string& s, size_t pos, size_t& len) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char b0 = byte(pos);
  if (b0 < 0x80) {
    len = 1;
    return Seq::complete;
  }
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return Seq::invalid;  // stray continuation byte, C0/C1, or F5..FF
  }
  for (size_t k = 1; k < need; ++k) {
    if (pos + k >= s.size()) return Seq::incomplete;
    const unsigned char b = byte(pos + k);
    const unsigned char l = k == 1 ? lo : 0x80;
    const unsigned char h = k == 1 ? hi : 0xBF;
    if (b < l || b > h) return Seq::invalid;
  }
  len = need;
  return Seq::complete;
}

}  // namespace

std::string StreamDecoder::push(int32_t id) {
  pending_ += tokenizer_.token_bytes(id);
  // Emit everything up to a trailing sequence that is still a valid prefix of a character.
  // A byte that cannot start (or continue) a valid character is emitted as-is, so invalid
  // input passes through instead of being held forever.
  size_t pos = 0;
  while (pos < pending_.size()) {
    size_t len = 1;
    const Seq seq = classify(pending_, pos, len);
    if (seq == Seq::incomplete) break;
    pos += seq == Seq::complete ? len : 1;
  }
  std::string out = pending_.substr(0, pos);
  pending_.erase(0, pos);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace starattn
