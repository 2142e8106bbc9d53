// The CPU backend's attention kernel (internal to the cpu backend; the contract is
// Backend::attention in runtime/backend.h).
#pragma once

#include "runtime/backend.h"

namespace starattn {

// Computes o and lse for arguments CpuBackend::attention has already checked: f32 views of the
// documented shapes, Hq a positive multiple of Hkv, o not overlapping k, v or lse (o may be q).
// Parallel with OpenMP over (KV head, tile of query rows, key split).
void cpu_attention(const AttentionArgs& args);

// Query rows one work item takes together over a tile of keys (its row tile): up to this many
// rows run with the key splits a single row gets, each row's sums in its own order.
int64_t cpu_attention_row_tile();

// The instruction set the kernel runs with on this machine: "avx2+fma" or "baseline" (SSE2).
// STARATTN_CPU_ATTENTION=baseline in the environment forces the baseline path (for testing it on
// machines that have AVX2).
const char* cpu_attention_isa();

}  // namespace starattn
