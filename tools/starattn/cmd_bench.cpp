// starattn bench: measurements on one GPU, side by side with PyTorch in the same run.
//
//   starattn bench kernels   prefill attention, decode attention and GEMMs of the cuda backend
//                            (CUDA events on the backend's stream, warm-ups, medians) against
//                            tools/bench/torch_baseline.py (SDPA flash / cuDNN, torch.matmul)
//   starattn bench e2e       the engine end to end on a config with random weights (full and
//                            star mode), against tools/bench/hf_e2e.py (transformers, SDPA)
// Each prints one table; the Python side is run as a child process after our buffers are freed.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "runtime/engine.h"
#include "runtime/model_config.h"
#include "runtime/weight_source.h"
#include "tools/starattn/args.h"
#include "tools/starattn/commands.h"
#if defined(STARATTN_HAVE_CUDA)
#include "cuda/cuda_backend.h"
#endif

namespace starattn::cli {
namespace {

const char* kBenchHelp =
    "usage: starattn bench kernels [--gpu N] [--seqs 4096,16384,65536] [--decode-keys 131072]\n"
    "                              [--torch SCRIPT|none] [--iters N]\n"
    "       starattn bench e2e --random-weights CONFIG [--contexts 32768,131072] [--modes full,star]\n"
    "                          [--workers 4] [--query 16] [--decode-tokens 32] [--hf SCRIPT|none]\n"
    "       starattn bench reuse --random-weights CONFIG ...   (any backend; bench reuse --help)\n"
    "       starattn bench interleave --random-weights CONFIG ...   (any backend; bench interleave --help)\n"
    "Measures the cuda backend on one GPU and, in the same run, PyTorch on the same shapes\n"
    "(default scripts tools/bench/torch_baseline.py and tools/bench/hf_e2e.py, run with python3).\n"
    "Prints one table; timings are medians of CUDA-event times after warm-ups.\n"
    "STARATTN_PROFILE=1 (e2e): also prints every op's count and total GPU time per request and\n"
    "section (phase1, prefill, decode) to stderr.\n";

#if defined(STARATTN_HAVE_CUDA)  // the helpers below serve the cuda benchmarks only
std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(std::stoll(item));
  return out;
}

double median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs a Python script and collects its "RESULT key value" lines; other lines are echoed to
// stderr. A missing interpreter or failing script leaves the map empty (reported as n/a).
std::map<std::string, double> run_python(const std::string& command) {
  std::map<std::string, double> out;
  std::fprintf(stderr, "running: %s\n", command.c_str());
  std::fflush(stderr);
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return out;
  char line[4096];
  while (std::fgets(line, sizeof line, p)) {
    char key[1024];
    double value = 0;
    if (std::sscanf(line, "RESULT %1023s %lf", key, &value) == 2) {
      out[key] = value;
    } else {
      std::fputs(line, stderr);
    }
  }
  const int rc = pclose(p);
  if (rc != 0) std::fprintf(stderr, "(%s exited with status %d)\n", command.c_str(), rc);
  return out;
}

std::string fmt(double v, const char* f = "%.1f") {
  if (!std::isfinite(v)) return "n/a";
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

double lookup(const std::map<std::string, double>& m, const std::string& k) {
  auto it = m.find(k);
  return it == m.end() ? NAN : it->second;
}


// Fills a backend tensor with uniform [-1, 1) values (from a fixed host pattern, so no time is
// spent on generating gigabytes).
void fill_random(Backend& be, const Tensor& t, uint64_t seed) {
  std::vector<float> h(static_cast<size_t>(t.rows * t.cols));
  uint64_t z = seed * 0x9e3779b97f4a7c15ull + 1;
  for (float& x : h) {
    z ^= z << 13;
    z ^= z >> 7;
    z ^= z << 17;
    x = static_cast<float>(static_cast<double>(z >> 11) * 0x1.0p-52 - 1.0);
  }
  be.upload(h.data(), t);
}

int bench_kernels(const Args& args) {
  const int gpu = static_cast<int>(args.get_int("gpu", 0));
  const std::vector<int64_t> seqs = parse_list(args.get("seqs", "4096,16384,65536"));
  const int64_t decode_keys = args.get_int("decode-keys", 131072);
  const int iters = static_cast<int>(args.get_int("iters", 10));
  const std::string script = args.get("torch", "tools/bench/torch_baseline.py");
  const int Hq = 32, Hkv = 8, D = 128;
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));

