// A small wrapper over UCX's UCP active messages: the data plane of the distributed runtime.
//
// One UcxContext per process (UCP_FEATURE_AM | UCP_FEATURE_WAKEUP, shared by the workers of
// every actor). One UcxWorker per thread that drives it: UCS_THREAD_MODE_SINGLE, so every call
// on a worker (connect, send, progress, poll) must come from the thread that owns it; only
// wake() may be called from any thread. Worker addresses are opaque bytes exchanged over the
// control plane; connect() turns one into an endpoint.
//
// Messages are (header, payload) pairs: the header is small (a serialized protobuf), the payload
// is bulk data. Small messages arrive eagerly; large ones use UCX's rendezvous protocol and are
// fetched into an owned buffer before they are queued, so a received message is always complete.
//
// Memory: payloads are host memory (send) unless sent with send_device(), which hands UCX a
// device pointer: UCX then moves it GPUDirect (RDMA transports whose NIC can register GPU memory)
// or stages it through its own pinned buffers (cuda_copy). Eager messages always arrive in host
// memory; rendezvous ones land where the worker's PayloadSink says, device memory included.
// device_memory_enabled() says whether the UCX in use can take device pointers at all
// (deploy/build-ucx.sh's build has cuda_copy and cuda_ipc; Debian's binary package does not).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <ucp/api/ucp.h>

namespace starattn::transport {

class UcxError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class UcxContext {
 public:
  // The process-wide context, created on first use.
  static std::shared_ptr<UcxContext> get();
  ~UcxContext();
  UcxContext(const UcxContext&) = delete;
  UcxContext& operator=(const UcxContext&) = delete;

  ucp_context_h handle() const { return context_; }
  // Whether UCX can send from/receive into CUDA device memory directly (ucp_context_query).
  bool device_memory_supported() const;
  // device_memory_supported() unless STARATTN_UCX_DEVICE_MEMORY=0 turns the device path off
  // (to compare it with the staged path on the same machines).
  bool device_memory_enabled() const;
  // Memory types UCX reports, e.g. "host" or "host,cuda".
  std::string memory_types() const;

 private:
  UcxContext();
  ucp_context_h context_ = nullptr;
  uint64_t memory_types_ = 0;
};

using Payload = std::shared_ptr<const std::vector<char>>;

// Where a rendezvous payload should land instead of a host vector: `data` (device or host
// memory, as `device` says) with `keep` owning it; a null `data` means the default host vector.
struct SinkBuffer {
  std::shared_ptr<void> keep;
  void* data = nullptr;
  bool device = false;
};
// Asked, for each rendezvous message of a registered id, with its header and payload size.
// Runs inside progress(); must not throw and must not call back into the worker.
using PayloadSink = std::function<SinkBuffer(uint16_t am_id, const std::string& header, size_t bytes)>;

struct AmMessage {
  uint16_t id = 0;
  std::string header;
  std::vector<char> payload;    // the payload, unless it landed in `sunk`
  SinkBuffer sunk;              // set when a PayloadSink took the payload (sunk_bytes of it)
  size_t sunk_bytes = 0;
  ucp_ep_h reply_ep = nullptr;  // set when the sender asked for replies (send(..., reply=true))
  bool in_sink() const { return sunk.data != nullptr; }
};

class UcxWorker {
 public:
  explicit UcxWorker(std::shared_ptr<UcxContext> context = UcxContext::get());
  ~UcxWorker();
  UcxWorker(const UcxWorker&) = delete;
  UcxWorker& operator=(const UcxWorker&) = delete;

  // This worker's address, to hand to peers through the control plane.
  const std::string& address() const { return address_; }

  // Queues every message with this active-message id for poll().
  void listen(uint16_t am_id);

