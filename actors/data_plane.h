// Phase 2 between the query actor and the context workers: the context side answers attention
// requests (ShardServer), the query side reaches every shard of a request through one
// ContextShards (ShardLinks) whatever path each shard takes (transport/peer_path.h):
//   - in-process: the shard lives on the query's own backend and is called directly;
//   - cuda_ipc:   another process of this host; Q and (O, lse) stay in device memory that both
//                 processes map, ordered by IPC events, and UCX (shared memory) carries only the
//                 small request and reply headers;
//   - ucx_device: GPUs on other hosts when both ends' UCX takes device pointers: Q and (O, lse)
//                 leave and arrive in device memory; UCX moves them GPUDirect where the NIC can
//                 register GPU memory (RDMA transports with nvidia-peermem) and through its own
//                 pinned staging elsewhere. Small (eager) messages still arrive in host memory
//                 and are uploaded here; rendezvous ones land in device buffers directly;
//   - ucx:        anything else; Q and (O, lse) travel as float32 payloads staged through host
//                 memory by us (Backend::download/upload).
//
// Threads. A ShardServer owns a data-plane thread that drives its UCX worker: it answers
// requests over the shard's own backend under the host's compute lock, so phase-2 answers never
// queue behind a phase-1 encode in the context_block actor's thread. The actor thread only adds
// and removes shards. ShardLinks runs in the query actor's thread and drives that actor's UCX
// worker itself, blocking the per-layer exchange until every reply is in.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "actors/decode_cadence.h"
#include "actors/model_host.h"
#include "runtime/star_attention.h"
#include "transport/peer_path.h"
#include "transport/ucx_endpoint.h"

namespace starattn::wire {
class AttendRequest;
class AttendReply;
class AttendBatchRequest;
class AttendBatchReply;
}  // namespace starattn::wire

namespace starattn::actors {

class ExchangeBatcher;  // actors/exchange_batch.h

// Whether UCX may carry this backend's memory itself (DataPath::ucx_device): a GPU backend (one
// with DeviceIpc) and a UCX built with CUDA whose device path is not turned off.
bool ucx_carries_device_memory(Backend& backend);

// Device buffers for payloads UCX reads or writes after the call that handed them over: a buffer
// is handed out again only once no send or receive holds it (its shared_ptr is ours alone).
// One thread uses a pool, with the backend's compute lock held (allocations).
class DevicePayloadPool {
 public:
  explicit DevicePayloadPool(Backend& backend) : backend_(backend) {}
  // A buffer of at least `bytes`, shared with whichever UCX operation it is given to.
  std::shared_ptr<Buffer> take(size_t bytes);

 private:
  Backend& backend_;
  std::vector<std::shared_ptr<Buffer>> buffers_;
};

// A shard's (O, lse) laid out in one buffer as the device path sends it: O [rows, q_cols] in the
// activation dtype, then lse [rows, heads] float32.
Partial partial_in(void* data, DType activation, int64_t rows, int64_t q_cols, int64_t heads);
size_t partial_bytes(DType activation, int64_t rows, int64_t q_cols, int64_t heads);

// Host bytes laid out in dst's dtype (f32 or bf16: an eager device-path payload, which UCX
// delivers in host memory) onto the backend.
void upload_activation_bytes(Backend& be, const char* bytes, const Tensor& dst);

// Rendezvous attention replies of a device path land in `pool`'s buffers (the query side).
void sink_device_replies(transport::UcxWorker& ucx, std::shared_ptr<DevicePayloadPool> pool);

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
  // Batched requests (AttendBatchRequest) answered, and the items they carried that were
  // answered: each batch is one attention call over all its items.
  uint64_t served_batches() const { return served_batches_.load(); }
  uint64_t served_batch_items() const { return served_batch_items_.load(); }
  // The decode steps this server's exchanges arrive in (its worker paces phase 1 by them).
  const DecodeCadence& cadence() const { return cadence_; }

