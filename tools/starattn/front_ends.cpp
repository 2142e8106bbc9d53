#include "tools/starattn/front_ends.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>

#include "runtime/log.h"
#include "tools/starattn/signals.h"
#include "transport/address.h"

namespace starattn::cli {

const char* const kConnectionLimitsHelp =
    "  --max-connections N    open connections per port (HTTP, framed TCP) at most (default 1024)\n"
    "  --max-connections-per-peer N  of them from one client IP address (default 128)\n"
    "  --idle-timeout-ms N    close a connection with no request running after N ms (default 60000;\n"
    "                         0: never); refused connections are counted in /metrics\n";
const char* const kWorkerPortLimitsHelp =
    "  --worker-max-connections N  open connections to --listen at most (default 256)\n"
    "  --worker-max-connections-per-peer N  of them from one IP address (default 32)\n"
    "  --worker-idle-timeout-ms N  close a --listen connection silent both ways for N ms\n"
    "                         (default 300000; workers' heartbeats keep theirs busy)\n";

const std::set<std::string>& connection_limit_options() {
  static const std::set<std::string> names{"max-connections", "max-connections-per-peer", "idle-timeout-ms"};
  return names;
}

const std::set<std::string>& worker_port_limit_options() {
  static const std::set<std::string> names{"worker-max-connections", "worker-max-connections-per-peer",
                                           "worker-idle-timeout-ms"};
  return names;
}

namespace {

int64_t non_negative(const Args& args, const std::string& name, int64_t fallback) {
  const int64_t v = args.get_int(name, fallback);
  if (v < 0) throw std::invalid_argument("--" + name + " must not be negative, got " + std::to_string(v));
  return v;
}

}  // namespace

server::ConnectionLimits connection_limits(const Args& args, const std::string& prefix) {
  const bool worker = prefix == "worker-";
  server::ConnectionLimits l;
  l.max_connections = static_cast<size_t>(non_negative(args, prefix + "max-connections", worker ? 256 : 1024));
  l.max_per_peer = static_cast<size_t>(non_negative(args, prefix + "max-connections-per-peer", worker ? 32 : 128));
  l.idle_timeout = std::chrono::milliseconds(non_negative(args, prefix + "idle-timeout-ms", worker ? 300000 : 60000));
  return l;
}

std::string api_key(const Args& args) {
  if (!args.has("api-key-env")) return "";
  // The key comes through the environment so it never shows up in `ps`.
  const std::string var = args.get("api-key-env", "");
  const char* key = std::getenv(var.c_str());
  if (key == nullptr || *key == '\0')
    throw std::invalid_argument("--api-key-env " + var + ": the variable is empty or unset");
  return key;
}

server::HttpServerOptions http_options(const Args& args, const std::string& default_listen) {
  server::HttpServerOptions ho;
  ho.max_body_bytes = static_cast<size_t>(non_negative(args, "max-body-bytes", 8 << 20));
  ho.header_timeout = std::chrono::milliseconds(non_negative(args, "header-timeout-ms", 10000));
  ho.body_timeout = std::chrono::milliseconds(non_negative(args, "body-timeout-ms", 30000));
  ho.bearer_token = api_key(args);
  ho.limits = connection_limits(args);
  const auto address = transport::parse_host_port(args.get("http", default_listen), "--http");
  ho.host = address.host;
  ho.port = address.port;
  return ho;
}

server::TcpServerOptions tcp_options(const Args& args) {
  server::TcpServerOptions to;
  to.api_key = api_key(args);
  to.limits = connection_limits(args);
  const auto address = transport::parse_host_port(args.get("tcp", ""), "--tcp");
  to.host = address.host;
  to.port = address.port;
  return to;
}

LoadLog begin_load(const std::string& who, const std::string& what) {
  logging::info("%s: loading %s", who.c_str(), what.c_str());
  return {who, what, std::chrono::steady_clock::now()};
}

void end_load(const LoadLog& load) {
  logging::info("%s: %s loaded in %.2f s", load.who.c_str(), load.what.c_str(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - load.start).count());
}

std::string model_label(const Args& args) {
  if (args.has("random-weights")) return "random weights of " + args.get("random-weights", "");
  return args.get("model", "the default model");
}

void FrontEnds::bind(const Args& args, bool want_http, const std::string& default_http) {
  if (want_http) {
    http_options_ = http_options(args, default_http);
    http_acceptor_.emplace(io, "http", http_options_.host, http_options_.port, http_options_.limits, &metrics);
    std::printf("http://%s\n", transport::format_host_port(http_options_.host, http_acceptor_->port()).c_str());
  }
  if (args.has("tcp")) {
    tcp_options_ = tcp_options(args);
    tcp_acceptor_.emplace(io, "tcp", tcp_options_.host, tcp_options_.port, tcp_options_.limits, &metrics);
    std::printf("tcp://%s\n", transport::format_host_port(tcp_options_.host, tcp_acceptor_->port()).c_str());
  }
  std::fflush(stdout);
  bound_ = true;
}

std::unique_ptr<server::PortRelay> FrontEnds::bind_worker_port(const Args& args, const std::string& host,
                                                               uint16_t port) {
  // "*" has meant "every interface" for --listen.
  return std::make_unique<server::PortRelay>("worker", host == "*" ? "0.0.0.0" : host, port,
                                             connection_limits(args, "worker-"), &metrics);
}

void FrontEnds::serve(GenerationService& service, const Args& args, bool want_http,
                      const std::string& default_http, const char* name) {
  const int io_threads = static_cast<int>(args.get_int("io-threads", 2));
  if (io_threads < 1) throw std::invalid_argument("--io-threads must be at least 1");
  if (!bound_) bind(args, want_http, default_http);
  std::optional<server::HttpServer> http;
  std::optional<server::TcpServer> tcp;
  if (http_acceptor_) http.emplace(io, service, metrics, http_options_, std::move(*http_acceptor_));
  if (tcp_acceptor_) tcp.emplace(io, service, metrics, tcp_options_, std::move(*tcp_acceptor_));
  http_acceptor_.reset();
  tcp_acceptor_.reset();
  auto work = boost::asio::make_work_guard(io);
  std::vector<std::thread> threads;
  for (int i = 0; i < io_threads; ++i) threads.emplace_back([this] { io.run(); });
  logging::info("%s: serving; Ctrl-C stops", name);
  while (!stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  logging::info("%s: stopping", name);
  if (http) http->stop();
  if (tcp) tcp->stop();
  work.reset();
  io.stop();
  for (auto& t : threads) t.join();
}

}  // namespace starattn::cli
