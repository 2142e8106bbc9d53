// ShardServer: the context side of phase 2 (actors/data_plane.h). One UCX worker and one thread
// per server; answers attention requests (one at a time, or a batch of several requests' shards
// in one call) over the shard's backend under the host's compute lock, and maps the query's
// buffers for cuda_ipc links.
#include "actors/data_plane.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>

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

}  // namespace

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
  channels_.clear();
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
  cadence_.on_exchange(req.layer(), DecodeCadence::clock::now());
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

// A batched reply's item for request item `it`: what it asked, echoed (errors added after).
static wire::AttendBatchItem* echo_item(wire::AttendBatchReply& reply, const wire::AttendBatchItem& it) {
  wire::AttendBatchItem* out = reply.add_items();
  out->set_request_id(it.request_id());
  out->set_shard(it.shard());
  out->set_rows(it.rows());
  return out;
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
  cadence_.on_exchange(req.layer(), DecodeCadence::clock::now());
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
  if (req.ipc()) return answer_batch_ipc(msg, req, reply);
  if (msg.payload.size() != static_cast<size_t>(total_rows * c.q_dim()) * sizeof(float))
    return refuse_all("q payload of " + std::to_string(msg.payload.size()) + " bytes, the items say " +
                      std::to_string(total_rows * c.q_dim() * 4));
  std::vector<std::shared_ptr<ContextShard>> shards(static_cast<size_t>(req.items_size()));
  for (int i = 0; i < req.items_size(); ++i) {
    const auto& it = req.items(i);
    auto* out = echo_item(reply, it);
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

void ShardServer::answer_batch_ipc(AmMessage& msg, const wire::AttendBatchRequest& req,
                                   wire::AttendBatchReply& reply) {
  if (!msg.payload.empty()) {
    ++refused_;
    reply.set_error(name_ + ": a cuda_ipc batch with a payload of " + std::to_string(msg.payload.size()) +
                    " bytes");
    ucx_->send_reply(msg, kAmAttendBatchReply, wire::encode(reply), nullptr);
    return;
  }
  // Each item's shard and mapped buffers; an item without them is refused alone.
  std::vector<std::pair<std::shared_ptr<ContextShard>, std::shared_ptr<IpcSession>>> items;
  for (int i = 0; i < req.items_size(); ++i) {
    const auto& it = req.items(i);
    auto* out = echo_item(reply, it);
    std::shared_ptr<ContextShard> shard = shard_of(it.request_id());
    std::shared_ptr<IpcSession> s;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto found = ipc_.find({it.request_id(), it.shard()});
      if (found != ipc_.end()) s = found->second;
    }
    for (int j = 0; j < i; ++j)
      if (req.items(j).request_id() == it.request_id() && req.items(j).shard() == it.shard())
        out->set_error(name_ + ": request " + std::to_string(it.request_id()) + " is listed twice");
    if (!out->error().empty()) {
    } else if (!shard) {
      out->set_error(name_ + ": request " + std::to_string(it.request_id()) +
                     " holds no context here (never encoded or already released)");
    } else if (!s) {
      out->set_error(name_ + ": no cuda_ipc buffers were opened for request " +
                     std::to_string(it.request_id()) + " shard " + std::to_string(it.shard()));
    } else if (it.rows() > s->q.rows) {
      out->set_error(name_ + ": q of " + std::to_string(it.rows()) + " rows exceeds the opened capacity of " +
                     std::to_string(s->q.rows));
    }
    if (out->error().empty()) items.emplace_back(std::move(shard), std::move(s));
    else items.emplace_back(nullptr, nullptr);
  }
  try {
    Backend& be = model_.backend();
    if (req.q_event().empty()) throw std::runtime_error("a cuda_ipc batch without its q event");
    // Ordering lives on the GPU: wait once for the batch's queries, compute into their buffers
    // in one call, record the batch's done event once. The reply leaves before the kernel ends.
    const auto compute = host_.lock_compute();
    IpcChannel& channel = ipc_channel(req.q_event());
    std::vector<ContextShard::Query> queries;
    for (int i = 0; i < req.items_size(); ++i) {
      const auto& [shard, s] = items[static_cast<size_t>(i)];
      if (!shard) continue;
      const int64_t T = req.items(i).rows();
      queries.push_back({shard.get(), req.layer(), s->q.slice_rows(0, T),
                         {s->o.slice_rows(0, T), s->lse.slice_rows(0, T)}});
    }
    DeviceIpc* ipc = be.ipc();
    ipc->wait(*channel.q_ready);
    ContextShard::attend_many(be, queries);
    ipc->record(*channel.done);
    reply.set_done_event(channel.done_handle);
    served_ += queries.size();
    served_batch_items_ += queries.size();
    ++served_batches_;
    refused_ += static_cast<uint64_t>(req.items_size()) - queries.size();
    ucx_->send_reply(msg, kAmAttendBatchReply, wire::encode(reply), nullptr);
  } catch (const std::exception& e) {
    reply.clear_items();
    ++refused_;
    reply.set_error(name_ + ": attention failed: " + std::string(e.what()));
    ucx_->send_reply(msg, kAmAttendBatchReply, wire::encode(reply), nullptr);
  }
}

ShardServer::IpcChannel& ShardServer::ipc_channel(const std::string& q_event) {
  auto found = channels_.find(q_event);
  if (found != channels_.end()) return *found->second;
  // One per query-side batcher, kept while this server lives; a head that restarts makes a new
  // one, so the map is bounded by clearing it (a live batcher's channel is then made again, and
  // its batcher imports the new done event by its new handle).
  if (channels_.size() >= 64) channels_.clear();
  DeviceIpc* ipc = model_.backend().ipc();
  if (!ipc) throw std::runtime_error("this worker's backend has no CUDA IPC");
  auto c = std::make_unique<IpcChannel>();
  c->q_ready = ipc->import_event(q_event);
  c->done = ipc->create_event();
  c->done_handle = ipc->export_event(*c->done);
  return *channels_.emplace(q_event, std::move(c)).first->second;
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

}  // namespace starattn::actors
