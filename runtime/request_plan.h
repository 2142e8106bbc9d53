// The planner every path shares (the in-process Engine and the cluster's scheduler): request
// validation, the block and anchor rules, the memory model of a context worker, and the
// placement of blocks on workers. One set of rules, so a request is refused, cut and placed the
// same way wherever it runs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "runtime/block_plan.h"
#include "runtime/model_config.h"
#include "runtime/request.h"

namespace starattn {

// Checks what does not depend on workers: a non-empty query, max_tokens >= 0, every id inside
// the vocabulary, and context + query + max_tokens within the model's positions (unless
// `beyond_positions`, for RoPE scalings that extrapolate). Throws Error(invalid_request or
// capacity) naming the problem.
void validate_request(const std::vector<int32_t>& context, const std::vector<int32_t>& query,
                      int max_tokens, const ModelConfig& config, bool beyond_positions = false);

struct BlockRequest {
  int64_t context_len = 0;
  AttentionMode mode = AttentionMode::star;
  int64_t block_size = 0;   // 0: ceil(context / workers)
  int64_t anchor_size = 0;  // 0: the block size
  bool use_anchor = true;   // false: blocks encoded alone (the no-anchor ablation)
  int64_t phase1_chunk = 0; // rows per phase-1 forward on the workers (0: a whole block)
};

// What a context worker's memory holds: K/V per context token it keeps, and while it encodes,
// the scratch K/V [anchor ; block] (per_scratch_row) and the activations and lse of one
// forward's rows (per_forward_row; a whole block's rows, or a chunk's). The query side needs
// per_token for each query and generated token and per_forward_row for each query row.
struct MemoryModel {
  int64_t per_token = 0;
  int64_t per_forward_row = 0;
  int64_t per_scratch_row = 0;
  int64_t fixed = int64_t{64} << 20;  // workspace slack, logits
  static MemoryModel of(const ModelConfig& config, DType activation_dtype);
  // Bytes one encode works in beside the K/V it keeps (the `fixed` slack not included).
  int64_t encode_bytes(int64_t scratch_rows, int64_t forward_rows) const {
    return scratch_rows * per_scratch_row + forward_rows * per_forward_row;
  }
  // Context tokens a worker with `bytes` can hold while encoding in `encode` bytes.
  int64_t tokens_that_fit(int64_t bytes, int64_t encode) const;
  // Bytes a worker needs for `run` (its K/V, and its encode behind `anchor_rows` in chunks of
  // `chunk` rows, 0: whole blocks), the slack included.
  int64_t run_bytes(const std::vector<BlockSpec>& run, int64_t anchor_rows, int64_t chunk) const;
};

// Rows per phase-1 forward for an encode of `blocks` behind `anchor_rows` in `room` bytes:
// whole blocks (0) when their activation rows fit beside the blocks' K/V and the scratch, else
// `chunk`. For a process that serves one request: chunks there only cost (each is one more pass
// over the weights at a smaller GEMM, and a worker synchronises after each), nothing waits
// between them.
int64_t whole_blocks_if_room(const MemoryModel& memory, const std::vector<BlockSpec>& blocks,
                             int64_t anchor_rows, int64_t room, int64_t chunk);

// Where the context workers' memory is. separate: each worker its own (a process per device),
// and each holds its own encode's scratch. shared_pool: the in-process workers of one Engine share
// one device and encode one after another, so one encode's scratch serves them all
// (ContextShard's EncodeArea); worker_bytes then holds one entry, the pool.
enum class WorkerMemory { separate, shared_pool };

struct RequestPlan {
  AttentionMode mode = AttentionMode::star;
  int64_t block_size = 0, anchor_size = 0;  // anchor 0: no anchor
  std::vector<BlockSpec> blocks;
  // One run per worker given (possibly empty), in worker order: the merge order.
  std::vector<std::vector<BlockSpec>> runs;
  int64_t scratch_rows = 0;  // per encode: [anchor ; longest block after block 0]
  int64_t forward_rows = 0;  // per encode: the largest forward's rows
  int64_t phase1_chunk = 0;  // the request's (BlockRequest::phase1_chunk)
  int workers_used() const;
};

// The block and anchor rules (DESIGN.md 1): full mode is one block on one worker without anchor;
// star mode cuts blocks of b (default ceil(C / workers)) behind an anchor of a (default b).
// Throws Error(invalid_request) for impossible sizes.
RequestPlan cut_blocks(const BlockRequest& request, int workers);

// cut_blocks, then places the runs on the workers. separate: worker_bytes[i] bytes of room for
// worker i; shared_pool: worker_bytes = {pool} for `workers` in-process workers. Balances by
// tokens alone when every worker can take an equal share, so the placement is a function of the
// block count only (the same in-process and in a cluster); otherwise by capacity. Throws
// Error(capacity) saying how many context tokens fit on these workers (`where` names them, e.g.
// "the 3 live workers").
RequestPlan plan_request(const BlockRequest& request, const std::vector<int64_t>& worker_bytes,
                         const MemoryModel& memory, const std::string& where,
                         WorkerMemory layout = WorkerMemory::separate, int workers = 0);

}  // namespace starattn
