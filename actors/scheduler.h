// The scheduler actor (in the head): admits requests, tokenizes text, splits the context into
// blocks, places contiguous runs of blocks on the live context workers, starts phase 2 on the
// query actor, streams tokens back to the requester and frees the workers' KV when a request
// ends. Workers register at any time (a new request uses every worker live at its admission);
// the scheduler monitors them and fails the in-flight requests of one that dies with an error
// naming it, while later requests go to the workers that remain. The requester learns the id
// at once (Accepted) and may cancel by it; with max_running set, requests beyond it wait in a
// FIFO queue (beyond max_queue they are refused as overloaded).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include "actors/data_plane.h"
#include "actors/model_host.h"

namespace starattn::actors {

struct SchedulerOptions {
  std::shared_ptr<ModelHost> model;  // config, tokenizer and digest of the served model
  caf::actor query;
  std::shared_ptr<WorkerHealth> health;
  std::chrono::seconds encode_timeout{600};
  int64_t max_context_tokens = 0;  // refuse larger contexts (capacity); 0: the workers' KV decides
  int max_running = 0;             // requests placed on the workers at once; 0: no limit
  int max_queue = 256;             // requests waiting beyond max_running
  bool verbose = true;
  // A worker whose heartbeats stop for this long is marked unresponsive: its requests fail
  // naming it, nothing new is placed on it, and it is admitted again when it answers.
  std::chrono::milliseconds heartbeat_timeout{5000};
  // No request lives longer than this from its admission (0: no deadline).
  std::chrono::milliseconds request_deadline{std::chrono::minutes(30)};
};

caf::actor spawn_scheduler(caf::actor_system& system, SchedulerOptions options);

}  // namespace starattn::actors
