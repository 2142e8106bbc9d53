// Helpers around the protobuf wire contract (starattn.proto): the protocol version, and
// (de)serialization that turns malformed bytes into errors naming what was expected.
#pragma once

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "runtime/errors.h"
#include "transport/starattn.pb.h"

namespace starattn::wire {

// Bump on any incompatible change of starattn.proto or of the message flow.
// 2: the query side sends a layer's Q of several requests in one AttendBatchRequest.
// 3: a cuda_ipc batch is ordered by one event each way (AttendBatchRequest.q_event,
//    AttendBatchReply.done_event), no longer by each item's own events.
constexpr uint32_t kProtocolVersion = 3;

// Thrown when bytes from a peer cannot be accepted (garbage, wrong version, bad fields).
class ProtocolError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// How many messages of one type this process has encoded and decoded: tests read them to show
// that a path stays off the wire (in-process messages carry runtime types, actors/messages.h).
template <class Message>
struct WireCounts {
  static inline std::atomic<uint64_t> encoded{0};
  static inline std::atomic<uint64_t> decoded{0};
};

template <class Message>
std::string encode(const Message& m) {
  WireCounts<Message>::encoded.fetch_add(1, std::memory_order_relaxed);
  std::string out;
  if (!m.SerializeToString(&out))
    throw ProtocolError("cannot serialize " + m.GetTypeName());
  return out;
}

// Parses `bytes` as a Message; `from` names the peer for the error message.
template <class Message>
Message decode(const void* bytes, size_t size, const std::string& from) {
  WireCounts<Message>::decoded.fetch_add(1, std::memory_order_relaxed);
  Message m;
  if (size > static_cast<size_t>(INT32_MAX) || !m.ParseFromArray(bytes, static_cast<int>(size)))
    throw ProtocolError("malformed " + m.GetTypeName() + " (" + std::to_string(size) +
                        " bytes) from " + from);
  return m;
}

template <class Message>
Message decode(const std::string& bytes, const std::string& from) {
  return decode<Message>(bytes.data(), bytes.size(), from);
}

// Empty when `version` is ours, else the refusal text naming both versions.
inline std::string version_error(uint32_t version, const std::string& what) {
  if (version == kProtocolVersion) return {};
  return what + " speaks starattn protocol version " + std::to_string(version) +
         ", this process speaks version " + std::to_string(kProtocolVersion) + ": refused";
}

inline void check_version(uint32_t version, const std::string& what) {
  const std::string e = version_error(version, what);
  if (!e.empty()) throw ProtocolError(e);
}

// The one ErrorKind (runtime/errors.h) on the control plane and back.
inline ErrorKind to_wire(starattn::ErrorKind kind) {
  switch (kind) {
    case starattn::ErrorKind::invalid_request: return ERROR_INVALID_REQUEST;
    case starattn::ErrorKind::capacity: return ERROR_CAPACITY;
    case starattn::ErrorKind::overloaded: return ERROR_OVERLOADED;
    case starattn::ErrorKind::shutting_down: return ERROR_SHUTTING_DOWN;
    case starattn::ErrorKind::worker_failed: return ERROR_WORKER_FAILED;
    case starattn::ErrorKind::timeout: return ERROR_TIMEOUT;
    case starattn::ErrorKind::internal: break;
  }
  return ERROR_INTERNAL;
}

inline starattn::ErrorKind from_wire(ErrorKind kind) {
  switch (kind) {
    case ERROR_INVALID_REQUEST: return starattn::ErrorKind::invalid_request;
    case ERROR_CAPACITY: return starattn::ErrorKind::capacity;
    case ERROR_OVERLOADED: return starattn::ErrorKind::overloaded;
    case ERROR_SHUTTING_DOWN: return starattn::ErrorKind::shutting_down;
    case ERROR_WORKER_FAILED: return starattn::ErrorKind::worker_failed;
    case ERROR_TIMEOUT: return starattn::ErrorKind::timeout;
    default: return starattn::ErrorKind::internal;  // ERROR_PROTOCOL too
  }
}

}  // namespace starattn::wire
