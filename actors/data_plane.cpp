#include "actors/data_plane.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "actors/messages.h"
#include "actors/model_host.h"
#include "transport/wire.h"

namespace starattn::actors {

using transport::AmMessage;
using transport::Payload;

// ---------------------------------------------------------------------------------------------
// ShardServer

ShardServer::ShardServer(const ModelHost& host, int threads, std::string name)
    : host_(host), model_(host.model()), threads_(threads), name_(std::move(name)),
      ucx_(std::make_unique<transport::UcxWorker>()) {
  ucx_->listen(kAmAttend);
  address_ = ucx_->address();
  // From here on only the data-plane thread touches ucx_.
  thread_ = std::thread([this] { run(); });
}

ShardServer::~ShardServer() {
  stop_ = true;
  ucx_->wake();
  thread_.join();
}

void ShardServer::add(uint64_t request_id, std::shared_ptr<ContextShard> shard) {
  std::lock_guard<std::mutex> lock(mutex_);
  shards_[request_id] = std::move(shard);
}

void ShardServer::remove(uint64_t request_id) {
  std::shared_ptr<ContextShard> gone;  // freed outside the map's lock, under the compute lock
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = shards_.find(request_id);
    if (it == shards_.end()) return;
    gone = std::move(it->second);
    shards_.erase(it);
  }
  const auto compute = host_.lock_compute();
  gone.reset();
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
      answer(msg);
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

void ShardServer::answer(AmMessage& msg) {
  if (msg.id != kAmAttend) return;
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
  std::shared_ptr<ContextShard> shard;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = shards_.find(req.request_id());
    if (it != shards_.end()) shard = it->second;
  }
  auto fail = [&](const std::string& why) {
    refuse(msg, req.request_id(), req.seq(), req.shard(), why);
  };
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
  if (msg.payload.size() != static_cast<size_t>(T * c.q_dim()) * sizeof(float))
    return fail("q payload of " + std::to_string(msg.payload.size()) + " bytes, the header says " +
                std::to_string(T * c.q_dim() * 4));
  try {
    Backend& be = model_.backend();
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
    wire::AttendReply r;
    r.set_protocol_version(wire::kProtocolVersion);
    r.set_request_id(req.request_id());
    r.set_layer(req.layer());
    r.set_seq(req.seq());
    r.set_shard(req.shard());
    r.set_rows(T);
    r.set_o_cols(c.q_dim());
    r.set_lse_cols(c.num_heads);
    ucx_->send_reply(msg, kAmAttendReply, wire::encode(r), std::move(out));
    ++served_;
  } catch (const std::exception& e) {
    fail(std::string("attention failed: ") + e.what());
  }
}

// ---------------------------------------------------------------------------------------------
// WorkerHealth, ExchangeStats

void WorkerHealth::mark_dead(uint64_t worker_id, std::string why) {
  std::lock_guard<std::mutex> lock(mutex_);
  dead_.emplace(worker_id, std::move(why));
}

