// The CPU backend: float32 activations and arithmetic, weights stored as bf16.
//
// Weights are held in bf16 (half the memory of float32, as the cuda backend holds them): a
// decode step streams every weight once, so on a memory-bound CPU halving the bytes read
// outweighs the widening (docs/PERFORMANCE.md, "Quantized models", has the measurements). Every
// weight is rounded once, to nearest even, at upload; the products and sums stay float32. Ops
// that read weights (matmul's w and bias, embedding's table, the norms' weight) take f32 or bf16
// views, so float32 weights allocated explicitly still work; activations are f32 only.
//
// Memory is host RAM (64-byte aligned, zero-filled so that results never depend on stale data).
// Float32 GEMMs go through cblas_sgemm; a bf16 weight is multiplied by a one-row kernel (decode)
// or widened in slices for cblas_sgemm (prefill). Everything else is plain C++ parallelised with
// OpenMP. All argument checks happen before any parallel region, so errors surface as exceptions
// naming the op and the shapes involved, never from inside a worker thread.
#include "runtime/cpu_backend.h"

#include <cblas.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/cpu_attention.h"
#include "runtime/cpu_bf16.h"
#include "runtime/op_checks.h"
#include "runtime/safetensors.h"
#include "runtime/sampling.h"

// Not every cblas.h declares it (OpenBLAS's does); repeating a matching declaration is harmless.
extern "C" void openblas_set_num_threads(int num_threads);

namespace starattn {

namespace {

constexpr size_t kAlignment = 64;
// Below this many elements an elementwise op runs on one thread: the fork/join costs more.
constexpr int64_t kParallelMin = 1 << 15;

using op_checks::fail;
using op_checks::overlaps;
using op_checks::shape;

// Every view an op touches: f32 here, and the layout rules every backend shares.
void check_view(const char* op, const char* name, const Tensor& t) {
  op_checks::check_view(op, name, t, t.dtype == DType::f32, "f32 on the cpu backend");
}

void check_shape(const char* op, const char* name, const Tensor& t, int64_t rows, int64_t cols) {
  check_view(op, name, t);
  op_checks::check_extent(op, name, t, rows, cols);
}

// A view holding weights: f32 or bf16.
void check_weight_view(const char* op, const char* name, const Tensor& t) {
  op_checks::check_view(op, name, t, t.dtype == DType::f32 || t.dtype == DType::bf16,
                        "f32 or bf16 (weights) on the cpu backend");
}

void check_weight_shape(const char* op, const char* name, const Tensor& t, int64_t rows, int64_t cols) {
  check_weight_view(op, name, t);
  op_checks::check_extent(op, name, t, rows, cols);
}

// check_shape bound to one op, for the checks op_checks.h shares between backends.
auto shape_checker(const char* op) {
  return [op](const char* name, const Tensor& t, int64_t rows, int64_t cols) { check_shape(op, name, t, rows, cols); };
}

// The same for the norms, whose "weight" may be stored as bf16.
auto norm_shape_checker(const char* op) {
  return [op](const char* name, const Tensor& t, int64_t rows, int64_t cols) {
    if (std::string(name) == "weight")
      check_weight_shape(op, name, t, rows, cols);
    else
      check_shape(op, name, t, rows, cols);
  };
}

float* row_ptr(const Tensor& t, int64_t r) { return static_cast<float*>(t.data) + r * t.stride; }

// Row r of a view of any dtype, as bytes.
char* byte_row(const Tensor& t, int64_t r) {
  return static_cast<char*>(t.data) + r * t.stride * static_cast<int64_t>(dtype_size(t.dtype));
}

// Row r of a weight view (f32 or bf16) as float32 into dst.
void weight_row_f32(const Tensor& t, int64_t r, float* dst) {
  if (t.dtype == DType::f32) {
    std::memcpy(dst, row_ptr(t, r), static_cast<size_t>(t.cols) * 4);
    return;
  }
  bf16_to_f32_row(reinterpret_cast<const uint16_t*>(byte_row(t, r)), t.cols, dst);
}

// A one-row weight view (norm weight, bias) as float32: the view itself when it is f32, else
// widened into `scratch`.
const float* weight_vector_f32(const Tensor& t, std::vector<float>& scratch) {
  if (t.dtype == DType::f32) return row_ptr(t, 0);
  scratch.resize(static_cast<size_t>(t.cols));
  weight_row_f32(t, 0, scratch.data());
  return scratch.data();
}

// Leading dimension for BLAS: a single-row view may carry any stride, BLAS wants >= cols.
int blas_ld(const Tensor& t) {
  return static_cast<int>(std::max<int64_t>({t.stride, t.cols, 1}));
}


class CpuBackend final : public Backend {
 public:
  ~CpuBackend() override {
    // Buffers should be gone by now; free anything left so the backend never leaks.
    for (auto& entry : live_) std::free(entry.first);
  }

