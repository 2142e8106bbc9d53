#include "runtime/block_plan.h"

#include <algorithm>
#include <stdexcept>

namespace starattn {

std::vector<BlockSpec> split_blocks(int64_t context_len, int64_t block_size) {
  if (block_size < 1)
    throw std::invalid_argument("block size must be at least 1, got " +
                                std::to_string(block_size));
  if (context_len < 0) throw std::invalid_argument("negative context length");
  std::vector<BlockSpec> blocks;
  for (int64_t start = 0, k = 0; start < context_len; start += block_size, ++k)
    blocks.push_back({static_cast<int>(k), start, std::min(block_size, context_len - start)});
  return blocks;
}

int64_t encode_scratch_rows(const std::vector<BlockSpec>& blocks, int64_t anchor_rows) {
  int64_t longest_later = 0;
  for (const BlockSpec& b : blocks)
    if (b.start != 0) longest_later = std::max(longest_later, b.length);
  return longest_later > 0 ? anchor_rows + longest_later : 0;
}

int64_t encode_forward_rows(const std::vector<BlockSpec>& blocks, int64_t anchor_rows,
                            int64_t chunk_rows) {
  int64_t longest = 0;
  bool later_blocks = false;
  for (const BlockSpec& b : blocks) {
    longest = std::max(longest, b.length);
    later_blocks |= b.start != 0;
  }
  const int64_t rows = std::max(later_blocks ? anchor_rows : 0, longest);
  return chunk_rows > 0 ? std::min(rows, chunk_rows) : rows;
}

void check_block_sizes(int64_t block_size, int64_t anchor_size) {
  if (block_size < 1)
    throw std::invalid_argument("block size must be at least 1, got " +
                                std::to_string(block_size));
  if (anchor_size < 1 || anchor_size > block_size)
    throw std::invalid_argument("anchor size must be between 1 and the block size (" +
                                std::to_string(block_size) + "), got " +
                                std::to_string(anchor_size));
}

namespace {

// Greedy contiguous fill where worker r takes blocks while its load stays within limit[r].
// Returns true when every block is placed.
bool fill(const std::vector<BlockSpec>& blocks, const std::vector<double>& limit,
          std::vector<std::vector<BlockSpec>>* out) {
  std::vector<std::vector<BlockSpec>> runs(limit.size());
  size_t b = 0;
  for (size_t r = 0; r < limit.size() && b < blocks.size(); ++r) {
    double load = 0;
    while (b < blocks.size() && load + static_cast<double>(blocks[b].length) <= limit[r]) {
      load += static_cast<double>(blocks[b].length);
      runs[r].push_back(blocks[b++]);
    }
  }
  if (b < blocks.size()) return false;
  if (out) *out = std::move(runs);
  return true;
}

}  // namespace

std::vector<std::vector<BlockSpec>> assign_blocks(const std::vector<BlockSpec>& blocks,
                                                  const std::vector<int64_t>& capacity_tokens) {
  if (capacity_tokens.empty()) throw std::invalid_argument("no context workers to place blocks on");
  int64_t total = 0, capacity = 0;
  for (const auto& b : blocks) total += b.length;
  for (int64_t c : capacity_tokens) capacity += std::max<int64_t>(c, 0);
  std::vector<double> cap(capacity_tokens.begin(), capacity_tokens.end());
  for (double& c : cap) c = std::max(c, 0.0);
  if (!fill(blocks, cap, nullptr))
    throw std::length_error("context of " + std::to_string(total) +
                            " tokens does not fit: the context workers hold at most " +
                            std::to_string(capacity) + " tokens of KV in all" +
                            (total <= capacity ? " (and no block run fits a worker)" : ""));
  // Binary search the smallest ratio lambda such that loads <= lambda * capacity place all.
  double lo = 0, hi = 1;
  std::vector<double> limit(cap.size());
  for (int iter = 0; iter < 60; ++iter) {
    const double mid = (lo + hi) / 2;
    for (size_t r = 0; r < cap.size(); ++r) limit[r] = mid * cap[r];
    (fill(blocks, limit, nullptr) ? hi : lo) = mid;
  }
  for (size_t r = 0; r < cap.size(); ++r) limit[r] = hi * cap[r] * (1 + 1e-12) + 1e-9;
  std::vector<std::vector<BlockSpec>> runs;
  if (!fill(blocks, limit, &runs)) fill(blocks, cap, &runs);
  return runs;
}

}  // namespace starattn
