#include "actors/data_plane.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <numeric>

#include <fstream>

#include "actors/exchange_batch.h"
#include "actors/messages.h"
#include "transport/wire.h"

namespace starattn::actors {

using transport::AmMessage;
using transport::DataPath;

namespace {

// Sequence numbers are unique within the process, so a late reply to an exchange that was
// abandoned (a failed request) can never be taken for a reply to this one.
std::atomic<uint64_t> g_next_seq{1};

// The note a log gives a device-path link: whether UCX can move GPU memory over the NIC itself
// (GPUDirect RDMA needs an RDMA transport and the nvidia-peermem module) or stages it.
std::string device_path_note(const std::string& transport) {
  const bool rdma = transport.rfind("rc", 0) == 0 || transport.rfind("dc", 0) == 0 ||
                    transport.rfind("ud", 0) == 0;
  if (!rdma) return transport + " (device memory, staged by UCX)";
  const bool peermem = std::ifstream("/sys/module/nvidia_peermem/initstate").good() ||
                       std::ifstream("/sys/module/nv_peer_mem/initstate").good();
  return transport + (peermem ? " (device memory, GPUDirect RDMA)"
                              : " (device memory, staged by UCX: nvidia-peermem is not loaded)");
}

}  // namespace

// Host bytes laid out in dst's dtype (an eager device-path payload, which UCX delivers in host
// memory) onto the backend; Backend::upload takes float32, and bf16 -> float32 is exact.
void upload_activation_bytes(Backend& be, const char* bytes, const Tensor& dst) {
  const size_t n = static_cast<size_t>(dst.rows * dst.cols);
  std::vector<float> f(n);
  if (dst.dtype == DType::f32) {
    std::memcpy(f.data(), bytes, n * sizeof(float));
  } else if (dst.dtype == DType::bf16) {
    for (size_t i = 0; i < n; ++i) {
      uint16_t b;
      std::memcpy(&b, bytes + 2 * i, 2);
      const uint32_t w = static_cast<uint32_t>(b) << 16;
      std::memcpy(&f[i], &w, 4);
    }
  } else {
    throw std::runtime_error(std::string("device payloads in ") + dtype_name(dst.dtype) +
                             " are not supported");
  }
  be.upload(f.data(), dst);
}

bool ucx_carries_device_memory(Backend& backend) {
  return backend.ipc() != nullptr && transport::UcxContext::get()->device_memory_enabled();
}

std::shared_ptr<Buffer> DevicePayloadPool::take(size_t bytes) {
  const int64_t words = std::max<int64_t>(1, static_cast<int64_t>((bytes + 3) / 4));
  std::shared_ptr<Buffer>* spare = nullptr;
  for (auto& b : buffers_) {
    if (b.use_count() != 1) continue;  // a send or receive still holds it
    if (b->view().cols >= words) return b;
    spare = &b;
  }
  auto fresh = std::make_shared<Buffer>(backend_.alloc(1, words, DType::f32));
  if (spare) *spare = fresh;  // a free one that was too small: replace it
  else buffers_.push_back(fresh);
  return fresh;
}

size_t partial_bytes(DType activation, int64_t rows, int64_t q_cols, int64_t heads) {
  return static_cast<size_t>(rows * q_cols) * dtype_size(activation) +
         static_cast<size_t>(rows * heads) * sizeof(float);
}

Partial partial_in(void* data, DType activation, int64_t rows, int64_t q_cols, int64_t heads) {
  char* base = static_cast<char*>(data);
  Partial p;
  p.o = Tensor{base, activation, rows, q_cols, q_cols};
  p.lse = Tensor{base + static_cast<size_t>(rows * q_cols) * dtype_size(activation), DType::f32,
                 rows, heads, heads};
  return p;
}

void sink_device_replies(transport::UcxWorker& ucx, std::shared_ptr<DevicePayloadPool> pool) {
  ucx.set_sink(kAmAttendReply, [pool](uint16_t, const std::string& header, size_t bytes) {
    wire::AttendReply r;
    if (!r.ParseFromString(header) || !r.device_payload()) return transport::SinkBuffer{};
    auto buffer = pool->take(bytes);
    return transport::SinkBuffer{buffer, buffer->view().data, true};
  });
}

// ---------------------------------------------------------------------------------------------
// WorkerHealth, ExchangeStats

void WorkerHealth::mark_dead(uint64_t worker_id, std::string why) {
  std::lock_guard<std::mutex> lock(mutex_);
  dead_.emplace(worker_id, std::move(why));
}

void WorkerHealth::mark_unresponsive(uint64_t worker_id, std::string why) {
  std::lock_guard<std::mutex> lock(mutex_);
  unresponsive_[worker_id] = std::move(why);
}

void WorkerHealth::mark_alive(uint64_t worker_id) {
  std::lock_guard<std::mutex> lock(mutex_);
  unresponsive_.erase(worker_id);
}

std::string WorkerHealth::dead(uint64_t worker_id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (auto it = dead_.find(worker_id); it != dead_.end()) return it->second;
  if (auto it = unresponsive_.find(worker_id); it != unresponsive_.end()) return it->second;
  return {};
}

double ExchangeStats::mean() const {
  if (us.empty()) return 0;
  return std::accumulate(us.begin(), us.end(), 0.0) / static_cast<double>(us.size());
}

double ExchangeStats::percentile(double p) const {
  if (us.empty()) return 0;
  std::vector<float> s = us;
  const size_t k = std::min(s.size() - 1, static_cast<size_t>(p * static_cast<double>(s.size())));
  std::nth_element(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(k), s.end());
  return s[k];
}

double ExchangeStats::max() const {
  return us.empty() ? 0 : *std::max_element(us.begin(), us.end());
}

// ---------------------------------------------------------------------------------------------
// ShardLinks

ShardLinks::ShardLinks(transport::UcxWorker& ucx, const Transformer& model, uint64_t request_id,
                       std::vector<Link> links, std::shared_ptr<const WorkerHealth> health,
                       std::chrono::milliseconds timeout, int64_t rows_capacity,
                       std::shared_ptr<DevicePayloadPool> payloads, ExchangeBatcher* batcher)
    : ucx_(ucx), model_(model), request_id_(request_id), links_(std::move(links)),
      health_(std::move(health)), timeout_(timeout), rows_capacity_(std::max<int64_t>(rows_capacity, 1)),
      payloads_(std::move(payloads)), batcher_(batcher) {
  const size_t n = links_.size();
  notes_.resize(n);
  o_bufs_.resize(n);
  lse_bufs_.resize(n);
  done_events_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const Link& l = links_[i];
    if (l.path == DataPath::ucx_device && !payloads_) {
      links_[i].path = DataPath::ucx;
      notes_[i] = ucx_.transport(l.ep) + " (staged: this side has no device payload pool)";
      continue;
    }
    if (l.path == DataPath::in_process) notes_[i] = "in-process";
    else if (l.path == DataPath::ucx) notes_[i] = ucx_.transport(l.ep) + " (staged)";
    else if (l.path == DataPath::ucx_device) notes_[i] = device_path_note(ucx_.transport(l.ep));
  }
  open_ipc();
}