  struct Row {
    std::string section, name, key;
    double ours_ms = NAN;
    double work = 0;  // FLOPs or bytes
    bool bytes = false;
  };
  std::vector<Row> rows;
  std::string device, prefill_kernel;
  double copy_gbs = NAN;
  {
    auto be = make_backend("cuda", gpu);
    device = cuda_device_description(*be);
    prefill_kernel = cuda_prefill_uses_wgmma(*be) ? "wgmma + TMA (sm_90a)" : "mma.sync";
    copy_gbs = cuda_copy_bandwidth_gbs(*be, int64_t{2} << 30, 20);
    const int64_t smax = *std::max_element(seqs.begin(), seqs.end());
    const int64_t kmax = std::max(2 * smax, decode_keys);
    Buffer q = be->alloc(smax, Hq * D, DType::bf16), o = be->alloc(smax, Hq * D, DType::bf16);
    Buffer k = be->alloc(kmax, Hkv * D, DType::bf16), v = be->alloc(kmax, Hkv * D, DType::bf16);
    Buffer lse = be->alloc(smax, Hq, DType::f32);
    fill_random(*be, q.view(), 1);
    fill_random(*be, k.view(), 2);
    fill_random(*be, v.view(), 3);
    auto attn = [&](int64_t T, int64_t S, MaskKind mask, int64_t offset) {
      AttentionArgs a;
      a.q = q.rows(0, T);
      a.k = k.rows(0, S);
      a.v = v.rows(0, S);
      a.o = o.rows(0, T);
      a.lse = lse.rows(0, T);
      a.n_q_heads = Hq;
      a.n_kv_heads = Hkv;
      a.head_dim = D;
      a.scale = static_cast<float>(scale);
      a.mask = mask;
      a.causal_offset = offset;
      return a;
    };
    for (int64_t S : seqs) {
      const int n = S >= 65536 ? std::max(3, iters / 2) : iters;
      const double Sd = static_cast<double>(S);
      struct Case {
        const char* name;
        int64_t keys;
        MaskKind mask;
        int64_t offset;
        double pairs;
      } cases[] = {
          // A star phase-1 block of S tokens behind an anchor of S tokens: row i sees S + i + 1 keys.
          {"causal+prefix", 2 * S, MaskKind::causal, S, Sd * Sd + Sd * (Sd + 1) / 2},
          {"causal", S, MaskKind::causal, 0, Sd * (Sd + 1) / 2},
          {"unmasked", S, MaskKind::none, 0, Sd * Sd},
      };
      for (const Case& c : cases) {
        const AttentionArgs a = attn(S, c.keys, c.mask, c.offset);
        Row r;
        r.section = "prefill";
        r.name = std::string(c.name) + " S=" + std::to_string(S) + (c.keys != S ? " (keys " + std::to_string(c.keys) + ")" : "");
        r.key = "prefill/" + std::string(c.name) + "/" + std::to_string(S);
        r.work = 4.0 * Hq * D * c.pairs;
        r.ours_ms = median(cuda_event_times_ms(*be, [&] { be->attention(a); }, 2, n));
        rows.push_back(r);
        std::fprintf(stderr, "ours %-40s %9.3f ms %7.1f TFLOP/s\n", r.name.c_str(), r.ours_ms,
                     r.work / r.ours_ms / 1e9);
      }
    }
    {
      const AttentionArgs a = attn(1, decode_keys, MaskKind::none, 0);
      Row r;
      r.section = "decode";
      r.name = "decode T=1 keys=" + std::to_string(decode_keys);
      r.key = "decode/" + std::to_string(decode_keys);
      r.work = 2.0 * static_cast<double>(decode_keys) * Hkv * D * 2 + 2.0 * Hq * D * 2;
      r.bytes = true;
      r.ours_ms = median(cuda_event_times_ms(*be, [&] { be->attention(a); }, 5, 50));
      rows.push_back(r);
      std::fprintf(stderr, "ours %-40s %9.3f ms %7.1f GB/s\n", r.name.c_str(), r.ours_ms, r.work / r.ours_ms / 1e6);
    }
    // GEMMs of a Llama-3.1-8B layer and its head: x[M, K] * w[N, K]^T.
    const int64_t shapes[][2] = {{6144, 4096}, {4096, 4096}, {14336, 4096}, {4096, 14336}, {128256, 4096}};
    for (int64_t M : {int64_t{1}, int64_t{4096}}) {
      for (const auto& s : shapes) {
        const int64_t N = s[0], K = s[1];
        if (M > 1 && N == 128256) continue;  // the head runs on one row only
        Buffer x = be->alloc(M, K, DType::bf16), w = be->alloc(N, K, DType::bf16), y = be->alloc(M, N, DType::bf16);
        fill_random(*be, x.view(), 4);
        fill_random(*be, w.view(), 5);
        Row r;
        r.section = "gemm";
        r.name = "gemm M=" + std::to_string(M) + " N=" + std::to_string(N) + " K=" + std::to_string(K);
        r.key = "gemm/" + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K);
        r.bytes = M == 1;
        r.work = M == 1 ? 2.0 * static_cast<double>(N) * K : 2.0 * M * N * K;
        r.ours_ms = median(cuda_event_times_ms(*be, [&] { be->matmul(x.view(), w.view(), nullptr, y.view()); }, 3,
                                               M == 1 ? 50 : 20));
        rows.push_back(r);
      }
    }
    be->synchronize();
  }

  std::map<std::string, double> torch;
  if (script != "none") {
    std::string seq_list;
    for (int64_t S : seqs) seq_list += (seq_list.empty() ? "" : ",") + std::to_string(S);
    torch = run_python("python3 " + script + " --seqs " + seq_list + " --decode-keys " + std::to_string(decode_keys) +
                       " --iters " + std::to_string(iters));
  }

  std::printf("\n%s\ndevice-to-device copy: %.0f GB/s (read + write), torch: %s GB/s\n", device.c_str(), copy_gbs,
              fmt(lookup(torch, "copy/gbs"), "%.0f").c_str());
  std::printf("prefill kernel: %s\n", prefill_kernel.c_str());
  std::printf("%-44s %10s %10s %12s %12s %8s\n", "prefill attention (Hq 32, Hkv 8, D 128)", "ours ms", "TFLOP/s",
              "torch flash", "torch cudnn", "ratio");
  for (const Row& r : rows) {
    if (r.section != "prefill") continue;
    const double ours = r.work / r.ours_ms / 1e9;
    const double fl = r.work / lookup(torch, r.key + "/flash") / 1e9;
    const double cu = r.work / lookup(torch, r.key + "/cudnn") / 1e9;
    double best = NAN;
    if (std::isfinite(fl)) best = fl;
    if (std::isfinite(cu)) best = std::isfinite(best) ? std::max(best, cu) : cu;
    std::printf("%-44s %10.3f %10.1f %12s %12s %8s\n", r.name.c_str(), r.ours_ms, ours, fmt(fl).c_str(),
                fmt(cu).c_str(), fmt(ours / best, "%.2fx").c_str());
  }
  std::printf("%-44s %10s %10s %12s %12s %8s\n", "decode attention (bytes: K + V)", "ours ms", "GB/s", "torch flash",
              "torch cudnn", "of copy");
  for (const Row& r : rows) {
    if (r.section != "decode") continue;
    const double ours = r.work / r.ours_ms / 1e6;
    std::printf("%-44s %10.4f %10.0f %12s %12s %7.0f%%\n", r.name.c_str(), r.ours_ms, ours,
                fmt(r.work / lookup(torch, r.key + "/flash") / 1e6, "%.0f").c_str(),
                fmt(r.work / lookup(torch, r.key + "/cudnn") / 1e6, "%.0f").c_str(), 100.0 * ours / copy_gbs);
  }
  std::printf("%-44s %10s %10s %12s %12s %8s\n", "GEMM x[M,K] w[N,K]^T bf16 (M=1: GB/s)", "ours ms", "ours",
              "torch ms", "torch", "ratio");
  for (const Row& r : rows) {
    if (r.section != "gemm") continue;
    const double div = r.bytes ? 1e6 : 1e9;
    const double ours = r.work / r.ours_ms / div;
    const double t_ms = lookup(torch, r.key + "/torch");
    const double th = r.work / t_ms / div;
    std::printf("%-44s %10.4f %10.1f %12s %12s %8s\n", r.name.c_str(), r.ours_ms, ours, fmt(t_ms, "%.4f").c_str(),
                fmt(th).c_str(), fmt(ours / th, "%.2fx").c_str());
  }
  std::printf("FLOPs 4*H*D*(visible query-key pairs): S^2 unmasked, S(S+1)/2 causal, S^2 + S(S+1)/2 with an "
              "S-token prefix. Ratio: ours / best torch backend.\n");
  return 0;
}

