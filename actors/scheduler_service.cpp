#include "actors/scheduler_service.h"

#include <caf/all.hpp>

#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <utility>

#include "actors/cluster.h"
#include "actors/messages.h"
#include "transport/wire_convert.h"
#include "transport/wire.h"

namespace starattn::actors {
namespace {


// In-process only (service -> a request's bridge), no payload.
using client_cancel_atom = caf::atom_constant<caf::atom("clcancel")>;
using shutdown_atom = caf::atom_constant<caf::atom("shutdown")>;

// The open requests' bridges, so the destructor can end them and wait, and a gate that keeps
// callbacks from running once it has returned.
struct Registry {
  std::mutex mutex;
  std::condition_variable changed;
  // Weak: the last strong reference must not die inside the bridge's own exit.
  std::map<uint64_t, caf::actor_addr> bridges;
  uint64_t next = 0;
  bool stopping = false;
  std::shared_mutex gate;  // callbacks run under a shared lock
  bool closed = false;     // under `gate`: no more callbacks
};

struct Handle : RequestHandle {
  caf::actor bridge;
  std::atomic<bool> cancelled{false};
  void cancel() override {
    if (!cancelled.exchange(true) && bridge) caf::anon_send(bridge, client_cancel_atom::value);
  }
};


struct BridgeState {
  std::shared_ptr<Registry> registry;
  caf::actor scheduler;
  StreamCallbacks callbacks;
  uint64_t id = 0;            // 0 until Accepted
  std::string ending;         // "stop" or "cancelled" once we asked the scheduler to end it
  bool cancel_sent = false;
  int32_t tokens = 0;
};

using Bridge = caf::stateful_actor<BridgeState>;

// Runs one callback unless the service has closed its gate (it is gone or going).
template <class F>
bool deliver(Bridge* self, F&& f) {
  std::shared_lock<std::shared_mutex> lock(self->state.registry->gate);
  if (self->state.registry->closed) return false;
  return f();
}

void send_cancel(Bridge* self) {
  auto& st = self->state;
  if (st.cancel_sent || st.id == 0) return;  // without an id, Accepted will send it
  st.cancel_sent = true;
  self->send(st.scheduler, cancel_atom::value, st.id);
}

// The request ends early at our asking; the scheduler's "cancelled" Finished completes it.
void end_early(Bridge* self, const std::string& reason) {
  if (!self->state.ending.empty()) return;
  self->state.ending = reason;
  send_cancel(self);
}

// Ends the bridge. Its monitor on the scheduler goes first: CAF 0.17 keeps a monitor in the
// observed actor's list until that actor exits, and the entry holds a weak reference to the
// bridge, which keeps the bridge's memory (one allocation with its control block, a few KB)
// alive: the head grew by that much per request, for as long as it ran.
void quit_bridge(Bridge* self) {
  self->demonitor(self->state.scheduler);
  self->quit();
}

void fail_and_quit(Bridge* self, ErrorKind kind, const std::string& message) {
  deliver(self, [&] {
    self->state.callbacks.on_error(Error(kind, message));
    return true;
  });
  quit_bridge(self);
}

void on_token(Bridge* self, const RequestToken& t) {
  auto& st = self->state;
  if (!st.ending.empty()) return;  // cancelled or stopped: the rest is not wanted
  ++st.tokens;
  // Stop strings were applied by the query actor's Generation (the text ends before a match).
  const bool more = deliver(self, [&] { return st.callbacks.on_token(t.event); });
  if (!more) end_early(self, "cancelled");
}

void on_finished(Bridge* self, const RequestFinished& f) {
  auto& st = self->state;
  const RequestEnd& end = f.end;
  // A request we ended is done whatever raced with the cancel (a last token, a failure).
  if (!end.ok && st.ending.empty()) return fail_and_quit(self, end.error_kind, end.error);
  RequestStats c = end.stats;
  if (st.ending.empty()) {
    TokenEvent tail;
    tail.text = c.text_tail;
    if (!tail.text.empty()) deliver(self, [&] { return st.callbacks.on_token(tail); });
  } else {
    c.finish_reason = st.ending;
    c.generated = st.tokens;
  }
  c.text_tail.clear();  // streamed above
  deliver(self, [&] {
    st.callbacks.on_done(c);
    return true;
  });
  quit_bridge(self);
}

caf::behavior bridge(Bridge* self, std::shared_ptr<Registry> registry, uint64_t key,
                     caf::actor scheduler, SubmitPtr request,
                     std::shared_ptr<StreamCallbacks> callbacks) {
  auto& st = self->state;
  st.registry = registry;
  st.scheduler = scheduler;
  st.callbacks = std::move(*callbacks);
  self->attach_functor([registry, key] {
    std::lock_guard<std::mutex> lock(registry->mutex);
    registry->bridges.erase(key);
    registry->changed.notify_all();
  });
  self->set_default_handler(caf::drop);
  self->monitor(scheduler);
  self->set_down_handler([self](const caf::down_msg& dm) {
    if (dm.source != self->state.scheduler.address()) return;
    fail_and_quit(self, ErrorKind::shutting_down,
                  "the head's scheduler stopped (" + caf::to_string(dm.reason) + ")");
  });
  // The scheduler shares this process: the request travels as it is, never encoded.
  self->send(scheduler, submit_atom::value, std::move(request));
  return {
      [self](accepted_atom, uint64_t id) {
        self->state.id = id;
        if (!self->state.ending.empty()) send_cancel(self);  // cancelled before we knew the id
      },
      [self](token_atom, const TokenPtr& t) { on_token(self, *t); },
      [self](finished_atom, const FinishedPtr& f) { on_finished(self, *f); },
      [self](client_cancel_atom) { end_early(self, "cancelled"); },
      [self](shutdown_atom) {
        // Free the workers' KV now; without an id yet, the scheduler sees us go (client down).
        send_cancel(self);
        fail_and_quit(self, ErrorKind::shutting_down, "the server is shutting down");
      },
  };
}

}  // namespace

struct SchedulerService::Impl {
  caf::actor_system& system;
  caf::actor scheduler;
  SchedulerServiceOptions options;
  std::shared_ptr<Registry> registry = std::make_shared<Registry>();

