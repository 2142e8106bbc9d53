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

// Every ShardServer of this process, by UCX address: the query actor's in-process path.
std::mutex g_directory_mutex;
std::map<std::string, const ShardServer*>& directory() {
  static std::map<std::string, const ShardServer*> d;
  return d;
}

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
// ShardServer

// The worker's side of one cuda_ipc link: the query's buffers mapped here, its q event, ours.
struct ShardServer::IpcSession {
  DeviceIpc* ipc = nullptr;
  Tensor q, o, lse;
  std::unique_ptr<DeviceEvent> q_event, done;
  ~IpcSession() {
    done.reset();
    q_event.reset();
    for (const Tensor* t : {&q, &o, &lse})
      if (t->data) ipc->close_memory(*t);
  }
};

ShardServer::ShardServer(const ModelHost& host, int threads, std::string name)
    : host_(host), model_(host.model()), threads_(threads), name_(std::move(name)),
      ucx_(std::make_unique<transport::UcxWorker>()) {
  ucx_->listen(kAmAttend);
  ucx_->listen(kAmIpcOpen);
  ucx_->listen(kAmAttendBatch);
  if (ucx_carries_device_memory(host_.backend())) {
    payloads_ = std::make_unique<DevicePayloadPool>(host_.backend());
    // A device-path q that comes by rendezvous lands in device memory (the sink runs in the
    // data-plane thread, inside progress(), never under the compute lock).
    ucx_->set_sink(kAmAttend, [this](uint16_t, const std::string& header, size_t bytes) {
      wire::AttendRequest r;
      if (!r.ParseFromString(header) || !r.device_payload()) return transport::SinkBuffer{};
      const auto compute = host_.lock_compute();
      auto buffer = payloads_->take(bytes);
      return transport::SinkBuffer{buffer, buffer->view().data, true};
    });
  }
  address_ = ucx_->address();
  {
    std::lock_guard<std::mutex> lock(g_directory_mutex);
    directory()[address_] = this;
  }
  // From here on only the data-plane thread touches ucx_.
  thread_ = std::thread([this] { run(); });
}

ShardServer::~ShardServer() {
  {
    std::lock_guard<std::mutex> lock(g_directory_mutex);
    directory().erase(address_);
  }
  stop_ = true;
  ucx_->wake();
  thread_.join();
  const auto compute = host_.lock_compute();
  ipc_.clear();
  payloads_.reset();
}

std::shared_ptr<ContextShard> ShardServer::find_in_process(const std::string& address,
                                                           uint64_t request_id,
                                                           const Backend* backend) {
  std::lock_guard<std::mutex> lock(g_directory_mutex);
  auto it = directory().find(address);
  if (it == directory().end() || &it->second->host_.backend() != backend) return nullptr;
  return it->second->shard_of(request_id);
}

std::shared_ptr<ContextShard> ShardServer::shard_of(uint64_t request_id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = shards_.find(request_id);
  return it == shards_.end() ? nullptr : it->second;
}

void ShardServer::add(uint64_t request_id, std::shared_ptr<ContextShard> shard) {
  std::lock_guard<std::mutex> lock(mutex_);
  shards_[request_id] = std::move(shard);
}

void ShardServer::remove(uint64_t request_id) {
  // Freed outside the map's lock, under the compute lock.
  std::shared_ptr<ContextShard> gone;
  std::vector<std::shared_ptr<IpcSession>> closed;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = shards_.find(request_id);
    if (it != shards_.end()) {
      gone = std::move(it->second);
      shards_.erase(it);
    }
    for (auto s = ipc_.begin(); s != ipc_.end();) {
      if (s->first.first == request_id) {
        closed.push_back(std::move(s->second));
        s = ipc_.erase(s);
      } else {
        ++s;
      }
    }
  }
  const bool freed = gone != nullptr;
  {
    const auto compute = host_.lock_compute();
    closed.clear();
    gone.reset();
  }
  // The request's KV pages go back to the system (see return_freed_memory), outside the lock.
  if (freed) return_freed_memory();
}

int ShardServer::active() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(shards_.size());
}

void ShardServer::run() {
  adopt_compute_threads(threads_);
  AmMessage msg;
  while (!stop_) {
    bool busy = ucx_->progress();
    while (ucx_->poll(msg)) {
      busy = true;
      if (msg.id == kAmIpcOpen) open_ipc(msg);
      else if (msg.id == kAmAttend) answer(msg);
      else if (msg.id == kAmAttendBatch) answer_batch(msg);
    }
    if (!busy) ucx_->wait(200);
  }
}

