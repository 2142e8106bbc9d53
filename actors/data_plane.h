// Phase 2 over UCX: the context side answers attention requests (ShardServer), the query side
// broadcasts Q and gathers (O, lse) (RemoteShards, a ContextShards for QuerySession).
//
// Threads. A ShardServer owns a dedicated data-plane thread that drives its UCX worker: it
// progresses communication, runs the attention of each arriving Q over the request's shard and
// sends (O, lse) back, so phase-2 answers never queue behind a phase-1 encode running in the
// context_block actor's own thread. The actor thread only adds (after encoding) and removes
// (on release) shards, under a mutex. RemoteShards runs inside the query actor's thread and
// drives that actor's UCX worker itself, blocking the per-layer exchange until every reply is
// in (the query actor is detached, so blocking costs no CAF scheduler thread).
//
// Wire: Q goes out as the payload of an AttendRequest header, float32 host data (device tensors
// are staged through host memory by Backend::download/upload); the reply carries O then lse.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "runtime/star_attention.h"
#include "actors/model_host.h"
#include "transport/ucx_endpoint.h"

namespace starattn::actors {

// A context shard's data plane: one UCX worker, one thread.
class ShardServer {
 public:
  // `host` provides the model and the lock around its backend's compute (see ModelHost).
  ShardServer(const ModelHost& host, int threads, std::string name);
  ~ShardServer();
  ShardServer(const ShardServer&) = delete;
  ShardServer& operator=(const ShardServer&) = delete;

  // The UCX worker address requesters connect to.
  const std::string& address() const { return address_; }
  void add(uint64_t request_id, std::shared_ptr<ContextShard> shard);
  void remove(uint64_t request_id);
  int active() const;
  uint64_t served() const { return served_.load(); }
  uint64_t refused() const { return refused_.load(); }

 private:
  void run();
  void answer(transport::AmMessage& msg);
  void refuse(const transport::AmMessage& msg, uint64_t request_id, uint64_t seq, int shard,
              const std::string& why);

  const ModelHost& host_;
  const Transformer& model_;
  int threads_;
  std::string name_;
  std::unique_ptr<transport::UcxWorker> ucx_;
  std::string address_;
  mutable std::mutex mutex_;
  std::map<uint64_t, std::shared_ptr<ContextShard>> shards_;
  Buffer q_buf_;  // the arriving Q on the backend (data-plane thread only)
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> served_{0}, refused_{0};
  std::thread thread_;
};

// Workers the head has seen die; shared by the scheduler (writes) and the query actor (reads
// while it waits for replies), both in the head process.
class WorkerHealth {
 public:
  void mark_dead(uint64_t worker_id, std::string why);
  // Empty while the worker is alive, else why it is not.
  std::string dead(uint64_t worker_id) const;

 private:
  mutable std::mutex mutex_;
  std::map<uint64_t, std::string> dead_;
};

// Timing of the Q -> (O, lse) exchanges of one request.
struct ExchangeStats {
  std::vector<float> us;  // one entry per exchange (layer and step)
  double mean() const;
  double percentile(double p) const;
  double max() const;
};

class RemoteShards : public ContextShards {
 public:
  struct Shard {
    uint64_t worker_id = 0;
    std::string name;
    transport::UcxWorker::EpId ep = 0;
  };
  // `shards` in the fixed merge order (the order the blocks were assigned): the partials come
  // back in that order whatever order the replies arrive in, so the merge is bit-identical to
  // LocalShards over the same shards.
  RemoteShards(transport::UcxWorker& ucx, const Transformer& model, uint64_t request_id,
               std::vector<Shard> shards, std::shared_ptr<const WorkerHealth> health,
               std::chrono::milliseconds timeout);

  // Throws std::runtime_error naming the worker when one fails, refuses or does not answer.
  void attend(int layer, const Tensor& q, std::vector<Partial>& out) override;
  const ExchangeStats& stats() const { return stats_; }

 private:
  transport::UcxWorker& ucx_;
  const Transformer& model_;
  uint64_t request_id_;
  std::vector<Shard> shards_;
  std::shared_ptr<const WorkerHealth> health_;
  std::chrono::milliseconds timeout_;
  std::vector<Buffer> o_bufs_, lse_bufs_;
  ExchangeStats stats_;
};

}  // namespace starattn::actors
