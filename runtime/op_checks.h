// Argument checks every backend's ops share, so the same bad call gets the same message on every
// backend. A backend adds only its own rule on element types.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

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

// The shapes every backend's attention needs: Hq a positive multiple of Hkv, q and o [T x Hq*D],
// k and v [S x Hkv*D], lse [T x Hq] (a shape error names the heads); o may be q itself (each work
// item reads its own q rows and head before writing them) but must not share memory with k, v or
// lse. `check_shape(name, view, rows, cols)` is the backend's, with its rule on element types.
template <class CheckShape>
void check_attention_shapes(const char* op, const AttentionArgs& a, CheckShape check_shape) {
  if (a.n_q_heads <= 0 || a.n_kv_heads <= 0 || a.head_dim <= 0 || a.n_q_heads % a.n_kv_heads != 0)
    fail(op, "needs n_q_heads a positive multiple of n_kv_heads and head_dim > 0, got Hq " +
                 std::to_string(a.n_q_heads) + ", Hkv " + std::to_string(a.n_kv_heads) + ", D " +
                 std::to_string(a.head_dim));
  const int64_t T = a.q.rows, S = a.k.rows;
  const int64_t qdim = static_cast<int64_t>(a.n_q_heads) * a.head_dim;
  const int64_t kvdim = static_cast<int64_t>(a.n_kv_heads) * a.head_dim;
  try {
    check_shape("q", a.q, T, qdim);
    check_shape("k", a.k, S, kvdim);
    check_shape("v", a.v, S, kvdim);
    check_shape("o", a.o, T, qdim);
    check_shape("lse", a.lse, T, a.n_q_heads);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(e.what() + std::string(" (Hq ") + std::to_string(a.n_q_heads) + ", Hkv " +
                                std::to_string(a.n_kv_heads) + ", D " + std::to_string(a.head_dim) + ")");
  }
  if (overlaps(a.o, a.k) || overlaps(a.o, a.v) || overlaps(a.lse, a.o))
    fail(op, "o " + shape(a.o) + " or lse overlaps k, v or o");
}

// RMSNorm's arguments, and add_rmsnorm's when y is given (x += y, then out = rmsnorm(x)): x, y
// and out [rows x cols], weight [1 x cols], no empty rows, eps >= 0; add_rmsnorm's out must not
// share memory with x or y, which it updates and reads row by row. `check_shape` as above.
template <class CheckShape>
void check_norm_args(const char* op, const Tensor& x, const Tensor* y, const Tensor& weight, float eps,
                     const Tensor& out, CheckShape check_shape) {
  check_shape("x", x, x.rows, x.cols);
  if (y) check_shape("y", *y, x.rows, x.cols);
  check_shape("weight", weight, 1, x.cols);
  check_shape("out", out, x.rows, x.cols);
  if (x.rows > 0 && x.cols == 0) fail(op, "x " + shape(x) + " has empty rows");
  if (!(eps >= 0.0f)) fail(op, "eps must be >= 0, got " + std::to_string(eps));
  if (y && (overlaps(out, x) || overlaps(out, *y)))
    fail(op, "out " + shape(out) + " overlaps x " + shape(x) + " or y " + shape(*y));
}

// merge_partials' shapes: o [T x H*D] and lse [T x H] (H = lse.cols), and every partial's o and
// lse the same (an error names the partial). `check_shape` as above: called with a view's own
// extents it checks only the view and the backend's element types. Returns D (0 when H is 0).
template <class CheckShape>
int64_t check_merge_shapes(const char* op, const std::vector<Partial>& parts, const Tensor& o, const Tensor& lse,
                           CheckShape check_shape) {
  check_shape("o", o, o.rows, o.cols);
  check_shape("lse", lse, o.rows, lse.cols);
  const int64_t T = o.rows, hq = lse.cols;
  if (hq == 0 ? o.cols != 0 : o.cols % hq != 0)
    fail(op, "o " + shape(o) + " is not [T x heads * D] for lse " + shape(lse));
  for (size_t r = 0; r < parts.size(); ++r) {
    const Tensor& po = parts[r].o;
    const Tensor& pl = parts[r].lse;
    check_shape("o", po, po.rows, po.cols);
    check_shape("lse", pl, pl.rows, pl.cols);
    if (po.rows != T || po.cols != o.cols || pl.rows != T || pl.cols != hq)
      fail(op, "o " + shape(po) + " / lse " + shape(pl) + " of partial " + std::to_string(r) + " of " +
                   std::to_string(parts.size()) + " do not match out o " + shape(o) + " / lse " + shape(lse));
  }
  return hq == 0 ? 0 : o.cols / hq;
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
