#include "actors/query.h"

#include <caf/all.hpp>

#include <algorithm>
#include <cstdio>
#include <map>

#include "actors/messages.h"
#include "runtime/star_attention.h"
#include "transport/wire.h"

namespace starattn::actors {
namespace {

using clock = std::chrono::steady_clock;

double ms_between(clock::time_point a, clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

struct ActiveQuery {
  wire::StartQuery start;
  caf::actor reply_to;
  std::unique_ptr<RemoteShards> shards;
  std::unique_ptr<QuerySession> session;
  std::unique_ptr<StreamDecoder> decoder;
  std::vector<int32_t> stop;
  std::vector<float> host_logits;
  int step = 0;
  int generated = 0;
  clock::time_point t_start, t_decode;
  double first_token_ms = 0;
};

struct QueryState {
  QueryOptions options;
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

void finish(Self* self, uint64_t id, const std::string& error, const std::string& reason) {
  auto it = self->state.active.find(id);
  if (it == self->state.active.end()) return;
  ActiveQuery& q = *it->second;
  wire::Finished f;
  f.set_request_id(id);
  f.set_ok(error.empty());
  f.set_error(error);
  f.set_finish_reason(reason);
  f.set_generated(q.generated);
  f.set_first_token_ms(q.first_token_ms);
  if (q.generated > 0 && error.empty()) f.set_decode_ms(ms_between(q.t_decode, clock::now()));
  if (q.decoder) f.set_text_tail(q.decoder->flush());
  if (q.shards) {
    const ExchangeStats& s = q.shards->stats();
    f.set_exchanges(static_cast<int64_t>(s.us.size()));
    f.set_exchange_mean_us(s.mean());
    f.set_exchange_p50_us(s.percentile(0.5));
    f.set_exchange_max_us(s.max());
  }
  self->send(q.reply_to, finished_atom::value, wire::encode(f));
  self->state.active.erase(it);
}

void start(Self* self, const std::string& bytes) {
  auto& st = self->state;
  const auto req = wire::decode<wire::StartQuery>(bytes, "the scheduler");
  wire::check_version(req.protocol_version(), "the start request");
  const ModelHost& host = *st.options.model;
  auto q = std::make_unique<ActiveQuery>();
  q->start = req;
  q->reply_to = caf::actor_cast<caf::actor>(self->current_sender());
  q->t_start = clock::now();
  st.active[req.request_id()] = std::move(q);
  ActiveQuery& a = *st.active[req.request_id()];
  try {
    std::vector<RemoteShards::Shard> shards;
    for (const auto& s : req.shards()) {
      auto ep = st.endpoints.find(s.worker_id());
      if (ep == st.endpoints.end())
        ep = st.endpoints.emplace(s.worker_id(), st.ucx->connect(s.ucx_address(), s.name())).first;
      shards.push_back({s.worker_id(), s.name(), ep->second});
    }
    a.shards = std::make_unique<RemoteShards>(*st.ucx, host.model(), req.request_id(),
                                              std::move(shards), st.options.health,
                                              st.options.exchange_timeout);
    const int64_t capacity = req.query_size() + std::max(0, req.max_tokens());
    a.session = std::make_unique<QuerySession>(host.model(), *a.shards, req.context_len(), capacity);
    a.decoder = std::make_unique<StreamDecoder>(host.tokenizer());
    a.stop.assign(req.stop_ids().begin(), req.stop_ids().end());
    if (req.want_logits()) a.host_logits.resize(static_cast<size_t>(host.config().vocab_size));
  } catch (const std::exception& e) {
    finish(self, req.request_id(), std::string("starting phase 2 failed: ") + e.what(), "error");
    return;
  }
  self->send(self, step_atom::value, req.request_id());
}

// One step of Engine::generate's loop: (query prefill when step 0), sample, emit, feed.
void step(Self* self, uint64_t id) {
  auto it = self->state.active.find(id);
  if (it == self->state.active.end()) return;  // aborted meanwhile
  ActiveQuery& q = *it->second;
  const ModelHost& host = *self->state.options.model;
  Backend& be = host.backend();
  const wire::StartQuery& r = q.start;
  try {
    if (q.step == 0) q.session->feed(std::vector<int32_t>(r.query().begin(), r.query().end()));
    if (q.step >= r.max_tokens()) return finish(self, id, "", "length");
    SamplingParams sp;
    sp.temperature = r.sampling().temperature();
    sp.top_k = r.sampling().top_k();
    sp.top_p = r.sampling().top_p();
    sp.seed = r.sampling().seed();
    const int32_t token = be.sample(q.session->logits(), sp, static_cast<uint64_t>(q.step));
    if (!q.host_logits.empty()) be.download(q.session->logits(), q.host_logits.data());
    if (q.step == 0) {
      q.first_token_ms = ms_between(q.t_start, clock::now());
      q.t_decode = clock::now();
    }
    if (std::find(q.stop.begin(), q.stop.end(), token) != q.stop.end())
      return finish(self, id, "", "stop");
    ++q.generated;
    wire::TokenEvent ev;
    ev.set_request_id(id);
    ev.set_token(token);
    ev.set_text(q.decoder->push(token));
    if (!q.host_logits.empty())
      ev.set_logits(q.host_logits.data(), q.host_logits.size() * sizeof(float));
    self->send(q.reply_to, token_atom::value, wire::encode(ev));
    ++q.step;
    if (q.step >= r.max_tokens()) return finish(self, id, "", "length");
    q.session->feed({token});
  } catch (const std::exception& e) {
    return finish(self, id, e.what(), "error");
  }
  self->send(self, step_atom::value, id);
}

caf::behavior query(Self* self, QueryOptions options) {
  self->state.options = std::move(options);
  adopt_compute_threads(self->state.options.model->threads());
  self->state.ucx = std::make_unique<transport::UcxWorker>();
  self->state.ucx->listen(kAmAttendReply);
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
      [self](abort_atom, uint64_t id) { self->state.active.erase(id); },
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
