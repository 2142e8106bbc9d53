#include "runtime/engine_batch.h"

#include <algorithm>
#include <chrono>
#include <set>

#include "runtime/engine_request.h"
#include "runtime/errors.h"

namespace starattn {

EngineBatch::EngineBatch(Engine& engine, int64_t phase1_chunk_tokens, double phase1_step_share)
    : engine_(engine),
      chunk_tokens_(phase1_chunk_tokens >= 0 ? phase1_chunk_tokens : engine.phase1_chunk_tokens()),
      step_share_(phase1_step_share >= 0 ? phase1_step_share : engine.phase1_step_share()),
      batch_(engine.model()) {}

EngineBatch::~EngineBatch() = default;

uint64_t EngineBatch::admit(const RequestSpec& request, GeneratedCallback on_token) {
  const uint64_t id = next_id_;
  if (chunk_tokens_ == 0) {
    Running r{engine_.admit(request), std::move(on_token)};
    batch_.add(id, *r.request->generation);
    requests_.emplace(id, std::move(r));
  } else {
    Running r{engine_.start_request(request, chunk_tokens_), std::move(on_token)};
    AdmittedRequest& a = *r.request;
    if (a.encode_rows_total() <= chunk_tokens_) {
      // A phase 1 no longer than one chunk holds the others back no more than a chunk would:
      // it runs here, and the request decodes from the next step (as with chunk 0).
      while (a.encode_chunk(engine_.backend())) {
      }
      batch_.add(id, *a.generation);
      requests_.emplace(id, std::move(r));
    } else {
      requests_.emplace(id, std::move(r));
      encoding_.push_back(id);
    }
  }
  ++next_id_;
  return id;
}

bool EngineBatch::cancel(uint64_t id) {
  const auto it = requests_.find(id);
  if (it == requests_.end()) return false;
  if (it->second.request->encoding())
    it->second.cancelled = true;
  else
    it->second.request->generation->cancel();
  return true;
}

std::optional<EngineBatch::Phase1Progress> EngineBatch::phase1_progress(uint64_t id) const {
  const auto it = requests_.find(id);
  if (it == requests_.end() || !it->second.request->encoding()) return std::nullopt;
  const AdmittedRequest& r = *it->second.request;
  return Phase1Progress{r.chunks_done(), r.encode_rows_left(), r.encode_rows_total()};
}

int64_t EngineBatch::kv_tokens_held() const {
  // Requests on one document share one K/V (ContextShard::shares_kv): counted once, as long as
  // any of them runs.
  std::set<const KvCache*> seen;
  int64_t n = 0;
  for (const auto& [id, r] : requests_)
    for (const auto& shard : r.request->shards)
      if (const KvCache* kv = shard->kv(); kv && seen.insert(kv).second) n += kv->capacity();
  return n;
}

void EngineBatch::end_encoding(uint64_t id, Ended e, std::vector<Ended>& ended) {
  e.id = id;
  encoding_.erase(std::find(encoding_.begin(), encoding_.end(), id));
  requests_.erase(id);  // frees its shards, partial K/V and scratch included
  ended.push_back(std::move(e));
}

void EngineBatch::advance_encode(std::vector<Ended>& ended, bool paced) {
  const uint64_t id = encoding_.front();
  AdmittedRequest& r = *requests_.at(id).request;
  paced = paced && step_share_ > 0;
  Backend& be = engine_.backend();
  try {
    int layers = 0;
    if (paced) {
      // Before the first decode step has been timed there is no budget: one layer, timed.
      pacer_.set_budget_ms(step_share_ * decode_ms_);
      layers = decode_ms_ > 0 ? pacer_.next_layers(engine_.config().num_layers) : 1;
    }
    const auto t0 = std::chrono::steady_clock::now();
    const bool more = r.encode_chunk(be, layers);
    if (paced) {
      // Timing waits for the slice's kernels; the decode step after it would wait for them anyway.
      be.synchronize();
      pacer_.measured(r.layers_last_call(),
                      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    if (more) return;
  } catch (...) {
    const ErrorReport why = report_of(std::current_exception());
    Ended e;
    e.end.ok = false;
    e.end.error = why.message;
    e.end.error_kind = why.kind;
    e.end.stats = r.stats;
    e.end.stats.finish_reason = "error";
    end_encoding(id, std::move(e), ended);
    return;
  }
  // Phase 1 is done: it decodes from this step on.
  encoding_.pop_front();
  batch_.add(id, *r.generation);
}

std::vector<EngineBatch::Ended> EngineBatch::step() {
  std::vector<Ended> ended;
  // Cancelled while encoding: ends here, its partial K/V freed.
  for (size_t i = 0; i < encoding_.size();) {
    const uint64_t id = encoding_[i];
    Running& r = requests_.at(id);
    if (!r.cancelled) {
      ++i;
      continue;
    }
    Ended e;
    e.end.stats = r.request->stats;
    e.end.stats.finish_reason = "cancelled";
    end_encoding(id, std::move(e), ended);
  }
  if (!encoding_.empty()) {
    if (!batch_.empty()) {
      advance_encode(ended, true);  // one chunk (or a slice of it), then the decoding requests' step
    } else {
      // Nobody waits for a token: the first pending encode runs to its end.
      const uint64_t first = encoding_.front();
      while (!encoding_.empty() && encoding_.front() == first) advance_encode(ended, false);
    }
  }
  if (batch_.empty()) return ended;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<DecodeBatch::Result> results = batch_.step();
  decode_ms_ = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  for (DecodeBatch::Result& res : results) {
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
