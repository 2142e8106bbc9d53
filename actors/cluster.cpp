#include "actors/cluster.h"

#include <arpa/inet.h>
#include <caf/all.hpp>
#include <caf/io/all.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/openssl/publish.hpp>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <set>
#include <stdexcept>
#include <thread>

#include "actors/messages.h"
#include "actors/query.h"
#include "actors/scheduler.h"
#include "transport/wire_convert.h"

namespace starattn::actors {

namespace {

// OpenSSL's queued errors as one line (empty when none).
std::string openssl_errors() {
  std::string text;
  while (const unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    text += (text.empty() ? "" : "; ") + std::string(buf);
  }
  return text;
}

// Refuses to decrypt: an encrypted key must fail with an error, never prompt on a terminal.
int no_passphrase(char*, int, int, void*) { return 0; }

void require_readable(const std::string& path, const std::string& option) {
  if (!std::ifstream(path)) throw std::invalid_argument("--" + option + ": cannot read " + path);
}

}  // namespace

TlsFiles tls_files(const std::string& certificate, const std::string& key, const std::string& ca) {
  TlsFiles f{certificate, key, ca};
  if (certificate.empty() && key.empty() && ca.empty()) return f;
  if (certificate.empty() || key.empty() || ca.empty())
    throw std::invalid_argument(
        "--tls-cert, --tls-key and --tls-ca go together (missing: " +
        std::string(certificate.empty() ? "--tls-cert " : "") + (key.empty() ? "--tls-key " : "") +
        (ca.empty() ? "--tls-ca" : "") + ")");
  require_readable(certificate, "tls-cert");
  require_readable(key, "tls-key");
  require_readable(ca, "tls-ca");
  ERR_clear_error();
  std::unique_ptr<SSL_CTX, void (*)(SSL_CTX*)> ctx(SSL_CTX_new(TLS_method()), SSL_CTX_free);
  if (!ctx) throw std::runtime_error("cannot create an OpenSSL context: " + openssl_errors());
  SSL_CTX_set_default_passwd_cb(ctx.get(), no_passphrase);
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), certificate.c_str()) != 1)
    throw std::invalid_argument("--tls-cert " + certificate +
                                " is not a PEM certificate: " + openssl_errors());
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), key.c_str(), SSL_FILETYPE_PEM) != 1)
    throw std::invalid_argument("--tls-key " + key +
                                " is not an unencrypted PEM private key of --tls-cert " +
                                certificate + ": " + openssl_errors());
  if (SSL_CTX_check_private_key(ctx.get()) != 1)
    throw std::invalid_argument("--tls-key " + key + " does not belong to --tls-cert " +
                                certificate + ": " + openssl_errors());
  if (SSL_CTX_load_verify_locations(ctx.get(), ca.c_str(), nullptr) != 1)
    throw std::invalid_argument("--tls-ca " + ca + " holds no PEM CA certificate: " +
                                openssl_errors());
  // Our own certificate must pass the check every peer will make of it.
  std::unique_ptr<X509_STORE_CTX, void (*)(X509_STORE_CTX*)> check(X509_STORE_CTX_new(),
                                                                   X509_STORE_CTX_free);
  STACK_OF(X509)* chain = nullptr;
  SSL_CTX_get0_chain_certs(ctx.get(), &chain);
  if (!check || X509_STORE_CTX_init(check.get(), SSL_CTX_get_cert_store(ctx.get()),
                                    SSL_CTX_get0_certificate(ctx.get()), chain) != 1)
    throw std::runtime_error("cannot set up a certificate check: " + openssl_errors());
  if (X509_verify_cert(check.get()) != 1)
    throw std::invalid_argument(
        "--tls-cert " + certificate + " does not verify against --tls-ca " + ca + ": " +
        X509_verify_cert_error_string(X509_STORE_CTX_get_error(check.get())));
  return f;
}