  std::string name() const override { return "cpu"; }
  DType activation_dtype() const override { return DType::f32; }
  DType weight_dtype() const override { return DType::bf16; }

  Buffer alloc(int64_t rows, int64_t cols, DType dtype) override {
    if (dtype != DType::f32 && dtype != DType::bf16)
      throw std::invalid_argument(std::string("alloc: the cpu backend stores f32 and bf16 only, asked for ") +
                                  dtype_name(dtype) + " [" + std::to_string(rows) + " x " +
                                  std::to_string(cols) + "]");
    const auto element = static_cast<int64_t>(dtype_size(dtype));
    if (rows < 0 || cols < 0 || (cols > 0 && rows > INT64_MAX / element / cols))
      throw std::invalid_argument("alloc: bad shape [" + std::to_string(rows) + " x " +
                                  std::to_string(cols) + "]");
    // Round up to the alignment (aligned_alloc requires it); an empty buffer still gets a
    // block so that it counts as allocated.
    size_t bytes = static_cast<size_t>(rows * cols * element);
    bytes = std::max(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
    void* p = std::aligned_alloc(kAlignment, bytes);
    if (p == nullptr) throw std::bad_alloc();
    std::memset(p, 0, bytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      live_[p] = bytes;
    }
    Tensor t;
    t.data = p;
    t.dtype = dtype;
    t.rows = rows;
    t.cols = cols;
    t.stride = cols;
    return Buffer(this, t);
  }

  void free_memory(Tensor t) override {
    if (t.data == nullptr) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = live_.find(t.data);
      // A pointer we did not hand out (or a double free) would corrupt the heap; refuse loudly.
      if (it == live_.end())
        throw std::invalid_argument("free_memory: " + shape(t) +
                                    " was not allocated by this cpu backend (or was freed already)");
      live_.erase(it);
    }
    std::free(t.data);
  }

  int64_t free_bytes() const override {
    // MemAvailable is the kernel's own estimate of what can be allocated without swapping.
    std::ifstream meminfo("/proc/meminfo");
    std::string key;
    int64_t value = 0;
    std::string unit;
    while (meminfo >> key >> value) {
      std::getline(meminfo, unit);
      if (key == "MemAvailable:") return value * 1024;
    }
    const long pages = sysconf(_SC_AVPHYS_PAGES);
    const long page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) return static_cast<int64_t>(pages) * page;
    return int64_t{1} << 40;  // unknown: assume plenty, allocation failures will still report
  }

  // bf16 destinations are rounded to nearest even (f32_to_bf16), in parallel for big weights.
  void upload(const float* host, Tensor dst) override {
    check_weight_view("upload", "dst", dst);
    if (dst.empty()) return;
    if (host == nullptr) fail("upload", "null host pointer for dst " + shape(dst));
    if (dst.dtype == DType::f32) {
      for (int64_t r = 0; r < dst.rows; ++r)
        std::memcpy(row_ptr(dst, r), host + r * dst.cols, static_cast<size_t>(dst.cols) * 4);
      return;
    }
#pragma omp parallel for schedule(static) if (dst.rows * dst.cols >= kParallelMin)
    for (int64_t r = 0; r < dst.rows; ++r) {
      auto* d = reinterpret_cast<uint16_t*>(byte_row(dst, r));
      const float* h = host + r * dst.cols;
      for (int64_t c = 0; c < dst.cols; ++c) d[c] = f32_to_bf16(h[c]);
    }
  }

