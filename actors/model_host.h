// One model on one backend, shared by the actors of a process that use that device.
//
// A context_block actor or the query actor holds a ModelHost: the backend, the weights as a
// Transformer, and the tokenizer. The cpu backend's ops are safe to call from several threads
// (its only shared state, the allocation table, is locked), so in-process actors on the cpu
// share one ModelHost instead of loading the weights once per actor.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "runtime/model_loader.h"

namespace starattn::actors {

class ModelHost {
 public:
  // device "cpu" (threads: 0 = all cores) or a gpu backend name with its device index.
  ModelHost(const std::string& model_dir, const std::string& device, int gpu, int threads);
  explicit ModelHost(const ModelLoadOptions& options);

  const Transformer& model() const { return *rt_.model; }
  const ModelConfig& config() const { return rt_.model->config(); }
  Backend& backend() const { return *rt_.backend; }
  const Tokenizer& tokenizer() const { return *rt_.tokenizer; }
  // The model's chat template; empty for byte-level models.
  const std::optional<ChatTemplate>& chat_template() const { return rt_.chat; }
  ChatTemplate chat_for_messages() const { return rt_.chat_for_messages(); }
  int threads() const { return threads_; }
  // Serialises compute on backends that one thread at a time must drive (cuda: one stream,
  // shared staging buffers); the cpu backend is safe from several threads, so the lock returned
  // for it holds nothing. A context actor encodes on its own thread and answers attention on its
  // data-plane thread: both take this lock around their backend work.
  std::unique_lock<std::mutex> lock_compute() const {
    return rt_.backend->name() == "cpu" ? std::unique_lock<std::mutex>(compute_mutex_, std::defer_lock)
                                     : std::unique_lock<std::mutex>(compute_mutex_);
  }
  // A fingerprint of the model's shape: head and workers must serve the same model.
  const std::string& digest() const { return rt_.digest; }
  // Tokens of KV alone that `bytes` hold (what a worker registers as its room in tokens).
  int64_t kv_tokens_in(int64_t bytes) const;
  // Bytes `fraction` of the backend's free memory amounts to (the planner's worker room).
  int64_t room_bytes(double fraction) const;

 private:
  ModelRuntime rt_;
  int threads_ = 0;
  mutable std::mutex compute_mutex_;
};

// Gives the calling thread the backend's cpu thread count (OpenMP's setting is per thread, and
// the cpu attention splits work by it: every thread that computes must agree for results to
// be bit-identical across processes).
void adopt_compute_threads(int threads);

// Hands the pages of freed host memory back to the system; called when a request's buffers
// (KV, workspaces) have been freed. They are up to a few MB each: once glibc has freed one
// mmap'd block it raises its mmap threshold (up to 32 MB), so later ones come from the heap,
// where the buffers of concurrent requests interleave and free() alone returns little. A cpu
// worker stayed at 220-440 MB after 60-100 concurrent 2000-token requests (32 MB before), with
// no KV held (docs/RELIABILITY.md). malloc_trim(0) releases the free pages of every arena; it
// walks the free lists once per request. Nothing to do outside glibc.
void return_freed_memory();

}  // namespace starattn::actors
