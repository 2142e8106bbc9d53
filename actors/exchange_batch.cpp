#include "actors/exchange_batch.h"

#include <algorithm>
#include <atomic>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>

#include "actors/messages.h"
#include "runtime/errors.h"
#include "transport/wire.h"

namespace starattn::actors {

using transport::AmMessage;
using transport::DataPath;

namespace {

// Unique within the process: a late reply to an abandoned batch is never taken for this one's.
std::atomic<uint64_t> g_next_batch_seq{1};

void fail(ExchangeBatcher::Exchange& x, std::exception_ptr e) {
  if (!x.error) x.error = std::move(e);
}

template <class E>
std::exception_ptr error_of(E e) {
  return std::make_exception_ptr(std::move(e));
}

}  // namespace

// The items of one batched message: one layer's shards on one worker endpoint.
struct ExchangeBatcher::Group {
  const ShardLinks::Link* link = nullptr;  // any of its items' links (worker id, name, ep)
  int layer = 0;
  uint64_t seq = 0;
  std::vector<std::pair<Exchange*, size_t>> items;  // exchange, target index
  bool done = false;
  void fail_all(const std::exception_ptr& e) {
    for (auto& [x, t] : items) fail(*x, e);
    done = true;
  }
};

ExchangeBatcher::ExchangeBatcher(transport::UcxWorker& ucx, const Transformer& model,
                                 std::shared_ptr<const WorkerHealth> health,
                                 std::chrono::milliseconds timeout)
    : ucx_(ucx), model_(model), health_(std::move(health)), timeout_(timeout) {}

void ExchangeBatcher::enqueue(Exchange& x) {
  if (x.queued) throw std::logic_error("ExchangeBatcher: an exchange was queued twice");
  x.queued = true;
  x.error = nullptr;
  queue_.push_back(&x);
}

void ExchangeBatcher::withdraw(Exchange& x) {
  queue_.erase(std::remove(queue_.begin(), queue_.end(), &x), queue_.end());
  x.queued = false;
}

void ExchangeBatcher::flush() {
  std::vector<Exchange*> xs;
  xs.swap(queue_);
  for (Exchange* x : xs) x->queued = false;
  if (xs.empty()) return;
  const auto deadline = std::chrono::steady_clock::now() + timeout_;

  // Remote shards by (layer, endpoint, path): one message each, sent before the local work
  // starts. (One worker may be reached by cuda_ipc for one request and staged for another,
  // whose IPC set-up it refused.)
  std::vector<Group> groups;
  std::map<std::tuple<int, transport::UcxWorker::EpId, DataPath>, size_t> group_of;
  for (Exchange* x : xs)
    for (size_t t = 0; t < x->targets.size(); ++t) {
      const ShardLinks::Link& l = *x->targets[t].link;
      if (l.path != DataPath::ucx && l.path != DataPath::cuda_ipc) continue;
      auto [it, fresh] = group_of.emplace(std::make_tuple(x->layer, l.ep, l.path), groups.size());
      if (fresh) {
        groups.emplace_back();
        groups.back().link = &l;
        groups.back().layer = x->layer;
      }
      groups[it->second].items.emplace_back(x, t);
    }
  if (std::any_of(groups.begin(), groups.end(),
                  [](const Group& g) { return g.link->path == DataPath::cuda_ipc; })) {
    try {
      share_ipc_queries(xs);
    } catch (const std::exception& e) {
      const auto err = error_of(std::runtime_error(std::string("cuda_ipc query hand-off failed: ") + e.what()));
      for (Group& g : groups)
        if (g.link->path == DataPath::cuda_ipc) g.fail_all(err);
    }
  }
  for (Group& g : groups)
    if (!g.done) send(g);

  // In-process shards, layer by layer: one attend_many call each.
  std::map<int, std::vector<std::pair<Exchange*, size_t>>> local;
  for (Exchange* x : xs)
    for (size_t t = 0; t < x->targets.size(); ++t)
      if (x->targets[t].link->path == DataPath::in_process) local[x->layer].emplace_back(x, t);
  for (auto& [layer, items] : local) {
    std::vector<ContextShard::Query> queries;
    for (auto& [x, t] : items) {
      Exchange::Target& target = x->targets[t];
      ContextShard& shard = *target.link->local;
      target.out = shard.out_views(x->q.rows);
      queries.push_back({&shard, layer, x->q, target.out});
    }
    try {
      ContextShard::attend_many(model_.backend(), queries);
      ++local_calls_;
      local_items_ += queries.size();
    } catch (const std::exception& e) {
      const auto err = error_of(std::runtime_error(std::string("in-process context attention failed: ") + e.what()));
      for (auto& [x, t] : items) fail(*x, err);
    }
  }
  await(groups, deadline);
}

void ExchangeBatcher::share_ipc_queries(const std::vector<Exchange*>& xs) {
  Backend& be = model_.backend();
  DeviceIpc* ipc = be.ipc();
  if (!ipc) throw std::logic_error("a cuda_ipc exchange on a backend without IPC");
  if (!q_ready_) {
    auto event = ipc->create_event();
    q_ready_handle_ = ipc->export_event(*event);
    q_ready_ = std::move(event);
  }
  std::vector<Backend::CopyItem> copies;
  for (const Exchange* x : xs)
    if (x->q_ipc.data) copies.push_back({x->q, x->q_ipc});
  be.copy_batch(copies);
  ipc->record(*q_ready_);
}

DeviceEvent& ExchangeBatcher::done_event(const std::string& handle) {
  auto found = done_events_.find(handle);
  if (found != done_events_.end()) return *found->second;
  // A worker makes one per batcher it serves and keeps it: a handle per worker, and one more
  // each time a worker is replaced; bounded all the same (a wait already queued on a dropped
  // event still holds).
  if (done_events_.size() >= 256) done_events_.clear();
  auto event = model_.backend().ipc()->import_event(handle);
  return *done_events_.emplace(handle, std::move(event)).first->second;
}

void ExchangeBatcher::send(Group& g) {
  const ShardLinks::Link& l = *g.link;
  const ModelConfig& c = model_.config();
  g.seq = g_next_batch_seq++;
  wire::AttendBatchRequest h;
  h.set_protocol_version(wire::kProtocolVersion);
  h.set_seq(g.seq);
  h.set_layer(g.layer);
  h.set_cols(c.q_dim());
  int64_t rows = 0;
  for (auto& [x, t] : g.items) {
    auto* it = h.add_items();
    it->set_request_id(x->request_id);
    it->set_shard(x->targets[t].shard);
    it->set_rows(x->q.rows);
    rows += x->q.rows;
  }
  if (l.path == DataPath::cuda_ipc) {  // each q is in its request's mapped buffer already
    h.set_ipc(true);
    h.set_q_event(q_ready_handle_);
    try {
      ucx_.send(l.ep, kAmAttendBatch, wire::encode(h), nullptr, true);
      ++messages_;
      message_items_ += g.items.size();
    } catch (const transport::UcxError& e) {
      g.fail_all(error_of(std::runtime_error("context worker " + l.name + ": " + e.what())));
    }
    return;
  }
  auto payload = std::make_shared<std::vector<char>>(static_cast<size_t>(rows * c.q_dim()) * sizeof(float));
  float* f = reinterpret_cast<float*>(payload->data());
  for (auto& [x, t] : g.items) {
    model_.backend().download(x->q, f);
    f += x->q.rows * c.q_dim();
  }
  try {
    ucx_.send(l.ep, kAmAttendBatch, wire::encode(h), std::move(payload), true);
    ++messages_;
    message_items_ += g.items.size();
  } catch (const transport::UcxError& e) {
    g.fail_all(error_of(std::runtime_error("context worker " + l.name + ": " + e.what())));
  }
}

void ExchangeBatcher::take_reply(Group& g, const AmMessage& msg) {
  const ShardLinks::Link& l = *g.link;
  const ModelConfig& c = model_.config();
  const std::string who = "context worker " + l.name;
  const std::string at = " layer " + std::to_string(g.layer);
  wire::AttendBatchReply r;
  try {
    r = wire::decode<wire::AttendBatchReply>(msg.header, who);
  } catch (const std::exception& e) {
    return g.fail_all(error_of(std::runtime_error(e.what())));
  }
  if (!r.error().empty()) return g.fail_all(error_of(std::runtime_error(who + " refused" + at + ": " + r.error())));
  auto malformed = [&](const std::string& why) {
    g.fail_all(error_of(std::runtime_error(who + " sent a malformed batched reply: " + why)));
  };
  if (r.items_size() != static_cast<int>(g.items.size()))
    return malformed(std::to_string(r.items_size()) + " items for " + std::to_string(g.items.size()));
  if (r.o_cols() != c.q_dim() || r.lse_cols() != c.num_heads)
    return malformed("O/lse widths " + std::to_string(r.o_cols()) + "/" + std::to_string(r.lse_cols()));
  const bool ipc = l.path == DataPath::cuda_ipc;
  size_t want = 0;
  for (size_t i = 0; i < g.items.size(); ++i) {
    const auto& [x, t] = g.items[i];
    const auto& it = r.items(static_cast<int>(i));
    if (it.request_id() != x->request_id || it.shard() != x->targets[t].shard || it.rows() != x->q.rows)
      return malformed("item " + std::to_string(i) + " does not echo its request");
    if (it.error().empty() && !ipc)
      want += static_cast<size_t>(x->q.rows * (c.q_dim() + c.num_heads)) * sizeof(float);
  }
  if (msg.payload.size() != want)
    return malformed(std::to_string(msg.payload.size()) + " bytes, expected " + std::to_string(want));
  const float* f = reinterpret_cast<const float*>(msg.payload.data());
  Backend& be = model_.backend();
  if (ipc) {  // the answers are in the mapped buffers once the worker's done event is
    if (r.done_event().empty()) return malformed("a cuda_ipc batch without its done event");
    try {
      be.ipc()->wait(done_event(r.done_event()));
    } catch (const std::exception& e) {
      return g.fail_all(error_of(std::runtime_error(who + ": its done event: " + e.what())));
    }
  }
  for (size_t i = 0; i < g.items.size(); ++i) {
    auto& [x, t] = g.items[i];
    const auto& it = r.items(static_cast<int>(i));
    if (!it.error().empty()) {
      fail(*x, error_of(std::runtime_error(who + " refused" + at + ": " + it.error())));
      continue;
    }
    if (ipc) continue;
    const Exchange::Target& target = x->targets[t];
    be.upload(f, target.out.o);
    f += x->q.rows * c.q_dim();
    be.upload(f, target.out.lse);
    f += x->q.rows * c.num_heads;
  }
  g.done = true;
}

void ExchangeBatcher::await(std::vector<Group>& groups, std::chrono::steady_clock::time_point deadline) {
  int idle_spins = 0;
  AmMessage msg;
  auto missing = [&] {
    return std::count_if(groups.begin(), groups.end(), [](const Group& g) { return !g.done; });
  };
  while (missing() > 0) {
    bool busy = ucx_.progress();
    while (ucx_.poll(msg)) {
      busy = true;
      if (msg.id != kAmAttendBatchReply) continue;  // a stale reply of an abandoned exchange
      wire::AttendBatchReply peek;
      if (!peek.ParseFromString(msg.header)) continue;
      for (Group& g : groups)
        if (!g.done && g.seq == peek.seq()) take_reply(g, msg);
    }
    if (missing() == 0) break;
    for (Group& g : groups) {
      if (g.done) continue;
      std::string why;
      if (ucx_.failed(g.link->ep, &why) || !(why = health_->dead(g.link->worker_id)).empty())
        g.fail_all(error_of(std::runtime_error("context worker " + g.link->name + " failed: " + why)));
    }
    if (std::chrono::steady_clock::now() > deadline) {
      for (Group& g : groups)
        if (!g.done)
          g.fail_all(error_of(Error(ErrorKind::timeout,
                                    "no attention reply for layer " + std::to_string(g.layer) +
                                        " within " + std::to_string(timeout_.count()) + " ms from context worker " +
                                        g.link->name)));
      break;
    }
    // As ShardLinks: spin briefly, then sleep on the worker's fd (short: health stays checked).
    if (busy) {
      idle_spins = 0;
    } else if (++idle_spins > 256) {
      ucx_.wait(5);
      idle_spins = 0;
    }
  }
}

}  // namespace starattn::actors
