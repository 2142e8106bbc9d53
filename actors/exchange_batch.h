// The query actor's coalescer of phase-2 exchanges (issue 15): in a batched decode step every
// running request starts its layer's context attention before any finishes it
// (ContextShards::start/finish, runtime/decode_batch.h). Each request's ShardLinks then queues
// its Q here instead of sending it; the first finish() flushes the queue:
//   - the shards on one worker endpoint (DataPath::ucx, staged) get ONE AttendBatchRequest
//     carrying every queued request's Q rows, which the worker answers with one attention call
//     (ShardServer::answer_batch) and one reply;
//   - the cuda_ipc shards on one worker endpoint get ONE AttendBatchRequest too, without
//     payload: each request's Q and (O, lse) stay in its own mapped device buffers. The flush
//     copies every request's Q into its buffer in one launch and records ONE event, which every
//     worker's stream waits on once; each worker records ONE done event per batch, which our
//     stream waits on once. So a step costs a few host calls per worker and layer, not several
//     per request (64 streams x 32 layers made the per-request events thousands a step);
//   - the in-process shards (DataPath::in_process, on the query's own backend) are answered by
//     ONE ContextShard::attend_many call.
// Every request gets its own partials back in its own merge order, so the result equals its
// one-by-one exchange bit for bit. A worker that fails, refuses or times out fails the requests
// that have a shard on it, and only those: each request carries its own error to its finish().
//
// The ucx_device path is not coalesced (ShardLinks exchanges it per request in start()): UCX
// moves each request's device payload itself.
//
// One per query actor, used from the actor's thread only (with the compute lock held, as the
// forward that calls it is).
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "actors/data_plane.h"

namespace starattn::actors {

class ExchangeBatcher {
 public:
  ExchangeBatcher(transport::UcxWorker& ucx, const Transformer& model,
                  std::shared_ptr<const WorkerHealth> health, std::chrono::milliseconds timeout);
  ExchangeBatcher(const ExchangeBatcher&) = delete;
  ExchangeBatcher& operator=(const ExchangeBatcher&) = delete;

  // One request's part of a layer's exchange, owned by its ShardLinks.
  struct Exchange {
    struct Target {
      const ShardLinks::Link* link = nullptr;
      int shard = 0;     // the link's index: its place in the request's merge order
      Partial out;       // ucx: where the answer is uploaded; cuda_ipc: the mapped buffers
                         // the worker writes; in_process: set by flush()
    };
    uint64_t request_id = 0;
    int layer = 0;
    Tensor q;      // stays valid until flush() returns
    Tensor q_ipc;  // cuda_ipc targets: the request's mapped q buffer (q's rows), filled by flush()
    std::vector<Target> targets;
    std::exception_ptr error;  // set by flush() when any of its shards failed
    bool queued = false;
  };

  // Queues `x` (it must stay alive until flushed or withdrawn).
  void enqueue(Exchange& x);
  // Takes `x` out of the queue when it is still there (its owner goes away).
  void withdraw(Exchange& x);
  // Answers every queued exchange; returns once every one is answered or failed (its error).
  void flush();

  // Batched messages sent and the request items they carried; in-process attend_many calls
  // and their items. items > batches shows several requests shared a message or a call.
  uint64_t messages() const { return messages_; }
  uint64_t message_items() const { return message_items_; }
  uint64_t local_calls() const { return local_calls_; }
  uint64_t local_items() const { return local_items_; }

 private:
  struct Group;
  void send(Group& g);
  void await(std::vector<Group>& groups, std::chrono::steady_clock::time_point deadline);
  void take_reply(Group& g, const transport::AmMessage& msg);
  // cuda_ipc: every such exchange's q into its mapped buffer (one launch), then the batch's q
  // event recorded. Throws when the event cannot be made.
  void share_ipc_queries(const std::vector<Exchange*>& xs);
  // The worker's done event named by a reply, imported once per handle.
  DeviceEvent& done_event(const std::string& handle);

  transport::UcxWorker& ucx_;
  const Transformer& model_;
  std::shared_ptr<const WorkerHealth> health_;
  std::chrono::milliseconds timeout_;
  std::vector<Exchange*> queue_;
  // cuda_ipc ordering, one event each way: ours (recorded once per flush) and its handle, and
  // the workers' done events by handle.
  std::unique_ptr<DeviceEvent> q_ready_;
  std::string q_ready_handle_;
  std::map<std::string, std::unique_ptr<DeviceEvent>> done_events_;
  uint64_t messages_ = 0, message_items_ = 0, local_calls_ = 0, local_items_ = 0;
};

}  // namespace starattn::actors
