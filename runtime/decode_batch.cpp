#include "runtime/decode_batch.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace starattn {

// Routes each request's row range of a layer to that request's QuerySession, all of them in
// one QuerySession::attend_layer: the launches of every request grouped (one K/V append, one
// causal attention, one shard attention for the in-process shards, one merge), and a
// transport's shards started for every request before any is finished, so it can carry those
// going to one worker in one message (ContextShards::start). A range whose session threw is
// failed: its error is kept, its output rows are zeros from then on.
class DecodeBatch::Hook : public AttentionHook {
 public:
  struct Range {
    QuerySession* session = nullptr;
    int64_t begin = 0, rows = 0;
    std::exception_ptr error;
  };
  Hook(Backend& backend, std::vector<Range>& ranges) : backend_(backend), ranges_(ranges) {}

  void attend(int layer, const Tensor& q, const Tensor& k, const Tensor& v, Tensor out) override {
    rows_.clear();
    for (const Range& r : ranges_)
      rows_.push_back({r.session, q.slice_rows(r.begin, r.rows), k.slice_rows(r.begin, r.rows),
                       v.slice_rows(r.begin, r.rows), out.slice_rows(r.begin, r.rows), r.error});
    QuerySession::attend_layer(backend_, layer, rows_);
    for (size_t i = 0; i < ranges_.size(); ++i) {
      Range& r = ranges_[i];
      r.error = rows_[i].error;
      if (!r.error) continue;
      // Whatever the failed session left (or stale rows) could be NaN; zeros keep the rest of
      // this forward finite for every row.
      const Tensor o = rows_[i].out;
      zeros_.assign(static_cast<size_t>(o.rows * o.cols), 0.0f);
      backend_.upload(zeros_.data(), o);
    }
  }

 private:
  Backend& backend_;
  std::vector<Range>& ranges_;
  std::vector<QuerySession::LayerRows> rows_;
  std::vector<float> zeros_;
};

DecodeBatch::DecodeBatch(const Transformer& model) : model_(model), ws_(model.backend()) {}
DecodeBatch::~DecodeBatch() = default;

void DecodeBatch::add(uint64_t id, Generation& generation) {
  if (contains(id))
    throw std::invalid_argument("DecodeBatch: request " + std::to_string(id) + " is already in the batch");
  members_.push_back({id, &generation});
}

bool DecodeBatch::contains(uint64_t id) const {
  return std::any_of(members_.begin(), members_.end(), [&](const Member& m) { return m.id == id; });
}

bool DecodeBatch::remove(uint64_t id) {
  const auto it = std::find_if(members_.begin(), members_.end(), [&](const Member& m) { return m.id == id; });
  if (it == members_.end()) return false;
  members_.erase(it);
  return true;
}

void DecodeBatch::fetch_logits(const std::vector<Result>& results, const std::vector<size_t>& range_of, size_t rows) {
  host_logits_.clear();
  greedy_.clear();
  if (rows == 0) return;
  // The requests' token picks need their logits rows on the host (logprobs, penalties, a
  // temperature) or only a greedy pick: one download and one argmax launch for all of them,
  // instead of a device round trip per request and step.
  bool host = false, argmax = false;
  for (size_t i = 0; i < results.size(); ++i) {
    if (range_of[i] == SIZE_MAX) continue;
    (results[i].generation->picks_on_host() ? host : argmax) = true;
  }
  Backend& be = model_.backend();
  const Tensor logits = ws_.logits.rows(0, static_cast<int64_t>(rows));
  if (host) {
    host_logits_.resize(static_cast<size_t>(logits.rows * logits.cols));
    be.download(logits, host_logits_.data());
  }
  if (argmax) be.argmax_rows(logits, greedy_);
}

std::vector<DecodeBatch::Result> DecodeBatch::step() {
  std::vector<Result> results(members_.size());
  // Lay out the rows: each member that still runs contributes its input at its positions.
  std::vector<int32_t> ids, positions;
  std::vector<Hook::Range> ranges;
  std::vector<size_t> range_of(members_.size(), SIZE_MAX);  // member -> its range
  ForwardOptions options;
  std::vector<int32_t> input;
  for (size_t i = 0; i < members_.size(); ++i) {
    Result& res = results[i];
    res.id = members_[i].id;
    res.generation = members_[i].generation;
    input.clear();
    try {
      if (!res.generation->begin_step(input)) continue;  // finished before any forward
      res.generation->session().append_positions(static_cast<int64_t>(input.size()), positions);
    } catch (...) {
      res.error = std::current_exception();
      continue;
    }
    const auto begin = static_cast<int64_t>(ids.size());
    ids.insert(ids.end(), input.begin(), input.end());
    ranges.push_back({&res.generation->session(), begin, static_cast<int64_t>(input.size()), {}});
    options.logits_rows.push_back(static_cast<int64_t>(ids.size()) - 1);
    range_of[i] = ranges.size() - 1;
  }
  if (!ids.empty()) {
    Hook hook(model_.backend(), ranges);
    model_.forward(ids.data(), positions.data(), static_cast<int64_t>(ids.size()), hook, ws_, options);
  }
  try {
    fetch_logits(results, range_of, ranges.size());
  } catch (...) {
    // Each request then fetches its own row and meets the error itself (its result says it).
    host_logits_.clear();
    greedy_.clear();
  }
  for (size_t i = 0; i < members_.size(); ++i) {
    Result& res = results[i];
    if (range_of[i] == SIZE_MAX) continue;
    const Hook::Range& r = ranges[range_of[i]];
    if (r.error) {
      res.error = r.error;
      continue;
    }
    try {
      res.generation->session().commit(r.rows);
      const auto row = static_cast<int64_t>(range_of[i]);
      FetchedLogits fetched;
      if (!host_logits_.empty()) fetched.host_row = host_logits_.data() + row * ws_.logits.view().cols;
      if (!greedy_.empty()) fetched.greedy_token = greedy_[static_cast<size_t>(row)];
      res.produced = res.generation->end_step(ws_.logits.rows(row, 1), res.token, fetched);
    } catch (...) {
      res.error = std::current_exception();
    }
  }
  // Finished and failed members leave; the others keep their join order.
  std::vector<Member> still;
  for (size_t i = 0; i < members_.size(); ++i)
    if (!results[i].error && !results[i].generation->finished()) still.push_back(members_[i]);
  members_ = std::move(still);
  // Its rows grew to the largest step (several queries joining at once): give that back when
  // the batch runs dry rather than hold it while idle.
  if (members_.empty()) ws_.release();
  return results;
}

}  // namespace starattn