void configure_caf(caf::actor_system_config& config, const TlsFiles& tls) {
  config.load<caf::io::middleman>();
  config.set("scheduler.policy", caf::atom("sharing"));
  config.set("scheduler.max-threads", 2);
  if (tls.enabled()) {
    // Any of these set makes CAF's OpenSSL module require and verify certificates on both ends
    // of a connection; without them it would fall back to anonymous, unauthenticated TLS.
    config.load<caf::openssl::manager>();
    config.set("openssl.certificate", tls.certificate);
    config.set("openssl.key", tls.key);
    config.set("openssl.cafile", tls.ca);
  }
}

bool is_loopback_host(const std::string& host) {
  if (host == "localhost") return true;
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  return inet_pton(AF_INET6, host.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

void check_listen_allowed(const std::string& host, bool tls, bool insecure,
                          const std::string& option) {
  if (tls || insecure || is_loopback_host(host)) return;
  throw std::invalid_argument(
      "refusing to listen on '" + host + "' (--" + option +
      ") without TLS: any process that reaches it could register as a worker or submit "
      "requests. Give --tls-cert, --tls-key and --tls-ca (deploy/make-certs.sh makes them), "
      "listen on a loopback address, or pass --insecure on a network you trust");
}

uint16_t publish_actor(caf::actor_system& system, const caf::actor& actor, const std::string& host,
                       uint16_t port) {
  const char* bind = (host == "0.0.0.0" || host == "*") ? nullptr : host.c_str();
  auto bound = system.has_openssl_manager() ? caf::openssl::publish(actor, port, bind, true)
                                            : system.middleman().publish(actor, port, bind, true);
  if (!bound)
    throw std::runtime_error("cannot listen on " + host + ":" + std::to_string(port) + ": " +
                             system.render(bound.error()));
  return *bound;
}

Head spawn_head(caf::actor_system& system, std::shared_ptr<ModelHost> model,
                const HeadOptions& options) {
  Head h;
  h.health = std::make_shared<WorkerHealth>();
  QueryOptions qo;
  qo.model = model;
  qo.health = h.health;
  qo.exchange_timeout = options.exchange_timeout;
  qo.verbose = options.verbose;
  h.query = spawn_query(system, qo);
  SchedulerOptions so;
  so.model = std::move(model);
  so.query = h.query;
  so.health = h.health;
  so.verbose = options.verbose;
  so.max_context_tokens = options.max_context_tokens;
  so.max_running = options.max_running;
  so.max_queue = options.max_queue;
  so.request_deadline = options.request_deadline;
  h.scheduler = spawn_scheduler(system, so);
  return h;
}

Head spawn_head(caf::actor_system& system, std::shared_ptr<ModelHost> model, bool verbose,
                std::chrono::milliseconds exchange_timeout) {
  HeadOptions o;
  o.verbose = verbose;
  o.exchange_timeout = exchange_timeout;
  return spawn_head(system, std::move(model), o);
}

caf::actor connect_remote(caf::actor_system& system, const std::string& host, uint16_t port,
                          std::chrono::milliseconds patience) {
  const auto deadline = std::chrono::steady_clock::now() + patience;
  const bool tls = system.has_openssl_manager();
  // The middleman's own remote_actor waits without limit; a peer that accepts the TCP
  // connection but never completes the handshake must not hang us, so ask it with a timeout.
  const caf::io::middleman_actor mm =
      tls ? system.openssl_manager().actor_handle() : system.middleman().actor_handle();
  caf::scoped_actor self{system};
  std::string last;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    caf::actor found;
    bool refused = false;
    self->request(mm, std::max(left, std::chrono::milliseconds(1000)), caf::connect_atom::value,
                  host, port)
        .receive(
            [&](const caf::node_id&, caf::strong_actor_ptr& ptr, const std::set<std::string>&) {
              if (ptr) found = caf::actor_cast<caf::actor>(std::move(ptr));
              else last = "no actor published at port " + std::to_string(port);
            },
            [&](const caf::error& e) {
              last = system.render(e);
              // Something accepted the connection and hung up in the handshake: a TLS
              // mismatch, which trying again will not mend (a peer still starting up refuses
              // the connection instead).
              refused = e.category() == caf::atom("system") &&
                        e.code() == static_cast<uint8_t>(caf::sec::disconnect_during_handshake);
            });
    if (found) return found;
    if (refused) {
      throw std::runtime_error(
          "cannot reach " + host + ":" + std::to_string(port) + (tls ? " over TLS" : "") +
          ": it closed the connection during the handshake (" + last + "). " +
          (tls ? "It refused our certificate, or its certificate is not signed by our --tls-ca, "
                 "or it runs without TLS"
               : "It probably requires TLS: give --tls-cert, --tls-key and --tls-ca"));
    }
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  throw std::runtime_error("cannot reach " + host + ":" + std::to_string(port) +
                           (tls ? " over TLS (" : " (") + last + ")");
}

wire::StatusReply query_status(caf::actor_system& system, const caf::actor& target,
                               std::chrono::milliseconds timeout, uint32_t protocol_version) {
  caf::scoped_actor self{system};
  wire::StatusRequest req;
  req.set_protocol_version(protocol_version);
  wire::StatusReply reply;
  std::string err;
  self->request(target, timeout, status_atom::value, wire::encode(req))
      .receive([&](const std::string& bytes) { reply = wire::decode<wire::StatusReply>(bytes, "the peer"); },
               [&](const caf::error& e) { err = system.render(e); });
  if (!err.empty()) throw std::runtime_error("status request failed: " + err);
  return reply;
}

void wait_for_workers(caf::actor_system& system, const caf::actor& scheduler, int workers,
                      std::chrono::milliseconds patience) {
  const auto deadline = std::chrono::steady_clock::now() + patience;
  int have = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    const auto s = query_status(system, scheduler, std::chrono::seconds(10));
    if (!s.ok()) throw std::runtime_error("the head refused a status request: " + s.error());
    have = s.workers_size();
    if (have >= workers) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  throw std::runtime_error("only " + std::to_string(have) + " of " + std::to_string(workers) +
                           " context workers registered within " +
                           std::to_string(patience.count()) + " ms");
}

RequestEnd submit(caf::actor_system& system, const caf::actor& scheduler, const RequestSpec& request,
                  const std::function<void(const TokenEvent&)>& on_token,
                  std::chrono::milliseconds idle_timeout) {
  caf::scoped_actor self{system};
  self->monitor(scheduler);
  // Bytes only where they leave this process; the scheduler answers in the form it was asked in.
  if (scheduler.node() != system.node())
    self->send(scheduler, submit_atom::value, wire::encode(wire::to_wire(request)));
  else
    self->send(scheduler, submit_atom::value, SubmitPtr(std::make_shared<const RequestSpec>(request)));
  RequestEnd result;
  bool done = false;
  std::string failure;
  while (!done && failure.empty()) {
    self->receive(
        [&](accepted_atom, uint64_t) {},            // the id matters only to cancel
        [&](accepted_atom, const std::string&) {},
        [&](token_atom, const TokenPtr& t) { on_token(t->event); },
        [&](token_atom, const std::string& bytes) {
          on_token(wire::from_wire(wire::decode<wire::TokenEvent>(bytes, "the head")));
        },
        [&](finished_atom, const FinishedPtr& f) {
          result = f->end;
          done = true;
        },
        [&](finished_atom, const std::string& bytes) {
          result = wire::from_wire(wire::decode<wire::Finished>(bytes, "the head"));
          done = true;
        },
        [&](const caf::down_msg& dm) {
          failure = "the head went away (" + system.render(dm.reason) + ")";
        },
        caf::after(idle_timeout) >> [&] {
          failure = "no answer from the head for " + std::to_string(idle_timeout.count()) + " ms";
        });
  }
  if (!failure.empty()) throw std::runtime_error(failure);
  return result;
}

void stop_actors(caf::actor_system& system, const std::vector<caf::actor>& actors) {
  caf::scoped_actor self{system};
  for (const auto& a : actors) {
    if (!a) continue;
    self->monitor(a);
    self->send_exit(a, caf::exit_reason::user_shutdown);
  }
  for (const auto& a : actors) {
    if (!a) continue;
    self->receive([](const caf::down_msg&) {},
                  caf::after(std::chrono::seconds(10)) >> [] {});
  }
}

}  // namespace starattn::actors
