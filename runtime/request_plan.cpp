#include "runtime/request_plan.h"

#include <algorithm>
#include <stdexcept>

#include "runtime/errors.h"

namespace starattn {

AttentionMode parse_mode(const std::string& name) {
  if (name == "star" || name.empty()) return AttentionMode::star;
  if (name == "full") return AttentionMode::full;
  throw Error(ErrorKind::invalid_request,
              "unknown attention mode '" + name + "' (expected star or full)");
}

const char* mode_name(AttentionMode mode) { return mode == AttentionMode::star ? "star" : "full"; }

void validate_request(const std::vector<int32_t>& context, const std::vector<int32_t>& query,
                      int max_tokens, const ModelConfig& config, bool beyond_positions) {
  if (query.empty())
    throw Error(ErrorKind::invalid_request, "the query is empty: it needs at least one token");
  if (max_tokens < 0) throw Error(ErrorKind::invalid_request, "max_tokens must not be negative");
  for (const auto* ids : {&context, &query})
    for (int32_t id : *ids)
      if (id < 0 || id >= config.vocab_size)
        throw Error(ErrorKind::invalid_request,
                    "token id " + std::to_string(id) + " is outside the vocabulary (size " +
                        std::to_string(config.vocab_size) + ")");
  const int64_t positions = static_cast<int64_t>(context.size()) +
                            static_cast<int64_t>(query.size()) + max_tokens;
  if (!beyond_positions && config.max_position_embeddings > 0 &&
      positions > config.max_position_embeddings)
    throw Error(ErrorKind::capacity,
                "context (" + std::to_string(context.size()) + " tokens) + query (" +
                    std::to_string(query.size()) + ") + max_tokens (" + std::to_string(max_tokens) +
                    ") = " + std::to_string(positions) + " positions, beyond the model's " +
                    std::to_string(config.max_position_embeddings) +
                    " (max_position_embeddings)");
}

MemoryModel MemoryModel::of(const ModelConfig& c, DType activation_dtype) {
  const int64_t es = static_cast<int64_t>(dtype_size(activation_dtype));
  const int64_t kv = c.kv_bytes_per_token(static_cast<size_t>(es));
  // A forward's row: the workspace's buffers (runtime/transformer.h) and the attention's lse.
  const int64_t act = es * (3 * int64_t{c.hidden_size} + 2 * int64_t{c.q_dim()} +
                            2 * int64_t{c.kv_dim()} + 3 * int64_t{c.intermediate_size}) +
                      4 * int64_t{c.num_heads};
  MemoryModel m;
  m.per_token = kv;
  m.per_forward_row = act;
  m.per_scratch_row = kv;
  m.fixed += 8 * int64_t{c.vocab_size};
  return m;
}

int64_t MemoryModel::tokens_that_fit(int64_t bytes, int64_t encode) const {
  const int64_t room = bytes - fixed - encode;
  return room <= 0 ? 0 : room / per_token;
}

int64_t MemoryModel::run_bytes(const std::vector<BlockSpec>& run, int64_t anchor_rows,
                               int64_t chunk) const {
  int64_t n = 0;
  for (const BlockSpec& b : run) n += b.length;
  return n * per_token + fixed +
         encode_bytes(encode_scratch_rows(run, anchor_rows), encode_forward_rows(run, anchor_rows, chunk));
}

int64_t whole_blocks_if_room(const MemoryModel& memory, const std::vector<BlockSpec>& blocks,
                             int64_t anchor_rows, int64_t room, int64_t chunk) {
  return memory.run_bytes(blocks, anchor_rows, 0) <= room ? 0 : chunk;
}

int RequestPlan::workers_used() const {
  int n = 0;
  for (const auto& r : runs) n += r.empty() ? 0 : 1;
  return n;
}

RequestPlan cut_blocks(const BlockRequest& req, int workers) {
  RequestPlan p;
  p.mode = req.mode;
  const int64_t C = req.context_len;
  if (req.mode == AttentionMode::full) {
    // The baseline: one block covering the whole context on one worker, no anchor.
    p.block_size = std::max<int64_t>(C, 1);
    p.anchor_size = 0;
  } else {
    const int64_t W = std::max(workers, 1);
    p.block_size = req.block_size > 0 ? req.block_size : std::max<int64_t>(1, (C + W - 1) / W);
    p.anchor_size = req.anchor_size > 0 ? req.anchor_size : p.block_size;
    try {
      check_block_sizes(p.block_size, p.anchor_size);
    } catch (const std::invalid_argument& e) {
      throw Error(ErrorKind::invalid_request, e.what());
    }
    if (!req.use_anchor) p.anchor_size = 0;
  }
  p.blocks = split_blocks(C, p.block_size);
  // Per worker, as if it held every block (the longest is a whole block; a context of one block
  // needs no anchor rows).
  p.scratch_rows = encode_scratch_rows(p.blocks, std::min(p.anchor_size, C));
  p.forward_rows = encode_forward_rows(p.blocks, std::min(p.anchor_size, C), req.phase1_chunk);
  p.phase1_chunk = req.phase1_chunk;
  return p;
}

namespace {

// The runs of `p`'s blocks on these workers, or false when they do not fit.
bool place(RequestPlan& p, const std::vector<int64_t>& worker_bytes, WorkerMemory layout, int use,
           const MemoryModel& memory) {
  const int64_t encode = memory.encode_bytes(p.scratch_rows, p.forward_rows);
  if (layout == WorkerMemory::shared_pool) {
    // One encode at a time: the pool less one encode's scratch holds every worker's K/V.
    const int64_t cap = memory.tokens_that_fit(worker_bytes.at(0), encode) / use;
    try {
      p.runs = assign_blocks(p.blocks, std::vector<int64_t>(static_cast<size_t>(use), cap));
      return true;
    } catch (const std::length_error&) {
      return false;
    }
  }
  // First the runs balanced by tokens alone (the same wherever the request runs), each worker's
  // bytes counted exactly for its own run: block 0 needs no scratch, so the worker holding it
  // (on the head's GPU, with less room) can take a block as long as the others'.
  int64_t context = 0;
  for (const BlockSpec& b : p.blocks) context += b.length;
  const int64_t anchor = std::min(p.anchor_size, context);
  std::vector<std::vector<BlockSpec>> even =
      assign_blocks(p.blocks, std::vector<int64_t>(static_cast<size_t>(use), context));
  bool fits = true;
  for (size_t i = 0; i < even.size() && fits; ++i)
    fits = even[i].empty() || memory.run_bytes(even[i], anchor, p.phase1_chunk) <= worker_bytes[i];
  if (fits) {
    p.runs = std::move(even);
    return true;
  }
  // Then by capacity, every worker charged the largest encode's scratch.
  std::vector<int64_t> caps;
  for (int i = 0; i < use; ++i)
    caps.push_back(memory.tokens_that_fit(worker_bytes[static_cast<size_t>(i)], encode));
  try {
    p.runs = assign_blocks(p.blocks, caps);
    return true;
  } catch (const std::length_error&) {
    return false;
  }
}

}  // namespace

RequestPlan plan_request(const BlockRequest& req, const std::vector<int64_t>& worker_bytes,
                         const MemoryModel& memory, const std::string& where, WorkerMemory layout,
                         int workers) {
  if (layout == WorkerMemory::shared_pool && worker_bytes.size() != 1)
    throw std::logic_error("plan_request: a shared pool is one entry of worker_bytes");
  const int live = layout == WorkerMemory::shared_pool ? workers : static_cast<int>(worker_bytes.size());
  if (live == 0 && req.context_len > 0)
    throw Error(ErrorKind::overloaded, "no context workers are available (" + where + ")");
  const int use = req.mode == AttentionMode::full ? std::min(live, 1) : live;
  RequestPlan p = cut_blocks(req, use);
  if (req.context_len == 0) {
    p.runs.assign(static_cast<size_t>(use), {});
    return p;
  }
  if (place(p, worker_bytes, layout, use, memory)) return p;
  // The largest context these workers take with the same rules (block sizes and the encoding
  // scratch shrink with the context when they default to it): what the message promises.
  int64_t lo = 0, hi = req.context_len;
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    BlockRequest smaller = req;
    smaller.context_len = mid;
    RequestPlan q = cut_blocks(smaller, use);
    (place(q, worker_bytes, layout, use, memory) ? lo : hi) = mid;
  }
  throw Error(ErrorKind::capacity,
              "context of " + std::to_string(req.context_len) + " tokens does not fit: at most " +
                  std::to_string(lo) + " context tokens fit on " + where + " (" +
                  mode_name(req.mode) + " mode, blocks of " + std::to_string(p.block_size) +
                  ", anchor " + std::to_string(p.anchor_size) + ")");
}

}  // namespace starattn