  Impl(caf::actor_system& s, caf::actor sched, SchedulerServiceOptions o)
      : system(s), scheduler(std::move(sched)), options(std::move(o)) {}

  std::optional<wire::StatusReply> status() const {
    try {
      wire::StatusReply s = query_status(system, scheduler, options.status_timeout);
      if (s.ok()) return s;
    } catch (const std::exception&) {
      // /metrics and /health report nothing rather than fail when the head is slow
    }
    return std::nullopt;
  }
};

SchedulerService::SchedulerService(caf::actor_system& system, caf::actor scheduler,
                                   SchedulerServiceOptions options)
    : impl_(std::make_shared<Impl>(system, std::move(scheduler), std::move(options))) {
  if (!impl_->scheduler) throw std::invalid_argument("SchedulerService needs a scheduler actor");
}

SchedulerService::~SchedulerService() {
  Registry& reg = *impl_->registry;
  std::vector<caf::actor> open;
  {
    std::lock_guard<std::mutex> lock(reg.mutex);
    reg.stopping = true;
    for (const auto& [key, addr] : reg.bridges)
      if (auto a = caf::actor_cast<caf::actor>(addr)) open.push_back(std::move(a));
  }
  for (const auto& a : open) caf::anon_send(a, shutdown_atom::value);
  {
    std::unique_lock<std::mutex> lock(reg.mutex);
    reg.changed.wait_for(lock, impl_->options.shutdown_timeout, [&] { return reg.bridges.empty(); });
  }
  // A bridge still running now (a wedged CAF scheduler) must not call into a dead front end.
  std::unique_lock<std::shared_mutex> gate(reg.gate);
  reg.closed = true;
}

std::shared_ptr<RequestHandle> SchedulerService::submit(RequestSpec request,
                                                                StreamCallbacks callbacks) {
  auto handle = std::make_shared<Handle>();
  Registry& reg = *impl_->registry;
  std::lock_guard<std::mutex> lock(reg.mutex);
  if (reg.stopping) {
    callbacks.on_error(Error(ErrorKind::shutting_down, "the server is shutting down"));
    return handle;
  }
  // Spawned under the lock so the destructor either sees the bridge or refuses the request.
  const uint64_t key = reg.next++;
  handle->bridge = impl_->system.spawn(
      bridge, impl_->registry, key, impl_->scheduler,
      SubmitPtr(std::make_shared<const RequestSpec>(std::move(request))),
      std::make_shared<StreamCallbacks>(std::move(callbacks)));
  reg.bridges.emplace(key, handle->bridge.address());
  return handle;
}

ServiceInfo SchedulerService::info() const {
  ServiceInfo i;
  i.model = impl_->options.model_name;
  i.max_context_tokens = impl_->options.max_context_tokens;
  i.max_queue = impl_->options.max_queue;
  i.token_bytes = impl_->options.token_bytes;
  return i;
}

std::vector<WorkerLoad> SchedulerService::load() const {
  std::vector<WorkerLoad> out;
  const auto s = impl_->status();
  if (!s) return out;
  for (const auto& w : s->workers()) {
    WorkerLoad l;
    l.worker = w.name();
    l.kv_tokens = w.kv_tokens_held();
    l.active_requests = w.active_requests();
    l.unhealthy = w.unhealthy();
    l.context_cache = wire::from_wire(w.context_cache());
    out.push_back(l);
  }
  return out;
}

void SchedulerService::release_context(const std::string& context_id) {
  caf::anon_send(impl_->scheduler, unpin_atom::value, context_id);
}

int SchedulerService::queued() const {
  const auto s = impl_->status();
  return s ? s->queued_requests() : 0;
}

}  // namespace starattn::actors
