// Scratch check of the Hopper prefill kernel (cuda/attention_prefill_wgmma.cuh); no libraries.
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -I. -DSTARATTN_WGMMA_WATCHDOG
//        cuda/scratch/prefill_wgmma_check.cu -o prefill_check
// (STARATTN_WGMMA_WATCHDOG: a barrier wait of more than ~2 s is abandoned and reported here.)
//   ./prefill_check [unit|check|bench]...   (no argument: all three, in that order)
// unit:  the building blocks alone (TMA swizzled layout, S = Q K^T, O = P V with P in registers)
//        against the CPU, with TMA-filled and hand-filled shared memory.
// check: the full wgmma kernel and the old mma.sync kernel against a CPU double reference.
// bench: both kernels timed (median of 7 after 2 warm-ups) on Hq 32, Hkv 8, D 128; "wgmma" is the
//        shipped 3-stage build, "wgmma2" the 2-stage one.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cuda/attention_prefill.cuh"

using namespace starattn::cuda;
#define CK(x) check_cuda((x), #x)

static float bf(float f) { return __bfloat162float(__float2bfloat16_rn(f)); }
static std::vector<float> rnd(std::mt19937_64& g, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = bf(d(g));
  return v;
}
// Host matrix [rows, cols] -> device bf16 with row stride `stride` (padding zero).
static bf16* to_dev(const std::vector<float>& h, int64_t rows, int64_t cols, int64_t stride) {
  std::vector<bf16> b(static_cast<size_t>(std::max<int64_t>(rows, 1) * stride), __float2bfloat16_rn(0.0f));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) b[r * stride + c] = __float2bfloat16_rn(h[r * cols + c]);
  bf16* d = nullptr;
  CK(cudaMalloc(&d, b.size() * sizeof(bf16)));
  CK(cudaMemcpy(d, b.data(), b.size() * sizeof(bf16), cudaMemcpyHostToDevice));
  return d;
}

// Reports (and clears) a barrier wait that the watchdog abandoned; true if there was one.
static bool watchdog_fired(const char* where) {
#ifdef STARATTN_WGMMA_WATCHDOG
  unsigned long long code = 0;
  CK(cudaMemcpyFromSymbol(&code, wgp::g_wgmma_watchdog, sizeof code));
  if (code == 0) return false;
  printf("  WATCHDOG (%s): block (%llu, %llu) thread %llu gave up on barrier smem 0x%llx parity %llu\n", where,
         code >> 52, (code >> 36) & 0xFFFF, (code >> 27) & 0x1FF, (code >> 1) & 0x3FFFFFF, code & 1);
  code = 0;
  CK(cudaMemcpyToSymbol(wgp::g_wgmma_watchdog, &code, sizeof code));
  return true;
#else
  (void)where;
  return false;
#endif
}

