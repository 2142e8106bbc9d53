// The op interface every compute backend implements (cpu now, cuda next).
//
// The engine only ever talks to this interface, so a backend is a drop-in: it owns its memory
// (host RAM for cpu, device memory for cuda), and every op takes non-owning 2-D views of it.
// Activations are row-major [rows, cols] with an explicit row stride in elements; multi-head
// tensors are [tokens, heads * head_dim] with heads contiguous inside a row.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace starattn {

enum class DType { f32, bf16, f16 };
const char* dtype_name(DType t);
size_t dtype_size(DType t);

// Non-owning view of backend memory: a row-major matrix.
struct Tensor {
  void* data = nullptr;
  DType dtype = DType::f32;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t stride = 0;  // elements between the starts of consecutive rows

  bool empty() const { return rows == 0 || cols == 0; }
  // Rows [begin, begin + n) of this view.
  Tensor slice_rows(int64_t begin, int64_t n) const;
  // Columns [begin, begin + n) of every row (same stride).
  Tensor slice_cols(int64_t begin, int64_t n) const;
};

class Backend;

// Owning handle to a backend allocation; frees through its backend.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Backend* owner, Tensor view) : owner_(owner), view_(view) {}
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer();

  const Tensor& view() const { return view_; }
  Tensor rows(int64_t begin, int64_t n) const { return view_.slice_rows(begin, n); }
  bool allocated() const { return view_.data != nullptr; }

 private:
  void release();
  Backend* owner_ = nullptr;
  Tensor view_;
};

enum class MaskKind {
  none,    // every query row sees every key (phase 2 against a context shard)
  causal,  // row i sees keys j <= i + causal_offset (offset = keys already cached ahead)
};

// Scaled dot-product attention that also reports the log-sum-exp of each row.
//   q:   [T, Hq * D]       k, v: [S, Hkv * D]     (GQA: query head h reads KV head h / (Hq / Hkv))
//   o:   [T, Hq * D]       lse:  [T, Hq] f32, natural log, scale included: ln sum_j exp(scale * q.k_j)
// A row that sees no key gets o = 0 and lse = -inf.
struct AttentionArgs {
  Tensor q, k, v, o, lse;
  int n_q_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  float scale = 1.0f;
  MaskKind mask = MaskKind::none;
  int64_t causal_offset = 0;
};

// One (O, lse) partial result from a shard of the keys.
struct Partial {
  Tensor o;    // [T, Hq * D]
  Tensor lse;  // [T, Hq] f32
};

// RoPE applied to [T, heads * head_dim] in place. Rotate-half layout (Hugging Face Llama):
// pairs (x[i], x[i + D/2]) rotate by angle pos * inv_freq[i], i < D/2.
struct RopeArgs {
  Tensor x;
  int n_heads = 0;
  int head_dim = 0;
  const int32_t* positions = nullptr;  // host array of x.rows positions
  const float* inv_freq = nullptr;     // host array of head_dim / 2 frequencies
};

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (argmax)
  int top_k = 0;             // 0 = no limit
  float top_p = 1.0f;        // nucleus mass; 1 = no limit
  uint64_t seed = 0;
};

// An ordering point on a backend's stream that another process of the same host can wait on.
class DeviceEvent {
 public:
  virtual ~DeviceEvent() = default;
};

// Device memory and stream ordering shared between processes of one host (CUDA IPC), so the
// data plane moves Q and (O, lse) GPU to GPU with no copy through the host. Handles are opaque
// bytes carried over the control or data plane. Backends without it return null from ipc().
class DeviceIpc {
 public:
  virtual ~DeviceIpc() = default;
  // Which device this is, unique on the host ("GPU-<uuid>"): peers on one device need no peer
  // access, peers on two devices of one host need it (NVLink or PCIe).
  virtual std::string device_id() const = 0;
  // A handle to the allocation `t` views; `t` must start at the beginning of its allocation.
  virtual std::string export_memory(const Tensor& t) = 0;
  // A view of another process's allocation; valid until close_memory(view). Throws naming the
  // CUDA error when the handle cannot be opened (another host, a freed allocation).
  virtual Tensor import_memory(const std::string& handle, DType dtype, int64_t rows,
                               int64_t cols) = 0;
  virtual void close_memory(const Tensor& view) = 0;
  // An event that can be exported to other processes.
  virtual std::unique_ptr<DeviceEvent> create_event() = 0;
  virtual std::string export_event(DeviceEvent& event) = 0;
  virtual std::unique_ptr<DeviceEvent> import_event(const std::string& handle) = 0;
  // Records `event` at the current end of the backend's stream (own events only).
  virtual void record(DeviceEvent& event) = 0;
  // Later work on the backend's stream waits for the event's last record; the host does not.
  virtual void wait(DeviceEvent& event) = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // Element type of activations and of the KV cache on this backend.
  virtual DType activation_dtype() const = 0;
  // Element type weights are stored in on this backend.
  virtual DType weight_dtype() const = 0;

