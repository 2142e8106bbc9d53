// The control-plane vocabulary of the actors: CAF atoms naming operations, and the runtime
// types the actors of one process hand each other.
//
// Protobuf only where bytes leave a process. A message that may cross processes is (atom,
// std::string) where the string holds one starattn.proto message (the scheduler and its context
// workers; a remote client, `run --head`); only built-in CAF types are used, so the middleman
// can carry it. Replies to requests are a single std::string holding the reply message.
//
// Messages between actors that always share the head process (scheduler -> query actor, query
// actor -> scheduler, scheduler -> an in-process client such as SchedulerService's bridge)
// carry the runtime's request vocabulary (runtime/request.h) behind std::shared_ptr<const T>:
// never serialized, never copied. The scheduler answers a client in the form it submitted in,
// and a remote actor can only submit bytes.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/atom.hpp>

#include "runtime/generation.h"
#include "runtime/request.h"

namespace starattn::actors {

// ---- in-process messages ----

// A context worker holding one shard of a request, as the query actor needs to reach it.
struct ShardRef {
  uint64_t worker_id = 0;
  std::string name;
  std::string ucx_address;
  std::string host_id;  // as the worker registered them (transport/peer_path.h)
  uint64_t process_id = 0;
  std::string ipc_device;
  bool ucx_device_memory = false;  // DataPath::ucx_device possible
};

// scheduler -> query: phase 2 of a request whose context sits on `shards`.
struct StartQuery {
  uint64_t request_id = 0;
  int64_t context_len = 0;
  GenerationSpec spec;           // stop ids already resolved
  std::vector<ShardRef> shards;  // the fixed order the partials are merged in
};

// query -> scheduler -> in-process client: one generated token.
struct RequestToken {
  uint64_t request_id = 0;
  TokenEvent event;
};

// query -> scheduler -> in-process client: the end of a request (exactly one per request).
struct RequestFinished {
  uint64_t request_id = 0;
  RequestEnd end;
};

using SubmitPtr = std::shared_ptr<const RequestSpec>;
using StartQueryPtr = std::shared_ptr<const StartQuery>;
using TokenPtr = std::shared_ptr<const RequestToken>;
using FinishedPtr = std::shared_ptr<const RequestFinished>;

// ---- atoms ----

// context_block -> scheduler (request): RegisterWorker -> RegisterReply.
using register_atom = caf::atom_constant<caf::atom("register")>;
// client -> scheduler: SubmitRequest bytes (a remote client) or a SubmitPtr (in-process); the
// scheduler then sends accepted (unless it refuses the request at once), token* and finished
// to the client, as bytes or as runtime types alike.
using submit_atom = caf::atom_constant<caf::atom("submit")>;
// scheduler -> client: Accepted bytes, or the request id (uint64_t) in-process; for cancel.
using accepted_atom = caf::atom_constant<caf::atom("accepted")>;
// client -> scheduler: CancelRequest bytes, or the request id (uint64_t) in-process; the client
// then gets a Finished ("cancelled").
using cancel_atom = caf::atom_constant<caf::atom("cancel")>;
// query -> scheduler: TokenPtr; scheduler -> client: TokenPtr, or TokenEvent bytes (remote).
using token_atom = caf::atom_constant<caf::atom("token")>;
// query -> scheduler: FinishedPtr; scheduler -> client: FinishedPtr, or Finished bytes (remote).
// Exactly one per submitted request.
using finished_atom = caf::atom_constant<caf::atom("finished")>;
// anyone -> scheduler or context_block (request): StatusRequest -> StatusReply.
using status_atom = caf::atom_constant<caf::atom("status")>;
// scheduler -> context_block (request): EncodeRequest -> EncodeReply.
using encode_atom = caf::atom_constant<caf::atom("encode")>;
// scheduler -> context_block: ReleaseRequest (frees the request's KV).
using release_atom = caf::atom_constant<caf::atom("release")>;
// front end -> scheduler: a context id (std::string) whose pinned blocks every worker unpins
// (DELETE /v1/contexts/{id}); the scheduler sends each worker a ReleaseRequest naming it.
using unpin_atom = caf::atom_constant<caf::atom("unpin")>;
// scheduler -> query: StartQueryPtr.
using start_atom = caf::atom_constant<caf::atom("start")>;
// In-process only (scheduler and query always share the head process), plain integers:
// query -> itself (request id): run the next decode step.
using step_atom = caf::atom_constant<caf::atom("step")>;
// scheduler -> query (request id): drop the request, its client already got an error or
// cancelled it.
using abort_atom = caf::atom_constant<caf::atom("abort")>;
// scheduler -> query (worker id): the worker died, close its endpoint.
using forget_atom = caf::atom_constant<caf::atom("forget")>;

// worker -> scheduler: Heartbeat, every heartbeat interval (from a light actor of the worker
// process, so a long encode does not silence it; a stopped process does).
using heartbeat_atom = caf::atom_constant<caf::atom("heartbeat")>;
// An actor's own timer.
using tick_atom = caf::atom_constant<caf::atom("tick")>;

// UCX active-message ids of the data plane.
constexpr uint16_t kAmAttend = 1;       // AttendRequest + q
constexpr uint16_t kAmAttendReply = 2;  // AttendReply + O, lse (no payload for ipc exchanges)
constexpr uint16_t kAmIpcOpen = 3;       // IpcOpen (query -> worker on the same host)
constexpr uint16_t kAmIpcOpenReply = 4;  // IpcOpenReply
constexpr uint16_t kAmAttendBatch = 5;       // AttendBatchRequest + every item's q
constexpr uint16_t kAmAttendBatchReply = 6;  // AttendBatchReply + every answered item's O, lse

}  // namespace starattn::actors

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(starattn::actors::SubmitPtr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(starattn::actors::StartQueryPtr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(starattn::actors::TokenPtr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(starattn::actors::FinishedPtr)