  void download(const Tensor& src, float* host) override {
    check_weight_view("download", "src", src);
    if (src.empty()) return;
    if (host == nullptr) fail("download", "null host pointer for src " + shape(src));
    for (int64_t r = 0; r < src.rows; ++r) weight_row_f32(src, r, host + r * src.cols);
  }

  // Row by row with memmove: identical views are fine; partially overlapping views are not
  // supported. Both views have one dtype.
  void copy(const Tensor& src, Tensor dst) override {
    check_weight_view("copy", "src", src);
    check_weight_shape("copy", "dst", dst, src.rows, src.cols);
    if (src.dtype != dst.dtype)
      fail("copy", "src " + shape(src) + " and dst " + shape(dst) + " differ in dtype");
    if (src.empty()) return;
    const size_t row_bytes = static_cast<size_t>(src.cols) * dtype_size(src.dtype);
    for (int64_t r = 0; r < src.rows; ++r) std::memmove(byte_row(dst, r), byte_row(src, r), row_bytes);
  }

  void embedding(const int32_t* ids, const Tensor& table, Tensor out) override {
    check_weight_view("embedding", "table", table);
    check_shape("embedding", "out", out, out.rows, table.cols);
    if (out.rows == 0) return;
    if (ids == nullptr) fail("embedding", "null ids for out " + shape(out));
    op_checks::check_token_ids(ids, out.rows, table.rows);
#pragma omp parallel for schedule(static) if (out.rows * out.cols >= kParallelMin)
    for (int64_t i = 0; i < out.rows; ++i) weight_row_f32(table, ids[i], row_ptr(out, i));
  }

  // Hugging Face Llama RMSNorm in fp32: variance = mean(x^2); h = x * rsqrt(variance + eps);
  // y = weight * h. The sum of squares is accumulated in double (more accurate than torch's
  // float reduction, and order-independent for practical purposes), then rounded to float.
  void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor out) override {
    op_checks::check_norm_args("rmsnorm", x, nullptr, weight, eps, out, norm_shape_checker("rmsnorm"));
    const int64_t n = x.cols;
    std::vector<float> widened;
    const float* w = weight_vector_f32(weight, widened);
#pragma omp parallel for schedule(static) if (x.rows * n >= kParallelMin)
    for (int64_t r = 0; r < x.rows; ++r) {
      const float* xr = row_ptr(x, r);
      float* yr = row_ptr(out, r);  // may be xr itself: each element is read before written
      double ss = 0.0;
      for (int64_t c = 0; c < n; ++c) ss += static_cast<double>(xr[c]) * xr[c];
      const float variance = static_cast<float>(ss / static_cast<double>(n));
      const float inv_rms = 1.0f / std::sqrt(variance + eps);
      for (int64_t c = 0; c < n; ++c) yr[c] = w[c] * (xr[c] * inv_rms);
    }
  }

