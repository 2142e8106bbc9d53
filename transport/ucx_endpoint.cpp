#include "transport/ucx_endpoint.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <chrono>
#include <cstring>
#include <mutex>

namespace starattn::transport {
namespace {

void check(ucs_status_t status, const std::string& what) {
  if (status != UCS_OK)
    throw UcxError("UCX: " + what + " failed: " + ucs_status_string(status));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Context

std::shared_ptr<UcxContext> UcxContext::get() {
  static std::mutex mutex;
  static std::weak_ptr<UcxContext> cached;
  std::lock_guard<std::mutex> lock(mutex);
  auto ctx = cached.lock();
  if (!ctx) {
    ctx = std::shared_ptr<UcxContext>(new UcxContext());
    cached = ctx;
  }
  return ctx;
}

UcxContext::UcxContext() {
  ucp_config_t* config = nullptr;
  check(ucp_config_read(nullptr, nullptr, &config), "reading the configuration");
  ucp_params_t params;
  std::memset(&params, 0, sizeof(params));
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  // Several actors in one process each drive their own worker from their own thread.
  params.mt_workers_shared = 1;
  const ucs_status_t status = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  check(status, "ucp_init");
  ucp_context_attr_t attr;
  std::memset(&attr, 0, sizeof(attr));
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  check(ucp_context_query(context_, &attr), "ucp_context_query");
  memory_types_ = attr.memory_types;
}

UcxContext::~UcxContext() {
  if (context_) ucp_cleanup(context_);
}

bool UcxContext::device_memory_supported() const {
  return (memory_types_ & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
}

bool UcxContext::device_memory_enabled() const {
  const char* env = std::getenv("STARATTN_UCX_DEVICE_MEMORY");
  return device_memory_supported() && !(env && std::string(env) == "0");
}

std::string UcxContext::memory_types() const {
  std::string out;
  for (int t = 0; t < UCS_MEMORY_TYPE_LAST; ++t) {
    if (!(memory_types_ & UCS_BIT(t))) continue;
    if (!out.empty()) out += ",";
    out += ucs_memory_type_names[t];
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Worker internals

struct UcxWorker::EpState {
  ucp_ep_h ep = nullptr;
  std::string peer;
  bool failed = false;
  std::string why;
};

// The callback argument of one active-message id.
struct UcxWorker::Listener {
  UcxWorker* worker = nullptr;
  uint16_t id = 0;
};

// One send in flight: owns what UCX reads until the completion callback runs.
struct UcxWorker::SendOp {
  UcxWorker* worker = nullptr;
  std::string header;
  Outgoing body;
};

// One rendezvous receive in flight: the message being filled.
struct UcxWorker::RecvOp {
  UcxWorker* worker = nullptr;
  AmMessage message;
};

UcxWorker::UcxWorker(std::shared_ptr<UcxContext> context) : context_(std::move(context)) {
  ucp_worker_params_t params;
  std::memset(&params, 0, sizeof(params));
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  params.thread_mode = UCS_THREAD_MODE_SINGLE;
  check(ucp_worker_create(context_->handle(), &params, &worker_), "ucp_worker_create");
  try {
    ucp_address_t* addr = nullptr;
    size_t len = 0;
    check(ucp_worker_get_address(worker_, &addr, &len), "ucp_worker_get_address");
    address_.assign(reinterpret_cast<const char*>(addr), len);
    ucp_worker_release_address(worker_, addr);
    check(ucp_worker_get_efd(worker_, &efd_), "ucp_worker_get_efd");
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) throw UcxError(std::string("eventfd failed: ") + std::strerror(errno));
  } catch (...) {
    ucp_worker_destroy(worker_);
    throw;
  }
}

UcxWorker::~UcxWorker() {
  for (auto& [id, st] : eps_) close_ep(st->ep, st->failed);
  eps_.clear();
  // Let sends finish (or fail) so their callbacks free what they own; bounded, never hangs.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (inflight_ > 0 && std::chrono::steady_clock::now() < deadline) ucp_worker_progress(worker_);
  ucp_worker_destroy(worker_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void UcxWorker::listen(uint16_t am_id) {
  ucp_am_handler_param_t p;
  std::memset(&p, 0, sizeof(p));
  p.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                 UCP_AM_HANDLER_PARAM_FIELD_ARG;
  p.id = am_id;
  p.cb = &UcxWorker::on_am;
  listeners_.push_back(std::make_unique<Listener>(Listener{this, am_id}));
  p.arg = listeners_.back().get();
  check(ucp_worker_set_am_recv_handler(worker_, &p),
        "registering active message " + std::to_string(am_id));
}

ucs_status_t UcxWorker::on_am(void* arg, const void* header, size_t header_length, void* data,
                              size_t length, const ucp_am_recv_param_t* param) {
  auto* listener = static_cast<Listener*>(arg);
  UcxWorker* self = listener->worker;
  AmMessage msg;
  msg.id = listener->id;
  if (header_length > 0) msg.header.assign(static_cast<const char*>(header), header_length);
  if (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) msg.reply_ep = param->reply_ep;
  if (!(param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)) {
    msg.payload.assign(static_cast<const char*>(data), static_cast<const char*>(data) + length);
    self->inbox_.push_back(std::move(msg));
    return UCS_OK;
  }
  // Rendezvous: fetch the payload into the sink's buffer (device memory: UCX writes it there
  // directly or through its staging) or an owned host buffer; queued once complete.
  auto* op = new RecvOp{self, std::move(msg)};
  if (auto sink = self->sinks_.find(listener->id); sink != self->sinks_.end()) {
    try {
      op->message.sunk = sink->second(listener->id, op->message.header, length);
    } catch (...) {
      op->message.sunk = {};  // the host vector then; the consumer checks sizes
    }
  }
  void* dest = op->message.sunk.data;
  if (dest) {
    op->message.sunk_bytes = length;
  } else {
    op->message.sunk = {};
    op->message.payload.resize(length);
    dest = op->message.payload.data();
  }
  ucp_request_param_t rp;
  std::memset(&rp, 0, sizeof(rp));
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  if (op->message.sunk.data) {
    rp.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMORY_TYPE;
    rp.memory_type = op->message.sunk.device ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
  }
  rp.cb.recv_am = &UcxWorker::on_recv_done;
  rp.user_data = op;
  ucs_status_ptr_t req = ucp_am_recv_data_nbx(self->worker_, data, dest, length, &rp);
  if (req == nullptr) {
    self->inbox_.push_back(std::move(op->message));
    delete op;
  } else if (UCS_PTR_IS_ERR(req)) {
    delete op;  // the sender sees its send fail; nothing to queue
  }
  return UCS_INPROGRESS;
}

void UcxWorker::on_recv_done(void* request, ucs_status_t status, size_t, void* user_data) {
  auto* op = static_cast<RecvOp*>(user_data);
  if (status == UCS_OK) op->worker->inbox_.push_back(std::move(op->message));
  delete op;
  ucp_request_free(request);
}

void UcxWorker::on_ep_error(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* st = static_cast<EpState*>(arg);
  st->failed = true;
  st->why = std::string("UCX reported the connection to ") + st->peer + " as failed (" +
            ucs_status_string(status) + ")";
}

void UcxWorker::on_send_done(void* request, ucs_status_t, void* user_data) {
  auto* op = static_cast<SendOp*>(user_data);
  --op->worker->inflight_;
  delete op;
  ucp_request_free(request);
}

UcxWorker::EpId UcxWorker::connect(const std::string& address, const std::string& peer_name,
                                   PeerFailure failure) {
  if (address.empty()) throw UcxError("no UCX address for " + peer_name);
  auto st = std::make_unique<EpState>();
  st->peer = peer_name;
  ucp_ep_params_t p;
  std::memset(&p, 0, sizeof(p));
  p.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                 UCP_EP_PARAM_FIELD_ERR_HANDLER;
  p.address = reinterpret_cast<const ucp_address_t*>(address.data());
  // Peer failure mode: a dead peer surfaces as an error callback instead of a hang. UCX 1.13
  // leaves the shared-memory transports out in that mode, so peers on the same host connect
  // without it and the control plane (heartbeats, CAF monitors) detects their failures.
  p.err_mode = failure == PeerFailure::detect ? UCP_ERR_HANDLING_MODE_PEER
                                              : UCP_ERR_HANDLING_MODE_NONE;
  p.err_handler.cb = &UcxWorker::on_ep_error;
  p.err_handler.arg = st.get();
  check(ucp_ep_create(worker_, &p, &st->ep), "connecting to " + peer_name);
  const EpId id = next_ep_++;
  eps_[id] = std::move(st);
  return id;
}

std::string UcxWorker::transport(EpId ep) const {
  auto it = eps_.find(ep);
  if (it == eps_.end()) return "unknown";
  // UCX 1.13 has no query for an endpoint's transports; its configuration printout names the
  // lanes as "tl/device" (e.g. "tcp/eth0", "posix/memory", "rc_mlx5/mlx5_0:1"). Take the
  // transport of the first am lane, else of the first lane.
  char* text = nullptr;
  size_t size = 0;
  FILE* f = open_memstream(&text, &size);
  if (!f) return "unknown";
  ucp_ep_print_info(it->second->ep, f);
  std::fclose(f);
  const std::string info(text ? text : "", size);
  std::free(text);
  return ucx_lane_transport(info);
}

std::string ucx_lane_transport(const std::string& info) {
  std::string first;
  size_t pos = 0;
  while (pos < info.size()) {
    size_t end = info.find('\n', pos);
    if (end == std::string::npos) end = info.size();
    const std::string line = info.substr(pos, end - pos);
    pos = end + 1;
    // A lane line: "  lane[0]:  2:tcp/lo.0 md[1]  ... am am_bw#0".
    const size_t lane = line.find("lane[");
    if (lane == std::string::npos) continue;
    const size_t colon = line.find(':', line.find(']', lane) + 2);
    if (colon == std::string::npos) continue;
    const size_t start = colon + 1;
    const size_t stop = line.find_first_of(" \t", start);
    std::string tl = line.substr(start, stop == std::string::npos ? std::string::npos : stop - start);
    const size_t slash = tl.find('/');
    const std::string name = slash == std::string::npos ? tl : tl.substr(0, slash);
    if (name.empty()) continue;
    if (first.empty()) first = name;
    if (line.find(" am") != std::string::npos) return name;
  }
  return first.empty() ? "unknown" : first;
}

void UcxWorker::close_ep(ucp_ep_h ep, bool force) {
  ucp_request_param_t p;
  std::memset(&p, 0, sizeof(p));
  p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  p.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
  ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &p);
  if (req == nullptr || UCS_PTR_IS_ERR(req)) return;
  // A graceful close waits for the peer; never wait long for one that may be gone.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  while (ucp_request_check_status(req) == UCS_INPROGRESS &&
         std::chrono::steady_clock::now() < deadline)
    ucp_worker_progress(worker_);
  if (ucp_request_check_status(req) == UCS_INPROGRESS) {
    // A close request may ignore the cancel (the peer is simply not progressing): bound this
    // too; a request freed while in progress is released by UCX when it completes.
    ucp_request_cancel(worker_, req);
    const auto hard = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
    while (ucp_request_check_status(req) == UCS_INPROGRESS &&
           std::chrono::steady_clock::now() < hard)
      ucp_worker_progress(worker_);
  }
  ucp_request_free(req);
}

void UcxWorker::disconnect(EpId ep) {
  auto it = eps_.find(ep);
  if (it == eps_.end()) return;
  close_ep(it->second->ep, true);
  eps_.erase(it);
}

bool UcxWorker::failed(EpId ep, std::string* why) const {
  auto it = eps_.find(ep);
  if (it == eps_.end()) {
    if (why) *why = "unknown UCX endpoint " + std::to_string(ep);
    return true;
  }
  if (it->second->failed && why) *why = it->second->why;
  return it->second->failed;
}

void UcxWorker::submit(ucp_ep_h ep, uint16_t am_id, std::string header, Outgoing body,
                       bool reply, const std::string& peer) {
  auto* op = new SendOp{this, std::move(header), std::move(body)};
  ucp_request_param_t p;
  std::memset(&p, 0, sizeof(p));
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                   UCP_OP_ATTR_FIELD_FLAGS;
  p.cb.send = &UcxWorker::on_send_done;
  p.user_data = op;
  p.flags = reply ? UCP_AM_SEND_FLAG_REPLY : 0;
  const Outgoing& b = op->body;
  const void* data = b.device ? b.device : b.payload ? b.payload->data() : nullptr;
  const size_t size = b.device ? b.device_size : b.payload ? b.payload->size() : 0;
  if (b.device) {
    // Said, not detected: UCX then skips its memory-type lookup of the pointer.
    p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMORY_TYPE;
    p.memory_type = UCS_MEMORY_TYPE_CUDA;
  }
  ucs_status_ptr_t req = ucp_am_send_nbx(ep, am_id, op->header.data(), op->header.size(), data,
                                         size, &p);
  if (req == nullptr) {
    delete op;  // completed in place
    return;
  }
  if (UCS_PTR_IS_ERR(req)) {
    delete op;
    throw UcxError("UCX: sending " + std::to_string(size) + " bytes to " + peer + " failed: " +
                   ucs_status_string(UCS_PTR_STATUS(req)));
  }
  ++inflight_;
}

void UcxWorker::send(EpId ep, uint16_t am_id, std::string header, Payload payload, bool reply) {
  auto it = eps_.find(ep);
  if (it == eps_.end()) throw UcxError("send on unknown UCX endpoint " + std::to_string(ep));
  if (it->second->failed) throw UcxError(it->second->why);
  submit(it->second->ep, am_id, std::move(header), Outgoing{std::move(payload), nullptr, 0, nullptr},
         reply, it->second->peer);
}

void UcxWorker::send_device(EpId ep, uint16_t am_id, std::string header, const void* data,
                            size_t size, std::shared_ptr<void> keep, bool reply) {
  auto it = eps_.find(ep);
  if (it == eps_.end()) throw UcxError("send on unknown UCX endpoint " + std::to_string(ep));
  if (it->second->failed) throw UcxError(it->second->why);
  submit(it->second->ep, am_id, std::move(header), Outgoing{nullptr, data, size, std::move(keep)},
         reply, it->second->peer);
}

bool UcxWorker::send_reply(const AmMessage& to, uint16_t am_id, std::string header,
                           Payload payload) {
  if (to.reply_ep == nullptr) return false;
  try {
    submit(to.reply_ep, am_id, std::move(header), Outgoing{std::move(payload), nullptr, 0, nullptr},
           false, "the requester");
    return true;
  } catch (const UcxError&) {
    return false;  // the requester went away; nobody is left to tell
  }
}

bool UcxWorker::send_reply_device(const AmMessage& to, uint16_t am_id, std::string header,
                                  const void* data, size_t size, std::shared_ptr<void> keep) {
  if (to.reply_ep == nullptr) return false;
  try {
    submit(to.reply_ep, am_id, std::move(header), Outgoing{nullptr, data, size, std::move(keep)},
           false, "the requester");
    return true;
  } catch (const UcxError&) {
    return false;
  }
}

void UcxWorker::set_sink(uint16_t am_id, PayloadSink sink) { sinks_[am_id] = std::move(sink); }

bool UcxWorker::progress() { return ucp_worker_progress(worker_) != 0; }

bool UcxWorker::poll(AmMessage& out) {
  if (inbox_.empty()) return false;
  out = std::move(inbox_.front());
  inbox_.pop_front();
  return true;
}

void UcxWorker::wait(int timeout_ms) {
  if (!inbox_.empty()) return;
  // Arming says BUSY when events are already pending: progress instead of sleeping.
  const ucs_status_t s = ucp_worker_arm(worker_);
  if (s == UCS_ERR_BUSY) return;
  check(s, "ucp_worker_arm");
  pollfd fds[2] = {{efd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  const int n = ::poll(fds, 2, timeout_ms);
  if (n > 0 && (fds[1].revents & POLLIN)) {
    uint64_t v;
    while (::read(wake_fd_, &v, sizeof(v)) > 0) {
    }
  }
}

void UcxWorker::wake() {
  const uint64_t one = 1;
  // A full counter still wakes the poller, so a failed write needs no handling.
  [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));
}

std::string to_hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

std::string from_hex(const std::string& hex) {
  auto nibble = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    throw std::invalid_argument("not a hex digit: '" + std::string(1, c) + "'");
  };
  if (hex.size() % 2) throw std::invalid_argument("hex text of odd length " + std::to_string(hex.size()));
  std::string out(hex.size() / 2, '\0');
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<char>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
  return out;
}

}  // namespace starattn::transport
