#include "actors/block_placement.h"

#include <algorithm>
#include <map>

#include "runtime/context_cache.h"

namespace starattn::actors {

std::vector<std::string> BlockHolders::run_digests(const std::vector<int32_t>& context,
                                                   int64_t anchor_size,
                                                   const std::vector<BlockSpec>& run) const {
  const auto a = std::min<int64_t>(anchor_size, static_cast<int64_t>(context.size()));
  const std::vector<int32_t> anchor(context.begin(), context.begin() + a);
  std::vector<std::vector<int32_t>> tokens;
  for (const BlockSpec& b : run)
    tokens.emplace_back(context.begin() + b.start, context.begin() + b.start + b.length);
  std::vector<std::string> out;
  for (const BlockKey& k : block_keys(anchor, run, tokens)) out.push_back(k.digest(model_id_));
  return out;
}

void BlockHolders::record(const std::vector<std::string>& digests, uint64_t worker) {
  // A bounded hint: past its size it starts again rather than grow without end.
  if (holder_.size() + digests.size() > max_entries_) holder_.clear();
  for (const auto& d : digests) holder_[d] = worker;
}

void BlockHolders::forget(uint64_t worker) {
  for (auto it = holder_.begin(); it != holder_.end();)
    it = it->second == worker ? holder_.erase(it) : std::next(it);
}

std::vector<size_t> BlockHolders::place(const std::vector<std::vector<std::string>>& run_digests,
                                        const std::vector<uint64_t>& workers,
                                        const std::vector<size_t>& default_order,
                                        const std::function<bool(size_t, size_t)>& fits) const {
  const size_t runs = run_digests.size();
  // The holder of most of each run's blocks, and how many it holds.
  std::vector<std::pair<size_t, size_t>> best(runs, {0, 0});  // (blocks held, worker index)
  bool any = false;
  for (size_t r = 0; r < runs; ++r) {
    std::map<size_t, size_t> count;
    for (const auto& d : run_digests[r]) {
      auto it = holder_.find(d);
      if (it == holder_.end()) continue;
      auto w = std::find(workers.begin(), workers.end(), it->second);
      if (w != workers.end()) ++count[static_cast<size_t>(w - workers.begin())];
    }
    for (const auto& [w, n] : count)
      if (n > best[r].first) best[r] = {n, w};
    any = any || best[r].first > 0;
  }
  if (!any) return default_order;
  std::vector<size_t> order(runs);
  for (size_t r = 0; r < runs; ++r) order[r] = r;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t x, size_t y) { return best[x].first > best[y].first; });
  std::vector<size_t> out(runs, workers.size());
  std::vector<bool> taken(workers.size(), false);
  for (size_t r : order)
    if (best[r].first > 0 && !taken[best[r].second] && fits(r, best[r].second)) {
      out[r] = best[r].second;
      taken[best[r].second] = true;
    }
  for (size_t r = 0; r < runs; ++r) {
    if (out[r] != workers.size()) continue;
    // The run's own worker of the normal plan when free, else the first free one that fits.
    size_t w = default_order[r];
    if (taken[w] || !fits(r, w)) {
      w = workers.size();
      for (size_t c = 0; c < workers.size(); ++c)
        if (!taken[c] && fits(r, c)) {
          w = c;
          break;
        }
    }
    if (w == workers.size()) return default_order;
    out[r] = w;
    taken[w] = true;
  }
  return out;
}

}  // namespace starattn::actors