  void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor out) override {
    check_view("matmul", "x", x);
    check_weight_view("matmul", "w", w);
    const std::string shapes = "x " + shape(x) + " * w " + shape(w) + "^T -> out " + shape(out);
    if (x.cols != w.cols) fail("matmul", shapes + ": inner dimensions differ");
    check_shape("matmul", "out", out, x.rows, w.rows);
    if (bias) check_weight_shape("matmul", "bias", *bias, 1, w.rows);
    if (overlaps(out, x) || overlaps(out, w)) fail("matmul", shapes + ": out overlaps an input");
    const int64_t T = x.rows, N = w.rows, K = x.cols;
    if (T == 0 || N == 0) return;
    if (T > INT32_MAX || N > INT32_MAX || K > INT32_MAX || x.stride > INT32_MAX ||
        w.stride > INT32_MAX || out.stride > INT32_MAX)
      fail("matmul", shapes + ": too large for 32-bit BLAS");
    // Like torch.addmm: out starts as the bias (or zero) and the product is added (beta = 1).
    std::vector<float> widened;
    const float* b = bias ? weight_vector_f32(*bias, widened) : nullptr;
    for (int64_t r = 0; r < T; ++r) {
      float* o = row_ptr(out, r);
      if (b)
        std::memcpy(o, b, static_cast<size_t>(N) * 4);
      else
        std::fill(o, o + N, 0.0f);
    }
    if (K == 0) return;
    if (w.dtype == DType::bf16) {
      matmul_bf16(x, w, out);
      return;
    }
    if (T == 1) {
      // One row (every decode step): sgemm would first pack all of w, which costs as much as the
      // product itself; sgemv streams w once.
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(N), static_cast<int>(K), 1.0f,
                  static_cast<const float*>(w.data), blas_ld(w), static_cast<const float*>(x.data),
                  1, 1.0f, static_cast<float*>(out.data), 1);
      return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(T), static_cast<int>(N),
                static_cast<int>(K), 1.0f, static_cast<const float*>(x.data), blas_ld(x),
                static_cast<const float*>(w.data), blas_ld(w), 1.0f, static_cast<float*>(out.data),
                blas_ld(out));
  }

  void rope(const RopeArgs& a) override {
    check_view("rope", "x", a.x);
    if (a.n_heads <= 0 || a.head_dim <= 0 || a.head_dim % 2 != 0)
      fail("rope", "needs n_heads > 0 and an even head_dim > 0, got n_heads " +
                       std::to_string(a.n_heads) + ", head_dim " + std::to_string(a.head_dim));
    if (a.x.cols != static_cast<int64_t>(a.n_heads) * a.head_dim)
      fail("rope", "x " + shape(a.x) + " is not [T x " + std::to_string(a.n_heads) + " heads * " +
                       std::to_string(a.head_dim) + "]");
    if (a.x.rows == 0) return;
    if (a.positions == nullptr || a.inv_freq == nullptr)
      fail("rope", "null positions or inv_freq for x " + shape(a.x));
    const int half = a.head_dim / 2;
    const int threads = std::max(1, omp_get_max_threads());
    std::vector<float> table(static_cast<size_t>(threads) * static_cast<size_t>(a.head_dim));
#pragma omp parallel num_threads(threads) if (a.x.rows * a.x.cols >= kParallelMin)
    {
      // cos/sin depend on the row's position only; compute them once per row, exactly as
      // rope_rotate does (float angle, float cos/sin), and apply them to every head.
      float* cs = table.data() + static_cast<size_t>(omp_get_thread_num()) * a.head_dim;
#pragma omp for schedule(static)
      for (int64_t r = 0; r < a.x.rows; ++r) {
        const float pos = static_cast<float>(a.positions[r]);
        for (int i = 0; i < half; ++i) {
          const float angle = pos * a.inv_freq[i];
          cs[i] = std::cos(angle);
          cs[half + i] = std::sin(angle);
        }
        float* xr = row_ptr(a.x, r);
        for (int h = 0; h < a.n_heads; ++h) {
          float* xh = xr + static_cast<int64_t>(h) * a.head_dim;
          for (int i = 0; i < half; ++i) {
            const float c = cs[i], s = cs[half + i];
            const float x0 = xh[i], x1 = xh[i + half];
            xh[i] = x0 * c - x1 * s;
            xh[i + half] = x1 * c + x0 * s;
          }
        }
      }
    }
  }

  void attention(const AttentionArgs& a) override;
  int64_t attention_rows_per_pass(int n_q_heads, int n_kv_heads) const override {
    (void)n_q_heads;
    (void)n_kv_heads;
    return cpu_attention_row_tile();
  }
  void merge_partials(const std::vector<Partial>& parts, Tensor o, Tensor lse) override;

  // silu(g) * u with silu(g) = g / (1 + exp(-g)); for very negative g, exp overflows to inf and
  // the quotient is -0, the correct limit.
  void swiglu(const Tensor& gate, const Tensor& up, Tensor out) override {
    check_view("swiglu", "gate", gate);
    check_shape("swiglu", "up", up, gate.rows, gate.cols);
    check_shape("swiglu", "out", out, gate.rows, gate.cols);
#pragma omp parallel for schedule(static) if (gate.rows * gate.cols >= kParallelMin)
    for (int64_t r = 0; r < gate.rows; ++r) {
      const float* g = row_ptr(gate, r);
      const float* u = row_ptr(up, r);
      float* o = row_ptr(out, r);
      for (int64_t c = 0; c < gate.cols; ++c) o[c] = g[c] / (1.0f + std::exp(-g[c])) * u[c];
    }
  }

  void add(Tensor x, const Tensor& y) override {
    check_view("add", "x", x);
    check_shape("add", "y", y, x.rows, x.cols);
#pragma omp parallel for schedule(static) if (x.rows * x.cols >= kParallelMin)
    for (int64_t r = 0; r < x.rows; ++r) {
      float* xr = row_ptr(x, r);
      const float* yr = row_ptr(y, r);
      for (int64_t c = 0; c < x.cols; ++c) xr[c] += yr[c];
    }
  }

  // add then rmsnorm row by row while the row is in cache; the same float operations in the same
  // order as the two separate ops, so the results are identical.
  void add_rmsnorm(Tensor x, const Tensor& y, const Tensor& weight, float eps, Tensor out) override {
    op_checks::check_norm_args("add_rmsnorm", x, &y, weight, eps, out, norm_shape_checker("add_rmsnorm"));
    const int64_t n = x.cols;
    std::vector<float> widened;
    const float* w = weight_vector_f32(weight, widened);
#pragma omp parallel for schedule(static) if (x.rows * n >= kParallelMin)
    for (int64_t r = 0; r < x.rows; ++r) {
      float* xr = row_ptr(x, r);
      const float* yv = row_ptr(y, r);
      float* o = row_ptr(out, r);
      double ss = 0.0;
      for (int64_t c = 0; c < n; ++c) {
        xr[c] += yv[c];
        ss += static_cast<double>(xr[c]) * xr[c];
      }
      const float variance = static_cast<float>(ss / static_cast<double>(n));
      const float inv_rms = 1.0f / std::sqrt(variance + eps);
      for (int64_t c = 0; c < n; ++c) o[c] = w[c] * (xr[c] * inv_rms);
    }
  }

  int32_t sample(const Tensor& logits_row, const SamplingParams& params, uint64_t step) override {
    check_view("sample", "logits", logits_row);
    if (logits_row.rows != 1 || logits_row.cols == 0)
      fail("sample", "logits " + shape(logits_row) + " must be one non-empty row");
    return sample_token(row_ptr(logits_row, 0), logits_row.cols, params, step);
  }

  void synchronize() override {}

 private:
  // out += x * w^T for a bf16 w (out already holds the bias or zeros). A few rows: the one-row
  // kernel per row, streaming w once a row. More rows: w widened to float32 a slice of rows at a
  // time (a few MB, reused) and multiplied by sgemm, so the widening is paid once per slice
  // rather than once per row of x.
  void matmul_bf16(const Tensor& x, const Tensor& w, Tensor out) {
    const int64_t T = x.rows, N = w.rows, K = x.cols;
    const auto* wd = static_cast<const uint16_t*>(w.data);
    if (T <= kBf16RowsPerGemv) {
      for (int64_t r = 0; r < T; ++r) bf16_matvec(wd, w.stride, N, K, row_ptr(x, r), row_ptr(out, r));
      return;
    }
    const int64_t slice = std::max<int64_t>(1, std::min<int64_t>(N, kWidenedFloats / K));
    // Per thread: a backend may be driven from several threads.
    thread_local std::vector<float> wide;
    wide.resize(static_cast<size_t>(slice * K));
    float* const dst = wide.data();  // OpenMP workers would see their own (empty) thread_local
    for (int64_t n0 = 0; n0 < N; n0 += slice) {
      const int64_t rows = std::min(slice, N - n0);
#pragma omp parallel for schedule(static) if (rows * K >= kParallelMin)
      for (int64_t r = 0; r < rows; ++r) bf16_to_f32_row(wd + (n0 + r) * w.stride, K, dst + r * K);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(T), static_cast<int>(rows),
                  static_cast<int>(K), 1.0f, static_cast<const float*>(x.data), blas_ld(x), dst,
                  static_cast<int>(K), 1.0f, row_ptr(out, 0) + n0, blas_ld(out));
    }
  }

  // Up to this many rows of x a bf16 product is one-row kernels; the widened slice of w holds
  // about this many floats (4 MB).
  static constexpr int64_t kBf16RowsPerGemv = 2;
  static constexpr int64_t kWidenedFloats = int64_t{1} << 20;
  std::mutex mutex_;
  std::unordered_map<void*, size_t> live_;  // allocation -> bytes
};

