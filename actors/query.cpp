#include "actors/query.h"

#include <caf/all.hpp>

#include <algorithm>
#include <cstdio>
#include <map>

#include "actors/messages.h"
#include "runtime/errors.h"
#include "runtime/generation.h"
#include "transport/peer_path.h"
#include "transport/wire.h"
#include "transport/wire_convert.h"

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
  std::map<uint64_t, transport::UcxWorker::EpId> endpoints;  // worker id -> endpoint
  std::map<uint64_t, std::unique_ptr<ActiveQuery>> active;
  // Sessions hold backend buffers and endpoints: drop them before the UCX worker goes.
  ~QueryState() {
    active.clear();
    ucx.reset();
  }
};

using Self = caf::stateful_actor<QueryState>;

void finish(Self* self, uint64_t id, const std::string& error, ErrorKind kind) {
  auto it = self->state.active.find(id);
  if (it == self->state.active.end()) return;
  ActiveQuery& q = *it->second;
  wire::Finished f;
  f.set_request_id(id);
  f.set_ok(error.empty());
  f.set_error(error);
  if (!error.empty()) f.set_error_kind(wire::to_wire(kind));
  if (q.generation) {
    const Generation& g = *q.generation;
    f.set_finish_reason(error.empty() ? g.finish_reason() : "error");
    f.set_generated(g.generated());
    f.set_first_token_ms(g.first_token_ms());
    if (error.empty()) {
      f.set_decode_ms(g.decode_ms());
      f.set_text_tail(q.generation->text_tail());
    }
  } else {
    f.set_finish_reason("error");
  }
  if (q.shards) {
    const ExchangeStats& s = q.shards->stats();
    f.set_exchanges(static_cast<int64_t>(s.us.size()));
    f.set_exchange_mean_us(s.mean());
    f.set_exchange_p50_us(s.percentile(0.5));
    f.set_exchange_max_us(s.max());
  }
  self->send(q.reply_to, finished_atom::value, wire::encode(f));
  self->state.active.erase(it);
  return_freed_memory();
}

// The links to a request's shards, each on the nearest path (transport/peer_path.h).
std::unique_ptr<ShardLinks> link_shards(Self* self, const wire::StartQuery& req) {
  auto& st = self->state;
  const ModelHost& host = *st.options.model;
  std::vector<ShardLinks::Link> links;
  for (const auto& s : req.shards()) {
    ShardLinks::Link l;
    l.worker_id = s.worker_id();
    l.name = s.name();
    const transport::PeerPlace peer{s.host_id(), s.process_id(), s.ipc_device()};
    l.local = ShardServer::find_in_process(s.ucx_address(), req.request_id(), &host.backend());
    const transport::PathChoice choice = transport::choose_data_path(st.place, peer, l.local != nullptr);
    l.path = choice.path;
    if (l.path != transport::DataPath::in_process) {
      l.local.reset();
      auto ep = st.endpoints.find(s.worker_id());
      if (ep == st.endpoints.end()) {
        // Same-host peers go over shared memory, which UCX 1.13 offers only without its
        // peer-failure mode: the control plane watches them instead.
        const bool same_host = !peer.host_id.empty() && peer.host_id == st.place.host_id;
        ep = st.endpoints
                 .emplace(s.worker_id(),
                          st.ucx->connect(s.ucx_address(), s.name(),
                                          same_host ? transport::UcxWorker::PeerFailure::control_plane
                                                    : transport::UcxWorker::PeerFailure::detect))
                 .first;
      }
      l.ep = ep->second;
    }
    links.push_back(std::move(l));
  }
  auto out = std::make_unique<ShardLinks>(*st.ucx, host.model(), req.request_id(), std::move(links),
                                          st.options.health, st.options.exchange_timeout,
                                          std::max(req.query_size(), 1));
  if (st.options.verbose || std::getenv("STARATTN_LOG_PATHS"))
    std::fprintf(stderr, "head: request %llu data paths: %s\n",
                 static_cast<unsigned long long>(req.request_id()), out->describe().c_str());
  return out;
}

