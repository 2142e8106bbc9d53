// Microbenchmark of the CPU backend's attention on the shapes that dominate CPU-only runs
// (SmolLM2-135M heads: Hq 9, Hkv 3, D 64) plus one wide-head Llama-like shape.
//
//   OMP_WAIT_POLICY=passive build/tools/bench/bench_cpu_attention --benchmark_repetitions=5
//
// Reports GFLOP/s counting 4 * D flops per visible (query row, key, query head): 2 for q.k and
// 2 for p * v; softmax work is not counted. GFLOP/s is per wall-clock second (the kernel is
// multi-threaded); GFLOP/cpu_s is per second of CPU time of the whole process, which is the
// steadier number on a machine shared with other work (with OMP_NUM_THREADS=1 it is the
// single-core speed).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <random>
#include <vector>

#include "runtime/backend.h"
#include "runtime/cpu_backend.h"

namespace starattn {
namespace {

struct Shape {
  int64_t T, S;
  int hq, hkv, d;
  MaskKind mask;
  int64_t offset;
};

// Visible (row, key) pairs under the mask, summed exactly.
double visible_pairs(const Shape& s) {
  if (s.mask == MaskKind::none) return static_cast<double>(s.T) * static_cast<double>(s.S);
  double n = 0;
  for (int64_t i = 0; i < s.T; ++i) n += static_cast<double>(std::clamp<int64_t>(i + s.offset + 1, 0, s.S));
  return n;
}

// CPU time of every thread of the process (OpenMP workers included).
double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

Buffer random_buffer(Backend& be, int64_t rows, int64_t cols, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> host(static_cast<size_t>(rows * cols));
  for (auto& x : host) x = dist(rng);
  Buffer b = be.alloc(rows, cols, DType::f32);
  be.upload(host.data(), b.view());
  return b;
}

void run_attention(benchmark::State& state, Shape s) {
  std::unique_ptr<Backend> be = make_cpu_backend();
  std::mt19937 rng(1234);
  Buffer q = random_buffer(*be, s.T, int64_t{s.hq} * s.d, rng);
  Buffer k = random_buffer(*be, s.S, int64_t{s.hkv} * s.d, rng);
  Buffer v = random_buffer(*be, s.S, int64_t{s.hkv} * s.d, rng);
  Buffer o = be->alloc(s.T, int64_t{s.hq} * s.d, DType::f32);
  Buffer lse = be->alloc(s.T, s.hq, DType::f32);
  AttentionArgs a;
  a.q = q.view();
  a.k = k.view();
  a.v = v.view();
  a.o = o.view();
  a.lse = lse.view();
  a.n_q_heads = s.hq;
  a.n_kv_heads = s.hkv;
  a.head_dim = s.d;
  a.scale = 1.0f / std::sqrt(static_cast<float>(s.d));
  a.mask = s.mask;
  a.causal_offset = s.offset;
  const double cpu0 = process_cpu_seconds();
  for (auto _ : state) {
    be->attention(a);
    benchmark::DoNotOptimize(o.view().data);
    benchmark::ClobberMemory();
  }
  const double cpu_s = process_cpu_seconds() - cpu0;
  const double flops = 4.0 * s.d * s.hq * visible_pairs(s);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/cpu_s"] = flops * 1e-9 * static_cast<double>(state.iterations()) / cpu_s;
}

// SmolLM2-135M heads.
constexpr int kHq = 9, kHkv = 3, kD = 64;

BENCHMARK_CAPTURE(run_attention, prefill_causal_2048,
                  Shape{2048, 2048, kHq, kHkv, kD, MaskKind::causal, 0})
    ->UseRealTime()->Unit(benchmark::kMillisecond);
// Second half of a 2048-token prompt against the cached first half.
BENCHMARK_CAPTURE(run_attention, prefill_cached_1024_of_2048,
                  Shape{1024, 2048, kHq, kHkv, kD, MaskKind::causal, 1024})
    ->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(run_attention, decode_8192,
                  Shape{1, 8192, kHq, kHkv, kD, MaskKind::causal, 8191})
    ->UseRealTime()->Unit(benchmark::kMicrosecond);
// Star Attention phase 2: a 16-token query block against one context shard.
BENCHMARK_CAPTURE(run_attention, phase2_nomask_16x4096,
                  Shape{16, 4096, kHq, kHkv, kD, MaskKind::none, 0})
    ->UseRealTime()->Unit(benchmark::kMicrosecond);
// Wide heads (Llama-like: Hq 32, Hkv 8, D 128).
BENCHMARK_CAPTURE(run_attention, prefill_causal_2048_hq32_d128,
                  Shape{2048, 2048, 32, 8, 128, MaskKind::causal, 0})
    ->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace starattn

BENCHMARK_MAIN();