  // The shard of `request_id` held by the server at `address` when that server lives in this
  // process and computes on `backend`; null otherwise (the caller then uses another path).
  static std::shared_ptr<ContextShard> find_in_process(const std::string& address,
                                                       uint64_t request_id, const Backend* backend);

 private:
  struct IpcSession;
  void run();
  void answer(transport::AmMessage& msg);
  void open_ipc(transport::AmMessage& msg);
  // An AttendBatchRequest: every item's shard in one ContextShard::attend_many call, one reply.
  void answer_batch(transport::AmMessage& msg);
  // The same for a cuda_ipc batch: every item's q and (O, lse) in its mapped buffers.
  void answer_batch_ipc(transport::AmMessage& msg, const wire::AttendBatchRequest& req,
                        wire::AttendBatchReply& reply);
  void refuse(const transport::AmMessage& msg, uint64_t request_id, uint64_t seq, int shard,
              const std::string& why);
  // The DataPath::ucx_device answer: q from device memory (or an eager host copy), (O, lse)
  // sent from device memory.
  void answer_device(transport::AmMessage& msg, const wire::AttendRequest& req,
                     ContextShard& shard, wire::AttendReply& reply);
  std::shared_ptr<ContextShard> shard_of(uint64_t request_id) const;
  // A cuda_ipc batch's ordering with one query-side batcher: its q event (imported) and our done
  // event, found by the q event's handle (data-plane thread only).
  struct IpcChannel {
    std::unique_ptr<DeviceEvent> q_ready, done;
    std::string done_handle;
  };
  IpcChannel& ipc_channel(const std::string& q_event);

  const ModelHost& host_;
  const Transformer& model_;
  int threads_;
  std::string name_;
  std::unique_ptr<transport::UcxWorker> ucx_;
  std::string address_;
  mutable std::mutex mutex_;
  std::map<uint64_t, std::shared_ptr<ContextShard>> shards_;
  // (request id, shard index) -> the mapped buffers of a cuda_ipc path.
  std::map<std::pair<uint64_t, int>, std::shared_ptr<IpcSession>> ipc_;
  std::map<std::string, std::unique_ptr<IpcChannel>> channels_;
  Buffer q_buf_;  // the arriving staged Q on the backend (data-plane thread only)
  // Device payloads in flight (ucx_device path); null when UCX cannot carry device memory.
  std::unique_ptr<DevicePayloadPool> payloads_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> served_{0}, refused_{0};
  std::atomic<uint64_t> served_batches_{0}, served_batch_items_{0};
  DecodeCadence cadence_;
  std::thread thread_;
};

// Workers the head has seen die or stop answering; shared by the scheduler (writes) and the
// query actor (reads while it waits for replies), both in the head process.
class WorkerHealth {
 public:
  void mark_dead(uint64_t worker_id, std::string why);
  // A worker that stopped answering heartbeats, and its return.
  void mark_unresponsive(uint64_t worker_id, std::string why);
  void mark_alive(uint64_t worker_id);
  // Empty while the worker is alive and answering, else why it is not.
  std::string dead(uint64_t worker_id) const;

 private:
  mutable std::mutex mutex_;
  std::map<uint64_t, std::string> dead_, unresponsive_;
};

// Timing of the Q -> (O, lse) exchanges of one request.
struct ExchangeStats {
  std::vector<float> us;  // one entry per exchange (layer and step)
  double mean() const;
  double percentile(double p) const;
  double max() const;
};

