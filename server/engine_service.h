// GenerationService over in-process Engines: a pool of engines (usually one), each with its own
// thread, fed from one FIFO queue. Each engine decodes its running requests together
// (continuous batching, runtime/engine_batch.h): between two steps it admits queued requests
// (up to max_batch, and only while its KV memory takes them) and ends the finished or cancelled
// ones; a step advances every running request by one token in one forward. Requests beyond
// the pool's slots wait in the queue (bounded: beyond max_queue they are refused as overloaded).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "runtime/engine.h"
#include "runtime/generation_service.h"

namespace starattn::server {

struct EngineServiceOptions {
  EngineOptions engine;   // model, device, context workers per engine, threads
  int engines = 1;        // engine replicas (each loads the weights once)
  int max_batch = 64;     // requests one engine decodes together
  int max_queue = 256;    // queued requests beyond the running ones
  // Largest context one request may have, in tokens; 0: what the engine's KV memory allows
  // (the engine checks that itself when it plans the request).
  int64_t max_context_tokens = 0;
  std::string model_name;  // "model" in responses; default: the model path's last component
};

class EngineService : public GenerationService {
 public:
  explicit EngineService(const EngineServiceOptions& options);
  // Fails queued requests (shutting_down), cancels running ones and joins the engine threads.
  ~EngineService() override;
  EngineService(const EngineService&) = delete;
  EngineService& operator=(const EngineService&) = delete;

  std::shared_ptr<RequestHandle> submit(RequestSpec request, StreamCallbacks callbacks) override;
  ServiceInfo info() const override;
  std::vector<WorkerLoad> load() const override;
  int queued() const override;
  void release_context(const std::string& context_id) override;
  std::optional<BatchCounters> batching() const override;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace starattn::server
