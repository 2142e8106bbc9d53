// Inside the Engine (runtime/engine.cpp, runtime/engine_batch.cpp): a request whose phase 1 is
// done, holding its context shards and the Generation that decodes it.
#pragma once

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
  std::unique_ptr<Generation> generation;  // last: it reads `local`

  // The request has ended (its generation finished): its stats, decode included.
  RequestStats end(Backend& backend);
};

}  // namespace starattn
