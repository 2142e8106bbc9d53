// The API key check both front ends share (HTTP's bearer token, the framed TCP Auth frame).
#pragma once

#include <string>

namespace starattn::server {

// Compares without an early exit, so response time says nothing about how much of a guessed
// key was right.
inline bool same_secret(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

}  // namespace starattn::server
