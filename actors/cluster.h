// Glue the processes share: spawning the head's actors, reaching a remote actor, submitting a
// request and streaming its tokens, asking for status, stopping actors.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>

#include "actors/data_plane.h"
#include "actors/model_host.h"
#include "runtime/request.h"
#include "transport/wire.h"

namespace starattn::actors {

// The certificate files of a process's control-plane TLS (the CAF middleman's connections):
// its certificate and key, and the cluster CA that every peer's certificate must be signed by.
// All three empty: no TLS.
struct TlsFiles {
  std::string certificate, key, ca;
  bool enabled() const { return !certificate.empty(); }
};

// TlsFiles from --tls-cert, --tls-key and --tls-ca (empty strings: not given). Checks them now,
// with OpenSSL, so that a mistake fails at start-up naming the file rather than later on a
// connection: all three or none, readable PEM files, an unencrypted key that matches the
// certificate, and a certificate that the CA verifies.
TlsFiles tls_files(const std::string& certificate, const std::string& key, const std::string& ca);

// Settings every starattn process gives CAF: the middleman (for remote actors) and a small,
// non-spinning scheduler pool (the heavy work runs in detached actors, and CI has two cores).
// With `tls` enabled it also loads CAF's OpenSSL module with those files: publish_actor and
// connect_remote then speak TLS, and both ends of every connection must present a certificate
// signed by the CA (CAF sets SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT on both sides).
void configure_caf(caf::actor_system_config& config, const TlsFiles& tls = {});

// True for 127.0.0.0/8, ::1 and "localhost": addresses no other host can reach.
bool is_loopback_host(const std::string& host);

// Refuses (throws) to listen on a non-loopback `host` without TLS unless `insecure` is set: an
// unauthenticated control plane accepts any process as a worker or a client. `option` names
// the address's option in the error.
void check_listen_allowed(const std::string& host, bool tls, bool insecure,
                          const std::string& option);

// Publishes `actor` at host:port ("0.0.0.0" or "*": every interface; port 0: any free port)
// through TLS when the system was configured with certificates, else in the clear. Returns
// the bound port; throws naming the address when it cannot listen.
uint16_t publish_actor(caf::actor_system& system, const caf::actor& actor, const std::string& host,
                       uint16_t port);

struct Head {
  caf::actor scheduler, query;
  std::shared_ptr<WorkerHealth> health;
};

struct HeadOptions {
  bool verbose = true;
  std::chrono::milliseconds exchange_timeout{30000};
  // The scheduler's limits (SchedulerOptions): 0 means none.
  int64_t max_context_tokens = 0;
  int max_running = 0;
  int max_queue = 256;
  // No request lives longer than this from its admission (0: no deadline).
  std::chrono::milliseconds request_deadline{std::chrono::minutes(30)};
};

// The head's actors over `model` (the query actor computes on it, the scheduler reads its
// config and tokenizer).
Head spawn_head(caf::actor_system& system, std::shared_ptr<ModelHost> model,
                const HeadOptions& options);
Head spawn_head(caf::actor_system& system, std::shared_ptr<ModelHost> model, bool verbose,
                std::chrono::milliseconds exchange_timeout = std::chrono::seconds(30));

// The actor published at host:port, retrying until `patience` has passed (the head may start
// after its workers); through TLS when the system was configured with certificates. Throws
// with CAF's reason when it never answers (a TLS peer that refuses our certificate, or one we
// refuse, reads as a failed handshake).
caf::actor connect_remote(caf::actor_system& system, const std::string& host, uint16_t port,
                          std::chrono::milliseconds patience);

// The status of a scheduler or context_block actor; throws on no answer or a refusal.
wire::StatusReply query_status(caf::actor_system& system, const caf::actor& target,
                               std::chrono::milliseconds timeout,
                               uint32_t protocol_version = wire::kProtocolVersion);

// Waits until the scheduler reports at least `workers` live workers.
void wait_for_workers(caf::actor_system& system, const caf::actor& scheduler, int workers,
                      std::chrono::milliseconds patience);

// Submits a request and calls on_token for each streamed token; returns how it ended (ok =
// false with the error when the request failed). A scheduler of this process gets the request
// as it is; a remote one (another node) its protobuf image (transport/wire_convert.h). Throws
// when the head goes away or nothing arrives for idle_timeout.
RequestEnd submit(caf::actor_system& system, const caf::actor& scheduler, const RequestSpec& request,
                  const std::function<void(const TokenEvent&)>& on_token,
                  std::chrono::milliseconds idle_timeout);

// Sends every actor an exit message and waits (bounded) until each has terminated: the
// actor_system's destructor would otherwise wait for them forever.
void stop_actors(caf::actor_system& system, const std::vector<caf::actor>& actors);

}  // namespace starattn::actors
