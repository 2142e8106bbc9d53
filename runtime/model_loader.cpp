#include "runtime/model_loader.h"

#include <chrono>
#include <cstdio>

#include "runtime/bpe_tokenizer.h"
#include "runtime/random_model.h"

namespace starattn {

ChatTemplate ModelRuntime::chat_for_messages() const {
  return chat ? *chat : resolve_chat_template("", *tokenizer);
}

ModelRuntime load_model_runtime(const ModelLoadOptions& options) {
  const auto t0 = std::chrono::steady_clock::now();
  ModelRuntime rt;
  rt.backend = make_backend(options.device, options.gpu, options.threads);
  if (options.random_weights) {
    // A config.json path, or a directory holding one.
    std::string path = options.model;
    if (path.size() < 5 || path.compare(path.size() - 5, 5, ".json") != 0) path += "/config.json";
    rt.loaded.config = ModelConfig::from_file(path);
    rt.loaded.weights = random_weight_source(rt.loaded.config, options.weight_seed);
    rt.loaded.path = path;
    rt.tokenizer = std::make_unique<ByteTokenizer>(rt.loaded.config.vocab_size);
  } else {
    rt.loaded = open_model(options.model);
    rt.tokenizer = load_tokenizer(options.model);
    if (dynamic_cast<const ByteTokenizer*>(rt.tokenizer.get()))
      rt.tokenizer = std::make_unique<ByteTokenizer>(rt.loaded.config.vocab_size);
    // Byte-level models have no chat template; every real vocabulary gets one.
    if (!dynamic_cast<const ByteTokenizer*>(rt.tokenizer.get()))
      rt.chat = resolve_chat_template(read_chat_template(options.model), *rt.tokenizer);
  }
  rt.model = std::make_unique<Transformer>(rt.loaded.config, *rt.loaded.weights, *rt.backend);
  // FNV-1a over the config's JSON: equal shapes and special ids, or a refused registration.
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : rt.loaded.config.to_json()) h = (h ^ c) * 0x100000001b3ull;
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(h));
  rt.digest = text;
  rt.load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return rt;
}

}  // namespace starattn
