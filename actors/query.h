// The query actor (in the head): runs all non-attention compute of phase 2 for every active
// request. For each request it holds a QuerySession whose ContextShards are ShardLinks: per
// layer and step, Q goes over UCX to every context worker of the request and the (O, lse)
// replies are merged in the fixed order the scheduler assigned the blocks in.
//
// It runs detached (its own thread, bound to the head's device) and drives its own UCX worker
// from that thread. All active requests advance together, one step per message (continuous
// batching, runtime/decode_batch.h): one forward takes the query prefill of requests that just
// joined and one token of the others, each request's attention going to its own shards.
// Requests join and leave between steps; one whose shards fail ends alone. Tokens and the final Finished go to the
// scheduler, which streams them to the requester.
#pragma once

#include <chrono>
#include <memory>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include "actors/data_plane.h"
#include "actors/model_host.h"

namespace starattn::actors {

struct QueryOptions {
  std::shared_ptr<ModelHost> model;
  std::shared_ptr<const WorkerHealth> health;
  // Longest wait for one layer's replies before the request fails (a hung, not dead, worker).
  std::chrono::milliseconds exchange_timeout{30000};
  // Log each request's data path per shard ("w1: in-process, w2: cuda_ipc, w3: tcp (staged)").
  bool verbose = true;
};

caf::actor spawn_query(caf::actor_system& system, QueryOptions options);

}  // namespace starattn::actors