  // ---- memory ----
  virtual Buffer alloc(int64_t rows, int64_t cols, DType dtype) = 0;
  virtual void free_memory(Tensor t) = 0;
  // Bytes the backend can still allocate (for KV capacity planning).
  virtual int64_t free_bytes() const = 0;
  // Host float32 <-> backend, converting to/from the tensor's dtype. Host arrays are dense
  // [rows, cols].
  virtual void upload(const float* host, Tensor dst) = 0;
  virtual void download(const Tensor& src, float* host) = 0;
  // dst rows = src rows (same shape, any strides).
  virtual void copy(const Tensor& src, Tensor dst) = 0;
  // Several copy() calls at once: a batched decode step appends one K and one V row per request
  // and layer, and one launch for all of them beats one each. Each item as copy(); no item may
  // write what another reads. The default copies one by one.
  struct CopyItem {
    Tensor src, dst;
  };
  virtual void copy_batch(const std::vector<CopyItem>& items) {
    for (const CopyItem& c : items) copy(c.src, c.dst);
  }

  // ---- ops ----
  // out[i] = table[ids[i]]; ids is a host array of out.rows entries.
  virtual void embedding(const int32_t* ids, const Tensor& table, Tensor out) = 0;
  // out = x / rms(x) * weight   (weight: [1, cols])
  virtual void rmsnorm(const Tensor& x, const Tensor& weight, float eps, Tensor out) = 0;
  // out[T, N] = x[T, K] * w[N, K]^T (+ bias[1, N] when bias is non-null)
  virtual void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor out) = 0;
  virtual void rope(const RopeArgs& args) = 0;
  virtual void attention(const AttentionArgs& args) = 0;
  // Several independent attentions in one call: phase 2 of a batched decode step, where the
  // query rows of several requests each attend over their own context shard (their own K/V,
  // of its own length). Every item follows attention()'s contract on its own and gives the
  // same result as attention(item) would, bit for bit; items must not write memory another
  // item reads. The default runs them one by one (the cpu backend's reference); cuda launches
  // its decode kernel once over all of them.
  virtual void attention_batch(const std::vector<AttentionArgs>& items) {
    for (const AttentionArgs& a : items) attention(a);
  }
  // Query rows of one unmasked attention that the backend computes together, each row exactly
  // as it would alone (same key splits, same order of sums): the rows of several requests over
  // one shared K/V (ContextShard::attend_many) are stacked up to this many, so the keys are read
  // once for all of them, or a few times back to back (cuda: per 32 packed row-head slots at
  // head size 128). 1: no stacking.
  virtual int64_t attention_rows_per_pass(int n_q_heads, int n_kv_heads) const {
    (void)n_q_heads;
    (void)n_kv_heads;
    return 1;
  }
  // Exact merge of shard partials (DESIGN.md 1): m = max l_r, w_r = exp(l_r - m),
  // o = sum w_r o_r / sum w_r, l = m + ln sum w_r. Shards with l_r = -inf weigh 0.
  virtual void merge_partials(const std::vector<Partial>& parts, Tensor o, Tensor lse) = 0;
  // Several merges in one call (a batched decode step: every request merges its own partials,
  // their number and rows its own). Each item gives what merge_partials(*parts, o, lse) gives,
  // bit for bit; `parts` must stay valid for the call. The default merges one by one.
  struct MergeItem {
    const std::vector<Partial>* parts = nullptr;
    Tensor o, lse;
  };
  virtual void merge_partials_batch(const std::vector<MergeItem>& items) {
    for (const MergeItem& m : items) merge_partials(*m.parts, m.o, m.lse);
  }
  // out = silu(gate) * up
  virtual void swiglu(const Tensor& gate, const Tensor& up, Tensor out) = 0;
  // x += y
  virtual void add(Tensor x, const Tensor& y) = 0;
  // x += y, then out = x / rms(x) * weight: the residual add and the norm that follows it in one
  // pass. Same result as add(x, y) then rmsnorm(x, weight, eps, out) (x is stored between the two,
  // in its own dtype); out must not overlap x or y. The default does exactly those two calls.
  virtual void add_rmsnorm(Tensor x, const Tensor& y, const Tensor& weight, float eps, Tensor out) {
    add(x, y);
    rmsnorm(x, weight, eps, out);
  }
  // Picks a token from one row of logits; step distinguishes the draws of one seeded stream.
  virtual int32_t sample(const Tensor& logits_row, const SamplingParams& params,
                         uint64_t step) = 0;
  // Greedy picks of many rows at once (a batched decode step's requests): out[i] is the token
  // sample(row i) gives at temperature 0, or -1 where row i holds a NaN or +inf logit (sample()
  // then raises that error, for that request alone). The default calls sample() row by row.
  virtual void argmax_rows(const Tensor& logits, std::vector<int32_t>& out);
  // Waits for queued work (no-op on synchronous backends).
  virtual void synchronize() = 0;
  // Names the section of work that the following ops belong to ("phase1", "prefill", "decode")
  // for per-op profiles (STARATTN_PROFILE=1 on cuda); null ends the current section. No-op on
  // backends without a profiler.
  virtual void profile_section(const char* name) { (void)name; }
  // Sharing memory and ordering with other processes of this host; null when unsupported.
  virtual DeviceIpc* ipc() { return nullptr; }
};

// Backends register themselves by name (the cuda library does it when it is linked, in a static
// initializer), so the runtime knows no backend but its own cpu one; in the way ggml's registry
// works. Returns false when the name was taken.
using BackendFactory = std::function<std::unique_ptr<Backend>(int device, int threads)>;
bool register_backend(const std::string& name, BackendFactory factory);

// Creates a backend by name ("cpu", "cuda"); throws with the list of registered backends otherwise.
std::unique_ptr<Backend> make_backend(const std::string& name, int device = 0, int threads = 0);
// Names of the backends this build has.
std::vector<std::string> available_backends();

}  // namespace starattn