void ShardServer::refuse(const AmMessage& msg, uint64_t request_id, uint64_t seq, int shard,
                         const std::string& why) {
  ++refused_;
  wire::AttendReply r;
  r.set_protocol_version(wire::kProtocolVersion);
  r.set_request_id(request_id);
  r.set_seq(seq);
  r.set_shard(shard);
  r.set_error(name_ + ": " + why);
  ucx_->send_reply(msg, kAmAttendReply, wire::encode(r), nullptr);
}

void ShardServer::open_ipc(AmMessage& msg) {
  wire::IpcOpenReply reply;
  reply.set_protocol_version(wire::kProtocolVersion);
  try {
    const auto req = wire::decode<wire::IpcOpen>(msg.header, "a data-plane peer");
    reply.set_request_id(req.request_id());
    reply.set_shard(req.shard());
    reply.set_seq(req.seq());
    wire::check_version(req.protocol_version(), "the ipc open request");
    if (!shard_of(req.request_id()))
      throw std::runtime_error("request " + std::to_string(req.request_id()) +
                               " holds no context here");
    DeviceIpc* ipc = host_.backend().ipc();
    if (!ipc) throw std::runtime_error("this worker's backend cannot share memory by CUDA IPC");
    const ModelConfig& c = model_.config();
    const int64_t rows = req.rows_capacity();
    if (rows < 1 || rows > (int64_t{1} << 24))
      throw std::runtime_error("rows_capacity " + std::to_string(rows) + " out of range");
    const DType act = host_.backend().activation_dtype();
    auto s = std::make_shared<IpcSession>();
    s->ipc = ipc;
    {
      const auto compute = host_.lock_compute();
      s->q = ipc->import_memory(req.q_handle(), act, rows, c.q_dim());
      s->o = ipc->import_memory(req.o_handle(), act, rows, c.q_dim());
      s->lse = ipc->import_memory(req.lse_handle(), DType::f32, rows, c.num_heads);
      s->q_event = ipc->import_event(req.q_event());
      s->done = ipc->create_event();
      reply.set_done_event(ipc->export_event(*s->done));
    }
    std::lock_guard<std::mutex> lock(mutex_);
    ipc_[{req.request_id(), req.shard()}] = std::move(s);
    std::fprintf(stderr, "%s: request %llu shard %d: cuda_ipc (GPU to GPU, %s)\n", name_.c_str(),
                 static_cast<unsigned long long>(req.request_id()), req.shard(),
                 ipc->device_id().c_str());
  } catch (const std::exception& e) {
    reply.set_error(name_ + ": " + e.what());
  }
  ucx_->send_reply(msg, kAmIpcOpenReply, wire::encode(reply), nullptr);
}

void ShardServer::answer(AmMessage& msg) {
  wire::AttendRequest req;
  try {
    req = wire::decode<wire::AttendRequest>(msg.header, "a data-plane peer");
  } catch (const wire::ProtocolError& e) {
    refuse(msg, 0, 0, -1, e.what());
    return;
  }
  const std::string version = wire::version_error(req.protocol_version(), "the attention request");
  if (!version.empty()) {
    refuse(msg, req.request_id(), req.seq(), req.shard(), version);
    return;
  }
  auto fail = [&](const std::string& why) {
    refuse(msg, req.request_id(), req.seq(), req.shard(), why);
  };
  const std::shared_ptr<ContextShard> shard = shard_of(req.request_id());
  if (!shard) return fail("request " + std::to_string(req.request_id()) +
                          " holds no context here (never encoded or already released)");
  const ModelConfig& c = model_.config();
  if (req.layer() < 0 || req.layer() >= c.num_layers)
    return fail("layer " + std::to_string(req.layer()) + " out of range (model has " +
                std::to_string(c.num_layers) + ")");
  if (req.cols() != c.q_dim() || req.rows() < 1 || req.rows() > (int64_t{1} << 24))
    return fail("q of [" + std::to_string(req.rows()) + " x " + std::to_string(req.cols()) +
                "] does not fit the model (q width " + std::to_string(c.q_dim()) + ")");
  const int64_t T = req.rows();
  wire::AttendReply r;
  r.set_protocol_version(wire::kProtocolVersion);
  r.set_request_id(req.request_id());
  r.set_layer(req.layer());
  r.set_seq(req.seq());
  r.set_shard(req.shard());
  r.set_rows(T);
  r.set_o_cols(c.q_dim());
  r.set_lse_cols(c.num_heads);
  try {
    Backend& be = model_.backend();
    if (req.ipc()) {
      std::shared_ptr<IpcSession> s;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        auto it = ipc_.find({req.request_id(), req.shard()});
        if (it != ipc_.end()) s = it->second;
      }
      if (!s) return fail("no cuda_ipc buffers were opened for this request and shard");
      if (T > s->q.rows)
        return fail("q of " + std::to_string(T) + " rows exceeds the opened capacity of " +
                    std::to_string(s->q.rows));
      // Ordering lives on the GPU: wait for the query's q, compute into its buffers, record
      // ours. The reply leaves before the kernel finishes; the query side waits on `done`.
      const auto compute = host_.lock_compute();
      s->ipc->wait(*s->q_event);
      shard->attend_into(req.layer(), s->q.slice_rows(0, T),
                         {s->o.slice_rows(0, T), s->lse.slice_rows(0, T)});
      s->ipc->record(*s->done);
      ucx_->send_reply(msg, kAmAttendReply, wire::encode(r), nullptr);
      ++served_;
      return;
    }
    if (req.device_payload()) return answer_device(msg, req, *shard, r);
    if (msg.payload.size() != static_cast<size_t>(T * c.q_dim()) * sizeof(float))
      return fail("q payload of " + std::to_string(msg.payload.size()) +
                  " bytes, the header says " + std::to_string(T * c.q_dim() * 4));
    const auto compute = host_.lock_compute();
    if (!q_buf_.allocated() || q_buf_.view().rows < T)
      q_buf_ = be.alloc(T, c.q_dim(), be.activation_dtype());
    const Tensor q = q_buf_.rows(0, T);
    be.upload(reinterpret_cast<const float*>(msg.payload.data()), q);
    const Partial p = shard->attend(req.layer(), q);
    const size_t o_n = static_cast<size_t>(T * c.q_dim()), l_n = static_cast<size_t>(T * c.num_heads);
    auto out = std::make_shared<std::vector<char>>((o_n + l_n) * sizeof(float));
    float* f = reinterpret_cast<float*>(out->data());
    be.download(p.o, f);
    be.download(p.lse, f + o_n);
    ucx_->send_reply(msg, kAmAttendReply, wire::encode(r), std::move(out));
    ++served_;
  } catch (const std::exception& e) {
    fail(std::string("attention failed: ") + e.what());
  }
}

