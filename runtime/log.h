// One small logging facility for the front ends and the command line: a level chosen once
// (--log-level), and every line on stderr as "2026-01-31T12:00:00.123Z info  message".
//
// Why not spdlog: we need four levels, a timestamp and one write per line, about 80 lines. spdlog
// would bring fmt and a package the CI image and the installed CMake package would have to find,
// for sinks, patterns and async queues that nothing here uses.
#pragma once

#include <string>

namespace starattn::logging {

enum class Level { error = 0, warn = 1, info = 2, debug = 3 };

// "error", "warn", "info", "debug"; throws std::invalid_argument naming --log-level otherwise.
Level parse_level(const std::string& name);
const char* level_name(Level level);

void set_level(Level level);  // default: info
Level level();
inline bool enabled(Level l) { return static_cast<int>(l) <= static_cast<int>(level()); }

// printf-style; one line each (a trailing newline is added), written whole even when several
// threads log at once. Below the chosen level nothing is formatted.
void write(Level level, const char* format, ...) __attribute__((format(printf, 2, 3)));
void error(const char* format, ...) __attribute__((format(printf, 1, 2)));
void warn(const char* format, ...) __attribute__((format(printf, 1, 2)));
void info(const char* format, ...) __attribute__((format(printf, 1, 2)));
void debug(const char* format, ...) __attribute__((format(printf, 1, 2)));

// The timestamp prefix of a line at `unix_ms` (UTC, millisecond resolution); exposed for tests.
std::string timestamp(long long unix_ms);

}  // namespace starattn::logging
