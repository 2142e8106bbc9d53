// The scheduler actor's state and the pieces its files share (actors/scheduler.cpp: requests;
// actors/scheduler_workers.cpp: the context workers' membership and health). Internal to the
// actors library.
#pragma once

#include <caf/all.hpp>

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "actors/block_placement.h"
#include "actors/messages.h"
#include "actors/scheduler.h"
#include "runtime/chat_template.h"
#include "runtime/errors.h"
#include "runtime/prompt.h"
#include "runtime/request_plan.h"
#include "transport/wire.h"

namespace starattn::actors::scheduler_detail {

using clock = std::chrono::steady_clock;

struct Worker {
  uint64_t id = 0;
  caf::actor actor;
  std::string name, device, ucx_address;
  int64_t capacity_tokens = 0;
  int64_t capacity_bytes = 0;
  int64_t phase1_chunk_tokens = 0;  // rows per phase-1 forward it runs (0: a whole block)
  int64_t kv_tokens = 0;  // placed here by requests not yet released
  std::set<uint64_t> requests;
  std::string host_id, ipc_device;
  bool ucx_device_memory = false;
  uint64_t process_id = 0;
  clock::time_point last_heartbeat = clock::now();
  bool unresponsive = false;
  wire::ContextCacheStatus context_cache;  // as of its last heartbeat
};

struct Request {
  uint64_t id = 0;
  caf::actor client;
  bool wire_client = false;  // submitted bytes (a remote client): answered in bytes
  SubmitPtr spec;
  PromptIds prompt;                     // the spec's prompt laid out as ids
  std::vector<uint64_t> shard_workers;  // merge order
  std::map<uint64_t, int64_t> kv;       // worker id -> tokens of KV placed there
  std::vector<int32_t> stop;
  int pending_encodes = 0;
  bool running = false;                 // placed on the workers (not waiting in the queue)
  bool decoding = false;
  int32_t generated = 0;                // tokens forwarded to the client
  clock::time_point t0;
  clock::time_point admitted = clock::now();
  RequestStats stats;                   // the planning part, completed by the query actor
};

struct SchedulerState {
  SchedulerOptions options;
  std::map<uint64_t, Worker> workers;  // live workers, in registration order
  std::map<uint64_t, Request> requests;
  std::deque<uint64_t> waiting;  // admitted, not yet placed (max_running reached)
  int running = 0;
  bool pumping = false;
  ChatTemplate chat;  // the model's, or the fallback for template-less models
  MemoryModel memory;  // of the served model on the workers' backend
  uint64_t next_worker = 1, next_request = 1;
  uint64_t done = 0, failed = 0;
  std::unique_ptr<BlockHolders> holders;  // context reuse: block digest -> worker holding it
};

using Self = caf::stateful_actor<SchedulerState>;

// A line in the head's log (when verbose).
void log(Self* self, const std::string& text);
// Ends a request with an error: the client hears why, every worker frees its KV.
void fail(Self* self, uint64_t id, const std::string& why, ErrorKind kind = ErrorKind::internal);

// Workers (scheduler_workers.cpp).
std::string do_register(Self* self, const std::string& bytes);
std::string do_status(Self* self, const std::string& bytes);
// A heartbeat from a worker process: it is alive; one that had gone quiet is admitted again.
void on_heartbeat(Self* self, const std::string& bytes);
// Workers whose heartbeats stopped: marked unresponsive, their requests failed naming them.
void check_heartbeats(Self* self, clock::time_point now);
// A worker's actor went away: forgotten, its requests failed naming it. False when `dm` is not
// about a worker.
bool forget_worker(Self* self, const caf::down_msg& dm);

}  // namespace starattn::actors::scheduler_detail