int64_t weight_bytes(const ModelConfig& c, int64_t element) {
  int64_t n = 0;
  for (const TensorSpec& s : model_tensor_specs(c)) {
    int64_t e = 1;
    for (int64_t d : s.shape) e *= d;
    n += e;
  }
  return n * element;
}

int bench_e2e(const Args& args) {
  const std::string config = args.require("random-weights");
  const std::vector<int64_t> contexts = parse_list(args.get("contexts", "32768,131072"));
  const std::string modes_arg = args.get("modes", "full,star");
  const int workers = static_cast<int>(args.get_int("workers", 4));
  const int64_t query = args.get_int("query", 16);
  const int decode_tokens = static_cast<int>(args.get_int("decode-tokens", 32));
  const std::string hf = args.get("hf", "tools/bench/hf_e2e.py");
  std::vector<AttentionMode> modes;
  for (const std::string m : {"full", "star"})
    if (modes_arg.find(m) != std::string::npos) modes.push_back(parse_mode(m));

  struct Row {
    int64_t context;
    std::string mode, plan, error;
    double phase1 = NAN, first = NAN, decode = NAN, floor = NAN, peak_gib = NAN;
  };
  std::vector<Row> rows;
  std::string device, load_note;
  double copy_gbs = NAN;
  int64_t wbytes = 0;
  ModelConfig cfg;
  {
    EngineOptions o;
    o.model = config;
    o.random_weights = true;
    o.device = "cuda";
    o.gpu = static_cast<int>(args.get_int("gpu", 0));
    o.workers = workers;
    const auto t0 = std::chrono::steady_clock::now();
    Engine engine(o);
    engine.backend().synchronize();
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    cfg = engine.config();
    wbytes = weight_bytes(cfg, 2);
    device = cuda_device_description(engine.backend());
    copy_gbs = cuda_copy_bandwidth_gbs(engine.backend(), int64_t{2} << 30, 20);
    load_note = "random weights generated and loaded in " + fmt(load_s, "%.1f") + " s; weights " +
                fmt(static_cast<double>(wbytes) / (1 << 30), "%.2f") + " GiB";
    std::fprintf(stderr, "%s\n", load_note.c_str());
    std::mt19937_64 rng(1);
    std::uniform_int_distribution<int32_t> tok(0, cfg.vocab_size - 1);
    // One small request per mode first: one-time costs (cuBLAS handles and heuristics, kernel
    // attributes, workspaces for small shapes) belong to start-up, not to the first measured row.
    for (AttentionMode mode : modes) {
      RequestSpec w;
      for (int64_t i = 0; i < 64 * workers; ++i) w.prompt.context.push_back(tok(rng));
      for (int64_t i = 0; i < query; ++i) w.prompt.query.push_back(tok(rng));
      w.mode = mode;
      w.block_size = mode == AttentionMode::star ? 64 : 0;
      w.max_tokens = 4;
      w.ignore_eos = true;
      engine.generate(w, [](int32_t, const float*) { return true; });
    }
    cuda_profile_report(engine.backend(), "warm-up");  // no-op unless STARATTN_PROFILE=1
    for (int64_t C : contexts) {
      for (AttentionMode mode : modes) {
        RequestSpec r;
        for (int64_t i = 0; i < C; ++i) r.prompt.context.push_back(tok(rng));
        for (int64_t i = 0; i < query; ++i) r.prompt.query.push_back(tok(rng));
        r.mode = mode;
        r.block_size = mode == AttentionMode::star ? (C + workers - 1) / workers : 0;
        r.max_tokens = decode_tokens;
        r.ignore_eos = true;
        Row row;
        row.context = C;
        row.mode = mode_name(mode);
        cuda_peak_allocated_bytes(engine.backend(), true);
        try {
          const RequestStats s = engine.generate(r, [](int32_t, const float*) { return true; });
          row.plan = std::to_string(s.blocks) + " x " + std::to_string(s.block_size) +
                     (s.anchor_size > 0 ? " (anchor " + std::to_string(s.anchor_size) + ")" : "");
          row.phase1 = s.phase1_ms;
          row.first = s.first_token_ms;
          if (s.generated > 1) row.decode = s.decode_ms / (s.generated - 1);
          const double kv = static_cast<double>(C + query + decode_tokens / 2) *
                            static_cast<double>(cfg.kv_bytes_per_token(2));
          row.floor = (static_cast<double>(wbytes) + kv) / (copy_gbs * 1e9) * 1e3;
        } catch (const std::exception& e) {
          row.error = e.what();
        }
        row.peak_gib = static_cast<double>(cuda_peak_allocated_bytes(engine.backend(), true)) / (1 << 30);
        // STARATTN_PROFILE=1: the per-op table of this request (phase1, prefill, decode sections).
        cuda_profile_report(engine.backend(), "C=" + std::to_string(C) + " " + row.mode);
        std::fprintf(stderr, "ours C=%lld %s: phase1 %.1f ms, first %.1f ms, decode %.2f ms/token %s\n",
                     static_cast<long long>(C), row.mode.c_str(), row.phase1, row.first, row.decode,
                     row.error.c_str());
        rows.push_back(row);
      }
    }
  }

  std::map<std::string, double> hfr;
  if (hf != "none") {
    std::string list;
    for (int64_t C : contexts) list += (list.empty() ? "" : ",") + std::to_string(C);
    hfr = run_python("python3 " + hf + " --config " + config + " --contexts " + list + " --query " +
                     std::to_string(query) + " --decode-tokens " + std::to_string(std::min(decode_tokens, 16)));
  }

  std::printf("\n%s\n%s; copy bandwidth %.0f GB/s\n", device.c_str(), load_note.c_str(), copy_gbs);
  std::printf("%-8s %-6s %-26s %11s %11s %11s %10s %10s %7s %9s\n", "context", "mode", "blocks", "phase1 ms",
              "query ms", "TTFT ms", "decode ms", "floor ms", "/floor", "peak GiB");
  for (const Row& r : rows) {
    if (!r.error.empty()) {
      std::printf("%-8lld %-6s error: %s\n", static_cast<long long>(r.context), r.mode.c_str(), r.error.c_str());
      continue;
    }
    std::printf("%-8lld %-6s %-26s %11.1f %11.1f %11.1f %10.2f %10.2f %7.2f %9.1f\n", static_cast<long long>(r.context),
                r.mode.c_str(), r.plan.c_str(), r.phase1, r.first, r.phase1 + r.first, r.decode, r.floor,
                r.decode / r.floor, r.peak_gib);
  }
  for (int64_t C : contexts) {
    const std::string k = "hf/" + std::to_string(C);
    if (lookup(hfr, k + "/oom") > 0) {
      std::printf("%-8lld %-6s %-26s out of memory (peak %s GiB)\n", static_cast<long long>(C), "HF", "transformers sdpa",
                  fmt(lookup(hfr, k + "/peak_gib")).c_str());
      continue;
    }
    std::printf("%-8lld %-6s %-26s %11s %11s %11s %10s %10s %7s %9s\n", static_cast<long long>(C), "HF",
                "transformers sdpa", "", "", fmt(lookup(hfr, k + "/prefill_ms")).c_str(),
                fmt(lookup(hfr, k + "/decode_ms"), "%.2f").c_str(), "", "", fmt(lookup(hfr, k + "/peak_gib")).c_str());
  }
  std::printf("TTFT = phase 1 (context encoding) + query prefill and first sample; star mode here runs its %d blocks "
              "one after another on this one GPU. floor = (weights + KV bytes) / copy bandwidth. peak = our "
              "allocations (weights, KV, activations); HF: torch.cuda.max_memory_allocated.\n",
              workers);
  return 0;
}

