#include "actors/scheduler.h"

#include "actors/scheduler_state.h"

#include <caf/all.hpp>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <map>
#include <set>
#include <stdexcept>

#include "actors/block_placement.h"
#include "actors/messages.h"
#include "runtime/block_plan.h"
#include "runtime/engine.h"
#include "runtime/errors.h"
#include "runtime/request_plan.h"
#include "runtime/prompt.h"
#include "transport/wire.h"
#include "transport/wire_convert.h"

namespace starattn::actors {

namespace scheduler_detail {

void log(Self* self, const std::string& text) {
  if (self->state.options.verbose) std::fprintf(stderr, "head: %s\n", text.c_str());
}

// The end of a request, in the form its client submitted in.
void send_finished(Self* self, const caf::actor& client, bool wire_client, uint64_t id,
                   RequestEnd end) {
  if (!client) return;
  if (wire_client) {
    self->send(client, finished_atom::value, wire::encode(wire::to_wire(id, end)));
  } else {
    self->send(client, finished_atom::value,
               FinishedPtr(std::make_shared<const RequestFinished>(RequestFinished{id, std::move(end)})));
  }
}

void release_kv(Self* self, Request& r) {
  wire::ReleaseRequest rel;
  rel.set_protocol_version(wire::kProtocolVersion);
  rel.set_request_id(r.id);
  for (uint64_t w : r.shard_workers) {
    auto it = self->state.workers.find(w);
    if (it == self->state.workers.end()) continue;
    it->second.requests.erase(r.id);
    it->second.kv_tokens -= r.kv[w];
    self->send(it->second.actor, release_atom::value, wire::encode(rel));
  }
  r.kv.clear();
  r.shard_workers.clear();
}

void start_request(Self* self, uint64_t id);

// Starts waiting requests while there is room. Guarded: a request that fails while starting
// ends (and pumps) from inside this loop.
void pump(Self* self) {
  auto& st = self->state;
  if (st.pumping) return;
  st.pumping = true;
  while (!st.waiting.empty() &&
         (st.options.max_running <= 0 || st.running < st.options.max_running)) {
    const uint64_t id = st.waiting.front();
    st.waiting.pop_front();
    start_request(self, id);
  }
  st.pumping = false;
}

// Forgets a request whose client has heard the end; frees its slot for a waiting one.
void end_request(Self* self, std::map<uint64_t, Request>::iterator it) {
  auto& st = self->state;
  if (it->second.running) --st.running;
  else st.waiting.erase(std::remove(st.waiting.begin(), st.waiting.end(), it->first), st.waiting.end());
  st.requests.erase(it);
  pump(self);
}

// Ends a request with an error: the client hears why, every worker frees its KV.
void fail(Self* self, uint64_t id, const std::string& why, ErrorKind kind) {
  auto it = self->state.requests.find(id);
  if (it == self->state.requests.end()) return;
  Request& r = it->second;
  log(self, "request " + std::to_string(id) + " failed: " + why);
  if (r.decoding) self->send(self->state.options.query, abort_atom::value, id);
  release_kv(self, r);
  RequestEnd end;
  end.ok = false;
  end.error = why;
  end.error_kind = kind;
  end.stats = r.stats;
  end.stats.finish_reason = "error";
  end.stats.generated = r.generated;
  send_finished(self, r.client, r.wire_client, id, std::move(end));
  ++self->state.failed;
  end_request(self, it);
}

// The requester's cancel: stops phase 2, frees the KV, and answers with a "cancelled" Finished
// (ok: nothing went wrong) carrying what was generated so far.
void cancel(Self* self, uint64_t request_id) {
  auto& st = self->state;
  auto it = st.requests.find(request_id);
  if (it == st.requests.end()) return;  // ended meanwhile: the client has its Finished already
  Request& r = it->second;
  // Only the requester may cancel: ids are small integers anyone could guess.
  if (!r.client || r.client.address() != self->current_sender()) {
    log(self, "ignored a cancel of request " + std::to_string(r.id) + " from another actor");
    return;
  }
  if (r.decoding) self->send(st.options.query, abort_atom::value, r.id);
  release_kv(self, r);
  RequestEnd end;
  end.stats = r.stats;
  end.stats.finish_reason = "cancelled";
  end.stats.generated = r.generated;
  send_finished(self, r.client, r.wire_client, r.id, std::move(end));
  log(self, "request " + std::to_string(r.id) + " cancelled after " + std::to_string(r.generated) +
                " tokens");
  ++st.done;
  end_request(self, it);
}

void cancel(Self* self, const std::string& bytes) {
  wire::CancelRequest c;
  try {
    c = wire::decode<wire::CancelRequest>(bytes, "a client");
    wire::check_version(c.protocol_version(), "the cancel request");
  } catch (const std::exception& e) {
    log(self, std::string("ignored a cancel: ") + e.what());
    return;
  }
  cancel(self, c.request_id());
}

void refuse_submit(Self* self, const caf::actor& client, bool wire_client, const std::string& why,
                   ErrorKind kind) {
  log(self, "refused a request: " + why);
  RequestEnd end;
  end.ok = false;
  end.error = why;
  end.error_kind = kind;
  end.stats.finish_reason = "error";
  send_finished(self, client, wire_client, 0, std::move(end));
  ++self->state.failed;
}

// Bytes that are no submission of this protocol (garbage, another version): a wire Finished
// with ERROR_PROTOCOL, the one kind that exists only on the wire.
void refuse_bytes(Self* self, const caf::actor& client, const std::string& why) {
  log(self, "refused a request: " + why);
  wire::Finished f;
  f.set_ok(false);
  f.set_error(why);
  f.set_error_kind(wire::ERROR_PROTOCOL);
  f.set_finish_reason("error");
  if (client) self->send(client, finished_atom::value, wire::encode(f));
  ++self->state.failed;
}

void start_phase2(Self* self, Request& r) {
  auto& st = self->state;
  r.stats.phase1_ms = std::chrono::duration<double, std::milli>(clock::now() - r.t0).count();
  const RequestSpec& spec = *r.spec;
  auto s = std::make_shared<StartQuery>();
  s->request_id = r.id;
  s->context_len = static_cast<int64_t>(r.prompt.context.size());
  s->spec.query = r.prompt.query;
  s->spec.max_tokens = spec.max_tokens;
  s->spec.sampling = spec.sampling;
  s->spec.stop_ids = r.stop;
  s->spec.stop_strings = spec.stop_strings;
  s->spec.logits = spec.logits;
  s->spec.want_logits = spec.want_logits;
  for (uint64_t w : r.shard_workers) {
    const Worker& wk = st.workers.at(w);
    s->shards.push_back(ShardRef{w, wk.name, wk.ucx_address, wk.host_id, wk.process_id, wk.ipc_device,
                                      wk.ucx_device_memory});
  }
  r.decoding = true;
  self->send(st.options.query, start_atom::value, StartQueryPtr(std::move(s)));
}


// Lays out the request's prompt and checks what does not depend on the workers; throws (see
// kind_of) when the request cannot run.
void prepare(Self* self, Request& r) {
  auto& st = self->state;
  const ModelConfig& cfg = st.options.model->config();
  const ModelHost& host = *st.options.model;
  const RequestSpec& q = *r.spec;
  // The same layout as the Engine's and `starattn run --engine`'s (runtime/prompt.h).
  r.prompt = resolve_prompt(q.prompt, host.tokenizer(), host.chat_template(), st.chat,
                            cfg.bos_token_id);
  validate_request(r.prompt.context, r.prompt.query, q.max_tokens, cfg, q.beyond_positions);
  const int64_t limit = st.options.max_context_tokens;
  const auto C = static_cast<int64_t>(r.prompt.context.size());
  if (limit > 0 && C > limit)
    throw Error(ErrorKind::capacity,
                "context of " + std::to_string(C) +
                    " tokens is larger than this server's limit of " + std::to_string(limit) +
                    " context tokens");
  r.stop = resolve_stop_ids(q.stop_ids, q.ignore_eos, cfg);
}

// Context reuse: the runs of the plan (its blocks, merge order and so its results unchanged) go
// to the live workers that hold their blocks where that fits, else as the plan says.
void place_on_holders(Self* self, const Request& r, const RequestPlan& plan,
                      const std::vector<const Worker*>& live, const std::vector<int64_t>& room,
                      std::vector<std::vector<BlockSpec>>& runs, std::vector<uint64_t>& run_workers) {
  auto& st = self->state;
  std::vector<uint64_t> ids;
  for (const Worker* w : live) ids.push_back(w->id);
  std::vector<size_t> default_order;
  std::vector<std::vector<std::string>> digests;
  for (size_t i = 0; i < plan.runs.size(); ++i) {
    if (plan.runs[i].empty()) continue;
    runs.push_back(plan.runs[i]);
    default_order.push_back(i);
    digests.push_back(st.holders->run_digests(r.prompt.context, plan.anchor_size, plan.runs[i]));
  }
  const int64_t anchor = std::min<int64_t>(plan.anchor_size, static_cast<int64_t>(r.prompt.context.size()));
  const auto fits = [&](size_t run, size_t worker) {
    return st.memory.run_bytes(runs[run], anchor, plan.phase1_chunk) <= room[worker];
  };
  for (size_t w : st.holders->place(digests, ids, default_order, fits))
    run_workers.push_back(ids[w]);
}

// Every worker unpins the blocks pinned under `context_id` (DELETE /v1/contexts/{id}).
void unpin_context(Self* self, const std::string& context_id) {
  wire::ReleaseRequest rel;
  rel.set_protocol_version(wire::kProtocolVersion);
  rel.set_unpin_context(context_id);
  const std::string bytes = wire::encode(rel);
  for (const auto& [id, w] : self->state.workers) self->send(w.actor, release_atom::value, bytes);
}

// Plans the blocks exactly as Engine::generate does, over the workers live now, and sends each
// worker its run. Fails the request when it cannot be placed.
void start_request(Self* self, uint64_t id) {
  auto& st = self->state;
  auto found = st.requests.find(id);
  if (found == st.requests.end()) return;
  Request& r = found->second;
  r.running = true;
  ++st.running;
  r.t0 = clock::now();  // phase 1 starts now, not when the request began to wait
  r.stats.queue_ms = std::chrono::duration<double, std::milli>(r.t0 - r.admitted).count();
  std::vector<std::vector<BlockSpec>> runs;
  std::vector<uint64_t> run_workers;
  try {
    const RequestSpec& q = *r.spec;
    const auto C = static_cast<int64_t>(r.prompt.context.size());
    // The workers that can take work now: registered and answering heartbeats.
    std::vector<const Worker*> live;
    std::vector<int64_t> room;
    // The largest forward any of them runs: a whole block where one encodes unchunked.
    int64_t chunk = 0;
    bool whole_blocks = false;
    for (const auto& [wid, w] : st.workers) {
      if (w.unresponsive) continue;
      live.push_back(&w);
      room.push_back(w.capacity_bytes > 0 ? w.capacity_bytes
                                          : w.capacity_tokens * st.memory.per_token);
      whole_blocks |= w.phase1_chunk_tokens <= 0;
      chunk = std::max(chunk, w.phase1_chunk_tokens);
    }
    BlockRequest br;
    br.phase1_chunk = whole_blocks ? 0 : chunk;
    br.context_len = C;
    br.mode = q.mode;
    br.block_size = q.block_size;
    br.anchor_size = q.anchor_size;
    br.use_anchor = q.use_anchor;
    const RequestPlan plan = plan_request(
        br, room, st.memory,
        "the " + std::to_string(live.size()) + " live worker(s)" +
            (live.size() < st.workers.size()
                 ? " (" + std::to_string(st.workers.size() - live.size()) + " unresponsive)"
                 : std::string()));
    r.stats.context_tokens = C;
    r.stats.query_tokens = static_cast<int64_t>(r.prompt.query.size());
    r.stats.block_size = plan.block_size;
    r.stats.anchor_size = plan.anchor_size;
    r.stats.blocks = static_cast<int>(plan.blocks.size());
    place_on_holders(self, r, plan, live, room, runs, run_workers);
  } catch (const std::exception& e) {
    return fail(self, id, e.what(), kind_of(e));
  }

  r.shard_workers = run_workers;
  r.stats.workers_used = static_cast<int>(run_workers.size());
  log(self, "request " + std::to_string(id) + ": context " +
                std::to_string(r.stats.context_tokens) + " tokens in " +
                std::to_string(r.stats.blocks) + " blocks on " +
                std::to_string(run_workers.size()) + " workers");
  const std::vector<int32_t>& context = r.prompt.context;
  const int64_t a = r.stats.anchor_size;
  wire::EncodeRequest base;
  base.set_protocol_version(wire::kProtocolVersion);
  base.set_request_id(id);
  base.set_pin_context(r.spec->pin_context);
  for (int64_t i = 0; i < std::min<int64_t>(a, static_cast<int64_t>(context.size())); ++i)
    base.add_anchor(context[static_cast<size_t>(i)]);
  size_t k = 0;
  for (const auto& run : runs) {
    if (run.empty()) continue;
    Worker& w = st.workers.at(run_workers[k++]);
    w.requests.insert(id);
    wire::EncodeRequest e = base;
    int64_t tokens = 0;
    for (const BlockSpec& blk : run) {
      auto* pb = e.add_blocks();
      pb->set_index(blk.index);
      pb->set_start(blk.start);
      for (int64_t t = blk.start; t < blk.start + blk.length; ++t)
        pb->add_tokens(context[static_cast<size_t>(t)]);
      tokens += blk.length;
    }
    // Counted from the moment the encode is sent: release_kv() uncounts it whatever happens.
    w.kv_tokens += tokens;
    r.kv[w.id] = tokens;
    ++r.pending_encodes;
    const std::string wname = w.name;
    const uint64_t wid = w.id;
    auto digests = std::make_shared<std::vector<std::string>>(
        st.holders->run_digests(context, a, run));
    self->request(w.actor, st.options.encode_timeout, encode_atom::value, wire::encode(e))
        .then(
            [self, id, wname, wid, digests](const std::string& reply) {
              auto it = self->state.requests.find(id);
              if (it == self->state.requests.end()) return;  // failed or cancelled meanwhile
              wire::EncodeReply rep;
              try {
                rep = wire::decode<wire::EncodeReply>(reply, "worker " + wname);
              } catch (const std::exception& ex) {
                return fail(self, id, ex.what());
              }
              if (!rep.ok()) return fail(self, id, rep.error());
              self->state.holders->record(*digests, wid);
              it->second.stats.blocks_reused += rep.blocks_reused();
              if (rep.shared_kv())
                std::fprintf(stderr, "head: request %llu: worker %s shares a running request's K/V of these blocks\n",
                             static_cast<unsigned long long>(id), wname.c_str());
              if (--it->second.pending_encodes == 0) start_phase2(self, it->second);
            },
            [self, id, wname](const caf::error& err) {
              fail(self, id, "context worker " + wname + " did not encode its blocks: " +
                                 caf::to_string(err));
            });
  }
  if (r.pending_encodes == 0) start_phase2(self, r);  // an empty context
}

void admit(Self* self, const caf::actor& client, bool wire_client, SubmitPtr spec) {
  auto& st = self->state;
  Request r;
  r.client = client;
  r.wire_client = wire_client;
  r.spec = std::move(spec);
  try {
    prepare(self, r);
  } catch (const std::exception& e) {
    refuse_submit(self, client, wire_client, e.what(), kind_of(e));
    return;
  }
  const bool must_wait = st.options.max_running > 0 && st.running >= st.options.max_running;
  if (must_wait && static_cast<int64_t>(st.waiting.size()) >= st.options.max_queue) {
    refuse_submit(self, client, wire_client,
                  "the server is busy: " + std::to_string(st.waiting.size()) +
                      " requests are already waiting (limit " +
                      std::to_string(st.options.max_queue) + ")",
                  ErrorKind::overloaded);
    return;
  }
  r.id = st.next_request++;
  const uint64_t id = r.id;
  st.requests.emplace(id, std::move(r));
  if (client) {
    self->monitor(client);
    if (wire_client) {
      wire::Accepted acc;
      acc.set_request_id(id);
      self->send(client, accepted_atom::value, wire::encode(acc));
    } else {
      self->send(client, accepted_atom::value, id);
    }
  }
  if (must_wait) {
    st.waiting.push_back(id);
    log(self, "request " + std::to_string(id) + " waits (" + std::to_string(st.waiting.size()) +
                  " in the queue)");
    return;
  }
  start_request(self, id);
}

// A submission from a remote client (or any client that speaks bytes): its image on the wire
// becomes the runtime's RequestSpec, and the client is answered in bytes.
void admit_bytes(Self* self, const caf::actor& client, const std::string& bytes) {
  SubmitPtr spec;
  try {
    const auto submit = wire::decode<wire::SubmitRequest>(bytes, "a client");
    wire::check_version(submit.protocol_version(), "the client");
    try {
      spec = std::make_shared<const RequestSpec>(wire::from_wire(submit));
    } catch (const std::exception& e) {
      refuse_submit(self, client, true, e.what(), kind_of(e));
      return;
    }
  } catch (const std::exception& e) {
    refuse_bytes(self, client, e.what());
    return;
  }
  admit(self, client, true, std::move(spec));
}

// The scheduler's timer: workers whose heartbeats stopped, and requests past their deadline.
void on_tick(Self* self) {
  auto& st = self->state;
  const auto now = clock::now();
  check_heartbeats(self, now);
  if (st.options.request_deadline.count() > 0) {
    std::vector<uint64_t> late;
    for (const auto& [rid, r] : st.requests)
      if (now - r.admitted > st.options.request_deadline) late.push_back(rid);
    for (uint64_t rid : late)
      fail(self, rid,
           "request " + std::to_string(rid) + " passed its deadline of " +
               std::to_string(st.options.request_deadline.count()) + " ms",
           ErrorKind::timeout);
  }
  const auto period = std::min<std::chrono::milliseconds>(std::chrono::milliseconds(250),
                                                         st.options.heartbeat_timeout / 4);
  self->delayed_send(self, period, tick_atom::value);
}

void on_down(Self* self, const caf::down_msg& dm) {
  auto& st = self->state;
  if (forget_worker(self, dm)) return;
  // A client that went away: its requests have nobody to stream to.
  std::vector<uint64_t> orphaned;
  for (const auto& [id, r] : st.requests)
    if (r.client && r.client.address() == dm.source) orphaned.push_back(id);
  for (uint64_t id : orphaned) {
    auto it = st.requests.find(id);
    if (it == st.requests.end()) continue;
    it->second.client = nullptr;
    fail(self, id, "the client went away");
  }
}

caf::behavior scheduler(Self* self, SchedulerOptions options) {
  self->state.options = std::move(options);
  const ModelHost& host = *self->state.options.model;
  // Byte-level models have no template; chats then use the fallback EngineService uses too.
  self->state.chat = host.chat_for_messages();
  // Workers run the head's model; their backend's activation dtype sets the bytes per token
  // (bf16 on gpus, f32 on the cpu): the head plans with its own, the common case.
  self->state.memory = MemoryModel::of(host.config(), host.backend().activation_dtype());
  self->state.holders = std::make_unique<BlockHolders>(host.digest());
  self->set_default_handler(caf::drop);
  self->set_down_handler([self](const caf::down_msg& dm) { on_down(self, dm); });
  self->send(self, tick_atom::value);
  return {
      [self](heartbeat_atom, const std::string& bytes) { on_heartbeat(self, bytes); },
      [self](unpin_atom, const std::string& context_id) { unpin_context(self, context_id); },
      [self](tick_atom) { on_tick(self); },
      [self](register_atom, const std::string& bytes) { return do_register(self, bytes); },
      [self](status_atom, const std::string& bytes) { return do_status(self, bytes); },
      [self](submit_atom, const std::string& bytes) {
        admit_bytes(self, caf::actor_cast<caf::actor>(self->current_sender()), bytes);
      },
      [self](submit_atom, const SubmitPtr& spec) {
        auto client = caf::actor_cast<caf::actor>(self->current_sender());
        if (!spec) return refuse_submit(self, client, false, "an empty submission", ErrorKind::internal);
        admit(self, client, false, spec);
      },
      [self](cancel_atom, const std::string& bytes) { cancel(self, bytes); },
      [self](cancel_atom, uint64_t id) { cancel(self, id); },
      [self](token_atom, const TokenPtr& token) {
        // From the query actor: forward to the requester.
        auto it = self->state.requests.find(token->request_id);
        if (it == self->state.requests.end()) return;  // failed or cancelled meanwhile
        Request& r = it->second;
        ++r.generated;
        if (!r.client) return;
        if (r.wire_client)
          self->send(r.client, token_atom::value, wire::encode(wire::to_wire(r.id, token->event)));
        else
          self->send(r.client, token_atom::value, token);
      },
      [self](finished_atom, const FinishedPtr& f) {
        // From the query actor: its part of the stats (phase 2, the data plane).
        auto it = self->state.requests.find(f->request_id);
        if (it == self->state.requests.end()) return;  // failed already
        const RequestEnd& q = f->end;
        if (!q.ok) return fail(self, f->request_id, q.error, q.error_kind);
        Request& r = it->second;
        RequestEnd out;
        out.stats = r.stats;
        out.stats.finish_reason = q.stats.finish_reason;
        out.stats.text_tail = q.stats.text_tail;
        out.stats.generated = q.stats.generated;
        out.stats.first_token_ms = q.stats.first_token_ms;
        out.stats.decode_ms = q.stats.decode_ms;
        out.stats.exchanges = q.stats.exchanges;
        out.stats.exchange_mean_us = q.stats.exchange_mean_us;
        out.stats.exchange_p50_us = q.stats.exchange_p50_us;
        out.stats.exchange_max_us = q.stats.exchange_max_us;
        release_kv(self, r);
        send_finished(self, r.client, r.wire_client, r.id, std::move(out));
        log(self, "request " + std::to_string(r.id) + " done: " +
                      std::to_string(q.stats.generated) + " tokens (" + q.stats.finish_reason + ")");
        ++self->state.done;
        end_request(self, it);
      },
  };
}

}  // namespace scheduler_detail

caf::actor spawn_scheduler(caf::actor_system& system, SchedulerOptions options) {
  return system.spawn(scheduler_detail::scheduler, std::move(options));
}

}  // namespace starattn::actors
