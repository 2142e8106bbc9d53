// starattn: the command line of the Star Attention runtime.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

#include <unistd.h>

#include "tools/starattn/commands.h"

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
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage();
    return argc < 2 ? 2 : 0;
  }
  for (const auto& c : kCommands) {
    if (std::strcmp(argv[1], c.name) != 0) continue;
    try {
      return c.run(argc, argv);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "starattn %s: error: %s\n", c.name, e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "starattn: unknown command '%s'\n", argv[1]);
  usage();
  return 2;
}
