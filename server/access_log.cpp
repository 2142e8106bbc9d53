#include "server/access_log.h"

#include <cstdio>

#include "runtime/log.h"

namespace starattn::server {

std::string format_access(const AccessRecord& r) {
  char times[96];
  if (r.ttft_ms >= 0) std::snprintf(times, sizeof times, "ttft_ms=%.1f total_ms=%.1f", r.ttft_ms, r.total_ms);
  else std::snprintf(times, sizeof times, "ttft_ms=- total_ms=%.1f", r.total_ms);
  return "access id=" + (r.id.empty() ? std::string("-") : r.id) + " client=" + r.client +
         " endpoint=" + r.endpoint + " status=" + r.status + " tokens_in=" + std::to_string(r.tokens_in) +
         " tokens_out=" + std::to_string(r.tokens_out) + " " + times;
}

void log_access(const AccessRecord& r) {
  if (!logging::enabled(logging::Level::info)) return;
  logging::info("%s", format_access(r).c_str());
}

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace starattn::server