void start(Self* self, const std::string& bytes) {
  auto& st = self->state;
  const auto req = wire::decode<wire::StartQuery>(bytes, "the scheduler");
  wire::check_version(req.protocol_version(), "the start request");
  const ModelHost& host = *st.options.model;
  auto q = std::make_unique<ActiveQuery>();
  q->id = req.request_id();
  q->reply_to = caf::actor_cast<caf::actor>(self->current_sender());
  ActiveQuery& a = *q;
  st.active[req.request_id()] = std::move(q);
  try {
    const auto compute = host.lock_compute();
    a.shards = link_shards(self, req);
    GenerationSpec spec;
    spec.query.assign(req.query().begin(), req.query().end());
    spec.max_tokens = req.max_tokens();
    spec.sampling = wire::from_wire(req.sampling());
    spec.stop_ids.assign(req.stop_ids().begin(), req.stop_ids().end());
    for (const auto& s : req.stop_strings()) spec.stop_strings.push_back(s);
    spec.logits = wire::from_wire(req.logits());
    spec.want_logits = req.want_logits();
    a.generation = std::make_unique<Generation>(host.model(), *a.shards, req.context_len(),
                                                std::move(spec), &host.tokenizer());
  } catch (const std::exception& e) {
    finish(self, req.request_id(), std::string("starting phase 2 failed: ") + e.what(), kind_of(e));
    return;
  }
  self->send(self, step_atom::value, req.request_id());
}

// One step of the request's Generation (the query prefill, then one token), then the next
// step goes to the back of the mailbox so requests in flight interleave.
void step(Self* self, uint64_t id) {
  auto it = self->state.active.find(id);
  if (it == self->state.active.end()) return;  // aborted meanwhile
  ActiveQuery& q = *it->second;
  const ModelHost& host = *self->state.options.model;
  GeneratedToken token;
  bool more = false;
  try {
    // In-process shards compute on this backend: one stream, one driver at a time.
    const auto compute = host.lock_compute();
    more = q.generation->step(token);
  } catch (const std::exception& e) {
    return finish(self, id, e.what(), kind_of(e) == ErrorKind::internal ? ErrorKind::worker_failed
                                                                         : kind_of(e));
  }
  if (!more) return finish(self, id, "", ErrorKind::internal);
  wire::TokenEvent ev;
  ev.set_request_id(id);
  ev.set_token(token.token);
  ev.set_text(token.text);
  if (token.logits)
    ev.set_logits(token.logits, static_cast<size_t>(host.config().vocab_size) * sizeof(float));
  if (token.logprob) wire::to_wire(*token.logprob, ev.mutable_logprob());
  self->send(q.reply_to, token_atom::value, wire::encode(ev));
  self->send(self, step_atom::value, id);
}

caf::behavior query(Self* self, QueryOptions options) {
  self->state.options = std::move(options);
  const ModelHost& host = *self->state.options.model;
  adopt_compute_threads(host.threads());
  DeviceIpc* ipc = host.backend().ipc();
  self->state.place = transport::this_process(ipc ? ipc->device_id() : "");
  self->state.ucx = std::make_unique<transport::UcxWorker>();
  self->state.ucx->listen(kAmAttendReply);
  self->state.ucx->listen(kAmIpcOpenReply);
  self->set_default_handler(caf::drop);
  return {
      [self](start_atom, const std::string& bytes) {
        try {
          start(self, bytes);
        } catch (const std::exception& e) {
          std::fprintf(stderr, "query actor: refused a start request: %s\n", e.what());
        }
      },
      [self](step_atom, uint64_t id) { step(self, id); },
      [self](abort_atom, uint64_t id) {
        const auto compute = self->state.options.model->lock_compute();
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
