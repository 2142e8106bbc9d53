// The control-plane vocabulary of the actors: CAF atoms naming operations.
//
// Every message is (atom, std::string) where the string holds one starattn.proto message (see
// the comment beside each atom); only built-in CAF types are used, so nothing needs a CAF type
// id and the middleman can carry every message between processes. Replies to requests are a
// single std::string holding the reply message.
#pragma once

#include <cstdint>

#include <caf/atom.hpp>

namespace starattn::actors {

// context_block -> scheduler (request): RegisterWorker -> RegisterReply.
using register_atom = caf::atom_constant<caf::atom("register")>;
// client -> scheduler: SubmitRequest; the scheduler then sends accepted (unless it refuses the
// request at once), token* and finished to the client.
using submit_atom = caf::atom_constant<caf::atom("submit")>;
// scheduler -> client: Accepted (the request id, for cancel).
using accepted_atom = caf::atom_constant<caf::atom("accepted")>;
// client -> scheduler: CancelRequest; the client then gets a Finished ("cancelled").
using cancel_atom = caf::atom_constant<caf::atom("cancel")>;
// query -> scheduler -> client: TokenEvent.
using token_atom = caf::atom_constant<caf::atom("token")>;
// query -> scheduler -> client: Finished (exactly one per submitted request).
using finished_atom = caf::atom_constant<caf::atom("finished")>;
// anyone -> scheduler or context_block (request): StatusRequest -> StatusReply.
using status_atom = caf::atom_constant<caf::atom("status")>;
// scheduler -> context_block (request): EncodeRequest -> EncodeReply.
using encode_atom = caf::atom_constant<caf::atom("encode")>;
// scheduler -> context_block: ReleaseRequest (frees the request's KV).
using release_atom = caf::atom_constant<caf::atom("release")>;
// scheduler -> query: StartQuery.
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

}  // namespace starattn::actors
