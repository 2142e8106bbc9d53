// The explicit side of context reuse (issue 15): POST /v1/contexts registers a document and
// pins its blocks on the workers, completions and chats name it by `context_id`, and
// DELETE /v1/contexts/{id} unpins and forgets it. Reuse itself needs none of this (every
// request's blocks are cached where a cache is on); a pin only keeps the document's blocks
// from being evicted while it is registered.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/generation_service.h"
#include "server/http_api.h"

namespace starattn::server {

struct RegisteredContext {
  bool ids = false;
  std::string document;          // text (ids == false)
  std::vector<int32_t> tokens;   // token ids (ids == true)
  AttentionMode mode = AttentionMode::star;
  int64_t block_size = 0, anchor_size = 0;  // 0: the defaults (as every request naming it)
};

class ContextRegistry {
 public:
  explicit ContextRegistry(size_t max_contexts = 1024) : max_(max_contexts) {}

  // POST /v1/contexts: parses the body ({"document": text} or {"context_ids": [ids]}, optional
  // "mode", "block_size", "anchor_size"), registers it and submits a request that encodes and
  // pins its blocks (max_tokens 0). Returns the response body. Throws ApiError (400 for a bad
  // body, 429 when max_contexts are registered).
  std::string create(GenerationService& service, const std::string& body);
  // DELETE /v1/contexts/{id}: unpins its blocks on every worker and forgets it. Returns the
  // response body; throws ApiError 404 for an unknown id.
  std::string remove(GenerationService& service, const std::string& id);
  // Fills every choice's context from the context the request names (ApiError 404 if unknown).
  void apply(ApiRequest& request) const;

 private:
  size_t max_;
  mutable std::mutex mutex_;
  uint64_t next_ = 1;
  std::map<std::string, RegisteredContext> contexts_;
};

// "/v1/contexts/{id}" -> id; false for other paths.
bool context_path_id(const std::string& path, std::string& id);

}  // namespace starattn::server