// ============================== unit: building blocks ==============================
// One CTA of two warpgroups: Q [128 x D], K and V [BN x D] loaded by TMA (or written by hand in
// the swizzled layout), then each warpgroup computes its 64 rows of S = Q K^T and of O = P V
// with P given, through the kernel's own helpers.
template <int D, int BN, bool kSwap>
__global__ void __launch_bounds__(256) unit_kernel(const __grid_constant__ CUtensorMap tq,
                                                   const __grid_constant__ CUtensorMap tk,
                                                   const __grid_constant__ CUtensorMap tv, const bf16* q,
                                                   const bf16* k, const bf16* v, int manual, const float* pin,
                                                   float* sout, float* oout, unsigned char* dump) {
#if STARATTN_WGMMA_ENABLED
  using namespace wgp;
  constexpr int kQ = 128 * D * 2, kKV = BN * D * 2;
  extern __shared__ __align__(1024) unsigned char unit_smem[];
  const uint32_t sq = (smem_u32(unit_smem) + 1023u) & ~1023u, sk = sq + kQ, sv = sk + kKV, bar = sv + kKV;
  unsigned char* gen = unit_smem + (sq - smem_u32(unit_smem));
  const int tid = threadIdx.x;
  if (manual) {
    for (int i = tid; i < 128 * D; i += 256) {
      const int r = i / D, c = i % D;
      *reinterpret_cast<bf16*>(gen + sw128_offset(128, r, c)) = q[i];
    }
    for (int i = tid; i < BN * D; i += 256) {
      const int r = i / D, c = i % D;
      *reinterpret_cast<bf16*>(gen + kQ + sw128_offset(BN, r, c)) = k[i];
      *reinterpret_cast<bf16*>(gen + kQ + kKV + sw128_offset(BN, r, c)) = v[i];
    }
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
  } else {
    if (tid == 0) {
      mbar_init(bar, 1);
      mbar_fence_init();
    }
    __syncthreads();
    if (tid == 0) {
      mbar_arrive_expect_tx(bar, kQ + 2 * kKV);
      for (int c = 0; c < D / 64; ++c) {
        tma_load_2d(sq + c * 128 * 128, &tq, bar, 64 * c, 0);
        tma_load_2d(sk + c * BN * 128, &tk, bar, 64 * c, 0);
        tma_load_2d(sv + c * BN * 128, &tv, bar, 64 * c, 0);
      }
    }
    mbar_wait_warp(bar, 0);
  }
  for (int i = tid; i < kQ + 2 * kKV; i += 256) dump[i] = gen[i];
  __syncthreads();
  const int wg = tid / 128, warp = (tid / 32) % 4, lane = tid % 32;
  float s[BN / 2];
  wgmma_fence();
  qk_gemm<D, BN>(s, sq + wg * 64 * 128, 128 * 128, sk);
  wgmma_commit();
  wgmma_wait<0>();
  reg_fence(s);
  for (int i = 0; i < BN / 2; ++i) {
    const int r = 64 * wg + acc_row(warp, lane, i), c = acc_col(lane, i);
    sout[r * BN + c] = s[i];
    s[i] = pin[r * BN + c];
  }
  uint32_t pf[BN / 16][4];
  pack_p<BN>(s, pf);
  float o[D / 2];
  for (int i = 0; i < D / 2; ++i) o[i] = 0.0f;
  wgmma_fence();
  pv_gemm<D, BN, kSwap>(o, pf, sv);
  wgmma_commit();
  wgmma_wait<0>();
  reg_fence(o);
  for (int i = 0; i < D / 2; ++i) oout[(64 * wg + acc_row(warp, lane, i)) * D + acc_col(lane, i)] = o[i];
#endif
}

