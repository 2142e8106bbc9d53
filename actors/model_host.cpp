#include "actors/model_host.h"

#include <omp.h>

#include <cstdio>

#include "runtime/bpe_tokenizer.h"

namespace starattn::actors {

ModelHost::ModelHost(const std::string& model_dir, const std::string& device, int gpu,
                     int threads)
    : threads_(threads) {
  backend_ = make_backend(device, gpu, threads);
  loaded_ = open_model(model_dir);
  model_ = std::make_unique<Transformer>(loaded_.config, *loaded_.weights, *backend_);
  tokenizer_ = load_tokenizer(model_dir);
  if (dynamic_cast<const ByteTokenizer*>(tokenizer_.get()))
    tokenizer_ = std::make_unique<ByteTokenizer>(loaded_.config.vocab_size);
  if (!dynamic_cast<const ByteTokenizer*>(tokenizer_.get()))
    chat_ = detect_chat_template(read_chat_template(model_dir), *tokenizer_);
  // FNV-1a over the config's JSON: equal shapes and special ids, or a refused registration.
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : loaded_.config.to_json()) h = (h ^ c) * 0x100000001b3ull;
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(h));
  digest_ = text;
}

int64_t ModelHost::kv_capacity_tokens(double fraction) const {
  const int64_t per_token = config().kv_bytes_per_token(dtype_size(backend_->activation_dtype()));
  return static_cast<int64_t>(static_cast<double>(backend_->free_bytes()) * fraction) / per_token;
}

void adopt_compute_threads(int threads) {
  if (threads > 0) omp_set_num_threads(threads);
}

}  // namespace starattn::actors