// This request's part of a batched exchange, between start() and finish().
struct ShardLinks::Pending {
  ExchangeBatcher::Exchange x;
  std::vector<Partial> parts;  // per link: the directly exchanged ones (cuda_ipc, ucx_device)
  std::chrono::steady_clock::time_point t0;
};

ShardLinks::~ShardLinks() {
  if (batcher_ && pending_) batcher_->withdraw(pending_->x);
}

std::string ShardLinks::describe() const {
  std::string out;
  for (size_t i = 0; i < links_.size(); ++i)
    out += (i ? ", " : "") + links_[i].name + ": " + notes_[i];
  return out;
}

void ShardLinks::open_ipc() {
  std::vector<size_t> want;
  for (size_t i = 0; i < links_.size(); ++i)
    if (links_[i].path == DataPath::cuda_ipc) want.push_back(i);
  if (want.empty()) return;
  Backend& be = model_.backend();
  const ModelConfig& c = model_.config();
  DeviceIpc* ipc = be.ipc();
  auto fall_back = [&](size_t i, const std::string& why) {
    links_[i].path = DataPath::ucx;
    notes_[i] = ucx_.transport(links_[i].ep) + " (staged; cuda_ipc refused: " + why + ")";
  };
  if (!ipc) {
    for (size_t i : want) fall_back(i, "the query side's backend has no CUDA IPC");
    return;
  }
  const int64_t R = rows_capacity_;
  std::string q_handle, q_event;
  try {
    q_shared_ = be.alloc(R, c.q_dim(), be.activation_dtype());
    q_event_ = ipc->create_event();
    q_handle = ipc->export_memory(q_shared_.view());
    q_event = ipc->export_event(*q_event_);
  } catch (const std::exception& e) {
    for (size_t i : want) fall_back(i, e.what());
    return;
  }
  const uint64_t seq = g_next_seq++;
  for (size_t i : want) {
    o_bufs_[i] = be.alloc(R, c.q_dim(), be.activation_dtype());
    lse_bufs_[i] = be.alloc(R, c.num_heads, DType::f32);
    wire::IpcOpen m;
    m.set_protocol_version(wire::kProtocolVersion);
    m.set_request_id(request_id_);
    m.set_shard(static_cast<int>(i));
    m.set_rows_capacity(R);
    m.set_q_handle(q_handle);
    m.set_o_handle(ipc->export_memory(o_bufs_[i].view()));
    m.set_lse_handle(ipc->export_memory(lse_bufs_[i].view()));
    m.set_q_event(q_event);
    m.set_seq(seq);
    ucx_.send(links_[i].ep, kAmIpcOpen, wire::encode(m), nullptr, true);
  }
  // The buffers must hold nothing stale when the worker maps them: finish the allocations.
  be.synchronize();
  size_t missing = want.size();
  const auto deadline = std::chrono::steady_clock::now() + timeout_;
  AmMessage msg;
  while (missing > 0) {
    const bool busy = ucx_.progress();
    while (ucx_.poll(msg)) {
      if (msg.id != kAmIpcOpenReply) continue;
      const auto r = wire::decode<wire::IpcOpenReply>(msg.header, "a context worker");
      if (r.seq() != seq || r.request_id() != request_id_ || r.shard() < 0 ||
          static_cast<size_t>(r.shard()) >= links_.size())
        continue;
      const size_t i = static_cast<size_t>(r.shard());
      if (links_[i].path != DataPath::cuda_ipc || !notes_[i].empty()) continue;
      --missing;
      if (!r.error().empty()) {
        fall_back(i, r.error());
        continue;
      }
      try {
        done_events_[i] = ipc->import_event(r.done_event());
        notes_[i] = "cuda_ipc";
      } catch (const std::exception& e) {
        fall_back(i, e.what());
      }
    }
    if (missing == 0) break;
    for (size_t i : want) {
      std::string why;
      if (notes_[i].empty() && (ucx_.failed(links_[i].ep, &why) ||
                                !(why = health_->dead(links_[i].worker_id)).empty()))
        throw std::runtime_error("context worker " + links_[i].name + " failed: " + why);
    }
    if (std::chrono::steady_clock::now() > deadline)
      throw std::runtime_error("no answer to the cuda_ipc set-up within " +
                               std::to_string(timeout_.count()) + " ms");
    if (!busy) ucx_.wait(5);
  }
}

