// Inside the Engine (runtime/engine.cpp, runtime/engine_batch.cpp): an admitted request, holding
// its context shards and, once its phase 1 is done, the Generation that decodes it. Phase 1 runs
// in chunks (ContextShard::encode_chunk): EngineBatch interleaves them with the decode steps of
// the running requests; Engine::generate runs them back to back.
#pragma once

#include <chrono>
#include <memory>
#include <vector>

#include "runtime/generation.h"
#include "runtime/request.h"
#include "runtime/star_attention.h"

namespace starattn {

struct AdmittedRequest {
  RequestStats stats;  // the plan and phase 1 so far; end() adds the decode
  std::vector<std::unique_ptr<ContextShard>> shards;
  std::unique_ptr<LocalShards> local;
  std::unique_ptr<Generation> generation;  // last: it reads `local`; null until phase 1 is done

  // Runs the next chunk of phase 1 (with max_layers > 0, at most that many layers of it:
  // ContextShard::encode_chunk); when it was the last, starts the Generation. Returns true
  // while chunks remain. A throw (a failed forward) leaves the request failed: destroy it, which
  // frees its shards' K/V, partial or not.
  bool encode_chunk(Backend& backend, int max_layers = 0);
  // Layers of a forward the last encode_chunk() ran.
  int layers_last_call() const { return last_layers; }
  bool encoding() const { return generation == nullptr; }
  // Context rows (anchors included) phase 1 has left to compute, and its total.
  int64_t encode_rows_left() const;
  int64_t encode_rows_total() const { return rows_total; }
  // encode_chunk() calls so far (chunks, or slices of chunks).
  int chunks_done() const { return chunks; }

  // Set by Engine::start_request: what the Generation is made of.
  const Transformer* model = nullptr;
  const Tokenizer* tokenizer = nullptr;
  GenerationSpec spec;
  std::chrono::steady_clock::time_point phase1_start;
  size_t next_shard = 0;  // the shard encoding now
  int64_t rows_total = 0;
  int chunks = 0;
  int last_layers = 0;

  // The request has ended (its generation finished): its stats, decode included.
  RequestStats end(Backend& backend);
};

}  // namespace starattn
