// The distributed path on the GPU, as processes: a head and two context workers on one GPU
// (`serve --device cuda`, `worker --gpus 0`), so every exchange takes cuda_ipc; two requests in
// flight at once, so the head decodes them in one batched step and each worker answers both
// requests' Q of a layer in one header-only cuda_ipc batch (ShardServer::answer_batch_ipc). Each
// request's tokens must equal its own run in the in-process Engine on the same GPU, and its
// logits agree within kLogitTol (a batched step's GEMMs take two rows, which may pick another
// cuBLAS kernel than one row; the attention and the merge are bit-identical by construction).
// The head's log must name cuda_ipc as each worker's path. Skipped without a CUDA device.
#include <gtest/gtest.h>

#include "tests/gpu/gpu_test_support.h"
#include "tests/support/process_cluster.h"

namespace starattn::process_cluster {
namespace {

class CudaCluster : public Distributed {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    config_ = new testing::ModelDir(testing::gpu_model_config(128, 2));
    model_ = dir_->path() + "/gpu";
    const std::string cmd =
        cli() + " init-model --config " + config_->config() + " --seed 4 --out " + model_ + " 2>/dev/null";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }
  static void TearDownTestSuite() {
    delete config_;
    config_ = nullptr;
    Distributed::TearDownTestSuite();
  }
  void SetUp() override {
    if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device";
  }
  static inline testing::ModelDir* config_ = nullptr;
};

TEST_F(CudaCluster, TwoRequestsInFlightOverCudaIpcEqualTheirEngineRuns) {
  const std::vector<std::string> cuda{"--device", "cuda"};
  start_cluster(2, cuda, {"--gpus", "0"});
  const std::string ctx_a = ids(600, 3), ctx_b = ids(1500, 4);
  const int a_tokens = 1500;
  auto on_gpu = [&](std::vector<std::string> a) {
    a.insert(a.end(), cuda.begin(), cuda.end());
    return a;
  };
  ASSERT_EQ(run(on_gpu(local(2, request(ctx_a, a_tokens, path("a.local.bin")))), "a.local"), 0)
      << slurp(path("a.local.err"));
  ASSERT_EQ(run(on_gpu(local(2, request(ctx_b, 10, path("b.local.bin")))), "b.local"), 0);
  Proc a(remote(2, request(ctx_a, a_tokens, path("a.remote.bin"))), path("a.remote.out"),
         path("a.remote.err"));
  for (int i = 0; i < 1000 && a.out().empty(); ++i) std::this_thread::sleep_for(10ms);
  ASSERT_FALSE(a.out().empty()) << a.err();
  ASSERT_EQ(run(remote(2, request(ctx_b, 10, path("b.remote.bin"))), "b.remote"), 0)
      << slurp(path("b.remote.err"));
  ASSERT_EQ(a.wait(180s), 0) << a.err();
  constexpr double kLogitTol = 5e-2;
  // 1500 greedy tokens of random weights pass near ties (its text falls into repeats): a step
  // batched with B rounds A's GEMMs differently, which may flip one (the first GPU run flipped
  // at token ~640, long after B's 10 tokens), so A equals its Engine run up to a near tie.
  EXPECT_TRUE(same_until_near_tie(slurp(path("a.local.out")), slurp(path("a.local.bin")), a.out(),
                                  slurp(path("a.remote.bin")), kLogitTol));
  EXPECT_EQ(slurp(path("b.remote.out")), slurp(path("b.local.out")));
  EXPECT_TRUE(logits_close(slurp(path("b.remote.bin")), slurp(path("b.local.bin")), kLogitTol));
  const std::string log = head_->err();
  EXPECT_NE(log.find("cuda_ipc"), std::string::npos) << "no worker was reached by cuda_ipc:\n" << log;
  const auto b_admitted = log.find("request 3: context");  // request 1 was the warm-up
  const auto a_done = log.find("request 2 done");
  ASSERT_NE(b_admitted, std::string::npos) << log;
  ASSERT_NE(a_done, std::string::npos) << log;
  EXPECT_LT(b_admitted, a_done) << "the requests did not overlap:\n" << log;
}

}  // namespace
}  // namespace starattn::process_cluster