void ShardLinks::check_health(const std::vector<Reply>& replies) const {
  for (size_t i = 0; i < links_.size(); ++i) {
    if (links_[i].path == DataPath::in_process || replies[i].in) continue;
    std::string why;
    if (ucx_.failed(links_[i].ep, &why) || !(why = health_->dead(links_[i].worker_id)).empty())
      throw std::runtime_error("context worker " + links_[i].name + " failed: " + why);
  }
}

void ShardLinks::await_replies(uint64_t seq, int layer, int64_t rows, std::vector<Reply>& replies,
                               std::chrono::steady_clock::time_point deadline) {
  const ModelConfig& c = model_.config();
  size_t missing = 0;
  for (size_t i = 0; i < links_.size(); ++i)
    if (links_[i].path != DataPath::in_process && !replies[i].in) ++missing;
  int idle_spins = 0;
  AmMessage msg;
  while (missing > 0) {
    bool busy = ucx_.progress();
    while (ucx_.poll(msg)) {
      busy = true;
      if (msg.id != kAmAttendReply) continue;
      const auto r = wire::decode<wire::AttendReply>(msg.header, "a context worker");
      if (r.seq() != seq || r.request_id() != request_id_) continue;  // stale
      if (r.shard() < 0 || static_cast<size_t>(r.shard()) >= links_.size())
        throw std::runtime_error("attention reply for unknown shard " + std::to_string(r.shard()));
      const size_t i = static_cast<size_t>(r.shard());
      const Link& l = links_[i];
      if (!r.error().empty())
        throw std::runtime_error("context worker " + l.name + " refused layer " +
                                 std::to_string(layer) + ": " + r.error());
      const size_t want =
          l.path == DataPath::cuda_ipc     ? 0
          : l.path == DataPath::ucx_device ? partial_bytes(model_.backend().activation_dtype(), rows,
                                                           c.q_dim(), c.num_heads)
                                           : static_cast<size_t>(rows * (c.q_dim() + c.num_heads)) * sizeof(float);
      const size_t got = msg.in_sink() ? msg.sunk_bytes : msg.payload.size();
      if (r.rows() != rows || got != want || r.device_payload() != (l.path == DataPath::ucx_device))
        throw std::runtime_error("context worker " + l.name + " sent a malformed reply (" +
                                 std::to_string(got) + " bytes, expected " +
                                 std::to_string(want) + ")");
      if (!replies[i].in) --missing;
      replies[i].in = true;
      replies[i].payload = std::move(msg.payload);
      replies[i].sunk = std::move(msg.sunk);
    }
    if (missing == 0) break;
    check_health(replies);
    if (std::chrono::steady_clock::now() > deadline)
      throw Error(ErrorKind::timeout,
                  "no attention reply for layer " + std::to_string(layer) + " within " +
                      std::to_string(timeout_.count()) + " ms from " + std::to_string(missing) +
                      " context worker(s)");
    // Spin briefly (a reply is usually microseconds away), then sleep on the worker's fd; the
    // short timeout keeps the health check responsive.
    if (busy) {
      idle_spins = 0;
    } else if (++idle_spins > 256) {
      ucx_.wait(5);
      idle_spins = 0;
    }
  }
}

