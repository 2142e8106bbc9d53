// Internal to the cuda backend: the CudaBackend class and the argument checks shared by its
// two translation units (cuda_backend.cu: memory and transfers; cuda_ops.cu: the ops).
#pragma once

#include <cublas_v2.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "cuda/attention_decode.cuh"
#include "cuda/common.cuh"
#include "cuda/op_profiler.h"
#include "runtime/backend.h"
#include "runtime/op_checks.h"

namespace starattn::cuda_detail {


using cuda::bf16;
using cuda::check_cuda;

inline void check_cublas(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuda ") + what + ": cuBLAS " + cublasGetStatusString(st));
}

using op_checks::fail;
using op_checks::overlaps;
using op_checks::shape;

// f32 or bf16 here, and the layout rules every backend shares.
inline void check_view(const char* op, const char* name, const Tensor& t) {
  op_checks::check_view(op, name, t, t.dtype == DType::f32 || t.dtype == DType::bf16,
                        "f32 or bf16 on the cuda backend");
}

inline void check_shape(const char* op, const char* name, const Tensor& t, int64_t rows, int64_t cols) {
  check_view(op, name, t);
  op_checks::check_extent(op, name, t, rows, cols);
}

// check_shape bound to one op, for the checks op_checks.h shares between backends.
inline auto shape_checker(const char* op) {
  return [op](const char* name, const Tensor& t, int64_t rows, int64_t cols) { check_shape(op, name, t, rows, cols); };
}

// Calls f with a value of the element type of t (float or bf16), to instantiate templates.
template <class F>
void dispatch(DType t, F&& f) {
  if (t == DType::f32) f(float{});
  else f(bf16{});
}

template <class T>
T* ptr(const Tensor& t) { return static_cast<T*>(t.data); }

// Host float <-> bf16, round to nearest even (NaN stays NaN).
inline uint16_t f32_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_f32(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

enum class AttentionPath { automatic, prefill, decode };

// STARATTN_CUDA_ATTENTION=prefill|decode forces one kernel (tests, benchmarks).
inline AttentionPath attention_path_from_env() {
  const char* v = std::getenv("STARATTN_CUDA_ATTENTION");
  if (v == nullptr || std::strcmp(v, "auto") == 0 || *v == '\0') return AttentionPath::automatic;
  if (std::strcmp(v, "prefill") == 0) return AttentionPath::prefill;
  if (std::strcmp(v, "decode") == 0) return AttentionPath::decode;
  throw std::invalid_argument(std::string("STARATTN_CUDA_ATTENTION must be auto, prefill or decode, got '") +
                              v + "'");
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;

  std::string name() const override { return "cuda"; }
  DType activation_dtype() const override { return DType::bf16; }
  DType weight_dtype() const override { return DType::bf16; }

  Buffer alloc(int64_t rows, int64_t cols, DType dtype) override;
  void free_memory(Tensor t) override;
  int64_t free_bytes() const override;
  void upload(const float* host, Tensor dst) override;
  void download(const Tensor& src, float* host) override;
  void copy(const Tensor& src, Tensor dst) override;
  // Small same-dtype copies in one launch per element size (cuda/elementwise.cuh).
  void copy_batch(const std::vector<CopyItem>& items) override;

  void embedding(const int32_t* ids, const Tensor& table, Tensor out) override;
  void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor out) override;
  void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor out) override;
  void rope(const RopeArgs& args) override;
  void attention(const AttentionArgs& args) override;
  // Every decode-path item in one launch (cuda/attention_decode_batch.cuh), bit-identical to
  // attention() of each.
  void attention_batch(const std::vector<AttentionArgs>& items) override;
  // Unmasked rows up to 64 packed (row, query head of a KV group) slots, at most 16 rows, get a
  // single row's split plan; the wide decode kernel reads each K/V tile once for 32 slots (D =
  // 128) or 64 (D = 64), and interleaves the blocks of items over one K/V (L2).
  int64_t attention_rows_per_pass(int n_q_heads, int n_kv_heads) const override;
  void merge_partials(const std::vector<Partial>& parts, Tensor o, Tensor lse) override;
  // Every item in one launch when they share head count, head dim and dtypes (cuda/merge.cuh).
  void merge_partials_batch(const std::vector<MergeItem>& items) override;
  // merge_partials' checks; appends the partials' descriptors; false when there is nothing to
  // merge (no rows or no heads).
  bool merge_descriptors(const char* op, const std::vector<Partial>& parts, const Tensor& o, const Tensor& lse,
                         std::vector<cuda::ShardDesc>& descs);
  void swiglu(const Tensor& gate, const Tensor& up, Tensor out) override;
  void add(Tensor x, const Tensor& y) override;
  void add_rmsnorm(Tensor x, const Tensor& y, const Tensor& weight, float eps, Tensor out) override;
  int32_t sample(const Tensor& logits_row, const SamplingParams& params, uint64_t step) override;
  // One argmax launch over all rows, one copy back.
  void argmax_rows(const Tensor& logits, std::vector<int32_t>& out) override;
  void synchronize() override;
  void profile_section(const char* name) override;
  DeviceIpc* ipc() override;
  // Prints and resets the per-op profile (STARATTN_PROFILE=1); no-op when profiling is off.
  void profile_report(const std::string& label);