class ShardLinks : public ContextShards {
 public:
  struct Link {
    uint64_t worker_id = 0;
    std::string name;
    transport::DataPath path = transport::DataPath::ucx;
    std::shared_ptr<ContextShard> local;      // in_process
    transport::UcxWorker::EpId ep = 0;        // cuda_ipc, ucx
  };
  // `links` in the fixed merge order (the order the blocks were assigned): the partials come
  // back in that order whatever order replies arrive in, so the merge is bit-identical to
  // LocalShards over the same shards. rows_capacity: the most query rows of one exchange (the
  // query's length). cuda_ipc links open their shared buffers here; a link whose peer refuses
  // falls back to ucx (said in describe()).
  // `payloads`: the query side's device payload pool (sink_device_replies installed with it);
  // needed by ucx_device links, which fall back to ucx without it.
  // `batcher` (may be null; must outlive this): the query actor's coalescer, which start()
  // queues the in-process, cuda_ipc and staged (ucx) links' exchange with, so that one message per
  // worker (one call for the in-process shards) answers every request of a batched step.
  ShardLinks(transport::UcxWorker& ucx, const Transformer& model, uint64_t request_id,
             std::vector<Link> links, std::shared_ptr<const WorkerHealth> health,
             std::chrono::milliseconds timeout, int64_t rows_capacity,
             std::shared_ptr<DevicePayloadPool> payloads = nullptr,
             ExchangeBatcher* batcher = nullptr);
  ~ShardLinks() override;

  // Throws std::runtime_error naming the worker when one fails, refuses or does not answer.
  // One request alone: every link exchanged now, one message per shard.
  void attend(int layer, const Tensor& q, std::vector<Partial>& out) override;
  // With a batcher: start() exchanges the ucx_device links now (per request, as attend()) and
  // queues the others with the batcher (cuda_ipc: naming the mapped q buffer, which the batcher
  // fills); finish() flushes the batcher when this request's part is still queued, then appends
  // every partial in link order. Without one, attend() in start().
  void start(int layer, const Tensor& q, std::vector<Partial>& out) override;
  void finish(int layer, std::vector<Partial>& out) override;
  const ExchangeStats& stats() const { return stats_; }
  // "local/0: in-process, host:123/cuda:0: cuda_ipc, w3: tcp (staged)".
  std::string describe() const;

 private:
  struct Reply {
    bool in = false;
    std::vector<char> payload;
    transport::SinkBuffer sunk;  // a device path's reply that landed in device memory
  };
  void open_ipc();
  // cuda_ipc: q into the request's mapped buffer and the q event recorded, unless `ready`
  // (the per-request exchange; a batched one leaves both to the batcher).
  void share_q(const Tensor& q, bool& ready);
  void check_ipc_rows(int64_t rows) const;
  // The per-request exchange of the links whose `selected` entry is true, into parts[i].
  void exchange(int layer, const Tensor& q, std::vector<Partial>& parts,
                const std::vector<bool>& selected);
  // Progresses UCX until every remote link's reply with `seq` is in; throws on failure.
  void await_replies(uint64_t seq, int layer, int64_t rows, std::vector<Reply>& replies,
                     std::chrono::steady_clock::time_point deadline);
  void check_health(const std::vector<Reply>& replies) const;

  transport::UcxWorker& ucx_;
  const Transformer& model_;
  uint64_t request_id_;
  std::vector<Link> links_;
  std::vector<std::string> notes_;  // per link: the transport and why
  std::shared_ptr<const WorkerHealth> health_;
  std::chrono::milliseconds timeout_;
  int64_t rows_capacity_;
  std::vector<Buffer> o_bufs_, lse_bufs_;
  // cuda_ipc: the request's shared q, its q event and per link the worker's done event (the
  // per-request exchange's; a batched exchange is ordered by the batcher's events).
  Buffer q_shared_;
  std::unique_ptr<DeviceEvent> q_event_;
  std::vector<std::unique_ptr<DeviceEvent>> done_events_;
  // ucx_device: the pool, and the reply buffers the last exchange's partials point into (kept
  // until the next exchange, by when their merge has run).
  std::shared_ptr<DevicePayloadPool> payloads_;
  std::vector<std::shared_ptr<void>> held_;
  ExchangeStats stats_;
  // The batched exchange in progress (start() to finish()).
  struct Pending;
  ExchangeBatcher* batcher_ = nullptr;
  std::unique_ptr<Pending> pending_;
};

}  // namespace starattn::actors