void ShardLinks::attend(int layer, const Tensor& q, std::vector<Partial>& out) {
  if (links_.empty()) return;
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  std::vector<Partial> parts(links_.size());
  exchange(layer, q, parts, std::vector<bool>(links_.size(), true));
  for (size_t i = 0; i < links_.size(); ++i)
    if (links_[i].path != DataPath::in_process || links_[i].local->tokens() > 0) out.push_back(parts[i]);
  stats_.us.push_back(std::chrono::duration<float, std::micro>(clock::now() - t0).count());
}

// Whether a link's exchange goes through the batcher (ucx_device stays per request: UCX moves
// each request's device payload itself).
static bool batched_path(DataPath p) {
  return p == DataPath::in_process || p == DataPath::ucx || p == DataPath::cuda_ipc;
}

void ShardLinks::start(int layer, const Tensor& q, std::vector<Partial>& out) {
  if (!batcher_) return attend(layer, q, out);
  if (links_.empty()) return;
  if (!pending_) pending_ = std::make_unique<Pending>();
  Pending& p = *pending_;
  if (p.x.queued) batcher_->withdraw(p.x);  // an earlier start() never finished (a failed forward)
  p.t0 = std::chrono::steady_clock::now();
  p.parts.assign(links_.size(), Partial{});
  std::vector<bool> direct(links_.size());
  bool any_direct = false;
  for (size_t i = 0; i < links_.size(); ++i) any_direct |= direct[i] = !batched_path(links_[i].path);
  if (any_direct) exchange(layer, q, p.parts, direct);
  Backend& be = model_.backend();
  const ModelConfig& c = model_.config();
  const int64_t T = q.rows;
  p.x.request_id = request_id_;
  p.x.layer = layer;
  p.x.q = q;
  p.x.error = nullptr;
  p.x.q_ipc = Tensor{};
  p.x.targets.clear();
  for (size_t i = 0; i < links_.size(); ++i) {
    if (direct[i]) continue;
    ExchangeBatcher::Exchange::Target t;
    t.link = &links_[i];
    t.shard = static_cast<int>(i);
    if (links_[i].path == DataPath::cuda_ipc) {
      // The batcher copies q into the mapped buffer with every other request's, under one event.
      check_ipc_rows(T);
      p.x.q_ipc = q_shared_.rows(0, T);
      t.out = {o_bufs_[i].rows(0, T), lse_bufs_[i].rows(0, T)};
    } else if (links_[i].path == DataPath::ucx) {
      if (!o_bufs_[i].allocated() || o_bufs_[i].view().rows < T) {
        o_bufs_[i] = be.alloc(T, c.q_dim(), be.activation_dtype());
        lse_bufs_[i] = be.alloc(T, c.num_heads, DType::f32);
      }
      t.out = {o_bufs_[i].rows(0, T), lse_bufs_[i].rows(0, T)};
    }
    p.x.targets.push_back(t);
  }
  if (!p.x.targets.empty()) batcher_->enqueue(p.x);
}

