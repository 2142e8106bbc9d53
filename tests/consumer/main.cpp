// Uses the installed library as a C++ service would: build a model, one Engine, stream tokens.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "runtime/engine.h"
#include "runtime/random_model.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: consumer SCRATCH_DIR\n");
    return 2;
  }
  const std::string dir = std::string(argv[1]) + "/model";
  starattn::write_random_model(starattn::preset_config("tiny"), 3, dir);

  starattn::EngineOptions options;
  options.model = dir;
  options.workers = 2;
  options.threads = 1;
  starattn::Engine engine(options);

  starattn::RequestSpec request;
  request.prompt.context = engine.tokenizer().encode("An installed library answering a question. ");
  request.prompt.query = engine.tokenizer().encode("Works?");
  request.max_tokens = 5;
  request.ignore_eos = true;
  std::vector<int32_t> tokens;
  const starattn::RequestStats stats = engine.generate(request, [&](int32_t token, const float*) {
    tokens.push_back(token);
    return true;
  });

  // The same request in full-attention mode with one block must give the same greedy tokens
  // (star mode with b >= C equals full attention).
  request.mode = starattn::AttentionMode::full;
  std::vector<int32_t> full;
  engine.generate(request, [&](int32_t token, const float*) {
    full.push_back(token);
    return true;
  });
  request.mode = starattn::AttentionMode::star;
  request.block_size = static_cast<int64_t>(request.prompt.context.size());
  std::vector<int32_t> one_block;
  engine.generate(request, [&](int32_t token, const float*) {
    one_block.push_back(token);
    return true;
  });

  if (tokens.size() != 5 || stats.generated != 5 || stats.blocks != 2 || full != one_block) {
    std::fprintf(stderr, "consumer: unexpected result (%zu tokens, %d generated, %d blocks)\n",
                 tokens.size(), stats.generated, stats.blocks);
    return 1;
  }
  std::printf("consumer: %zu tokens from starattn::Engine, %d blocks\n", tokens.size(), stats.blocks);
  return 0;
}