void ShardServer::answer_batch(AmMessage& msg) {
  wire::AttendBatchReply reply;
  reply.set_protocol_version(wire::kProtocolVersion);
  auto refuse_all = [&](const std::string& why) {
    ++refused_;
    reply.set_error(name_ + ": " + why);
    ucx_->send_reply(msg, kAmAttendBatchReply, wire::encode(reply), nullptr);
  };
  wire::AttendBatchRequest req;
  try {
    req = wire::decode<wire::AttendBatchRequest>(msg.header, "a data-plane peer");
  } catch (const wire::ProtocolError& e) {
    return refuse_all(e.what());
  }
  reply.set_seq(req.seq());
  reply.set_layer(req.layer());
  const std::string version = wire::version_error(req.protocol_version(), "the batched attention request");
  if (!version.empty()) return refuse_all(version);
  const ModelConfig& c = model_.config();
  if (req.layer() < 0 || req.layer() >= c.num_layers)
    return refuse_all("layer " + std::to_string(req.layer()) + " out of range (model has " +
                      std::to_string(c.num_layers) + ")");
  if (req.cols() != c.q_dim())
    return refuse_all("q width " + std::to_string(req.cols()) + " does not fit the model (" +
                      std::to_string(c.q_dim()) + ")");
  reply.set_o_cols(c.q_dim());
  reply.set_lse_cols(c.num_heads);
  // Every item's rows, and where its q starts in the payload (refused items' q is skipped).
  int64_t total_rows = 0;
  for (const auto& it : req.items()) {
    if (it.rows() < 1 || it.rows() > (int64_t{1} << 24))
      return refuse_all("an item of " + std::to_string(it.rows()) + " rows");
    total_rows += it.rows();
    if (total_rows > (int64_t{1} << 24)) return refuse_all("more than 2^24 query rows in one batch");
  }
  if (msg.payload.size() != static_cast<size_t>(total_rows * c.q_dim()) * sizeof(float))
    return refuse_all("q payload of " + std::to_string(msg.payload.size()) + " bytes, the items say " +
                      std::to_string(total_rows * c.q_dim() * 4));
  std::vector<std::shared_ptr<ContextShard>> shards(static_cast<size_t>(req.items_size()));
  for (int i = 0; i < req.items_size(); ++i) {
    const auto& it = req.items(i);
    auto* out = reply.add_items();
    out->set_request_id(it.request_id());
    out->set_shard(it.shard());
    out->set_rows(it.rows());
    for (int j = 0; j < i; ++j)
      if (req.items(j).request_id() == it.request_id()) {
        out->set_error(name_ + ": request " + std::to_string(it.request_id()) + " is listed twice");
        break;
      }
    if (!out->error().empty()) continue;
    shards[static_cast<size_t>(i)] = shard_of(it.request_id());
    if (!shards[static_cast<size_t>(i)])
      out->set_error(name_ + ": request " + std::to_string(it.request_id()) +
                     " holds no context here (never encoded or already released)");
  }
  try {
    Backend& be = model_.backend();
    const auto compute = host_.lock_compute();
    if (!q_buf_.allocated() || q_buf_.view().rows < total_rows)
      q_buf_ = be.alloc(total_rows, c.q_dim(), be.activation_dtype());
    be.upload(reinterpret_cast<const float*>(msg.payload.data()), q_buf_.rows(0, total_rows));
    std::vector<ContextShard::Query> queries;
    std::vector<int> answered;  // item index of each query
    int64_t row = 0;
    for (int i = 0; i < req.items_size(); ++i) {
      const int64_t T = req.items(i).rows();
      if (shards[static_cast<size_t>(i)] && reply.items(i).error().empty()) {
        ContextShard& shard = *shards[static_cast<size_t>(i)];
        queries.push_back({&shard, req.layer(), q_buf_.rows(row, T), shard.out_views(T)});
        answered.push_back(i);
      }
      row += T;
    }
    ContextShard::attend_many(be, queries);  // one attention call for the whole batch
    size_t floats = 0;
    for (const auto& q : queries) floats += static_cast<size_t>(q.q.rows * (c.q_dim() + c.num_heads));
    auto out = std::make_shared<std::vector<char>>(floats * sizeof(float));
    float* f = reinterpret_cast<float*>(out->data());
    for (const auto& q : queries) {
      be.download(q.out.o, f);
      f += q.q.rows * c.q_dim();
      be.download(q.out.lse, f);
      f += q.q.rows * c.num_heads;
    }
    // Counted before the reply leaves: whoever got the reply sees the counts.
    served_ += queries.size();
    served_batch_items_ += queries.size();
    ++served_batches_;
    refused_ += static_cast<uint64_t>(req.items_size()) - queries.size();
    ucx_->send_reply(msg, kAmAttendBatchReply, wire::encode(reply), std::move(out));
  } catch (const std::exception& e) {
    reply.clear_items();
    refuse_all(std::string("attention failed: ") + e.what());
  }
}

