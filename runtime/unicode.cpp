// Character classes by binary search over the generated range tables, and UTF-8 coding.
#include "runtime/unicode.h"

#include <algorithm>

namespace starattn {
namespace {

bool in_ranges(uint32_t cp, const UnicodeRange* table, size_t n) {
  const UnicodeRange* end = table + n;
  // First range whose upper end is >= cp; cp is in it when its lower end is <= cp.
  const UnicodeRange* it =
      std::lower_bound(table, end, cp, [](const UnicodeRange& r, uint32_t v) { return r.hi < v; });
  return it != end && it->lo <= cp;
}

}  // namespace

bool is_letter(uint32_t cp) {
  if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
  return in_ranges(cp, unicode_data::kLetters, unicode_data::kLetters_size);
}

bool is_number(uint32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return in_ranges(cp, unicode_data::kNumbers, unicode_data::kNumbers_size);
}

bool is_white_space(uint32_t cp) {
  if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
  return in_ranges(cp, unicode_data::kWhiteSpace, unicode_data::kWhiteSpace_size);
}

uint32_t decode_utf8(const std::string& s, size_t pos, size_t& len) {
  const auto byte = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char b0 = byte(pos);
  len = 1;
  if (b0 < 0x80) return b0;
  size_t need;
  uint32_t cp;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return kInvalidCodePoint;
  }
  if (pos + need > s.size()) return kInvalidCodePoint;
  for (size_t k = 1; k < need; ++k) {
    const unsigned char b = byte(pos + k);
    if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return kInvalidCodePoint;
    cp = (cp << 6) | (b & 0x3F);
  }
  len = need;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace starattn
