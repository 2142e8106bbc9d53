// GenerationService over the head's scheduler actor, so the HTTP and framed TCP front ends of
// server/ serve a cluster exactly as they serve an in-process Engine (`starattn serve --http`).
//
// Each request gets a small CAF actor of its own (a "bridge") that submits it, learns its id,
// hands the scheduler's tokens to the service's callbacks and, on cancel or a client that stops
// reading, asks the scheduler to cancel, which stops phase 2 and frees the workers' KV. The
// bridge and the scheduler share this process: they exchange runtime types (actors/messages.h),
// never protobuf. The
// scheduler does the tokenizing and the chat layout, so answers equal `starattn run`'s.
#pragma once

#include <chrono>
#include <functional>
#include <cstdint>
#include <memory>
#include <string>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include "runtime/generation_service.h"

namespace starattn::actors {

struct SchedulerServiceOptions {
  std::string model_name = "starattn";  // "model" in responses
  // What the head was told to enforce (SchedulerOptions); reported by info() only.
  int64_t max_context_tokens = 0;
  int max_queue = 0;
  // Bytes of a token id, for logprobs' token names (the head's tokenizer); empty: logprobs
  // requests are refused by the front end.
  std::function<std::string(int32_t)> token_bytes;
  // How long load()/queued() wait for the scheduler's status (/metrics, /health).
  std::chrono::milliseconds status_timeout{2000};
  // How long the destructor waits for open requests to hear that the service is stopping.
  std::chrono::milliseconds shutdown_timeout{10000};
};

class SchedulerService : public GenerationService {
 public:
  // `system` must outlive the service and every handle it returned; `scheduler` runs in it.
  SchedulerService(caf::actor_system& system, caf::actor scheduler, SchedulerServiceOptions options);
  // Ends every open request (on_error: shutting_down, its KV released on the workers) and
  // waits for them: no callback runs once it returns, so the front ends' io_context may go next.
  ~SchedulerService() override;
  SchedulerService(const SchedulerService&) = delete;
  SchedulerService& operator=(const SchedulerService&) = delete;

  std::shared_ptr<RequestHandle> submit(RequestSpec request,
                                                StreamCallbacks callbacks) override;
  ServiceInfo info() const override;
  // From the scheduler's status: KV it has placed on each worker and not yet released.
  std::vector<WorkerLoad> load() const override;
  int queued() const override;
  void release_context(const std::string& context_id) override;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace starattn::actors
