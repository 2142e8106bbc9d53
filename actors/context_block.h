// The context_block actor: one per GPU (or one on the cpu backend) of a worker process.
//
// It runs detached (its own thread, where the device is bound), holds the model weights (a
// ModelHost) and the KV of every active request's blocks (ContextShards, keyed by request id,
// living in its ShardServer). It registers with the scheduler at start, encodes its run of
// blocks when asked (phase 1, in its own thread, in chunks with its mailbox served between
// them), and answers phase-2 attention over UCX from
// the ShardServer's data-plane thread. It stops when the scheduler goes away. Blocks it encoded
// stay in its block cache (runtime/context_cache.h) after their request ends, so a later
// request sharing them skips their phase 1; its status and heartbeats report the cache.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include "actors/model_host.h"

namespace starattn::actors {

struct ContextBlockOptions {
  std::shared_ptr<ModelHost> model;
  caf::actor scheduler;
  std::string name;            // host:pid/device, used in every message about this worker
  std::string device = "cpu";
  // Fraction of the backend's free memory this actor offers for KV.
  double kv_fraction = 0.8;
  // When positive, the room offered instead, in bytes: a fixed figure that does not move with
  // the machine's free memory (a worker sharing its device, tests of the capacity refusals).
  int64_t kv_bytes = 0;
  // Context reuse: bytes of encoded blocks' K/V kept after their requests end (within the KV
  // room above; a request that needs the room evicts them). Negative: half of the room; 0: off.
  int64_t context_cache_bytes = -1;
  // Phase 1 runs in chunks of this many rows (0: a whole anchor or block at a time), the compute
  // lock released and this actor's mailbox served between them, so the phase-2 answers and
  // encodes of other requests do not wait for all of a long encode.
  int64_t phase1_chunk_tokens = 512;
  // Encode whole blocks instead where the room holds their activations (whole_blocks_if_room):
  // for a process that serves one request (`starattn run`), where nothing waits between chunks.
  bool phase1_whole_blocks_if_room = false;
  // > 0: a chunk's forward runs in slices of the layers that fit this many milliseconds
  // (runtime/phase1_pacer.h), the mailbox served between slices too: a phase-2 answer then
  // waits for at most about this long behind a long encode. 0: whole chunks.
  double phase1_slice_ms = 0;
  // While streams decode over this worker (its data plane sees their steps, DecodeCadence),
  // phase 1 runs one slice of a chunk's layers per decode step, of this share of the step's
  // time: a long encode then lengthens their steps by about this share. 0: no such pacing.
  double phase1_step_share = 0.5;
  bool verbose = true;
  // How often the worker process tells the scheduler it is alive.
  std::chrono::milliseconds heartbeat_interval{500};
};

caf::actor spawn_context_block(caf::actor_system& system, ContextBlockOptions options);

}  // namespace starattn::actors
