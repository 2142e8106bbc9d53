// CudaBackend: the op interface of runtime/backend.h on one GPU. This file: construction,
// memory, transfers and argument staging; the ops are in cuda_ops.cu.
//
// Thin bindings: every op checks its views (naming the op, the argument and its shape, as the
// cpu backend does) and dispatches to a kernel launcher on the backend's one stream. Ops are
// asynchronous; upload, download, sample and synchronize wait for the stream.
// Host arrays that ops take (token ids, positions, inv_freq, partial lists) travel through a
// ring of pinned slots: a slot is refilled only after the copy out of it has completed (event),
// and the device side is one scratch area that stream order protects (the next copy into it is
// queued behind every kernel that reads it).
#include "cuda/cuda_backend.h"

#include <cublas_v2.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cuda/backend_impl.h"
#include "cuda/cuda_ipc.h"
#include "cuda/attention_prefill.cuh"
#include "cuda/elementwise.cuh"

namespace starattn::cuda_detail {
namespace {

// Splits [0, n) over the host's cores for the host-side dtype conversions of large transfers
// (loading an 8B model converts 16 GB); small ranges stay on the calling thread.
template <class F>
void parallel_for(int64_t n, F&& f) {
  constexpr int64_t kMinPerThread = int64_t{1} << 18;
  const int64_t hw = std::max<int64_t>(1, static_cast<int64_t>(std::thread::hardware_concurrency()));
  const int64_t threads = std::min<int64_t>({hw, 16, (n + kMinPerThread - 1) / kMinPerThread});
  if (threads <= 1) {
    f(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t per = (n + threads - 1) / threads;
  for (int64_t t = 1; t < threads; ++t)
    pool.emplace_back([&f, t, per, n] { f(std::min(n, t * per), std::min(n, (t + 1) * per)); });
  f(int64_t{0}, std::min(n, per));
  for (std::thread& th : pool) th.join();
}

}  // namespace

CudaBackend::CudaBackend(int device) : device_(device) {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || device < 0 || device >= count)
    throw std::runtime_error("cuda backend: no CUDA device " + std::to_string(device) + " (" +
                             std::to_string(err == cudaSuccess ? count : 0) + " found" +
                             (err == cudaSuccess ? "" : std::string(", ") + cudaGetErrorString(err)) + ")");
  attention_path_ = attention_path_from_env();
  prefill_variant_ = cuda::prefill_variant_from_name(std::getenv("STARATTN_PREFILL_VARIANT"));
  if (const char* k = std::getenv("STARATTN_DECODE_KEYS"); k != nullptr && *k != '\0') {
    if (std::strcmp(k, "16") != 0 && std::strcmp(k, "32") != 0)
      throw std::invalid_argument(std::string("STARATTN_DECODE_KEYS must be 16 or 32, got '") + k + "'");
    decode_keys_per_tile_ = std::atoi(k);
  }
  if (const char* g = std::getenv("STARATTN_GEMV"); g != nullptr && std::strcmp(g, "0") == 0) gemv_ = false;
  if (const char* il = std::getenv("STARATTN_DECODE_INTERLEAVE"); il != nullptr && std::strcmp(il, "0") == 0)
    decode_interleave_ = false;
  if (const char* w = std::getenv("STARATTN_DECODE_WIDE"); w != nullptr && *w != '\0') {
    if (std::strcmp(w, "0") != 0 && std::strcmp(w, "1") != 0)
      throw std::invalid_argument(std::string("STARATTN_DECODE_WIDE must be 0 or 1, got '") + w + "'");
    decode_wide_ = std::strcmp(w, "1") == 0;
  }
  if (const char* st = std::getenv("STARATTN_DECODE_STAGES"); st != nullptr && *st != '\0') {
    if (std::strcmp(st, "2") != 0 && std::strcmp(st, "3") != 0 && std::strcmp(st, "4") != 0)
      throw std::invalid_argument(std::string("STARATTN_DECODE_STAGES must be 2, 3 or 4, got '") + st + "'");
    decode_stages_ = std::atoi(st);
  }
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  check_cuda(cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  check_cublas(cublasCreate(&cublas_), "cublasCreate");
  check_cublas(cublasSetStream(cublas_, stream_), "cublasSetStream");
  for (Slot& s : slots_) check_cuda(cudaEventCreateWithFlags(&s.done, cudaEventDisableTiming), "cudaEventCreate");
  for (int i = 0; i < 2; ++i) {
    check_cuda(cudaMallocHost(&bulk_[i], kBulkBytes), "cudaMallocHost (staging)");
    check_cuda(cudaEventCreateWithFlags(&bulk_done_[i], cudaEventDisableTiming), "cudaEventCreate");
  }
  check_cuda(cudaMalloc(&d_result_, 2 * sizeof(int32_t)), "cudaMalloc (sample result)");
  check_cuda(cudaMallocHost(&h_result_, 2 * sizeof(int32_t)), "cudaMallocHost (sample result)");
  if (const char* prof = std::getenv("STARATTN_PROFILE");
      prof != nullptr && *prof != '\0' && std::strcmp(prof, "0") != 0)
    profiler_ = std::make_unique<OpProfiler>(stream_);
}

CudaBackend::~CudaBackend() {
  // No throwing here: report and carry on releasing.
  auto report = [](cudaError_t e, const char* what) {
    if (e != cudaSuccess) std::fprintf(stderr, "cuda backend teardown: %s: %s\n", what, cudaGetErrorString(e));
  };
  cudaSetDevice(device_);
  report(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  if (profiler_) {
    try {
      profiler_->report(stderr, "at teardown");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "cuda profile: %s\n", e.what());
    }
    profiler_.reset();
  }
  for (DeviceCopy* c : {&rope_positions_, &rope_inv_freq_})
    if (c->dev) cudaFree(c->dev);
  for (auto& entry : live_) report(cudaFree(entry.first), "cudaFree");
  for (Slot& s : slots_) {
    if (s.host) cudaFreeHost(s.host);
    if (s.done) cudaEventDestroy(s.done);
  }
  for (int i = 0; i < 2; ++i) {
    if (bulk_[i]) cudaFreeHost(bulk_[i]);
    if (bulk_done_[i]) cudaEventDestroy(bulk_done_[i]);
  }
  if (dev_args_) cudaFree(dev_args_);
  if (ws_) cudaFree(ws_);
  if (d_result_) cudaFree(d_result_);
  if (h_result_) cudaFreeHost(h_result_);
  if (cublas_) cublasDestroy(cublas_);
  if (stream_) cudaStreamDestroy(stream_);
}

void CudaBackend::bind() const {
  int cur = -1;
  check_cuda(cudaGetDevice(&cur), "cudaGetDevice");
  if (cur != device_) check_cuda(cudaSetDevice(device_), "cudaSetDevice");
}

std::vector<void*> CudaBackend::stage(std::initializer_list<HostArray> arrays, const char* op) {
  auto round_up = [](size_t n) { return (n + 255) / 256 * 256; };
  size_t total = 0;
  for (const HostArray& a : arrays) total += round_up(a.bytes);
  Slot& s = slots_[next_slot_];
  next_slot_ = (next_slot_ + 1) % kSlots;
  check_cuda(cudaEventSynchronize(s.done), op);  // the last copy out of this slot is done
  if (s.bytes < total) {
    if (s.host) check_cuda(cudaFreeHost(s.host), op);
    s.host = nullptr;
    s.bytes = 0;
    check_cuda(cudaMallocHost(&s.host, std::max<size_t>(total, 64 << 10)), op);
    s.bytes = std::max<size_t>(total, 64 << 10);
  }
  if (dev_args_bytes_ < total) {
    check_cuda(cudaStreamSynchronize(stream_), op);  // queued kernels may still read the old area
    if (dev_args_) check_cuda(cudaFree(dev_args_), op);
    dev_args_ = nullptr;
    dev_args_bytes_ = 0;
    check_cuda(cudaMalloc(&dev_args_, std::max<size_t>(total, 64 << 10)), op);
    dev_args_bytes_ = std::max<size_t>(total, 64 << 10);
  }
  std::vector<void*> out;
  size_t off = 0;
  for (const HostArray& a : arrays) {
    if (a.bytes) std::memcpy(static_cast<char*>(s.host) + off, a.data, a.bytes);
    out.push_back(static_cast<char*>(dev_args_) + off);
    off += round_up(a.bytes);
  }
  if (total) check_cuda(cudaMemcpyAsync(dev_args_, s.host, total, cudaMemcpyHostToDevice, stream_), op);
  check_cuda(cudaEventRecord(s.done, stream_), op);
  return out;
}

const void* CudaBackend::cached_copy(DeviceCopy& c, const void* host, size_t bytes, const char* op) {
  if (c.valid && c.host.size() == bytes && (bytes == 0 || std::memcmp(c.host.data(), host, bytes) == 0))
    return c.dev;
  c.valid = false;
  if (c.capacity < bytes || c.dev == nullptr) {
    check_cuda(cudaStreamSynchronize(stream_), op);  // queued kernels may still read the old copy
    if (c.dev) check_cuda(cudaFree(c.dev), op);
    c.dev = nullptr;
    c.capacity = 0;
    const size_t cap = std::max<size_t>(bytes + bytes / 2, 4096);
    check_cuda(cudaMalloc(&c.dev, cap), op);
    c.capacity = cap;
  }
  if (bytes > 0) {
    // Through the staging ring (pinned, event-guarded), then on the stream into the cached copy:
    // kernels queued earlier that read the old contents run before this copy does.
    const auto staged = stage({{host, bytes}}, op);
    check_cuda(cudaMemcpyAsync(c.dev, staged[0], bytes, cudaMemcpyDeviceToDevice, stream_), op);
  }
  c.host.assign(static_cast<const char*>(host), static_cast<const char*>(host) + bytes);
  c.valid = true;
  return c.dev;
}

float* CudaBackend::workspace(int64_t floats, const char* op) {
  if (floats > ws_floats_) {
    check_cuda(cudaStreamSynchronize(stream_), op);
    if (ws_) check_cuda(cudaFree(ws_), op);
    ws_ = nullptr;
    ws_floats_ = 0;
    const int64_t n = floats + floats / 4;
    check_cuda(cudaMalloc(&ws_, static_cast<size_t>(n) * sizeof(float)), op);
    ws_floats_ = n;
  }
  return ws_;
}

// ---- memory ----

Buffer CudaBackend::alloc(int64_t rows, int64_t cols, DType dtype) {
  const std::string what = std::string(dtype_name(dtype)) + " [" + std::to_string(rows) + " x " +
                           std::to_string(cols) + "]";
  if (dtype != DType::f32 && dtype != DType::bf16)
    throw std::invalid_argument("alloc: the cuda backend stores f32 and bf16, asked for " + what);
  if (rows < 0 || cols < 0 || (cols > 0 && rows > INT64_MAX / 4 / cols))
    throw std::invalid_argument("alloc: bad shape " + what);
  bind();
  // Zero-filled like the cpu backend; an empty buffer still gets a block (it counts as allocated).
  const size_t bytes = std::max<size_t>(256, static_cast<size_t>(rows * cols) * dtype_size(dtype));
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the (non-sticky) out-of-memory error
    throw std::runtime_error("cuda alloc: cudaMalloc of " + std::to_string(bytes) + " bytes for " +
                             what + " failed: " + cudaGetErrorString(err));
  }
  check_cuda(cudaMemsetAsync(p, 0, bytes, stream_), "alloc: cudaMemsetAsync");
  {
    std::lock_guard<std::mutex> lock(live_mutex_);
    live_[p] = bytes;
    live_bytes_ += static_cast<int64_t>(bytes);
    peak_bytes_ = std::max(peak_bytes_, live_bytes_);
  }
  Tensor t;
  t.data = p;
  t.dtype = dtype;
  t.rows = rows;
  t.cols = cols;
  t.stride = cols;
  return Buffer(this, t);
}

void CudaBackend::free_memory(Tensor t) {
  if (t.data == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(live_mutex_);
    auto it = live_.find(t.data);
    if (it == live_.end())
      throw std::invalid_argument("free_memory: " + shape(t) +
                                  " was not allocated by this cuda backend (or was freed already)");
    live_bytes_ -= static_cast<int64_t>(it->second);
    live_.erase(it);
  }
  bind();
  // cudaFree waits for the device, so queued kernels that still use the memory finish first.
  const cudaError_t err = cudaFree(t.data);
  if (err != cudaSuccess) std::fprintf(stderr, "cuda free_memory: %s\n", cudaGetErrorString(err));
}

int64_t CudaBackend::peak_allocated_bytes() const {
  std::lock_guard<std::mutex> lock(live_mutex_);
  return peak_bytes_;
}

void CudaBackend::reset_peak_allocated_bytes() {
  std::lock_guard<std::mutex> lock(live_mutex_);
  peak_bytes_ = live_bytes_;
}

int64_t CudaBackend::free_bytes() const {
  bind();
  size_t free = 0, total = 0;
  check_cuda(cudaMemGetInfo(&free, &total), "free_bytes: cudaMemGetInfo");
  return static_cast<int64_t>(free);
}

void CudaBackend::upload(const float* host, Tensor dst) {
  check_view("upload", "dst", dst);
  if (dst.empty()) return;
  if (host == nullptr) fail("upload", "null host pointer for dst " + shape(dst));
  bind();
  const size_t es = dtype_size(dst.dtype), row_bytes = static_cast<size_t>(dst.cols) * es;
  const int64_t chunk_rows = std::max<int64_t>(1, static_cast<int64_t>(kBulkBytes / row_bytes));
  std::vector<char> big;  // a row longer than a staging chunk goes through pageable memory
  int b = 0;
  for (int64_t r0 = 0; r0 < dst.rows; r0 += chunk_rows, b ^= 1) {
    const int64_t n = std::min(chunk_rows, dst.rows - r0);
    check_cuda(cudaEventSynchronize(bulk_done_[b]), "upload");
    char* stage_buf = static_cast<char*>(bulk_[b]);
    if (row_bytes > kBulkBytes) {
      big.resize(row_bytes);
      stage_buf = big.data();
    }
    const float* src = host + r0 * dst.cols;
    const int64_t count = n * dst.cols;
    if (dst.dtype == DType::f32) {
      std::memcpy(stage_buf, src, static_cast<size_t>(count) * 4);
    } else {
      uint16_t* o = reinterpret_cast<uint16_t*>(stage_buf);
      parallel_for(count, [&](int64_t b0, int64_t b1) {
        for (int64_t i = b0; i < b1; ++i) o[i] = f32_to_bf16_bits(src[i]);
      });
    }
    char* d = static_cast<char*>(dst.data) + r0 * dst.stride * static_cast<int64_t>(es);
    check_cuda(cudaMemcpy2DAsync(d, static_cast<size_t>(dst.stride) * es, stage_buf, row_bytes, row_bytes,
                                 static_cast<size_t>(n), cudaMemcpyHostToDevice, stream_),
               "upload: cudaMemcpy2DAsync");
    check_cuda(cudaEventRecord(bulk_done_[b], stream_), "upload");
    if (row_bytes > kBulkBytes) check_cuda(cudaStreamSynchronize(stream_), "upload");
  }
  check_cuda(cudaStreamSynchronize(stream_), "upload");
}

void CudaBackend::download(const Tensor& src, float* host) {
  check_view("download", "src", src);
  if (src.empty()) return;
  if (host == nullptr) fail("download", "null host pointer for src " + shape(src));
  bind();
  const size_t es = dtype_size(src.dtype), row_bytes = static_cast<size_t>(src.cols) * es;
  const int64_t chunk_rows = std::max<int64_t>(1, static_cast<int64_t>(kBulkBytes / row_bytes));
  std::vector<char> big;
  for (int64_t r0 = 0; r0 < src.rows; r0 += chunk_rows) {
    const int64_t n = std::min(chunk_rows, src.rows - r0);
    char* stage_buf = static_cast<char*>(bulk_[0]);
    if (row_bytes > kBulkBytes) {
      big.resize(row_bytes);
      stage_buf = big.data();
    }
    const char* s = static_cast<const char*>(src.data) + r0 * src.stride * static_cast<int64_t>(es);
    check_cuda(cudaMemcpy2DAsync(stage_buf, row_bytes, s, static_cast<size_t>(src.stride) * es, row_bytes,
                                 static_cast<size_t>(n), cudaMemcpyDeviceToHost, stream_),
               "download: cudaMemcpy2DAsync");
    check_cuda(cudaStreamSynchronize(stream_), "download");
    float* o = host + r0 * src.cols;
    const int64_t count = n * src.cols;
    if (src.dtype == DType::f32) {
      std::memcpy(o, stage_buf, static_cast<size_t>(count) * 4);
    } else {
      const uint16_t* in = reinterpret_cast<const uint16_t*>(stage_buf);
      parallel_for(count, [&](int64_t b0, int64_t b1) {
        for (int64_t i = b0; i < b1; ++i) o[i] = bf16_bits_to_f32(in[i]);
      });
    }
  }
}

void CudaBackend::copy(const Tensor& src, Tensor dst) {
  check_view("copy", "src", src);
  check_view("copy", "dst", dst);
  if (dst.rows != src.rows || dst.cols != src.cols)
    fail("copy", "dst " + shape(dst) + " does not match src " + shape(src));
  if (src.empty()) return;
  if (src.data == dst.data && src.stride == dst.stride && src.dtype == dst.dtype) return;
  bind();
  ProfileScope prof(profiler_.get(), "copy");
  // Small copies (the KV-cache append of a decode step: one row per layer) as a kernel: cheaper
  // in the stream than a copy-engine cudaMemcpy2DAsync. Same-type conversion is exact.
  const bool small = src.rows * src.cols <= (int64_t{1} << 16);
  if (src.dtype == dst.dtype && !small) {
    const size_t es = dtype_size(src.dtype);
    check_cuda(cudaMemcpy2DAsync(dst.data, static_cast<size_t>(std::max<int64_t>(dst.stride, dst.cols)) * es, src.data,
                                 static_cast<size_t>(std::max<int64_t>(src.stride, src.cols)) * es,
                                 static_cast<size_t>(src.cols) * es, static_cast<size_t>(src.rows),
                                 cudaMemcpyDeviceToDevice, stream_),
               "copy: cudaMemcpy2DAsync");
    return;
  }
  dispatch(src.dtype, [&](auto si) {
    dispatch(dst.dtype, [&](auto di) {
      using In = decltype(si);
      using Out = decltype(di);
      cuda::launch_convert(ptr<const In>(src), src.stride, ptr<Out>(dst), dst.stride, src.rows, src.cols, stream_);
    });
  });
}

void CudaBackend::copy_batch(const std::vector<CopyItem>& items) {
  const char* op = "copy_batch";
  // Small same-dtype copies of one element size go into one launch each; the rest (conversions,
  // large copies the copy engine does better) as copy() calls.
  std::vector<cuda::CopyBatchItem> by_size[2];  // 2-byte, 4-byte elements
  int64_t blocks[2] = {0, 0};
  for (const CopyItem& c : items) {
    check_view(op, "src", c.src);
    check_view(op, "dst", c.dst);
    if (c.dst.rows != c.src.rows || c.dst.cols != c.src.cols)
      fail(op, "dst " + shape(c.dst) + " does not match src " + shape(c.src));
    if (c.src.empty()) continue;
    const size_t es = dtype_size(c.src.dtype);
    const bool small = c.src.rows * c.src.cols <= (int64_t{1} << 16);
    if (c.src.dtype != c.dst.dtype || !small || (es != 2 && es != 4)) {
      copy(c.src, c.dst);
      continue;
    }
    const int g = es == 2 ? 0 : 1;
    const int64_t col_blocks = cuda::ceil_div(c.src.cols, cuda::kEwThreads);
    by_size[g].push_back({c.src.data, c.dst.data, c.src.stride, c.dst.stride, c.src.cols, col_blocks, blocks[g]});
    blocks[g] += c.src.rows * col_blocks;
  }
  for (int g = 0; g < 2; ++g) {
    if (by_size[g].empty()) continue;
    if (by_size[g].size() > INT32_MAX) fail(op, "too many items");
    bind();
    ProfileScope prof(profiler_.get(), "copy batch");
    const auto dev = stage({{by_size[g].data(), by_size[g].size() * sizeof(cuda::CopyBatchItem)}}, op);
    cuda::launch_copy_batch(static_cast<const cuda::CopyBatchItem*>(dev[0]), static_cast<int>(by_size[g].size()),
                            blocks[g], g == 0 ? 2 : 4, stream_);
  }
}

DeviceIpc* CudaBackend::ipc() {
  if (!ipc_) ipc_ = make_cuda_ipc(device_, stream_);
  return ipc_.get();
}

void CudaBackend::profile_section(const char* name) {
  if (!profiler_) return;
  bind();
  profiler_->section(name);
}

void CudaBackend::profile_report(const std::string& label) {
  if (!profiler_) return;
  bind();
  profiler_->report(stderr, label);
}

}  // namespace starattn::cuda_detail

namespace starattn {

namespace {
// Registers "cuda" with the runtime's backend registry when this library is linked (it is linked
// whole, see cuda/CMakeLists.txt, so this initializer is never dropped).
[[maybe_unused]] const bool g_registered =
    register_backend("cuda", [](int device, int) { return make_cuda_backend(device); });
}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device) {
  return std::make_unique<cuda_detail::CudaBackend>(device);
}

namespace {
cuda_detail::CudaBackend& as_cuda(Backend& be, const char* what) {
  auto* c = dynamic_cast<cuda_detail::CudaBackend*>(&be);
  if (c == nullptr) throw std::invalid_argument(std::string(what) + ": backend '" + be.name() + "' is not cuda");
  return *c;
}
}  // namespace

std::vector<double> cuda_event_times_ms(Backend& be, const std::function<void()>& fn, int warmup, int iters) {
  auto& c = as_cuda(be, "cuda_event_times_ms");
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<cudaEvent_t> ev(static_cast<size_t>(2 * iters));
  for (cudaEvent_t& e : ev) cuda::check_cuda(cudaEventCreate(&e), "cudaEventCreate");
  for (int i = 0; i < iters; ++i) {
    cuda::check_cuda(cudaEventRecord(ev[2 * i], c.stream()), "cudaEventRecord");
    fn();
    cuda::check_cuda(cudaEventRecord(ev[2 * i + 1], c.stream()), "cudaEventRecord");
  }
  cuda::check_cuda(cudaStreamSynchronize(c.stream()), "cuda_event_times_ms");
  cuda::check_cuda(cudaGetLastError(), "cuda_event_times_ms (a kernel failed)");
  std::vector<double> ms(static_cast<size_t>(iters));
  for (int i = 0; i < iters; ++i) {
    float t = 0.0f;
    cuda::check_cuda(cudaEventElapsedTime(&t, ev[2 * i], ev[2 * i + 1]), "cudaEventElapsedTime");
    ms[i] = t;
  }
  for (cudaEvent_t e : ev) cudaEventDestroy(e);
  return ms;
}

double cuda_copy_bandwidth_gbs(Backend& be, int64_t bytes, int iters) {
  auto& c = as_cuda(be, "cuda_copy_bandwidth_gbs");
  c.synchronize();
  void *a = nullptr, *b = nullptr;
  cuda::check_cuda(cudaMalloc(&a, static_cast<size_t>(bytes)), "cudaMalloc (copy bandwidth)");
  const cudaError_t err = cudaMalloc(&b, static_cast<size_t>(bytes));
  if (err != cudaSuccess) {
    cudaFree(a);
    cuda::check_cuda(err, "cudaMalloc (copy bandwidth)");
  }
  cuda::check_cuda(cudaMemsetAsync(a, 1, static_cast<size_t>(bytes), c.stream()), "cudaMemsetAsync");
  std::vector<double> ms = cuda_event_times_ms(
      be,
      [&] {
        cuda::check_cuda(cudaMemcpyAsync(b, a, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, c.stream()),
                         "cudaMemcpyAsync");
      },
      3, iters);
  cudaFree(a);
  cudaFree(b);
  std::sort(ms.begin(), ms.end());
  return 2.0 * static_cast<double>(bytes) / (ms[ms.size() / 2] * 1e-3) / 1e9;
}

void cuda_profile_report(Backend& be, const std::string& label) {
  as_cuda(be, "cuda_profile_report").profile_report(label);
}

int64_t cuda_peak_allocated_bytes(Backend& be, bool reset) {
  auto& c = as_cuda(be, "cuda_peak_allocated_bytes");
  const int64_t peak = c.peak_allocated_bytes();
  if (reset) c.reset_peak_allocated_bytes();
  return peak;
}

bool cuda_prefill_uses_wgmma(Backend& be) {
  auto& c = as_cuda(be, "cuda_prefill_uses_wgmma");
  c.bind();
  return c.prefill_variant() == cuda::kPrefillVariantWgmma && cuda::wgp::device_supported();
}

std::string cuda_device_description(Backend& be) {
  auto& c = as_cuda(be, "cuda_device_description");
  (void)c;
  int dev = 0;
  cuda::check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp prop{};
  cuda::check_cuda(cudaGetDeviceProperties(&prop, dev), "cudaGetDeviceProperties");
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  return std::string(prop.name) + ", " + std::to_string(prop.multiProcessorCount) + " SMs, " +
         std::to_string(prop.totalGlobalMem >> 20) + " MiB, sm_" + std::to_string(prop.major) +
         std::to_string(prop.minor) + ", driver " + std::to_string(driver) + ", runtime " + std::to_string(runtime);
}

bool cuda_device_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver / no device: clear the error, report "no"
    return false;
  }
  return count > 0;
}

}  // namespace starattn
