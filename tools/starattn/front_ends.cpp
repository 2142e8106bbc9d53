#include "tools/starattn/front_ends.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>

#include "server/client.h"
#include "server/tcp_server.h"
#include "tools/starattn/signals.h"

namespace starattn::cli {

server::HttpServerOptions http_options(const Args& args, const std::string& default_listen) {
  server::HttpServerOptions ho;
  ho.max_body_bytes = static_cast<size_t>(args.get_int("max-body-bytes", 8 << 20));
  ho.header_timeout = std::chrono::milliseconds(args.get_int("header-timeout-ms", 10000));
  ho.body_timeout = std::chrono::milliseconds(args.get_int("body-timeout-ms", 30000));
  if (args.has("api-key-env")) {
    // The key comes through the environment so it never shows up in `ps`.
    const char* key = std::getenv(args.get("api-key-env", "").c_str());
    if (key == nullptr || *key == '\0')
      throw std::invalid_argument("--api-key-env " + args.get("api-key-env", "") +
                                  ": the variable is empty or unset");
    ho.bearer_token = key;
  }
  std::tie(ho.host, ho.port) =
      server::parse_host_port(args.get("http", default_listen), "--http");
  return ho;
}

void FrontEnds::serve(GenerationService& service, const Args& args, bool want_http,
                      const std::string& default_http, const char* name) {
  const int io_threads = static_cast<int>(args.get_int("io-threads", 2));
  if (io_threads < 1) throw std::invalid_argument("--io-threads must be at least 1");
  std::optional<server::HttpServer> http;
  std::optional<server::TcpServer> tcp;
  if (want_http) {
    const server::HttpServerOptions ho = http_options(args, default_http);
    http.emplace(io, service, metrics, ho);
    std::printf("http://%s:%u\n", ho.host.c_str(), static_cast<unsigned>(http->port()));
  }
  if (args.has("tcp")) {
    server::TcpServerOptions to;
    std::tie(to.host, to.port) = server::parse_host_port(args.get("tcp", ""), "--tcp");
    tcp.emplace(io, service, metrics, to);
    std::printf("tcp://%s:%u\n", to.host.c_str(), static_cast<unsigned>(tcp->port()));
  }
  std::fflush(stdout);
  auto work = boost::asio::make_work_guard(io);
  std::vector<std::thread> threads;
  for (int i = 0; i < io_threads; ++i) threads.emplace_back([this] { io.run(); });
  while (!stop_requested()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::fprintf(stderr, "%s: stopping\n", name);
  if (http) http->stop();
  if (tcp) tcp->stop();
  work.reset();
  io.stop();
  for (auto& t : threads) t.join();
}

}  // namespace starattn::cli