template <int D, bool kSwap>
static bool unit_test(int manual) {
  constexpr int BN = wgp::kBN;
  std::mt19937_64 g(7 + D + manual);
  const auto q = rnd(g, 128 * D, -1, 1), k = rnd(g, BN * D, -1, 1), v = rnd(g, BN * D, -1, 1),
             pm = rnd(g, 128 * BN, 0, 1);
  bf16 *dq = to_dev(q, 128, D, D), *dk = to_dev(k, BN, D, D), *dv = to_dev(v, BN, D, D);
  CUtensorMap tq, tk, tv;
  bool ok = wgp::make_head_tile_map(&tq, dq, 128, D, D, 128) && wgp::make_head_tile_map(&tk, dk, BN, D, D, BN) &&
            wgp::make_head_tile_map(&tv, dv, BN, D, D, BN);
  if (!ok) { printf("unit D %d: tensor map refused\n", D); return false; }
  float *dp, *ds, *dout;
  unsigned char* ddump;
  const int dump_bytes = (128 + 2 * BN) * D * 2, smem = dump_bytes + 2048;
  CK(cudaMalloc(&dp, 128 * BN * 4));
  CK(cudaMalloc(&ds, 128 * BN * 4));
  CK(cudaMalloc(&dout, 128 * D * 4));
  CK(cudaMalloc(&ddump, dump_bytes));
  CK(cudaMemcpy(dp, pm.data(), 128 * BN * 4, cudaMemcpyHostToDevice));
  auto kern = unit_kernel<D, BN, kSwap>;
  CK(cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  kern<<<1, 256, smem>>>(tq, tk, tv, dq, dk, dv, manual, dp, ds, dout, ddump);
  CK(cudaGetLastError());
  CK(cudaDeviceSynchronize());
  std::vector<float> s(128 * BN), o(128 * D);
  std::vector<unsigned char> dump(dump_bytes);
  CK(cudaMemcpy(s.data(), ds, s.size() * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(o.data(), dout, o.size() * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(dump.data(), ddump, dump_bytes, cudaMemcpyDeviceToHost));
  const char* how = manual ? "hand-filled smem" : "TMA";
  // 1. layout: each element where sw128_offset says.
  int bad = 0;
  auto chk_layout = [&](const std::vector<float>& m, int rows, int base, const char* name) {
    for (int r = 0; r < rows && bad == 0; ++r)
      for (int c = 0; c < D; ++c) {
        bf16 x;
        std::memcpy(&x, &dump[base + wgp::sw128_offset(rows, r, c)], 2);
        if (__bfloat162float(x) != m[r * D + c]) {
          printf("  layout %s FAIL at (%d, %d): smem %g, expected %g\n", name, r, c, __bfloat162float(x), m[r * D + c]);
          ++bad;
          break;
        }
      }
  };
  chk_layout(q, 128, 0, "Q");
  chk_layout(k, BN, 128 * D * 2, "K");
  chk_layout(v, BN, 128 * D * 2 + BN * D * 2, "V");
  printf("unit D %d %s: swizzled layout %s\n", D, how, bad ? "FAIL" : "PASS");
  // 2. S = Q K^T, 3. O = P V (P rounded to bf16 as pack_p does).
  auto cmp = [&](const std::vector<float>& got, int rows, int cols, auto ref_fn, const char* name) {
    int nbad = 0, first_r = -1, first_c = -1;
    double worst = 0;
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) {
        const double ref = ref_fn(r, c), err = std::fabs(got[r * cols + c] - ref);
        worst = std::max(worst, err);
        if (!(err <= 2e-3 * (1 + std::fabs(ref)))) {
          if (nbad++ == 0) first_r = r, first_c = c;
        }
      }
    if (nbad) {
      printf("  %s FAIL: %d of %d wrong, first at (%d, %d): got %g ref %g; max err %g\n", name, nbad, rows * cols,
             first_r, first_c, got[first_r * cols + first_c], ref_fn(first_r, first_c), worst);
      // Which reference column does the first bad row match? (pinpoints permuted layouts)
      for (int c2 = 0, shown = 0; c2 < cols && shown < 4; ++c2)
        if (std::fabs(got[first_r * cols + first_c] - ref_fn(first_r, c2)) < 2e-3 * (1 + std::fabs(ref_fn(first_r, c2))))
          printf("    got(%d,%d) matches ref column %d\n", first_r, first_c, c2), ++shown;
    }
    printf("unit D %d %s%s: %s %s (max err %.3g)\n", D, how, kSwap ? " [LBO/SBO swapped]" : "", name,
           nbad ? "FAIL" : "PASS", worst);
    return nbad == 0;
  };
  const bool s_ok = cmp(s, 128, BN, [&](int r, int c) {
    double a = 0;
    for (int d = 0; d < D; ++d) a += double(q[r * D + d]) * k[c * D + d];
    return a;
  }, "S = Q K^T");
  const bool o_ok = cmp(o, 128, D, [&](int r, int c) {
    double a = 0;
    for (int j = 0; j < BN; ++j) a += double(bf(pm[r * BN + j])) * v[j * D + c];
    return a;
  }, "O = P V");
  cudaFree(dq), cudaFree(dk), cudaFree(dv), cudaFree(dp), cudaFree(ds), cudaFree(dout), cudaFree(ddump);
  return bad == 0 && s_ok && o_ok;
}

static void run_unit() {
  for (int manual : {0, 1}) {
    if (!unit_test<128, false>(manual)) unit_test<128, true>(manual);
    if (!unit_test<64, false>(manual)) unit_test<64, true>(manual);
  }
}

// ============================== check: full kernels ==============================
struct Case {
  int64_t T, S;
  int hq, hkv, d;
  bool causal;
  int64_t off;
  bool f32, in_place;
  int max_rows;  // rows checked against the CPU (all when T is smaller)
};
struct Inputs {
  std::vector<float> q, k, v;
  int64_t qs, ks, vs, os;
  bf16 *dq, *dk, *dv;
  void* dout;
  float* dlse;
};
static int64_t vis(const Case& c, int64_t i) {
  if (!c.causal) return c.S;
  return std::clamp<int64_t>(i + c.off + 1, 0, c.S);
}
static AttentionParams params(const Case& c, const Inputs& in) {
  AttentionParams p{};
  p.q = in.dq, p.k = in.dk, p.v = in.dv, p.o = in.dout, p.lse = in.dlse;
  p.q_stride = in.qs, p.k_stride = in.ks, p.v_stride = in.vs, p.o_stride = in.os, p.lse_stride = c.hq + 1;
  p.T = static_cast<int>(c.T), p.S = static_cast<int>(c.S), p.n_q_heads = c.hq, p.n_kv_heads = c.hkv;
  p.scale_log2 = (1.0f / std::sqrt(float(c.d))) * 1.4426950408889634f;
  p.causal = c.causal;
  p.causal_offset = std::clamp<int64_t>(c.off, -(c.T + 1), c.S + 1);
  return p;
}
static Inputs make_inputs(const Case& c, uint64_t seed) {
  std::mt19937_64 g(seed);
  Inputs in;
  const int64_t qd = int64_t(c.hq) * c.d, kvd = int64_t(c.hkv) * c.d;
  in.q = rnd(g, c.T * qd, -2, 2), in.k = rnd(g, c.S * kvd, -1, 1), in.v = rnd(g, c.S * kvd, -1, 1);
  in.qs = qd + 8, in.ks = kvd + 16, in.vs = kvd + 24;
  in.dk = to_dev(in.k, c.S, kvd, in.ks), in.dv = to_dev(in.v, c.S, kvd, in.vs);
  in.dq = nullptr, in.dout = nullptr;
  CK(cudaMalloc(&in.dlse, std::max<int64_t>(c.T, 1) * (c.hq + 1) * 4));
  return in;
}
// (Re)uploads q and NaN-fills o and lse; in place, o is q.
static void reset(const Case& c, Inputs& in) {
  const int64_t qd = int64_t(c.hq) * c.d;
  if (in.dq) cudaFree(in.dq);
  if (in.dout && !c.in_place) cudaFree(in.dout);
  in.dq = to_dev(in.q, c.T, qd, in.qs);
  if (c.in_place) {
    in.dout = in.dq, in.os = in.qs;
  } else {
    in.os = qd + 8;
    const size_t bytes = size_t(c.T) * in.os * (c.f32 ? 4 : 2);
    CK(cudaMalloc(&in.dout, bytes));
    CK(cudaMemset(in.dout, 0xFF, bytes));  // NaN in both bf16 and f32
  }
  CK(cudaMemset(in.dlse, 0xFF, std::max<int64_t>(c.T, 1) * (c.hq + 1) * 4));
}
static void free_inputs(const Case& c, Inputs& in) {
  cudaFree(in.dq), cudaFree(in.dk), cudaFree(in.dv), cudaFree(in.dlse);
  if (!c.in_place) cudaFree(in.dout);
}
static std::vector<int64_t> sample_rows(const Case& c) {
  std::vector<int64_t> rows;
  if (c.T <= c.max_rows) {
    for (int64_t i = 0; i < c.T; ++i) rows.push_back(i);
    return rows;
  }
  for (int64_t i : {int64_t{0}, int64_t{1}, int64_t{63}, int64_t{64}, int64_t{127}, int64_t{128}, c.T - 1, c.T - 64,
                    c.T / 2})
    if (i >= 0 && i < c.T) rows.push_back(i);
  std::mt19937_64 g(c.T * 31 + c.S);
  while (int(rows.size()) < c.max_rows) rows.push_back(int64_t(g() % uint64_t(c.T)));
  return rows;
}
// CPU reference for the sampled rows: ref_o [rows][hq * d], ref_lse [rows][hq] (double).
static void reference(const Case& c, const Inputs& in, const std::vector<int64_t>& rows, std::vector<double>& ro,
                      std::vector<double>& rl) {
  const int64_t qd = int64_t(c.hq) * c.d, kvd = int64_t(c.hkv) * c.d;
  ro.assign(rows.size() * qd, 0), rl.assign(rows.size() * c.hq, 0);
  const double scale = 1.0 / std::sqrt(double(c.d));
  auto work = [&](size_t lo, size_t hi) {
    std::vector<double> sc(c.S);
    for (size_t ri = lo; ri < hi; ++ri)
      for (int h = 0; h < c.hq; ++h) {
        const int64_t i = rows[ri], n = vis(c, i);
        const float* qr = &in.q[i * qd + int64_t(h) * c.d];
        const int64_t kvh = h / (c.hq / c.hkv);
        double mx = -INFINITY;
        for (int64_t j = 0; j < n; ++j) {
          const float* kr = &in.k[j * kvd + kvh * c.d];
          double a = 0;
          for (int d = 0; d < c.d; ++d) a += double(qr[d]) * kr[d];
          sc[j] = a * scale, mx = std::max(mx, sc[j]);
        }
        double sum = 0;
        double* o = &ro[ri * qd + int64_t(h) * c.d];
        for (int64_t j = 0; j < n; ++j) {
          const double e = std::exp(sc[j] - mx);
          sum += e;
          const float* vr = &in.v[j * kvd + kvh * c.d];
          for (int d = 0; d < c.d; ++d) o[d] += e * vr[d];
        }
        for (int d = 0; d < c.d; ++d) o[d] = n > 0 ? o[d] / sum : 0.0;
        rl[ri * c.hq + h] = n > 0 ? mx + std::log(sum) : -INFINITY;
      }
  };
  const size_t nt = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (size_t t = 0; t < nt; ++t)
    pool.emplace_back(work, rows.size() * t / nt, rows.size() * (t + 1) / nt);
  for (auto& th : pool) th.join();
}
// Compares the gpu result with the reference; prints one line. Every element is checked for NaN.
static bool verify(const Case& c, const Inputs& in, const std::vector<int64_t>& rows, const std::vector<double>& ro,
                   const std::vector<double>& rl, const char* kname) {
  const int64_t qd = int64_t(c.hq) * c.d;
  std::vector<float> o(size_t(c.T) * qd), lse(size_t(c.T) * c.hq);
  {
    const size_t es = c.f32 ? 4 : 2;
    std::vector<unsigned char> raw(size_t(c.T) * in.os * es);
    CK(cudaMemcpy(raw.data(), in.dout, raw.size(), cudaMemcpyDeviceToHost));
    for (int64_t i = 0; i < c.T; ++i)
      for (int64_t x = 0; x < qd; ++x) {
        const unsigned char* e = &raw[(i * in.os + x) * es];
        if (c.f32) {
          std::memcpy(&o[i * qd + x], e, 4);
        } else {
          bf16 b;
          std::memcpy(&b, e, 2);
          o[i * qd + x] = __bfloat162float(b);
        }
      }
    std::vector<float> l(size_t(c.T) * (c.hq + 1));
    CK(cudaMemcpy(l.data(), in.dlse, l.size() * 4, cudaMemcpyDeviceToHost));
    for (int64_t i = 0; i < c.T; ++i)
      for (int h = 0; h < c.hq; ++h) lse[i * c.hq + h] = l[i * (c.hq + 1) + h];
  }
  int64_t nan_at = -1;
  for (size_t i = 0; i < o.size() && nan_at < 0; ++i)
    if (std::isnan(o[i])) nan_at = int64_t(i);
  for (size_t i = 0; i < lse.size() && nan_at < 0; ++i)
    if (std::isnan(lse[i])) nan_at = int64_t(o.size() + i);
  double omax = 0, oerr = 0, lerr = 0;
  int64_t o_at = -1, l_at = -1, empty_bad = -1;
  for (double x : ro) omax = std::max(omax, std::fabs(x));
  for (size_t ri = 0; ri < rows.size(); ++ri)
    for (int h = 0; h < c.hq; ++h) {
      const int64_t i = rows[ri];
      const double rlse = rl[ri * c.hq + h], glse = lse[i * c.hq + h];
      if (std::isinf(rlse)) {
        bool zero = glse == -INFINITY;
        for (int d = 0; d < c.d; ++d) zero = zero && o[i * qd + int64_t(h) * c.d + d] == 0.0f;
        if (!zero && empty_bad < 0) empty_bad = i;
        continue;
      }
      const double le = std::fabs(glse - rlse);
      if (!(le <= lerr)) lerr = le, l_at = i;
      for (int d = 0; d < c.d; ++d) {
        const double r = ro[ri * qd + int64_t(h) * c.d + d], e = std::fabs(o[i * qd + int64_t(h) * c.d + d] - r);
        if (!(e <= oerr)) oerr = e, o_at = i * 1000 + h;
      }
    }
  const double orel = oerr / std::max(omax, 1e-9);
  const bool ok = nan_at < 0 && empty_bad < 0 && orel <= 1e-2 && lerr <= 1e-3;
  printf("  %-6s %s: o max err %.2e (rel %.2e, row*1000+head %lld), lse max err %.2e (row %lld)%s%s\n", kname,
         ok ? "PASS" : "FAIL", oerr, orel, (long long)o_at, lerr, (long long)l_at,
         nan_at >= 0 ? (" NaN/unwritten at flat " + std::to_string(nan_at)).c_str() : "",
         empty_bad >= 0 ? (" row " + std::to_string(empty_bad) + " sees no key but o != 0 or lse != -inf").c_str() : "");
  return ok;
}
static std::string describe(const Case& c) {
  char b[256];
  snprintf(b, sizeof b, "T %lld S %lld Hq %d Hkv %d D %d %s%s o %s%s", (long long)c.T, (long long)c.S, c.hq, c.hkv, c.d,
           c.causal ? "causal offset " : "no mask", c.causal ? std::to_string(c.off).c_str() : "", c.f32 ? "f32" : "bf16",
           c.in_place ? " in place (o = q)" : "");
  return b;
}

static bool run_check() {
  const Case cases[] = {
      {1000, 1000, 32, 8, 128, true, 0, false, false, 200},    {300, 1000, 32, 8, 128, true, 700, false, false, 300},
      {777, 1333, 32, 8, 128, false, 0, false, false, 200},    {200, 300, 4, 4, 128, true, -150, false, false, 200},
      {130, 70, 4, 4, 128, false, 0, true, false, 130},        {333, 333, 32, 8, 128, true, 0, true, false, 333},
      {300, 500, 8, 2, 128, true, 200, false, true, 300},      {5, 37, 4, 4, 128, true, 32, false, false, 5},
      {1, 1, 4, 4, 128, false, 0, false, false, 1},            {64, 64, 4, 4, 128, true, 0, false, false, 64},
      {500, 700, 9, 3, 64, true, 200, false, false, 500},      {65, 130, 4, 4, 64, false, 0, true, false, 65},
      {1000, 1000, 32, 8, 64, true, 0, false, false, 200},     {200, 300, 4, 4, 64, true, -150, true, false, 200},
      {4096, 4096, 32, 8, 128, true, 0, false, false, 48},     {4096, 8192, 32, 8, 128, true, 4096, false, false, 48},
      {4096, 4096, 32, 8, 128, false, 0, false, false, 48},    {16384, 16384, 32, 8, 128, true, 0, false, false, 12},
  };
  int fails = 0, fallbacks = 0;
  for (const Case& c : cases) {
    printf("case %s\n", describe(c).c_str());
    fflush(stdout);
    Inputs in = make_inputs(c, uint64_t(c.T * 1000003 + c.S * 7 + c.d + c.hq));
    const auto rows = sample_rows(c);
    std::vector<double> ro, rl;
    reference(c, in, rows, ro, rl);
    for (int kernel = 0; kernel < 2; ++kernel) {
      reset(c, in);
      const AttentionParams p = params(c, in);
      bool launched = true;
      if (kernel == 0) {
        launch_attention_prefill(p, c.d, c.f32, nullptr, 0);
      } else {
        launched = launch_attention_prefill_wgmma(p, c.d, c.f32, nullptr);  // the shipped one (3 stages)
        if (!launched) printf("  wgmma  NOT LAUNCHED (launcher fell back; the runtime would run the old kernel)\n");
      }
      CK(cudaDeviceSynchronize());
      if (kernel == 1 && watchdog_fired("wgmma")) ++fails;
      if (launched && !verify(c, in, rows, ro, rl, kernel == 0 ? "old" : "wgmma")) ++fails;
      if (!launched) ++fallbacks;
      fflush(stdout);
    }
    if (c.d == 128 && !c.f32 && !c.in_place) {  // the 2-stage build too
      reset(c, in);
      launch_attention_prefill_wgmma_stages<2>(params(c, in), c.d, c.f32, nullptr);
      CK(cudaDeviceSynchronize());
      if (watchdog_fired("wgmma2")) ++fails;
      if (!verify(c, in, rows, ro, rl, "wgmma2")) ++fails;
    }
    free_inputs(c, in);
  }
  printf("check: %s (%d failures, %d cases not launched by the wgmma launcher)\n", fails ? "FAIL" : "PASS", fails,
         fallbacks);
  return fails == 0;
}

// ============================== bench ==============================
static void run_bench() {
  struct B {
    int64_t n;
    int mode;  // 0 causal, 1 causal + prefix (keys 2n, offset n), 2 unmasked
  };
  const char* mode_name[] = {"causal", "causal+prefix", "unmasked"};
  printf("\n%-8s %-14s %10s %10s %10s %8s\n", "T", "mask", "old", "wgmma", "wgmma2", "x old");
  for (const B b : {B{4096, 0}, B{4096, 1}, B{4096, 2}, B{16384, 0}, B{16384, 1}, B{16384, 2}}) {
    Case c{b.n, b.mode == 1 ? 2 * b.n : b.n, 32, 8, 128, b.mode != 2, b.mode == 1 ? b.n : 0, false, false, 0};
    Inputs in = make_inputs(c, 99);
    reset(c, in);
    const AttentionParams p = params(c, in);
    double pairs = 0;
    for (int64_t i = 0; i < c.T; ++i) pairs += double(vis(c, i));
    const double flops = 4.0 * c.hq * c.d * pairs;
    double tf[3];
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int kernel = 0; kernel < 3; ++kernel) {
      std::vector<float> ms;
      for (int it = 0; it < 9; ++it) {
        CK(cudaEventRecord(e0));
        if (kernel == 0) launch_attention_prefill(p, 128, false, nullptr, 0);
        if (kernel == 1) launch_attention_prefill_wgmma(p, 128, false, nullptr);  // 3 stages
        if (kernel == 2) launch_attention_prefill_wgmma_stages<2>(p, 128, false, nullptr);
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        float t = 0;
        CK(cudaEventElapsedTime(&t, e0, e1));
        if (it >= 2) ms.push_back(t);
      }
      std::sort(ms.begin(), ms.end());
      tf[kernel] = flops / (ms[ms.size() / 2] * 1e-3) / 1e12;
    }
    watchdog_fired("bench");
    printf("%-8lld %-14s %10.1f %10.1f %10.1f %7.2fx   (TFLOP/s, median of 7)\n", (long long)b.n, mode_name[b.mode],
           tf[0], tf[1], tf[2], tf[1] / tf[0]);
    fflush(stdout);
    free_inputs(c, in);
  }
}

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  cudaFuncAttributes fa{};
  CK(cudaFuncGetAttributes(&fa, attention_prefill_wgmma_kernel<128, bf16, 2>));
  printf("device %s, cc %d.%d, %d SMs, smem/block optin %zu; wgmma kernel binary %d ptx %d regs %d; supported: %d\n",
         prop.name, prop.major, prop.minor, prop.multiProcessorCount, prop.sharedMemPerBlockOptin, fa.binaryVersion,
         fa.ptxVersion, fa.numRegs, int(wgp::device_supported()));
  bool all = argc < 2, ok = true;
  for (int a = 1; a < argc || all; ++a) {
    const std::string what = all ? "all" : argv[a];
    if (what == "unit" || what == "all") run_unit();
    if (what == "check" || what == "all") ok = run_check() && ok;
    if (what == "bench" || what == "all") run_bench();
    if (all) break;
  }
  return ok ? 0 : 1;
}