std::string WorkerHealth::dead(uint64_t worker_id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = dead_.find(worker_id);
  return it == dead_.end() ? std::string() : it->second;
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
// RemoteShards

RemoteShards::RemoteShards(transport::UcxWorker& ucx, const Transformer& model,
                           uint64_t request_id, std::vector<Shard> shards,
                           std::shared_ptr<const WorkerHealth> health,
                           std::chrono::milliseconds timeout)
    : ucx_(ucx), model_(model), request_id_(request_id), shards_(std::move(shards)),
      health_(std::move(health)), timeout_(timeout) {
  o_bufs_.resize(shards_.size());
  lse_bufs_.resize(shards_.size());
}

void RemoteShards::attend(int layer, const Tensor& q, std::vector<Partial>& out) {
  if (shards_.empty()) return;
  using clock = std::chrono::steady_clock;
  // Sequence numbers are unique within the process, so a late reply to an exchange that was
  // abandoned (a failed request) can never be taken for a reply to this one.
  static std::atomic<uint64_t> next_seq{1};
  const uint64_t seq = next_seq++;
  Backend& be = model_.backend();
  const ModelConfig& c = model_.config();
  const int64_t T = q.rows;
  const auto t0 = clock::now();

  auto payload = std::make_shared<std::vector<char>>(static_cast<size_t>(T * q.cols) * sizeof(float));
  be.download(q, reinterpret_cast<float*>(payload->data()));
  for (size_t i = 0; i < shards_.size(); ++i) {
    wire::AttendRequest h;
    h.set_protocol_version(wire::kProtocolVersion);
    h.set_request_id(request_id_);
    h.set_layer(layer);
    h.set_rows(T);
    h.set_cols(q.cols);
    h.set_seq(seq);
    h.set_shard(static_cast<int>(i));
    try {
      ucx_.send(shards_[i].ep, kAmAttend, wire::encode(h), payload, true);
    } catch (const transport::UcxError& e) {
      throw std::runtime_error("context worker " + shards_[i].name + ": " + e.what());
    }
  }

  std::vector<AmMessage> replies(shards_.size());
  size_t missing = shards_.size();
  const auto deadline = t0 + timeout_;
  int idle_spins = 0;
  AmMessage msg;
  while (missing > 0) {
    bool busy = ucx_.progress();
    while (ucx_.poll(msg)) {
      busy = true;
      if (msg.id != kAmAttendReply) continue;
      const auto r = wire::decode<wire::AttendReply>(msg.header, "a context worker");
      if (r.seq() != seq || r.request_id() != request_id_) continue;  // stale
      if (r.shard() < 0 || static_cast<size_t>(r.shard()) >= shards_.size())
        throw std::runtime_error("attention reply for unknown shard " + std::to_string(r.shard()));
      const Shard& s = shards_[static_cast<size_t>(r.shard())];
      if (!r.error().empty())
        throw std::runtime_error("context worker " + s.name + " refused layer " +
                                 std::to_string(layer) + ": " + r.error());
      const size_t want = static_cast<size_t>(T * (c.q_dim() + c.num_heads)) * sizeof(float);
      if (r.rows() != T || r.o_cols() != c.q_dim() || r.lse_cols() != c.num_heads ||
          msg.payload.size() != want)
        throw std::runtime_error("context worker " + s.name + " sent a malformed reply (" +
                                 std::to_string(msg.payload.size()) + " bytes, expected " +
                                 std::to_string(want) + ")");
      AmMessage& slot = replies[static_cast<size_t>(r.shard())];
      if (slot.payload.empty()) --missing;
      slot = std::move(msg);
    }
    if (missing == 0) break;
    for (size_t i = 0; i < shards_.size(); ++i) {
      if (!replies[i].payload.empty()) continue;
      std::string why;
      if (ucx_.failed(shards_[i].ep, &why) || !(why = health_->dead(shards_[i].worker_id)).empty())
        throw std::runtime_error("context worker " + shards_[i].name + " failed: " + why);
    }
    if (clock::now() > deadline)
      throw std::runtime_error("no attention reply for layer " + std::to_string(layer) +
                               " within " + std::to_string(timeout_.count()) + " ms from " +
                               std::to_string(missing) + " context worker(s)");
    // Spin briefly (a reply is usually microseconds away), then sleep on the worker's fd; the
    // short timeout keeps the health check above responsive.
    if (busy) {
      idle_spins = 0;
    } else if (++idle_spins > 64) {
      ucx_.wait(20);
      idle_spins = 0;
    }
  }

  for (size_t i = 0; i < shards_.size(); ++i) {
    if (!o_bufs_[i].allocated() || o_bufs_[i].view().rows < T) {
      o_bufs_[i] = be.alloc(T, c.q_dim(), be.activation_dtype());
      lse_bufs_[i] = be.alloc(T, c.num_heads, DType::f32);
    }
    const float* f = reinterpret_cast<const float*>(replies[i].payload.data());
    const Partial p{o_bufs_[i].rows(0, T), lse_bufs_[i].rows(0, T)};
    be.upload(f, p.o);
    be.upload(f + T * c.q_dim(), p.lse);
    out.push_back(p);
  }
  stats_.us.push_back(
      std::chrono::duration<float, std::micro>(clock::now() - t0).count());
}

}  // namespace starattn::actors
