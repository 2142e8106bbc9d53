// How a context is cut into blocks and which context worker encodes which blocks.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace starattn {

// Block k covers context positions [start, start + length).
struct BlockSpec {
  int index = 0;
  int64_t start = 0;
  int64_t length = 0;
};

// n = ceil(C / b) blocks of b tokens, the last one shorter (no padding). Throws on b < 1.
std::vector<BlockSpec> split_blocks(int64_t context_len, int64_t block_size);

// Checks 1 <= a <= b and b >= 1; throws std::invalid_argument with a message saying why.
void check_block_sizes(int64_t block_size, int64_t anchor_size);

// Rows of encoding scratch phase 1 of `blocks` needs: [anchor ; longest block after block 0];
// none when block 0 is the only one (it is encoded straight into the shard's K/V).
int64_t encode_scratch_rows(const std::vector<BlockSpec>& blocks, int64_t anchor_rows);

// Rows of the largest forward phase 1 of `blocks` runs: the anchor (when encoded alone, i.e. a
// later block follows) or the longest block, at most `chunk_rows` when chunked (0: whole).
// The activation workspace holds this many rows; the K/V scratch holds encode_scratch_rows.
int64_t encode_forward_rows(const std::vector<BlockSpec>& blocks, int64_t anchor_rows,
                            int64_t chunk_rows);

// Assigns blocks to workers as contiguous runs (worker r gets a run after worker r-1's),
// balanced by tokens weighted by capacity: minimises the largest load/capacity ratio. A worker
// may get no block. Throws std::length_error saying how many tokens fit when the blocks cannot
// be placed within the capacities (each worker's capacity in tokens of KV).
std::vector<std::vector<BlockSpec>> assign_blocks(const std::vector<BlockSpec>& blocks,
                                                  const std::vector<int64_t>& capacity_tokens);

}  // namespace starattn
