// SIGINT/SIGTERM as a flag the long-running commands (serve, worker) poll.
#pragma once

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <thread>

#include "runtime/log.h"

namespace starattn::cli {

inline volatile std::sig_atomic_t g_stop_signal = 0;

inline void install_stop_signals() {
  auto on_signal = [](int sig) { g_stop_signal = sig; };
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
}

inline bool stop_requested() { return g_stop_signal != 0; }

// Bounds the shutdown of a process that ran CAF actors. caf::actor_system's destructor waits
// for every detached actor thread, and a stopped actor's thread waits until the last reference
// to it is gone; a reference the middleman still holds for a peer (a remote proxy of a published
// actor) can keep that from ever happening, and the process then hangs after its work is done
// (seen for workers in about 1 of 12 cluster shutdowns). Once the actors are stopped nothing
// remains to be saved, so after `grace` the process exits with its status regardless.
inline void exit_after(int status, std::chrono::seconds grace = std::chrono::seconds(5)) {
  std::fflush(nullptr);
  std::thread([status, grace] {
    std::this_thread::sleep_for(grace);
    starattn::logging::warn("actor system shutdown did not finish in %llds, exiting",
                 static_cast<long long>(grace.count()));
    std::fflush(nullptr);
    _exit(status);
  }).detach();
}

}  // namespace starattn::cli
