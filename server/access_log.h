// One access-log line per request, the same for both front ends, at info level:
//   access id=cmpl-1f client=127.0.0.1:50312 endpoint=/v1/completions status=200 tokens_in=812
//          tokens_out=64 ttft_ms=35.2 total_ms=402.7
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace starattn::server {

struct AccessRecord {
  std::string id;
  std::string client;    // address:port of the peer
  std::string endpoint;  // "/v1/completions", "tcp", ...
  std::string status;    // HTTP status, or "ok" / an error code on the framed port
  int64_t tokens_in = 0, tokens_out = 0;
  double ttft_ms = -1;  // negative: no token was generated
  double total_ms = 0;
};

std::string format_access(const AccessRecord& record);
void log_access(const AccessRecord& record);

// Milliseconds since `start` on the steady clock.
double ms_since(std::chrono::steady_clock::time_point start);

}  // namespace starattn::server
