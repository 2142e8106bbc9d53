#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "runtime/random_model.h"
#include "tools/starattn/args.h"
#include "tools/starattn/commands.h"

namespace starattn::cli {

int cmd_init_model(int argc, char** argv) {
  if (argc > 2 && !std::strcmp(argv[2], "--help")) {
    std::printf(
        "usage: starattn init-model (--preset tiny|small | --config config.json) --seed S --out DIR\n"
        "Writes a random Llama-architecture model as a Hugging Face directory\n"
        "(config.json + model.safetensors): a preset (byte vocabulary: 256 bytes, BOS, EOS, PAD)\n"
        "or any shape a config.json describes.\n");
    return 0;
  }
  const Args args(argc, argv, 2, {"preset", "config", "seed", "out"}, {});
  if (args.has("preset") && args.has("config"))
    throw std::invalid_argument("give one of --preset and --config");
  const ModelConfig config = args.has("config") ? ModelConfig::from_file(args.get("config", ""))
                                                : preset_config(args.get("preset", "tiny"));
  const uint64_t seed = static_cast<uint64_t>(args.get_int("seed", 0));
  const std::string out = args.require("out");
  write_random_model(config, seed, out);
  std::fprintf(stderr, "wrote %s model (%d layers, hidden %d, vocab %d) to %s\n",
               args.has("config") ? "random" : args.get("preset", "tiny").c_str(), config.num_layers, config.hidden_size,
               config.vocab_size, out.c_str());
  return 0;
}

}  // namespace starattn::cli
