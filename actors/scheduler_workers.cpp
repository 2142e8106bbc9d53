#include "actors/scheduler_state.h"

#include "actors/data_plane.h"

namespace starattn::actors::scheduler_detail {

std::string do_register(Self* self, const std::string& bytes) {
  auto& st = self->state;
  wire::RegisterReply reply;
  try {
    const auto reg = wire::decode<wire::RegisterWorker>(bytes, "a registering worker");
    wire::check_version(reg.protocol_version(), "worker '" + reg.name() + "'");
    if (reg.model_digest() != st.options.model->digest())
      throw wire::ProtocolError("worker '" + reg.name() + "' serves another model (digest " +
                                reg.model_digest() + ", the head's is " +
                                st.options.model->digest() + ")");
    if (reg.ucx_address().empty())
      throw wire::ProtocolError("worker '" + reg.name() + "' sent no UCX address");
    auto actor = caf::actor_cast<caf::actor>(self->current_sender());
    if (!actor) throw wire::ProtocolError("registration without a sender");
    Worker w;
    w.id = st.next_worker++;
    w.actor = actor;
    w.name = reg.name();
    w.device = reg.device();
    w.capacity_tokens = reg.capacity_tokens();
    w.ucx_address = reg.ucx_address();
    w.capacity_bytes = reg.capacity_bytes();
    w.phase1_chunk_tokens = reg.phase1_chunk_tokens();
    w.host_id = reg.host_id();
    w.process_id = reg.process_id();
    w.ipc_device = reg.ipc_device();
    w.ucx_device_memory = reg.ucx_device_memory();
    self->monitor(actor);
    log(self, "worker " + std::to_string(w.id) + " registered: " + w.name + " (" + w.device +
                  ", room for " + std::to_string(w.capacity_tokens) + " tokens of KV)");
    reply.set_ok(true);
    reply.set_worker_id(w.id);
    st.workers.emplace(w.id, std::move(w));
  } catch (const std::exception& e) {
    log(self, std::string("refused a registration: ") + e.what());
    reply.set_ok(false);
    reply.set_error(e.what());
  }
  return wire::encode(reply);
}


std::string do_status(Self* self, const std::string& bytes) {
  auto& st = self->state;
  wire::StatusReply reply;
  reply.set_protocol_version(wire::kProtocolVersion);
  try {
    const auto req = wire::decode<wire::StatusRequest>(bytes, "a status client");
    wire::check_version(req.protocol_version(), "the status request");
    for (const auto& [id, w] : st.workers) {
      auto* ws = reply.add_workers();
      ws->set_worker_id(id);
      ws->set_name(w.name);
      ws->set_device(w.device);
      ws->set_capacity_tokens(w.capacity_tokens);
      ws->set_capacity_bytes(w.capacity_bytes);
      ws->set_ucx_address(w.ucx_address);
      ws->set_active_requests(static_cast<int32_t>(w.requests.size()));
      ws->set_kv_tokens_held(w.kv_tokens);
      *ws->mutable_context_cache() = w.context_cache;
      if (w.unresponsive)
        ws->set_unhealthy(st.options.health->dead(id));
    }
    reply.set_active_requests(static_cast<int32_t>(st.requests.size()));
    reply.set_queued_requests(static_cast<int32_t>(st.waiting.size()));
    reply.set_requests_done(st.done);
    reply.set_requests_failed(st.failed);
    reply.set_ok(true);
  } catch (const std::exception& e) {
    reply.set_ok(false);
    reply.set_error(e.what());
  }
  return wire::encode(reply);
}

void on_heartbeat(Self* self, const std::string& bytes) {
  wire::Heartbeat h;
  try {
    h = wire::decode<wire::Heartbeat>(bytes, "a worker");
  } catch (const std::exception&) {
    return;
  }
  auto it = self->state.workers.find(h.worker_id());
  if (it == self->state.workers.end()) return;
  Worker& w = it->second;
  w.last_heartbeat = clock::now();
  if (h.has_context_cache()) w.context_cache = h.context_cache();
  if (w.unresponsive) {
    w.unresponsive = false;
    self->state.options.health->mark_alive(w.id);
    log(self, "context worker " + w.name + " (worker " + std::to_string(w.id) +
                  ") answers again: admitted");
  }
}

void check_heartbeats(Self* self, clock::time_point now) {
  auto& st = self->state;
  for (auto& [id, w] : st.workers) {
    if (w.unresponsive || now - w.last_heartbeat < st.options.heartbeat_timeout) continue;
    w.unresponsive = true;
    const auto quiet = std::chrono::duration_cast<std::chrono::milliseconds>(now - w.last_heartbeat);
    const std::string why = "context worker " + w.name + " (worker " + std::to_string(w.id) +
                            ") stopped answering: no heartbeat for " +
                            std::to_string(quiet.count()) + " ms";
    log(self, why + "; marked unresponsive");
    st.options.health->mark_unresponsive(w.id, why);
    const std::set<uint64_t> held = w.requests;
    for (uint64_t rid : held)
      fail(self, rid, why + ", during request " + std::to_string(rid), ErrorKind::worker_failed);
  }
}

bool forget_worker(Self* self, const caf::down_msg& dm) {
  auto& st = self->state;
  for (auto it = st.workers.begin(); it != st.workers.end(); ++it) {
    if (it->second.actor.address() != dm.source) continue;
    const Worker w = it->second;
    st.holders->forget(it->first);
    st.workers.erase(it);
    const std::string why = "context worker " + w.name + " (worker " + std::to_string(w.id) +
                            ") went away (its process died or its connection to the head broke; CAF says: " +
                            caf::to_string(dm.reason) + ")";
    log(self, why);
    st.options.health->mark_dead(w.id, why);
    self->send(st.options.query, forget_atom::value, w.id);
    for (uint64_t rid : w.requests)
      fail(self, rid, why + ", during request " + std::to_string(rid), ErrorKind::worker_failed);
    return true;
  }
  return false;
}

}  // namespace starattn::actors::scheduler_detail
