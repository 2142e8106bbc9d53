#include "actors/context_block.h"

#include <caf/all.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>

#include "actors/data_plane.h"
#include "actors/messages.h"
#include "runtime/context_cache.h"
#include "runtime/phase1_pacer.h"
#include "runtime/request_plan.h"
#include "runtime/star_attention.h"
#include "transport/wire.h"
#include "transport/wire_convert.h"

namespace starattn::actors {
namespace {

// The cache's metrics as of the last change, for the heartbeat actor: it must not hold the
// cache itself (whose K/V lives on this actor's backend) past this actor's end.
struct CacheBoard {
  std::mutex mutex;
  ContextCacheMetrics metrics;
  ContextCacheMetrics get() {
    std::lock_guard<std::mutex> lock(mutex);
    return metrics;
  }
  void set(const ContextCacheMetrics& m) {
    std::lock_guard<std::mutex> lock(mutex);
    metrics = m;
  }
};

// Internal to this actor: run the next phase-1 chunk of request `id` (a message to itself, so
// what else arrives in the mailbox gets in between chunks).
using encode_chunk_atom = caf::atom_constant<caf::atom("enc_chunk")>;

// A request whose phase 1 runs chunk by chunk: its shard (its K/V allocated, partly encoded)
// and the scheduler's encode request, answered when the last chunk is done.
struct PendingEncode {
  std::shared_ptr<ContextShard> shard;
  caf::response_promise reply_to;
  std::chrono::steady_clock::time_point t0;
  int64_t tokens = 0;
  Phase1Pacer pacer;  // slices of a chunk's layers within the budget run_chunk sets
};

struct ContextState {
  ContextBlockOptions options;
  std::shared_ptr<ContextCache> blocks;  // before server: its shards hold leases on it
  std::shared_ptr<CacheBoard> board = std::make_shared<CacheBoard>();
  std::unique_ptr<ShardServer> server;
  uint64_t worker_id = 0;
  int64_t room_bytes = 0;            // what this worker offered the planner
  std::map<uint64_t, int64_t> held;  // request id -> tokens of KV held
  std::map<uint64_t, int64_t> held_bytes;  // request id -> bytes its shard may use
  // request id -> the K/V its shard attends over: shards of one document share one
  // (ContextShard::shares_kv), charged to one of them at a time (release_charge).
  std::map<uint64_t, const KvCache*> kv_of;
  uint64_t phase1_step = ~uint64_t{0};     // the decode step the last paced slice ran in
  std::map<uint64_t, PendingEncode> encoding;  // request id -> its phase 1 in progress
  // Last member: stops the data-plane thread before anything it uses goes away.
  ~ContextState() { server.reset(); }
};

using Self = caf::stateful_actor<ContextState>;

// Tells the scheduler every `interval` that this process is alive. A light actor on CAF's
// scheduler, linked to its context_block: a long encode in the context_block's thread does not
// silence it, a stopped or hung process does.
caf::behavior heartbeat(caf::event_based_actor* self, caf::actor scheduler, uint64_t worker_id,
                        std::chrono::milliseconds interval,
                        std::shared_ptr<CacheBoard> board) {
  self->send(self, tick_atom::value);
  return {[=](tick_atom) {
    wire::Heartbeat h;
    h.set_worker_id(worker_id);
    wire::to_wire(board->get(), h.mutable_context_cache());
    self->send(scheduler, heartbeat_atom::value, wire::encode(h));
    self->delayed_send(self, interval, tick_atom::value);
  }};
}

// The planner counted this worker's room as free for the request: cached blocks nobody uses
// make way for it here, before the shard allocates, and the cache may keep (and add the
// request's blocks to) only what the running shards leave of the room.
void make_room(Self* self, int64_t need) {
  auto& st = self->state;
  int64_t active = 0;
  for (const auto& [id, b] : st.held_bytes) active += b;
  st.blocks->set_room(std::max<int64_t>(st.room_bytes - active - need, 0));
}

// Ends request `id`'s charge on the room. K/V that another running request still attends
// over (a shard that shares it) stays allocated: its charge moves to that request.
void release_charge(ContextState& st, uint64_t id) {
  const auto kv = st.kv_of.find(id);
  const auto bytes = st.held_bytes.find(id);
  if (kv != st.kv_of.end() && bytes != st.held_bytes.end())
    for (const auto& [other, ptr] : st.kv_of)
      if (other != id && ptr == kv->second) {
        st.held_bytes[other] += bytes->second;
        st.held[other] += st.held[id];
        break;
      }
  st.held.erase(id);
  st.held_bytes.erase(id);
  st.kv_of.erase(id);
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::string failed_reply(Self* self, const std::string& what, std::chrono::steady_clock::time_point t0) {
  wire::EncodeReply reply;
  reply.set_ok(false);
  reply.set_error(self->state.options.name + ": encoding failed: " + what);
  reply.set_encode_ms(ms_since(t0));
  return wire::encode(reply);
}

// Checks the scheduler's encode request, allocates the shard and begins its phase 1; the chunks
// follow as messages to this actor (run_chunk), and the last one answers `reply_to`. Returns
// false (with `error`) when the request cannot start.
bool begin_encode(Self* self, const std::string& bytes, caf::response_promise reply_to, std::string& error) {
  const auto t0 = std::chrono::steady_clock::now();
  auto& st = self->state;
  uint64_t id = 0;
  try {
    const auto req = wire::decode<wire::EncodeRequest>(bytes, "the scheduler");
    wire::check_version(req.protocol_version(), "the encode request");
    id = req.request_id();
    if (st.encoding.count(id) || st.held.count(id))
      throw std::invalid_argument("request " + std::to_string(id) + " is encoded here already");
    const ModelHost& host = *st.options.model;
    std::vector<int32_t> anchor(req.anchor().begin(), req.anchor().end());
    std::vector<BlockSpec> blocks;
    std::vector<std::vector<int32_t>> tokens;
    int64_t n = 0;
    for (const auto& b : req.blocks()) {
      for (int32_t t : b.tokens())
        if (t < 0 || t >= host.config().vocab_size)
          throw std::invalid_argument("token id " + std::to_string(t) + " outside the vocabulary");
      blocks.push_back({b.index(), b.start(), static_cast<int64_t>(b.tokens_size())});
      tokens.emplace_back(b.tokens().begin(), b.tokens().end());
      n += b.tokens_size();
    }
    // The shard's K/V and encoding scratch, as the planner counts them.
    const MemoryModel memory = MemoryModel::of(host.config(), host.backend().activation_dtype());
    const auto a = static_cast<int64_t>(anchor.size());
    int64_t chunk = st.options.phase1_chunk_tokens;
    if (st.options.phase1_whole_blocks_if_room && chunk > 0) {
      int64_t active = 0;
      for (const auto& [other, b] : st.held_bytes) active += b;
      chunk = whole_blocks_if_room(memory, blocks, a, st.room_bytes - active, chunk);
    }
    // A running request's shard with exactly these blocks: this one attends over its K/V
    // (ContextShard::shares_kv) and allocates nothing.
    const bool shares = st.blocks->enabled() && req.pin_context().empty() &&
                        st.blocks->has_shard(block_keys(anchor, blocks, tokens));
    const int64_t need = shares ? 0 : memory.run_bytes(blocks, a, chunk);
    make_room(self, need);
    PendingEncode p;
    p.t0 = t0;
    p.tokens = n;
    p.reply_to = std::move(reply_to);
    {
      auto compute = host.lock_compute();
      p.shard = std::make_shared<ContextShard>(host.model(), n);
      if (st.blocks->enabled()) p.shard->use_cache(st.blocks, req.pin_context());
      p.shard->begin_encode(std::move(anchor), std::move(blocks), std::move(tokens), chunk);
    }
    // Counted from now: the K/V is allocated, and a concurrent request's room must leave it.
    st.held[id] = p.shard->shares_kv() ? 0 : n;
    st.held_bytes[id] = need;
    st.kv_of[id] = &p.shard->cache();
    st.encoding.emplace(id, std::move(p));
  } catch (const std::exception& e) {
    error = failed_reply(self, e.what(), t0);
    return false;
  }
  self->send(self, encode_chunk_atom::value, id);
  return true;
}

// One chunk of request `id`'s phase 1 under the compute lock; the data plane's phase-2 answers
// and this mailbox's other messages run between chunks.
void run_chunk(Self* self, uint64_t id) {
  auto& st = self->state;
  const auto it = st.encoding.find(id);
  if (it == st.encoding.end()) return;  // released mid-encode: its K/V went with it
  PendingEncode& p = it->second;
  const ModelHost& host = *st.options.model;
  // While streams decode over this worker, one slice per decode step, of a share of the step
  // (of all this worker's encodes together); otherwise whole chunks, or the fixed slice budget.
  double budget = st.options.phase1_slice_ms;
  const DecodeCadence::Reading cadence = st.server->cadence().read(DecodeCadence::clock::now());
  if (st.options.phase1_step_share > 0 && cadence.decoding && cadence.step_ms > 0) {
    if (cadence.steps == st.phase1_step) {  // this step had its slice: look again shortly
      self->delayed_send(self, std::chrono::milliseconds(1), encode_chunk_atom::value, id);
      return;
    }
    st.phase1_step = cadence.steps;
    budget = st.options.phase1_step_share * cadence.step_ms;
  }
  p.pacer.set_budget_ms(budget);
  bool more = false;
  try {
    auto compute = host.lock_compute();
    const auto t_slice = std::chrono::steady_clock::now();
    more = p.shard->encoding() && p.shard->encode_chunk(p.pacer.next_layers(host.config().num_layers));
    // The chunk's kernels run before the lock goes: otherwise the next chunks would queue up on
    // the device stream ahead of the phase-2 work this pause is for.
    host.backend().synchronize();
    p.pacer.measured(p.shard->layers_last_call(), ms_since(t_slice));
  } catch (const std::exception& e) {
    p.reply_to.deliver(failed_reply(self, e.what(), p.t0));
    release_charge(st, id);
    st.encoding.erase(it);  // frees the partial K/V
    make_room(self, 0);
    return;
  }
  if (more) {
    self->send(self, encode_chunk_atom::value, id);
    return;
  }
  st.server->add(id, p.shard);
  wire::EncodeReply reply;
  reply.set_ok(true);
  reply.set_tokens(p.tokens);
  reply.set_blocks_reused(p.shard->blocks_reused());
  reply.set_shared_kv(p.shard->shares_kv());
  reply.set_encode_ms(ms_since(p.t0));
  st.board->set(st.blocks->metrics());
  p.reply_to.deliver(wire::encode(reply));
  st.encoding.erase(it);
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
    w->set_capacity_tokens(self->state.options.model->kv_tokens_in(self->state.room_bytes));
    w->set_capacity_bytes(self->state.room_bytes);
    w->set_ucx_address(self->state.server->address());
    w->set_active_requests(self->state.server->active());
    int64_t held = 0;
    for (const auto& [id, n] : self->state.held) held += n;
    w->set_kv_tokens_held(held);
    wire::to_wire(self->state.blocks->metrics(), w->mutable_context_cache());
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
  st.room_bytes = st.options.kv_bytes > 0 ? st.options.kv_bytes : host.room_bytes(st.options.kv_fraction);
  st.blocks = std::make_shared<ContextCache>(
      st.options.context_cache_bytes < 0 ? st.room_bytes / 2 : st.options.context_cache_bytes,
      host.digest() + "/" + dtype_name(host.backend().activation_dtype()));
  st.server = std::make_unique<ShardServer>(host, host.threads(), st.options.name);

  wire::RegisterWorker reg;
  reg.set_protocol_version(wire::kProtocolVersion);
  reg.set_name(st.options.name);
  reg.set_device(st.options.device);
  reg.set_capacity_tokens(host.kv_tokens_in(st.room_bytes));
  reg.set_ucx_address(st.server->address());
  reg.set_model_digest(host.digest());
  reg.set_capacity_bytes(st.room_bytes);
  reg.set_phase1_chunk_tokens(st.options.phase1_chunk_tokens);
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
                                     s.options.heartbeat_interval,
                                     s.board);
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
      [self](encode_atom, const std::string& bytes) {
        // The promise takes over the answer (a value returned after it would be dropped).
        caf::response_promise promise = self->make_response_promise();
        std::string error;
        if (!begin_encode(self, bytes, promise, error)) promise.deliver(error);
        return promise;
      },
      [self](encode_chunk_atom, uint64_t id) { run_chunk(self, id); },
      [self](release_atom, const std::string& bytes) {
        try {
          const auto r = wire::decode<wire::ReleaseRequest>(bytes, "the scheduler");
          wire::check_version(r.protocol_version(), "the release request");
          if (r.request_id() != 0) {
            const auto pending = self->state.encoding.find(r.request_id());
            if (pending != self->state.encoding.end()) {
              // Released mid-encode (the request failed or was cancelled): its partial K/V goes.
              pending->second.reply_to.deliver(failed_reply(self, "released during its phase 1", pending->second.t0));
              self->state.encoding.erase(pending);
            }
            self->state.server->remove(r.request_id());
            release_charge(self->state, r.request_id());
            make_room(self, 0);  // the cache may use what the request left
          }
          if (!r.unpin_context().empty()) {
            self->state.blocks->unpin(r.unpin_context());
            self->state.board->set(self->state.blocks->metrics());
          }
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
