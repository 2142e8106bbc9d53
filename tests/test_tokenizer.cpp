// Byte tokenizer round trips and the UTF-8-aware stream decoder.
#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/tokenizer.h"

namespace starattn {
namespace {

// Strict UTF-8 validity (no overlongs, surrogates or code points above U+10FFFF), written
// independently of the decoder: decode each sequence to a code point and check its range.
bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char b = static_cast<unsigned char>(s[i]);
    int len;
    uint32_t cp;
    if (b < 0x80) { len = 1; cp = b; }
    else if ((b & 0xE0) == 0xC0) { len = 2; cp = b & 0x1F; }
    else if ((b & 0xF0) == 0xE0) { len = 3; cp = b & 0x0F; }
    else if ((b & 0xF8) == 0xF0) { len = 4; cp = b & 0x07; }
    else return false;
    if (i + static_cast<size_t>(len) > s.size()) return false;
    for (int k = 1; k < len; ++k) {
      const unsigned char c = static_cast<unsigned char>(s[i + static_cast<size_t>(k)]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += static_cast<size_t>(len);
  }
  return true;
}

std::string encode_utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Random text mixing 1-, 2-, 3- and 4-byte characters (surrogates excluded).
std::string random_utf8(std::mt19937& rng, int chars) {
  std::uniform_int_distribution<int> width(1, 4);
  std::string s;
  for (int i = 0; i < chars; ++i) {
    uint32_t cp = 0;
    switch (width(rng)) {
      case 1: cp = std::uniform_int_distribution<uint32_t>(0x01, 0x7F)(rng); break;
      case 2: cp = std::uniform_int_distribution<uint32_t>(0x80, 0x7FF)(rng); break;
      case 3:
        do cp = std::uniform_int_distribution<uint32_t>(0x800, 0xFFFF)(rng);
        while (cp >= 0xD800 && cp <= 0xDFFF);
        break;
      default: cp = std::uniform_int_distribution<uint32_t>(0x10000, 0x10FFFF)(rng); break;
    }
    s += encode_utf8(cp);
  }
  return s;
}

TEST(ByteTokenizer, RoundTripsRandomBytes) {
  ByteTokenizer tok;
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int trial = 0; trial < 20; ++trial) {
    std::string text(static_cast<size_t>(trial * 37), '\0');
    for (auto& c : text) c = static_cast<char>(byte(rng));
    const auto ids = tok.encode(text);
    ASSERT_EQ(ids.size(), text.size());
    std::string back;
    for (size_t i = 0; i < ids.size(); ++i) {
      ASSERT_EQ(ids[i], static_cast<unsigned char>(text[i]));
      back += tok.token_bytes(ids[i]);
    }
    ASSERT_EQ(back, text);
  }
}

TEST(ByteTokenizer, SpecialAndOutOfRangeIds) {
  ByteTokenizer tok;
  EXPECT_EQ(tok.vocab_size(), 259);
  EXPECT_EQ(tok.bos_id(), 256);
  EXPECT_EQ(tok.eos_ids(), std::vector<int32_t>{257});
  EXPECT_EQ(tok.token_bytes(ByteTokenizer::kBos), "");
  EXPECT_EQ(tok.token_bytes(ByteTokenizer::kEos), "");
  EXPECT_EQ(tok.token_bytes(ByteTokenizer::kPad), "");
  for (int32_t bad : {-1, 259, 100000}) {
    try {
      tok.token_bytes(bad);
      FAIL() << bad << " accepted";
    } catch (const std::out_of_range& e) {
      EXPECT_NE(std::string(e.what()).find(std::to_string(bad)), std::string::npos) << e.what();
    }
  }
}

TEST(StreamDecoder, NeverSplitsACharacter) {
  ByteTokenizer tok;
  std::mt19937 rng(2);
  for (int trial = 0; trial < 200; ++trial) {
    const std::string text = random_utf8(rng, 1 + trial % 40);
    StreamDecoder dec(tok);
    std::string joined;
    for (int32_t id : tok.encode(text)) {
      const std::string piece = dec.push(id);
      ASSERT_TRUE(valid_utf8(piece)) << "trial " << trial;
      joined += piece;
    }
    EXPECT_EQ(dec.flush(), "") << "a complete text leaves nothing pending";
    ASSERT_EQ(joined, text) << "trial " << trial;
  }
}

TEST(StreamDecoder, HoldsAnIncompleteCharacterUntilItCompletes) {
  ByteTokenizer tok;
  StreamDecoder dec(tok);
  const std::string euro = "\xE2\x82\xAC";
  EXPECT_EQ(dec.push(0xE2), "");
  EXPECT_EQ(dec.push(ByteTokenizer::kBos), "");  // special tokens add no bytes
  EXPECT_EQ(dec.push(0x82), "");
  EXPECT_EQ(dec.push(0xAC), euro);
  EXPECT_EQ(dec.push('a'), "a");
  EXPECT_EQ(dec.push(0xF0), "");
  EXPECT_EQ(dec.push(0x9F), "");
  EXPECT_EQ(dec.flush(), "\xF0\x9F");  // truncated at the end: emitted as-is
  EXPECT_EQ(dec.flush(), "");
}

TEST(StreamDecoder, InvalidBytesPassThrough) {
  ByteTokenizer tok;
  {
    StreamDecoder dec(tok);
    EXPECT_EQ(dec.push(0xFF), "\xFF");      // can never start a character
    EXPECT_EQ(dec.push(0x80), "\x80");      // stray continuation byte
    EXPECT_EQ(dec.push(0xC0), "\xC0");      // overlong lead
    EXPECT_EQ(dec.push(0xE2), "");
    EXPECT_EQ(dec.push('A'), "\xE2" "A");   // the lead cannot complete any more
    EXPECT_EQ(dec.push(0xED), "");
    EXPECT_EQ(dec.push(0xA0), "\xED\xA0");  // would be a surrogate
  }
  // Random bytes: nothing is lost or reordered, and pending bytes never pile up beyond one
  // incomplete character.
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int trial = 0; trial < 100; ++trial) {
    StreamDecoder dec(tok);
    std::string input, output;
    size_t held = 0;
    for (int i = 0; i < 200; ++i) {
      const int b = byte(rng);
      input += static_cast<char>(b);
      output += dec.push(b);
      held = input.size() - output.size();
      ASSERT_LE(held, 3u);
    }
    output += dec.flush();
    ASSERT_EQ(output, input) << "trial " << trial;
  }
}

}  // namespace
}  // namespace starattn

namespace starattn {
namespace {

// Random checkpoints without a vocabulary of their own may have more ids than the 259 of the
// byte vocabulary; those decode to no text instead of failing the request.
TEST(ByteTokenizer, LargerModelVocabularyDecodesExtraIdsToNothing) {
  const ByteTokenizer tok(448);
  EXPECT_EQ(tok.vocab_size(), 448);
  EXPECT_EQ(tok.token_bytes(65), "A");
  EXPECT_EQ(tok.token_bytes(300), "");
  EXPECT_EQ(tok.token_bytes(447), "");
  EXPECT_THROW(tok.token_bytes(448), std::out_of_range);
  EXPECT_EQ(ByteTokenizer(100).vocab_size(), 259);  // never smaller than the bytes + specials
}

}  // namespace
}  // namespace starattn
