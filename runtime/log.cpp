#include "runtime/log.h"

#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <ctime>
#include <stdexcept>
#include <vector>

namespace starattn::logging {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::info)};

void vwrite(Level l, const char* format, va_list args) {
  if (!enabled(l)) return;
  const long long now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
  char prefix[64];
  std::snprintf(prefix, sizeof prefix, "%s %-5s ", timestamp(now_ms).c_str(), level_name(l));
  va_list copy;
  va_copy(copy, args);
  const int n = std::vsnprintf(nullptr, 0, format, copy);
  va_end(copy);
  std::string line(prefix);
  if (n > 0) {
    std::vector<char> body(static_cast<size_t>(n) + 1);
    std::vsnprintf(body.data(), body.size(), format, args);
    line.append(body.data(), static_cast<size_t>(n));
  }
  line += '\n';
  // One fwrite of the whole line: stdio locks the stream per call, so lines never interleave.
  std::fwrite(line.data(), 1, line.size(), stderr);
}

}  // namespace

Level parse_level(const std::string& name) {
  if (name == "error") return Level::error;
  if (name == "warn") return Level::warn;
  if (name == "info") return Level::info;
  if (name == "debug") return Level::debug;
  throw std::invalid_argument("--log-level must be error, warn, info or debug, got '" + name + "'");
}

const char* level_name(Level l) {
  switch (l) {
    case Level::error: return "error";
    case Level::warn: return "warn";
    case Level::info: return "info";
    case Level::debug: return "debug";
  }
  return "?";
}

void set_level(Level l) { g_level = static_cast<int>(l); }
Level level() { return static_cast<Level>(g_level.load()); }

std::string timestamp(long long unix_ms) {
  const std::time_t seconds = static_cast<std::time_t>(unix_ms / 1000);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", utc.tm_year + 1900, utc.tm_mon + 1,
                utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, static_cast<int>(unix_ms % 1000));
  return buf;
}

#define STARATTN_LOG_FORWARD(LEVEL)  \
  va_list args;                      \
  va_start(args, format);            \
  vwrite(LEVEL, format, args);       \
  va_end(args)

void write(Level l, const char* format, ...) { STARATTN_LOG_FORWARD(l); }
void error(const char* format, ...) { STARATTN_LOG_FORWARD(Level::error); }
void warn(const char* format, ...) { STARATTN_LOG_FORWARD(Level::warn); }
void info(const char* format, ...) { STARATTN_LOG_FORWARD(Level::info); }
void debug(const char* format, ...) { STARATTN_LOG_FORWARD(Level::debug); }

#undef STARATTN_LOG_FORWARD

}  // namespace starattn::logging