#endif  // STARATTN_HAVE_CUDA

}  // namespace

int cmd_bench(int argc, char** argv) {
  if (argc < 3 || !std::strcmp(argv[2], "--help")) {
    std::fputs(kBenchHelp, stdout);
    return argc < 3 ? 2 : 0;
  }
  const std::string what = argv[2];
  if (what == "reuse") {
    if (argc > 3 && !std::strcmp(argv[3], "--help")) {
      std::fputs(kBenchReuseHelp, stdout);
      return 0;
    }
    return bench_reuse(Args(argc, argv, 3,
                            {"random-weights", "weight-seed", "device", "gpu", "context", "questions", "query",
                             "decode-tokens", "mode", "workers", "cache-gib"},
                            {}));
  }
  if (what == "interleave") {
    if (argc > 3 && !std::strcmp(argv[3], "--help")) {
      std::fputs(kBenchInterleaveHelp, stdout);
      return 0;
    }
    return bench_interleave(Args(argc, argv, 3,
                                 {"random-weights", "weight-seed", "device", "gpu", "streams", "context",
                                  "long-context", "chunk", "share", "workers", "unloaded-steps", "query"},
                                 {}));
  }
  if (what != "kernels" && what != "e2e")
    throw std::invalid_argument("unknown benchmark '" + what + "' (kernels, e2e, reuse, interleave)");
#if defined(STARATTN_HAVE_CUDA)
  if (what == "kernels")
    return bench_kernels(Args(argc, argv, 3, {"gpu", "seqs", "decode-keys", "torch", "iters"}, {}));
  return bench_e2e(Args(argc, argv, 3,
                        {"gpu", "random-weights", "contexts", "modes", "workers", "query", "decode-tokens", "hf"},
                        {}));
#else
  throw std::runtime_error("bench needs the cuda backend, and this build has none (no nvcc at configure time)");
#endif
}

}  // namespace starattn::cli
