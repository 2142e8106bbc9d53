#include "actors/query.h"

#include <caf/all.hpp>

#include <algorithm>
#include <cstdio>
#include <map>

#include "actors/exchange_batch.h"
#include "actors/messages.h"
#include "runtime/decode_batch.h"
#include "runtime/errors.h"
#include "runtime/generation.h"
#include "transport/peer_path.h"

namespace starattn::actors {
namespace {

struct ActiveQuery {
  uint64_t id = 0;
  caf::actor reply_to;
  std::unique_ptr<ShardLinks> shards;
  std::unique_ptr<Generation> generation;
};

struct QueryState {
  QueryOptions options;
  transport::PeerPlace place;
  std::unique_ptr<transport::UcxWorker> ucx;
  std::shared_ptr<DevicePayloadPool> payloads;  // the ucx_device path's buffers; null without it
  std::map<uint64_t, transport::UcxWorker::EpId> endpoints;  // worker id -> endpoint
  std::map<uint64_t, std::unique_ptr<ActiveQuery>> active;
  // Every active request's Generation, advanced together: one forward per step message.
  std::unique_ptr<DecodeBatch> batch;
  // Coalesces a step's exchanges: one message per worker per layer for all requests
  // (actors/exchange_batch.h). Null with STARATTN_BATCH_EXCHANGE=0 (one message per request).
  std::unique_ptr<ExchangeBatcher> batcher;
  bool step_queued = false;  // a step message is in the mailbox
  // Sessions hold backend buffers and endpoints: drop them before the UCX worker goes.
  ~QueryState() {
    batch.reset();
    active.clear();
    batcher.reset();
    ucx.reset();
  }
};

using Self = caf::stateful_actor<QueryState>;

void finish(Self* self, uint64_t id, const std::string& error, ErrorKind kind) {
  auto it = self->state.active.find(id);
  if (it == self->state.active.end()) return;
  ActiveQuery& q = *it->second;
  auto f = std::make_shared<RequestFinished>();
  f->request_id = id;
  RequestEnd& end = f->end;
  end.ok = error.empty();
  end.error = error;
  if (!error.empty()) end.error_kind = kind;
  RequestStats& s = end.stats;
  if (q.generation) {
    Generation& g = *q.generation;
    s.finish_reason = error.empty() ? g.finish_reason() : "error";
    s.generated = g.generated();
    s.first_token_ms = g.first_token_ms();
    if (error.empty()) {
      s.decode_ms = g.decode_ms();
      s.text_tail = g.text_tail();
    }
  } else {
    s.finish_reason = "error";
  }
  if (q.shards) {
    const ExchangeStats& x = q.shards->stats();
    s.exchanges = static_cast<int64_t>(x.us.size());
    s.exchange_mean_us = x.mean();
    s.exchange_p50_us = x.percentile(0.5);
    s.exchange_max_us = x.max();
  }
  self->send(q.reply_to, finished_atom::value, FinishedPtr(std::move(f)));
  self->state.batch->remove(id);
  self->state.active.erase(it);
  return_freed_memory();
}

// The links to a request's shards, each on the nearest path (transport/peer_path.h).
std::unique_ptr<ShardLinks> link_shards(Self* self, const StartQuery& req) {
  auto& st = self->state;
  const ModelHost& host = *st.options.model;
  std::vector<ShardLinks::Link> links;
  for (const ShardRef& s : req.shards) {
    ShardLinks::Link l;
    l.worker_id = s.worker_id;
    l.name = s.name;
    const transport::PeerPlace peer{s.host_id, s.process_id, s.ipc_device, s.ucx_device_memory};
    l.local = ShardServer::find_in_process(s.ucx_address, req.request_id, &host.backend());
    const transport::PathChoice choice = transport::choose_data_path(st.place, peer, l.local != nullptr);
    l.path = choice.path;
    if (l.path != transport::DataPath::in_process) {
      l.local.reset();
      auto ep = st.endpoints.find(s.worker_id);
      if (ep == st.endpoints.end()) {
        // Same-host peers go over shared memory, which UCX 1.13 offers only without its
        // peer-failure mode: the control plane watches them instead.
        const bool same_host = !peer.host_id.empty() && peer.host_id == st.place.host_id;
        ep = st.endpoints
                 .emplace(s.worker_id,
                          st.ucx->connect(s.ucx_address, s.name,
                                          same_host ? transport::UcxWorker::PeerFailure::control_plane
                                                    : transport::UcxWorker::PeerFailure::detect))
                 .first;
      }
      l.ep = ep->second;
    }
    links.push_back(std::move(l));
  }
  auto out = std::make_unique<ShardLinks>(*st.ucx, host.model(), req.request_id, std::move(links),
                                          st.options.health, st.options.exchange_timeout,
                                          std::max(static_cast<int>(req.spec.query.size()), 1), st.payloads,
                                          st.batcher.get());
  if (st.options.verbose || std::getenv("STARATTN_LOG_PATHS"))
    std::fprintf(stderr, "head: request %llu data paths: %s\n",
                 static_cast<unsigned long long>(req.request_id), out->describe().c_str());
  return out;
}

// The next batch step goes to the back of the mailbox, so requests that start or are aborted
// meanwhile join or leave between steps.
void queue_step(Self* self) {
  auto& st = self->state;
  if (st.step_queued || st.batch->empty()) return;
  st.step_queued = true;
  self->send(self, step_atom::value);
}

void start(Self* self, const StartQuery& req) {
  auto& st = self->state;
  const ModelHost& host = *st.options.model;
  auto q = std::make_unique<ActiveQuery>();
  q->id = req.request_id;
  q->reply_to = caf::actor_cast<caf::actor>(self->current_sender());
  ActiveQuery& a = *q;
  st.active[req.request_id] = std::move(q);
  try {
    const auto compute = host.lock_compute();
    a.shards = link_shards(self, req);
    a.generation = std::make_unique<Generation>(host.model(), *a.shards, req.context_len, req.spec,
                                                &host.tokenizer());
    st.batch->add(req.request_id, *a.generation);
  } catch (const std::exception& e) {
    finish(self, req.request_id, std::string("starting phase 2 failed: ") + e.what(), kind_of(e));
    return;
  }
  queue_step(self);
}

// A request's failure: a worker's unless the error says what else it was.
ErrorKind failure_kind(ErrorKind kind) {
  return kind == ErrorKind::internal ? ErrorKind::worker_failed : kind;
}

void send_token(Self* self, const ActiveQuery& q, GeneratedToken& token) {
  auto out = std::make_shared<RequestToken>();
  out->request_id = q.id;
  TokenEvent& ev = out->event;
  ev.tokens.push_back(token.token);
  ev.text = std::move(token.text);
  if (token.logits) ev.logits.assign(token.logits, token.logits + self->state.options.model->config().vocab_size);
  if (token.logprob) ev.logprobs.push_back(std::move(*token.logprob));
  self->send(q.reply_to, token_atom::value, TokenPtr(std::move(out)));
}

// One step of every active request in one forward (the query prefill of those that just
// joined, one token of the others); a request whose shards failed ends alone.
void step(Self* self) {
  auto& st = self->state;
  st.step_queued = false;
  if (st.batch->empty()) return;
  const ModelHost& host = *st.options.model;
  std::vector<DecodeBatch::Result> results;
  try {
    // In-process shards compute on this backend: one stream, one driver at a time.
    const auto compute = host.lock_compute();
    results = st.batch->step();
  } catch (const std::exception& e) {
    // The shared forward failed outside every request's attention: all of them end with it.
    std::vector<uint64_t> ids;
    for (const auto& [id, q] : st.active) ids.push_back(id);
    for (uint64_t id : ids) finish(self, id, e.what(), failure_kind(kind_of(e)));
    return;
  }
  for (DecodeBatch::Result& r : results) {
    auto it = st.active.find(r.id);
    if (it == st.active.end()) continue;
    if (r.error) {
      const ErrorReport why = report_of(r.error);
      finish(self, r.id, why.message, failure_kind(why.kind));
      continue;
    }
    if (r.produced) send_token(self, *it->second, r.token);
    if (r.generation->finished()) finish(self, r.id, "", ErrorKind::internal);
  }
  queue_step(self);
}

caf::behavior query(Self* self, QueryOptions options) {
  self->state.options = std::move(options);
  const ModelHost& host = *self->state.options.model;
  adopt_compute_threads(host.threads());
  DeviceIpc* ipc = host.backend().ipc();
  self->state.place =
      transport::this_process(ipc ? ipc->device_id() : "", ucx_carries_device_memory(host.backend()));
  self->state.batch = std::make_unique<DecodeBatch>(host.model());
  self->state.ucx = std::make_unique<transport::UcxWorker>();
  self->state.ucx->listen(kAmAttendReply);
  self->state.ucx->listen(kAmIpcOpenReply);
  self->state.ucx->listen(kAmAttendBatchReply);
  const char* batching = std::getenv("STARATTN_BATCH_EXCHANGE");
  if (!batching || std::string(batching) != "0")
    self->state.batcher = std::make_unique<ExchangeBatcher>(
        *self->state.ucx, host.model(), self->state.options.health, self->state.options.exchange_timeout);
  if (self->state.place.ucx_device) {
    self->state.payloads = std::make_shared<DevicePayloadPool>(host.backend());
    sink_device_replies(*self->state.ucx, self->state.payloads);
  }
  self->set_default_handler(caf::drop);
  return {
      [self](start_atom, const StartQueryPtr& req) {
        if (req) start(self, *req);
      },
      [self](step_atom) { step(self); },
      [self](abort_atom, uint64_t id) {
        const auto compute = self->state.options.model->lock_compute();
        self->state.batch->remove(id);
        if (self->state.active.erase(id) > 0) return_freed_memory();
      },
      [self](forget_atom, uint64_t worker_id) {
        auto& st = self->state;
        auto it = st.endpoints.find(worker_id);
        if (it == st.endpoints.end()) return;
        st.ucx->disconnect(it->second);
        st.endpoints.erase(it);
      },
  };
}

}  // namespace

caf::actor spawn_query(caf::actor_system& system, QueryOptions options) {
  return system.spawn<caf::detached>(query, std::move(options));
}

}  // namespace starattn::actors
