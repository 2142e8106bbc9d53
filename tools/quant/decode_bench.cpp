// Decode ms/token on the cpu backend with the weights held as bf16 (the backend's choice) and as
// float32 (the backend before), in one process, rounds alternating, so that other load on a
// shared machine falls on both alike. Each round feeds a prompt, then times one-token steps;
// the report is the median and the fastest step of each storage over all rounds, and the
// weight bytes each holds.
//
// Build against a configured build tree B (after building its starattn_runtime target), run:
//   g++ -O2 -std=c++17 -fopenmp -I. tools/quant/decode_bench.cpp B/runtime/libstarattn_runtime.a \
//       -I/usr/include/x86_64-linux-gnu/openblas-pthread -lopenblas -o /tmp/decode_bench
//   OMP_WAIT_POLICY=passive /tmp/decode_bench MODEL.gguf|CONFIG.json [rounds] [steps] [threads]
// (a config.json: random weights of that shape, e.g. tools/quant/smollm2_135m_config.json).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "runtime/random_model.h"
#include "runtime/star_attention.h"
#include "runtime/transformer.h"
#include "runtime/weight_source.h"

namespace starattn {
namespace {

// The cpu backend asked for float32 weights: every call goes to it unchanged, except that
// weight_dtype() says f32 (the cpu backend's ops take f32 weight views as well as bf16).
class F32Weights final : public Backend {
 public:
  explicit F32Weights(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}
  std::string name() const override { return inner_->name() + " (f32 weights)"; }
  DType activation_dtype() const override { return inner_->activation_dtype(); }
  DType weight_dtype() const override { return DType::f32; }
  Buffer alloc(int64_t rows, int64_t cols, DType dtype) override {
    Buffer b = inner_->alloc(rows, cols, dtype);
    const Tensor view = b.view();
    held_.emplace(view.data, std::move(b));
    return Buffer(this, view);
  }
  void free_memory(Tensor t) override { held_.erase(t.data); }
  int64_t free_bytes() const override { return inner_->free_bytes(); }
  void upload(const float* host, Tensor dst) override { inner_->upload(host, dst); }
  void download(const Tensor& src, float* host) override { inner_->download(src, host); }
  void copy(const Tensor& src, Tensor dst) override { inner_->copy(src, dst); }
  void embedding(const int32_t* ids, const Tensor& table, Tensor out) override { inner_->embedding(ids, table, out); }
  void rmsnorm(const Tensor& x, const Tensor& w, float eps, Tensor out) override { inner_->rmsnorm(x, w, eps, out); }
  void matmul(const Tensor& x, const Tensor& w, const Tensor* bias, Tensor out) override {
    inner_->matmul(x, w, bias, out);
  }
  void rope(const RopeArgs& a) override { inner_->rope(a); }
  void attention(const AttentionArgs& a) override { inner_->attention(a); }
  void merge_partials(const std::vector<Partial>& p, Tensor o, Tensor lse) override { inner_->merge_partials(p, o, lse); }
  void swiglu(const Tensor& g, const Tensor& u, Tensor out) override { inner_->swiglu(g, u, out); }
  void add(Tensor x, const Tensor& y) override { inner_->add(x, y); }
  void add_rmsnorm(Tensor x, const Tensor& y, const Tensor& w, float eps, Tensor out) override {
    inner_->add_rmsnorm(x, y, w, eps, out);
  }
  int32_t sample(const Tensor& logits, const SamplingParams& p, uint64_t step) override {
    return inner_->sample(logits, p, step);
  }
  void synchronize() override { inner_->synchronize(); }

 private:
  std::unique_ptr<Backend> inner_;
  std::map<void*, Buffer> held_;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace
}  // namespace starattn

int main(int argc, char** argv) {
  using namespace starattn;
  if (argc < 2) {
    std::fprintf(stderr, "usage: decode_bench MODEL|CONFIG.json [rounds] [steps] [threads]\n");
    return 2;
  }
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 5;
  const int steps = argc > 3 ? std::atoi(argv[3]) : 32;
  const int threads = argc > 4 ? std::atoi(argv[4]) : 0;
  // A config.json gives random weights of its shape (timing does not depend on the values).
  const std::string path = argv[1];
  LoadedModel model;
  if (path.size() > 5 && path.compare(path.size() - 5, 5, ".json") == 0) {
    model.config = ModelConfig::from_file(path);
    model.weights = random_weight_source(model.config, 1);
  } else {
    model = open_model(path);
  }
  struct Variant {
    const char* name;
    std::unique_ptr<Backend> backend;
    std::unique_ptr<Transformer> transformer;
    std::vector<double> ms;
  };
  std::vector<Variant> variants;
  variants.push_back({"bf16", make_backend("cpu", 0, threads), nullptr, {}});
  variants.push_back({"f32", std::make_unique<F32Weights>(make_backend("cpu", 0, threads)), nullptr, {}});
  for (Variant& v : variants) v.transformer = std::make_unique<Transformer>(model.config, *model.weights, *v.backend);
  std::vector<int32_t> prompt;
  for (int i = 0; i < 32; ++i) prompt.push_back((i * 7919) % model.config.vocab_size);
  for (int r = 0; r < rounds; ++r)
    for (Variant& v : variants) {
      LocalShards none({});
      QuerySession session(*v.transformer, none, 0, 32 + steps + 1);
      session.feed(prompt);
      int32_t next = v.backend->sample(session.logits(), SamplingParams{}, 0);
      for (int s = 0; s < steps; ++s) {
        const auto t0 = std::chrono::steady_clock::now();
        session.feed({next});
        next = v.backend->sample(session.logits(), SamplingParams{}, 0);
        v.ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
    }
  for (const Variant& v : variants)
    std::printf("%-5s weights %7.1f MB  decode median %6.2f ms/token, fastest %6.2f (%zu steps)\n", v.name,
                v.transformer->weight_bytes() / 1e6, median(v.ms), *std::min_element(v.ms.begin(), v.ms.end()),
                v.ms.size());
  return 0;
}
