// Requests of one Engine decoded together (continuous batching): admit() runs a request's
// phase 1 at once and the request joins the decode at the next step; step() advances every
// running request by one token in one forward (runtime/decode_batch.h). Requests join and
// leave between steps. Engine::generate stays the one-request path.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "runtime/decode_batch.h"
#include "runtime/engine.h"

namespace starattn {

class EngineBatch {
 public:
  // The engine must outlive the batch. One thread drives a batch.
  explicit EngineBatch(Engine& engine);
  ~EngineBatch();
  EngineBatch(const EngineBatch&) = delete;
  EngineBatch& operator=(const EngineBatch&) = delete;

  // Plans the request and runs its phase 1 (as Engine::generate does), then it decodes from
  // the next step(). on_token is called for each of its tokens; returning false cancels it.
  // Throws Error for a request the engine refuses (nothing joins). Returns its id.
  uint64_t admit(const RequestSpec& request, GeneratedCallback on_token);
  // The request ends at the next step with "cancelled"; false when it is not running.
  bool cancel(uint64_t id);

  struct Ended {
    uint64_t id = 0;
    RequestEnd end;  // stats, or the error that ended this request alone
  };
  // One step of every running request; returns those that ended in it. Throws when the shared
  // forward fails outside every request (a backend error): then every request stays running.
  std::vector<Ended> step();
  size_t running() const { return requests_.size(); }

 private:
  struct Running {
    std::unique_ptr<AdmittedRequest> request;
    GeneratedCallback on_token;
  };
  Engine& engine_;
  DecodeBatch batch_;
  std::map<uint64_t, Running> requests_;
  uint64_t next_id_ = 1;
};

}  // namespace starattn
