// starattn: the command line of the Star Attention runtime.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <string>

#include <unistd.h>

#include "runtime/log.h"
#include "tools/starattn/commands.h"

// From the CMake project version and `git describe` at configure time (tools/CMakeLists.txt).
#ifndef STARATTN_VERSION
#define STARATTN_VERSION "unknown"
#endif

namespace {

struct Command {
  const char* name;
  int (*run)(int, char**);
  const char* summary;
};

const Command kCommands[] = {
    {"run", starattn::cli::cmd_run, "answer a query over a context, streaming tokens to stdout"},
    {"init-model", starattn::cli::cmd_init_model,
     "write a random model (config.json + model.safetensors) from a preset"},
    {"serve", starattn::cli::cmd_serve, "run the head of a cluster (scheduler + query actor)"},
    {"worker", starattn::cli::cmd_worker,
     "serve context blocks for a head (one context actor per GPU, or one on the cpu)"},
    {"serve-local", starattn::cli::cmd_serve_local,
     "serve HTTP (OpenAI-style) and framed TCP from an in-process engine"},
    {"client", starattn::cli::cmd_client, "stream an answer from a server's framed TCP port"},
    {"eval", starattn::cli::cmd_eval, "RULER-style accuracy of star vs full attention (eval/)"},
    {"bench", starattn::cli::cmd_bench, "GPU kernel and end-to-end benchmarks against PyTorch (cuda)"},
    {"bench-transport", starattn::cli::cmd_bench_transport,
     "measure the data plane's Q -> (O, lse) round trip between two processes"},
};

void usage() {
  std::fprintf(stderr, "usage: starattn COMMAND [options]   (starattn COMMAND --help)\n\ncommands:\n");
  for (const auto& c : kCommands) std::fprintf(stderr, "  %-16s %s\n", c.name, c.summary);
  std::fprintf(stderr,
               "\noptions of every command:\n"
               "  --log-level L    error, warn, info (default) or debug; log lines go to stderr with\n"
               "                   UTC timestamps\n"
               "  --version        print the version and exit\n");
}

// Takes the options every command shares (--log-level L, --log-level=L) out of argv, so each
// command's own parser sees only its options. Returns the new argc.
int take_global_options(int argc, char** argv) {
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--log-level") {
      if (i + 1 >= argc) throw std::invalid_argument("--log-level needs a value");
      starattn::logging::set_level(starattn::logging::parse_level(argv[++i]));
    } else if (arg.rfind("--log-level=", 0) == 0) {
      starattn::logging::set_level(starattn::logging::parse_level(arg.substr(12)));
    } else {
      argv[out++] = argv[i];
    }
  }
  argv[out] = nullptr;
  return out;
}

// OpenMP threads busy-wait between parallel regions by default. On a machine whose cores are
// shared (other processes, OpenBLAS's own threads, several workers) that spinning stalls every
// barrier for a scheduler time slice: decode ran 20-40x slower in our measurements. libgomp reads
// OMP_WAIT_POLICY only when it loads, so set it and restart once if the user has not chosen.
void prefer_passive_openmp(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "passive", 1);
  execv("/proc/self/exe", argv);
  // execv only returns on failure; carry on with the default policy.
}

}  // namespace

int main(int argc, char** argv) {
  prefer_passive_openmp(argv);
  try {
    argc = take_global_options(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "starattn: error: %s\n", e.what());
    return 2;
  }
  if (argc >= 2 && (!std::strcmp(argv[1], "--version") || !std::strcmp(argv[1], "version"))) {
    std::printf("starattn %s\n", STARATTN_VERSION);
    return 0;
  }
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage();
    return argc < 2 ? 2 : 0;
  }
  for (const auto& c : kCommands) {
    if (std::strcmp(argv[1], c.name) != 0) continue;
    try {
      return c.run(argc, argv);
    } catch (const std::exception& e) {
      starattn::logging::error("starattn %s: %s", c.name, e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "starattn: unknown command '%s'\n", argv[1]);
  usage();
  return 2;
}
