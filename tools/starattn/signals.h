// SIGINT/SIGTERM as a flag the long-running commands (serve, worker) poll.
#pragma once

#include <csignal>

namespace starattn::cli {

inline volatile std::sig_atomic_t g_stop_signal = 0;

inline void install_stop_signals() {
  auto on_signal = [](int sig) { g_stop_signal = sig; };
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
}

inline bool stop_requested() { return g_stop_signal != 0; }

}  // namespace starattn::cli