  // For benchmarks and tests (cuda_backend.h): the stream every op is queued on, and the high
  // water mark of bytes allocated through alloc() since the last reset.
  cudaStream_t stream() const { return stream_; }
  int64_t peak_allocated_bytes() const;
  void reset_peak_allocated_bytes();
  int prefill_variant() const { return prefill_variant_; }
  // Makes this thread's current device ours (ops may come from another thread than the
  // constructor's).
  void bind() const;

 private:
  struct HostArray {
    const void* data;
    size_t bytes;
  };
  // Copies host arrays to device scratch for kernels queued next; returns their device addresses.
  std::vector<void*> stage(std::initializer_list<HostArray> arrays, const char* op);
  float* workspace(int64_t floats, const char* op);
  // Checks `a` as attention() does and fills its kernel parameters (p.T == 0: nothing to do);
  // true when the decode kernel takes it (few query rows), false for the prefill kernel.
  bool attention_params(const char* op, const AttentionArgs& a, cuda::AttentionParams& p);
  // The decode kernel's split plan of one call (this backend's tile variant, one wave of splits).
  cuda::DecodePlan decode_plan(const cuda::AttentionParams& p, int head_dim) const;
  // A host array's copy on the device that stays valid until the array's contents change: every
  // layer of a forward passes RoPE the same positions and inv_freq, so they are copied once per
  // forward instead of once per layer.
  struct DeviceCopy {
    std::vector<char> host;
    void* dev = nullptr;
    size_t capacity = 0;
    bool valid = false;
  };
  const void* cached_copy(DeviceCopy& c, const void* host, size_t bytes, const char* op);

  int device_ = 0;
  int num_sms_ = 1;
  AttentionPath attention_path_ = AttentionPath::automatic;
  int prefill_variant_ = 0;        // STARATTN_PREFILL_VARIANT (cuda::prefill_variant_from_name)
  int decode_keys_per_tile_ = 16;  // STARATTN_DECODE_KEYS (16, the default, or 32)
  int decode_stages_ = 2;          // STARATTN_DECODE_STAGES (2, the default, 3 or 4; 16-key tiles)
  bool decode_interleave_ = true;  // STARATTN_DECODE_INTERLEAVE=0: a batch's units over one K/V not interleaved
  // STARATTN_DECODE_WIDE=1: rows over one K/V in wide blocks (same plan, same bits). Off by default
  // until a GPU run has passed its tests (written in session 12 with no GPU lent).
  bool decode_wide_ = false;
  bool gemv_ = true;               // STARATTN_GEMV=0: one-row bf16 matmuls through cuBLAS too
  std::unique_ptr<OpProfiler> profiler_;  // STARATTN_PROFILE=1
  std::unique_ptr<DeviceIpc> ipc_;        // made on first use
  DeviceCopy rope_positions_, rope_inv_freq_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;

  static constexpr int kSlots = 4;
  struct Slot {
    void* host = nullptr;
    size_t bytes = 0;
    cudaEvent_t done = nullptr;
  };
  Slot slots_[kSlots];
  int next_slot_ = 0;
  void* dev_args_ = nullptr;
  size_t dev_args_bytes_ = 0;

  // Bulk transfers (upload/download) go through two pinned chunks in turn.
  static constexpr size_t kBulkBytes = size_t{8} << 20;
  void* bulk_[2] = {nullptr, nullptr};
  cudaEvent_t bulk_done_[2] = {nullptr, nullptr};

  float* ws_ = nullptr;  // decode split partials
  int64_t ws_floats_ = 0;
  int32_t* d_result_ = nullptr;  // argmax results: [result_rows_][2]
  int32_t* h_result_ = nullptr;
  int64_t result_rows_ = 1;

  mutable std::mutex live_mutex_;
  std::unordered_map<void*, size_t> live_;  // allocation -> bytes
  int64_t live_bytes_ = 0, peak_bytes_ = 0;
};

}  // namespace starattn::cuda_detail
