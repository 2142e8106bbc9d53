// Context reuse in the cluster (issue 15): which context worker holds which encoded block, and
// the placement of a request's runs of blocks on the workers that hold them, so the workers'
// block caches (runtime/context_cache.h) are hit instead of encoding the blocks again.
//
// The map is a hint: a worker may have evicted a block since, and then encodes it (a miss is
// always correct, only slower). Only which worker takes which run changes; the runs themselves,
// their merge order and so the results are those of the normal plan.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/block_plan.h"

namespace starattn::actors {

class BlockHolders {
 public:
  explicit BlockHolders(std::string model_id, size_t max_entries = size_t{1} << 20)
      : model_id_(std::move(model_id)), max_entries_(max_entries) {}

  // The digests of one run's blocks (runtime/context_cache.h: BlockKey::digest), as the worker
  // taking the run will key them.
  std::vector<std::string> run_digests(const std::vector<int32_t>& context, int64_t anchor_size,
                                       const std::vector<BlockSpec>& run) const;
  // Records that `worker` holds these blocks (its encode succeeded).
  void record(const std::vector<std::string>& digests, uint64_t worker);
  // Forgets a worker that is gone.
  void forget(uint64_t worker);

  // Worker index (into `workers`) per run: a run goes to the worker holding most of its blocks
  // when that worker is free and `fits(run, worker index)`; the other runs take the remaining
  // workers in order. Returns `default_order` (run i on the i-th worker of the normal plan)
  // when no run has a holder or the permuted placement does not fit.
  std::vector<size_t> place(const std::vector<std::vector<std::string>>& run_digests,
                            const std::vector<uint64_t>& workers,
                            const std::vector<size_t>& default_order,
                            const std::function<bool(size_t run, size_t worker)>& fits) const;

 private:
  std::string model_id_;
  size_t max_entries_;
  std::unordered_map<std::string, uint64_t> holder_;
};

}  // namespace starattn::actors