void ShardLinks::finish(int layer, std::vector<Partial>& out) {
  (void)layer;
  if (!batcher_ || links_.empty()) return;
  if (!pending_) throw std::logic_error("ShardLinks::finish without start");
  Pending& p = *pending_;
  if (p.x.queued) batcher_->flush();
  if (p.x.error) std::rethrow_exception(p.x.error);
  for (const auto& t : p.x.targets) p.parts[static_cast<size_t>(t.shard)] = t.out;
  for (size_t i = 0; i < links_.size(); ++i)
    if (links_[i].path != DataPath::in_process || links_[i].local->tokens() > 0) out.push_back(p.parts[i]);
  stats_.us.push_back(
      std::chrono::duration<float, std::micro>(std::chrono::steady_clock::now() - p.t0).count());
}

void ShardLinks::check_ipc_rows(int64_t rows) const {
  if (rows > rows_capacity_)
    throw std::runtime_error("an exchange of " + std::to_string(rows) +
                             " query rows exceeds the cuda_ipc capacity of " + std::to_string(rows_capacity_));
}

void ShardLinks::share_q(const Tensor& q, bool& ready) {
  // Once per exchange for all the request's cuda_ipc links; the worker waits on the q event
  // before it reads the mapped buffer.
  if (ready) return;
  check_ipc_rows(q.rows);
  Backend& be = model_.backend();
  be.copy(q, q_shared_.rows(0, q.rows));
  be.ipc()->record(*q_event_);
  ready = true;
}