// Checks here, so that errors name the op and shapes before any thread starts; the kernel is in
// cpu_attention.cpp.
void CpuBackend::attention(const AttentionArgs& a) {
  const char* op = "attention";
  op_checks::check_attention_shapes(op, a, shape_checker(op));
  const int64_t T = a.q.rows;
  if (T == 0) return;
  cpu_attention(a);
}

// The exact merge of DESIGN.md 1. Weights and sums are formed in double, so the result is
// independent of the order of the partials up to the final rounding to float. o and lse may be
// the very views of one partial (every element is read before it is written).
void CpuBackend::merge_partials(const std::vector<Partial>& parts, Tensor o, Tensor lse) {
  const char* op = "merge_partials";
  const int64_t d = op_checks::check_merge_shapes(op, parts, o, lse, shape_checker(op));
  const int64_t T = o.rows, hq = lse.cols;
  if (T == 0 || hq == 0) return;
  const size_t n = parts.size();
  const int threads = std::max(1, omp_get_max_threads());
  std::vector<double> weights(static_cast<size_t>(threads) * std::max<size_t>(n, 1));

#pragma omp parallel num_threads(threads) if (T * o.cols * static_cast<int64_t>(n) >= kParallelMin)
  {
    double* w = weights.data() + static_cast<size_t>(omp_get_thread_num()) * std::max<size_t>(n, 1);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < T; ++i) {
      for (int64_t h = 0; h < hq; ++h) {
        float* out = row_ptr(o, i) + h * d;
        double m = -INFINITY;
        for (size_t r = 0; r < n; ++r) m = std::max(m, static_cast<double>(row_ptr(parts[r].lse, i)[h]));
        if (m == -INFINITY) {  // no partial saw a key (or there are no partials)
          std::fill(out, out + d, 0.0f);
          row_ptr(lse, i)[h] = -INFINITY;
          continue;
        }
        double z = 0.0;
        for (size_t r = 0; r < n; ++r) {
          w[r] = std::exp(static_cast<double>(row_ptr(parts[r].lse, i)[h]) - m);
          z += w[r];
        }
        for (size_t r = 0; r < n; ++r) w[r] /= z;
        for (int64_t c = 0; c < d; ++c) {
          double acc = 0.0;
          for (size_t r = 0; r < n; ++r)
            if (w[r] != 0.0) acc += w[r] * row_ptr(parts[r].o, i)[h * d + c];
          out[c] = static_cast<float>(acc);
        }
        row_ptr(lse, i)[h] = static_cast<float>(m + std::log(z));
      }
    }
  }
}

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  if (threads > 0) {
    openblas_set_num_threads(threads);
    omp_set_num_threads(threads);
  }
  return std::make_unique<CpuBackend>();
}

}  // namespace starattn