void ShardServer::answer_device(AmMessage& msg, const wire::AttendRequest& req, ContextShard& shard,
                                wire::AttendReply& reply) {
  auto fail = [&](const std::string& why) {
    refuse(msg, req.request_id(), req.seq(), req.shard(), why);
  };
  if (!payloads_) return fail("this worker's UCX cannot carry device memory (device_payload)");
  Backend& be = model_.backend();
  const ModelConfig& c = model_.config();
  const DType act = be.activation_dtype();
  const int64_t T = req.rows();
  const size_t q_bytes = static_cast<size_t>(T * c.q_dim()) * dtype_size(act);
  const size_t got = msg.in_sink() ? msg.sunk_bytes : msg.payload.size();
  if (got != q_bytes)
    return fail("device q payload of " + std::to_string(got) + " bytes, the header says " +
                std::to_string(q_bytes));
  const auto compute = host_.lock_compute();
  Tensor q{nullptr, act, T, c.q_dim(), c.q_dim()};
  if (msg.in_sink()) {
    q.data = msg.sunk.data;  // rendezvous: UCX wrote it into device memory
  } else {
    if (!q_buf_.allocated() || q_buf_.view().rows < T) q_buf_ = be.alloc(T, c.q_dim(), act);
    q = q_buf_.rows(0, T);
    upload_activation_bytes(be, msg.payload.data(), q);
  }
  const size_t out_bytes = partial_bytes(act, T, c.q_dim(), c.num_heads);
  std::shared_ptr<Buffer> out = payloads_->take(out_bytes);
  shard.attend_into(req.layer(), q, partial_in(out->view().data, act, T, c.q_dim(), c.num_heads));
  be.synchronize();  // UCX reads the buffer as soon as the send starts
  reply.set_device_payload(true);
  ucx_->send_reply_device(msg, kAmAttendReply, wire::encode(reply), out->view().data, out_bytes,
                          out);
  ++served_;
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

// Whether a link's exchange goes through the batcher (the others stay per request: their Q and
// (O, lse) live in this request's device buffers).
static bool batched_path(DataPath p) { return p == DataPath::in_process || p == DataPath::ucx; }

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
  p.x.targets.clear();
  for (size_t i = 0; i < links_.size(); ++i) {
    if (direct[i]) continue;
    ExchangeBatcher::Exchange::Target t;
    t.link = &links_[i];
    t.shard = static_cast<int>(i);
    if (links_[i].path == DataPath::ucx) {
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
      if (T > rows_capacity_)
        throw std::runtime_error("an exchange of " + std::to_string(T) +
                                 " query rows exceeds the cuda_ipc capacity of " +
                                 std::to_string(rows_capacity_));
      if (!q_shared_ready) {
        be.copy(q, q_shared_.rows(0, T));
        be.ipc()->record(*q_event_);
        q_shared_ready = true;
      }
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