void ShardLinks::exchange(int layer, const Tensor& q, std::vector<Partial>& parts,
                          const std::vector<bool>& selected) {
  const uint64_t seq = g_next_seq++;
  Backend& be = model_.backend();
  const ModelConfig& c = model_.config();
  const int64_t T = q.rows;
  const auto t0 = std::chrono::steady_clock::now();

  // Remote links first, so they work while the in-process shards compute.
  std::shared_ptr<std::vector<char>> staged;
  std::shared_ptr<Buffer> q_device;  // the device path's q, held by its sends
  bool q_shared_ready = false;
  held_.clear();  // the last exchange's reply buffers: merged by now (q was synchronized after)
  for (size_t i = 0; i < links_.size(); ++i) {
    const Link& l = links_[i];
    if (l.path == DataPath::in_process || !selected[i]) continue;
    wire::AttendRequest h;
    h.set_protocol_version(wire::kProtocolVersion);
    h.set_request_id(request_id_);
    h.set_layer(layer);
    h.set_rows(T);
    h.set_cols(q.cols);
    h.set_seq(seq);
    h.set_shard(static_cast<int>(i));
    transport::Payload payload;
    if (l.path == DataPath::cuda_ipc) {
      share_q(q, q_shared_ready);
      h.set_ipc(true);
    } else if (l.path == DataPath::ucx_device) {
      const size_t bytes = static_cast<size_t>(T * q.cols) * dtype_size(q.dtype);
      if (!q_device) {
        q_device = payloads_->take(bytes);
        be.copy(q, Tensor{q_device->view().data, q.dtype, T, q.cols, q.cols});
        be.synchronize();  // UCX reads q as soon as the send starts
      }
      h.set_device_payload(true);
      try {
        ucx_.send_device(l.ep, kAmAttend, wire::encode(h), q_device->view().data, bytes, q_device,
                         true);
      } catch (const transport::UcxError& e) {
        throw std::runtime_error("context worker " + l.name + ": " + e.what());
      }
      continue;
    } else {
      if (!staged) {
        staged = std::make_shared<std::vector<char>>(static_cast<size_t>(T * q.cols) * sizeof(float));
        be.download(q, reinterpret_cast<float*>(staged->data()));
      }
      payload = staged;
    }
    try {
      ucx_.send(l.ep, kAmAttend, wire::encode(h), payload, true);
    } catch (const transport::UcxError& e) {
      throw std::runtime_error("context worker " + l.name + ": " + e.what());
    }
  }

  for (size_t i = 0; i < links_.size(); ++i)
    if (links_[i].path == DataPath::in_process && selected[i]) parts[i] = links_[i].local->attend(layer, q);

  std::vector<Reply> replies(links_.size());
  for (size_t i = 0; i < links_.size(); ++i) replies[i].in = !selected[i];  // not awaited
  await_replies(seq, layer, T, replies, t0 + timeout_);

  for (size_t i = 0; i < links_.size(); ++i) {
    const Link& l = links_[i];
    if (l.path == DataPath::in_process || !selected[i]) continue;
    if (l.path == DataPath::cuda_ipc) {
      be.ipc()->wait(*done_events_[i]);
      parts[i] = {o_bufs_[i].rows(0, T), lse_bufs_[i].rows(0, T)};
      continue;
    }
    if (l.path == DataPath::ucx_device && replies[i].sunk.data) {
      parts[i] = partial_in(replies[i].sunk.data, be.activation_dtype(), T, c.q_dim(), c.num_heads);
      held_.push_back(std::move(replies[i].sunk.keep));
      continue;
    }
    if (!o_bufs_[i].allocated() || o_bufs_[i].view().rows < T) {
      o_bufs_[i] = be.alloc(T, c.q_dim(), be.activation_dtype());
      lse_bufs_[i] = be.alloc(T, c.num_heads, DType::f32);
    }
    parts[i] = {o_bufs_[i].rows(0, T), lse_bufs_[i].rows(0, T)};
    if (l.path == DataPath::ucx_device) {  // an eager reply: UCX delivered it in host memory
      const char* bytes = replies[i].payload.data();
      upload_activation_bytes(be, bytes, parts[i].o);
      upload_activation_bytes(be, bytes + static_cast<size_t>(T * c.q_dim()) * dtype_size(be.activation_dtype()),
                   parts[i].lse);
      continue;
    }
    const float* f = reinterpret_cast<const float*>(replies[i].payload.data());
    be.upload(f, parts[i].o);
    be.upload(f + T * c.q_dim(), parts[i].lse);
  }
}

}  // namespace starattn::actors