  // An endpoint to the worker at `address`; peer_name is used in error messages. Peer failures
  // (a process that died, a reset connection) are reported through failed().
  // failure: detect (UCP's peer-failure mode, network transports only in UCX 1.13) or leave it to
  // the control plane (allows shared memory: peers on the same host).
  using EpId = uint64_t;
  enum class PeerFailure { detect, control_plane };
  EpId connect(const std::string& address, const std::string& peer_name,
               PeerFailure failure = PeerFailure::detect);
  // The UCX transport carrying the endpoint's active messages ("tcp", "posix", "rc_mlx5", ...).
  std::string transport(EpId ep) const;
  // Closes the endpoint (forcibly when it has failed). Unknown ids are ignored.
  void disconnect(EpId ep);
  // True with the reason when UCX reported the endpoint's peer as failed.
  bool failed(EpId ep, std::string* why = nullptr) const;

  // Sends (header, payload) as active message am_id. With reply = true the receiver gets a
  // reply endpoint. Buffers are kept alive by the worker until UCX is done with them. Throws
  // UcxError when the send fails at once (e.g. the endpoint has failed).
  void send(EpId ep, uint16_t am_id, std::string header, Payload payload, bool reply);
  // Sends on the reply endpoint of a received message. Returns false (and drops the message)
  // when the message carried no reply endpoint or the send failed at once.
  bool send_reply(const AmMessage& to, uint16_t am_id, std::string header, Payload payload);

  // The same with a payload in CUDA device memory (`size` bytes at `data`), which `keep` keeps
  // alive, unchanged, until UCX is done with it (the completion drops `keep`). The device work
  // that wrote it must have finished (synchronize first).
  void send_device(EpId ep, uint16_t am_id, std::string header, const void* data, size_t size,
                   std::shared_ptr<void> keep, bool reply);
  bool send_reply_device(const AmMessage& to, uint16_t am_id, std::string header, const void* data,
                         size_t size, std::shared_ptr<void> keep);
  // Rendezvous payloads of am_id land where `sink` says (see PayloadSink).
  void set_sink(uint16_t am_id, PayloadSink sink);

  // Makes progress on communication; true when anything happened.
  bool progress();
  // The next received message, if any (call progress() first).
  bool poll(AmMessage& out);
  // Sends still in flight.
  size_t pending_sends() const { return inflight_; }
  // Blocks until there may be something to progress, wake() is called, or timeout_ms passes.
  void wait(int timeout_ms);
  // Interrupts wait() from any thread.
  void wake();

 private:
  struct EpState;
  struct Listener;
  struct SendOp;
  struct RecvOp;
  static ucs_status_t on_am(void* arg, const void* header, size_t header_length, void* data,
                            size_t length, const ucp_am_recv_param_t* param);
  static void on_ep_error(void* arg, ucp_ep_h ep, ucs_status_t status);
  static void on_send_done(void* request, ucs_status_t status, void* user_data);
  static void on_recv_done(void* request, ucs_status_t status, size_t length, void* user_data);
  struct Outgoing {
    Payload payload;              // host bytes, or
    const void* device = nullptr;  // device bytes kept alive by keep
    size_t device_size = 0;
    std::shared_ptr<void> keep;
  };
  void submit(ucp_ep_h ep, uint16_t am_id, std::string header, Outgoing body, bool reply,
              const std::string& peer);
  void close_ep(ucp_ep_h ep, bool force);

  std::shared_ptr<UcxContext> context_;
  ucp_worker_h worker_ = nullptr;
  std::string address_;
  int efd_ = -1;
  int wake_fd_ = -1;
  EpId next_ep_ = 1;
  std::map<EpId, std::unique_ptr<EpState>> eps_;
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::map<uint16_t, PayloadSink> sinks_;
  std::deque<AmMessage> inbox_;
  size_t inflight_ = 0;
};

// The transport of the active-message lane in ucp_ep_print_info's text (exposed for tests).
std::string ucx_lane_transport(const std::string& info);

// Hex text of bytes (addresses in logs and on command lines) and back.
std::string to_hex(const std::string& bytes);
std::string from_hex(const std::string& hex);

}  // namespace starattn::transport
