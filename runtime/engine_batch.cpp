#include "runtime/engine_batch.h"

#include "runtime/engine_request.h"
#include "runtime/errors.h"

namespace starattn {

EngineBatch::EngineBatch(Engine& engine) : engine_(engine), batch_(engine.model()) {}

EngineBatch::~EngineBatch() = default;

uint64_t EngineBatch::admit(const RequestSpec& request, GeneratedCallback on_token) {
  Running r{engine_.admit(request), std::move(on_token)};
  const uint64_t id = next_id_++;
  batch_.add(id, *r.request->generation);
  requests_.emplace(id, std::move(r));
  return id;
}

bool EngineBatch::cancel(uint64_t id) {
  const auto it = requests_.find(id);
  if (it == requests_.end()) return false;
  it->second.request->generation->cancel();
  return true;
}

std::vector<EngineBatch::Ended> EngineBatch::step() {
  std::vector<Ended> ended;
  for (DecodeBatch::Result& res : batch_.step()) {
    const auto it = requests_.find(res.id);
    Running& r = it->second;
    if (res.produced && !r.on_token(res.token)) r.request->generation->cancel();
    if (!res.error && !res.generation->finished()) continue;
    batch_.remove(res.id);  // a callback's cancel ends it after the batch step already ran
    Ended e;
    e.id = res.id;
    if (res.error) {
      const ErrorReport why = report_of(res.error);
      e.end.ok = false;
      e.end.error = why.message;
      e.end.error_kind = why.kind;
      e.end.stats = r.request->stats;
      e.end.stats.finish_reason = "error";
      e.end.stats.generated = r.request->generation->generated();
    } else {
      e.end.stats = r.request->end(engine_.backend());
    }
    ended.push_back(std::move(e));
    requests_.erase(it);
  }
  return ended;
}

}  // namespace starattn
