#include "actors/context_block.h"

#include <caf/all.hpp>

#include <chrono>
#include <cstdio>
#include <map>

#include "actors/data_plane.h"
#include "actors/messages.h"
#include "runtime/star_attention.h"
#include "transport/wire.h"

namespace starattn::actors {
namespace {

struct ContextState {
  ContextBlockOptions options;
  std::unique_ptr<ShardServer> server;
  uint64_t worker_id = 0;
  std::map<uint64_t, int64_t> held;  // request id -> tokens of KV held
  // Last member: stops the data-plane thread before anything it uses goes away.
  ~ContextState() { server.reset(); }
};

using Self = caf::stateful_actor<ContextState>;

// Tells the scheduler every `interval` that this process is alive. A light actor on CAF's
// scheduler, linked to its context_block: a long encode in the context_block's thread does not
// silence it, a stopped or hung process does.
caf::behavior heartbeat(caf::event_based_actor* self, caf::actor scheduler, uint64_t worker_id,
                        std::chrono::milliseconds interval) {
  self->send(self, tick_atom::value);
  return {[=](tick_atom) {
    wire::Heartbeat h;
    h.set_worker_id(worker_id);
    self->send(scheduler, heartbeat_atom::value, wire::encode(h));
    self->delayed_send(self, interval, tick_atom::value);
  }};
}

std::string encode_blocks(Self* self, const std::string& bytes) {
  wire::EncodeReply reply;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    const auto req = wire::decode<wire::EncodeRequest>(bytes, "the scheduler");
    wire::check_version(req.protocol_version(), "the encode request");
    const ModelHost& host = *self->state.options.model;
    std::vector<int32_t> anchor(req.anchor().begin(), req.anchor().end());
    std::vector<BlockSpec> blocks;
    std::vector<std::vector<int32_t>> tokens;
    int64_t n = 0;
    for (const auto& b : req.blocks()) {
      for (int32_t id : b.tokens())
        if (id < 0 || id >= host.config().vocab_size)
          throw std::invalid_argument("token id " + std::to_string(id) + " outside the vocabulary");
      blocks.push_back({b.index(), b.start(), static_cast<int64_t>(b.tokens_size())});
      tokens.emplace_back(b.tokens().begin(), b.tokens().end());
      n += b.tokens_size();
    }
    auto compute = host.lock_compute();
    auto shard = std::make_shared<ContextShard>(host.model(), n);
    shard->encode(anchor, blocks, tokens);
    host.backend().synchronize();
    if (compute.owns_lock()) compute.unlock();
    self->state.server->add(req.request_id(), shard);
    self->state.held[req.request_id()] = n;
    reply.set_ok(true);
    reply.set_tokens(n);
  } catch (const std::exception& e) {
    reply.set_ok(false);
    reply.set_error(self->state.options.name + ": encoding failed: " + e.what());
  }
  reply.set_encode_ms(
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  return wire::encode(reply);
}

std::string status(Self* self, const std::string& bytes) {
  wire::StatusReply reply;
  reply.set_protocol_version(wire::kProtocolVersion);
  try {
    const auto req = wire::decode<wire::StatusRequest>(bytes, "a status client");
    wire::check_version(req.protocol_version(), "the status request");
    auto* w = reply.add_workers();
    w->set_worker_id(self->state.worker_id);
    w->set_name(self->state.options.name);
    w->set_device(self->state.options.device);
    w->set_ucx_address(self->state.server->address());
    w->set_active_requests(self->state.server->active());
    int64_t held = 0;
    for (const auto& [id, n] : self->state.held) held += n;
    w->set_kv_tokens_held(held);
    reply.set_active_requests(self->state.server->active());
    reply.set_ok(true);
  } catch (const std::exception& e) {
    reply.set_ok(false);
    reply.set_error(e.what());
  }
  return wire::encode(reply);
}

caf::behavior context_block(Self* self, ContextBlockOptions options) {
  self->state.options = std::move(options);
  auto& st = self->state;
  const ModelHost& host = *st.options.model;
  adopt_compute_threads(host.threads());
  st.server = std::make_unique<ShardServer>(host, host.threads(), st.options.name);

  wire::RegisterWorker reg;
  reg.set_protocol_version(wire::kProtocolVersion);
  reg.set_name(st.options.name);
  reg.set_device(st.options.device);
  reg.set_capacity_tokens(host.kv_capacity_tokens(st.options.kv_fraction));
  reg.set_ucx_address(st.server->address());
  reg.set_model_digest(host.digest());
  reg.set_capacity_bytes(host.room_bytes(st.options.kv_fraction));
  DeviceIpc* ipc = host.backend().ipc();
  const transport::PeerPlace place =
      transport::this_process(ipc ? ipc->device_id() : "", ucx_carries_device_memory(host.backend()));
  reg.set_host_id(place.host_id);
  reg.set_process_id(place.process_id);
  reg.set_ipc_device(place.ipc_device);
  reg.set_ucx_device_memory(place.ucx_device);
  self->set_default_handler(caf::drop);  // a stray message gets an error, not a log line
  self->monitor(st.options.scheduler);
  self->set_down_handler([self](const caf::down_msg& dm) {
    if (dm.source == self->state.options.scheduler.address()) {
      std::fprintf(stderr, "%s: lost the head (%s), stopping\n", self->state.options.name.c_str(),
                   caf::to_string(dm.reason).c_str());
      self->quit(dm.reason);
    }
  });
  self->request(st.options.scheduler, std::chrono::seconds(30), register_atom::value,
                wire::encode(reg))
      .then(
          [self](const std::string& bytes) {
            auto& s = self->state;
            wire::RegisterReply r;
            try {
              r = wire::decode<wire::RegisterReply>(bytes, "the head");
            } catch (const std::exception& e) {
              r.set_ok(false);
              r.set_error(e.what());
            }
            if (!r.ok()) {
              std::fprintf(stderr, "%s: the head refused the registration: %s\n",
                           s.options.name.c_str(), r.error().c_str());
              self->quit(caf::sec::runtime_error);
              return;
            }
            s.worker_id = r.worker_id();
            self->spawn<caf::linked>(heartbeat, s.options.scheduler, s.worker_id,
                                     s.options.heartbeat_interval);
            if (s.options.verbose)
              std::fprintf(stderr, "%s: registered with the head as worker %llu\n",
                           s.options.name.c_str(), static_cast<unsigned long long>(s.worker_id));
          },
          [self](const caf::error& e) {
            std::fprintf(stderr, "%s: registration with the head failed: %s\n",
                         self->state.options.name.c_str(), caf::to_string(e).c_str());
            self->quit(e);
          });

  return {
      [self](encode_atom, const std::string& bytes) { return encode_blocks(self, bytes); },
      [self](release_atom, const std::string& bytes) {
        try {
          const auto r = wire::decode<wire::ReleaseRequest>(bytes, "the scheduler");
          wire::check_version(r.protocol_version(), "the release request");
          self->state.server->remove(r.request_id());
          self->state.held.erase(r.request_id());
        } catch (const std::exception& e) {
          std::fprintf(stderr, "%s: ignored a release: %s\n", self->state.options.name.c_str(),
                       e.what());
        }
      },
      [self](status_atom, const std::string& bytes) { return status(self, bytes); },
  };
}

}  // namespace

caf::actor spawn_context_block(caf::actor_system& system, ContextBlockOptions options) {
  return system.spawn<caf::detached>(context_block, std::move(options));
}

}  // namespace starattn::actors
