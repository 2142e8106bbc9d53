#include "actors/cluster.h"

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <stdexcept>
#include <thread>

#include "actors/messages.h"
#include "actors/query.h"
#include "actors/scheduler.h"

namespace starattn::actors {

void configure_caf(caf::actor_system_config& config) {
  config.load<caf::io::middleman>();
  config.set("scheduler.policy", caf::atom("sharing"));
  config.set("scheduler.max-threads", 2);
}

Head spawn_head(caf::actor_system& system, std::shared_ptr<ModelHost> model,
                const HeadOptions& options) {
  Head h;
  h.health = std::make_shared<WorkerHealth>();
  QueryOptions qo;
  qo.model = model;
  qo.health = h.health;
  qo.exchange_timeout = options.exchange_timeout;
  h.query = spawn_query(system, qo);
  SchedulerOptions so;
  so.model = std::move(model);
  so.query = h.query;
  so.health = h.health;
  so.verbose = options.verbose;
  so.max_context_tokens = options.max_context_tokens;
  so.max_running = options.max_running;
  so.max_queue = options.max_queue;
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

std::pair<std::string, uint16_t> parse_host_port(const std::string& text, const std::string& option) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    throw std::invalid_argument("--" + option + " wants HOST:PORT, got '" + text + "'");
  const std::string port_text = text.substr(colon + 1);
  size_t used = 0;
  long port = -1;
  try {
    port = std::stol(port_text, &used);
  } catch (const std::exception&) {
  }
  if (used != port_text.size() || port < 0 || port > 65535)
    throw std::invalid_argument("--" + option + ": '" + port_text + "' is not a port number");
  std::string host = text.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return {host, static_cast<uint16_t>(port)};
}

caf::actor connect_remote(caf::actor_system& system, const std::string& host, uint16_t port,
                          std::chrono::milliseconds patience) {
  const auto deadline = std::chrono::steady_clock::now() + patience;
  std::string last;
  for (;;) {
    auto a = system.middleman().remote_actor(host, port);
    if (a) return *a;
    last = system.render(a.error());
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  throw std::runtime_error("cannot reach " + host + ":" + std::to_string(port) + " (" + last + ")");
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

wire::Finished submit(caf::actor_system& system, const caf::actor& scheduler,
                      const wire::SubmitRequest& request,
                      const std::function<void(const wire::TokenEvent&)>& on_token,
                      std::chrono::milliseconds idle_timeout) {
  caf::scoped_actor self{system};
  self->monitor(scheduler);
  self->send(scheduler, submit_atom::value, wire::encode(request));
  wire::Finished result;
  bool done = false;
  std::string failure;
  while (!done && failure.empty()) {
    self->receive(
        [&](accepted_atom, const std::string&) {},  // the id matters only to cancel
        [&](token_atom, const std::string& bytes) {
          on_token(wire::decode<wire::TokenEvent>(bytes, "the head"));
        },
        [&](finished_atom, const std::string& bytes) {
          result = wire::decode<wire::Finished>(bytes, "the head");
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
