// Argument checks every backend's ops share, so the same bad call gets the same message on every
// backend. A backend adds only its own rule on element types.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#include "runtime/backend.h"

namespace starattn::op_checks {

// "[rows x cols(, stride s) dtype]"
inline std::string shape(const Tensor& t) {
  std::string s = "[" + std::to_string(t.rows) + " x " + std::to_string(t.cols);
  if (t.stride != t.cols) s += ", stride " + std::to_string(t.stride);
  return s + " " + dtype_name(t.dtype) + "]";
}

[[noreturn]] inline void fail(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}

// A view an op touches: an element type the backend takes (`dtype_ok`, else `dtype_rule` says
// what it takes), non-negative extents, a stride that covers a row, and data unless it is empty.
inline void check_view(const char* op, const char* name, const Tensor& t, bool dtype_ok,
                       const char* dtype_rule) {
  if (!dtype_ok) fail(op, std::string(name) + " " + shape(t) + " must be " + dtype_rule);
  if (t.rows < 0 || t.cols < 0) fail(op, std::string(name) + " " + shape(t) + " has a negative extent");
  if (t.rows > 1 && t.stride < t.cols)
    fail(op, std::string(name) + " " + shape(t) + " has a row stride shorter than its row");
  if (!t.empty() && t.data == nullptr) fail(op, std::string(name) + " " + shape(t) + " has no data");
}

inline void check_extent(const char* op, const char* name, const Tensor& t, int64_t rows,
                         int64_t cols) {
  if (t.rows != rows || t.cols != cols)
    fail(op, std::string(name) + " is " + shape(t) + ", expected [" + std::to_string(rows) + " x " +
                 std::to_string(cols) + "]");
}

// Whether the memory spans of two views intersect.
inline bool overlaps(const Tensor& a, const Tensor& b) {
  if (a.empty() || b.empty()) return false;
  const char* a0 = static_cast<const char*>(a.data);
  const char* b0 = static_cast<const char*>(b.data);
  const char* a1 = a0 + ((a.rows - 1) * a.stride + a.cols) * static_cast<int64_t>(dtype_size(a.dtype));
  const char* b1 = b0 + ((b.rows - 1) * b.stride + b.cols) * static_cast<int64_t>(dtype_size(b.dtype));
  return a0 < b1 && b0 < a1;
}

// Every id before anything is written, so a bad id leaves the output untouched.
inline void check_token_ids(const int32_t* ids, int64_t n, int64_t vocab) {
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      throw std::out_of_range("embedding: token id " + std::to_string(ids[i]) + " at position " +
                              std::to_string(i) + " is outside the vocabulary of " +
                              std::to_string(vocab));
}

}  // namespace starattn::op_checks
