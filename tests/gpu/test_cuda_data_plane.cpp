// The data plane between processes' backends on the GPU: a context shard answered by a
// ShardServer over UCX, reached through ShardLinks on the device path (DataPath::ucx_device: q
// and (O, lse) leave and arrive in device memory, UCX moving or staging them) and on the staged
// path, against the shard called directly. The query side and the worker are two backends (two
// ModelHosts on the same GPU, the weights from one seed), as a head and a worker are; one
// process, so UCX carries it over shared memory or tcp with its cuda_copy staging.
//   - every path gives partials bit-identical to the direct call (the merge downstream then is
//     the Engine's), for one query row (an eager message) and 512 rows (rendezvous: the payload
//     lands in device memory through the sink);
//   - the device path says so in its description.
// Skipped without a CUDA device, or when the UCX in use cannot carry device memory (Debian's
// binary package; deploy/build-ucx.sh's build can).
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "actors/data_plane.h"
#include "actors/messages.h"
#include "actors/model_host.h"
#include "cuda/cuda_backend.h"
#include "runtime/star_attention.h"
#include "tests/gpu/gpu_test_support.h"

namespace starattn {
namespace {

using actors::DevicePayloadPool;
using actors::ModelHost;
using actors::ShardLinks;
using actors::ShardServer;
using transport::DataPath;

constexpr uint64_t kRequest = 42;

ModelLoadOptions load_options(const std::string& config) {
  ModelLoadOptions o;
  o.model = config;
  o.random_weights = true;
  o.weight_seed = 5;
  o.device = "cuda";
  return o;
}

std::vector<float> download(Backend& be, const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.rows * t.cols));
  be.download(t, out.data());
  return out;
}

class CudaDataPlane : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_device_available()) GTEST_SKIP() << "no CUDA device";
    if (!transport::UcxContext::get()->device_memory_supported())
      GTEST_SKIP() << "this UCX cannot carry device memory (memory types: "
                   << transport::UcxContext::get()->memory_types() << ")";
    dir_ = std::make_unique<testing::ModelDir>(testing::gpu_model_config(128, 2));
    worker_ = std::make_unique<ModelHost>(load_options(dir_->config()));
    query_ = std::make_unique<ModelHost>(load_options(dir_->config()));
    ASSERT_TRUE(actors::ucx_carries_device_memory(worker_->backend()));

    // One shard: two blocks behind an anchor, as a star worker holds them.
    std::mt19937 rng(3);
    auto tokens = [&](int64_t n) {
      std::vector<int32_t> t(static_cast<size_t>(n));
      for (auto& v : t) v = static_cast<int32_t>(rng() % 256);
      return t;
    };
    const std::vector<int32_t> anchor = tokens(64);
    const std::vector<BlockSpec> blocks = {{1, 200, 200}, {2, 400, 137}};
    shard_ = std::make_shared<ContextShard>(worker_->model(), 337);
    {
      const auto compute = worker_->lock_compute();
      shard_->encode(anchor, blocks, {tokens(200), tokens(137)});
    }
    server_ = std::make_unique<ShardServer>(*worker_, 1, "gpu-worker");
    server_->add(kRequest, shard_);
  }

  void TearDown() override {
    if (server_) server_->remove(kRequest);
  }

  // Random bf16-exact q [rows, q_dim] on the query side.
  Buffer random_q(int64_t rows, uint32_t seed) {
    const ModelConfig& c = query_->config();
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> d(-2.0f, 2.0f);
    std::vector<float> host(static_cast<size_t>(rows * c.q_dim()));
    for (auto& v : host) v = testing::bf16_round(d(rng));
    Buffer q = query_->backend().alloc(rows, c.q_dim(), query_->backend().activation_dtype());
    query_->backend().upload(host.data(), q.view());
    return q;
  }

  // The partial of the shard called directly (the reference), for the same q values.
  Partial reference(int layer, const Buffer& q, std::vector<float>& o, std::vector<float>& lse) {
    const std::vector<float> values = download(query_->backend(), q.view());
    const auto compute = worker_->lock_compute();
    Backend& be = worker_->backend();
    Buffer wq = be.alloc(q.view().rows, q.view().cols, be.activation_dtype());
    be.upload(values.data(), wq.view());
    const Partial p = shard_->attend(layer, wq.view());
    o = download(be, p.o);
    lse = download(be, p.lse);
    return p;
  }

  void check_path(DataPath path) {
    transport::UcxWorker ucx;
    ucx.listen(actors::kAmAttendReply);
    auto pool = std::make_shared<DevicePayloadPool>(query_->backend());
    actors::sink_device_replies(ucx, pool);
    ShardLinks::Link link;
    link.worker_id = 1;
    link.name = "gpu-worker";
    link.path = path;
    link.ep = ucx.connect(server_->address(), link.name,
                          transport::UcxWorker::PeerFailure::control_plane);
    auto health = std::make_shared<actors::WorkerHealth>();
    {
      ShardLinks links(ucx, query_->model(), kRequest, {link}, health, std::chrono::seconds(20), 512,
                       pool);
      const std::string described = links.describe();
      if (path == DataPath::ucx_device)
        EXPECT_NE(described.find("device memory"), std::string::npos) << described;
      else
        EXPECT_NE(described.find("(staged)"), std::string::npos) << described;
      uint32_t seed = 100;
      for (int64_t rows : {int64_t{1}, int64_t{512}, int64_t{1}}) {
        for (int layer = 0; layer < query_->config().num_layers; ++layer) {
          const Buffer q = random_q(rows, ++seed);
          std::vector<float> ref_o, ref_lse;
          reference(layer, q, ref_o, ref_lse);
          std::vector<Partial> out;
          std::vector<float> o, lse;
          {
            const auto compute = query_->lock_compute();
            links.attend(layer, q.view(), out);
            ASSERT_EQ(out.size(), 1u);
            o = download(query_->backend(), out[0].o);
            lse = download(query_->backend(), out[0].lse);
          }
          ASSERT_EQ(o.size(), ref_o.size());
          ASSERT_EQ(lse.size(), ref_lse.size());
          EXPECT_EQ(std::memcmp(o.data(), ref_o.data(), o.size() * 4), 0)
              << data_path_name(path) << ": O differs, rows " << rows << " layer " << layer;
          EXPECT_EQ(std::memcmp(lse.data(), ref_lse.data(), lse.size() * 4), 0)
              << data_path_name(path) << ": lse differs, rows " << rows << " layer " << layer;
          float spread = 0;
          for (float v : ref_o) spread = std::max(spread, std::abs(v));
          EXPECT_GT(spread, 1e-3f) << "the reference O is all but zero: the test would prove nothing";
        }
      }
      EXPECT_EQ(links.stats().us.size(), 3u * static_cast<size_t>(query_->config().num_layers));
    }
    ucx.disconnect(link.ep);
  }

  std::unique_ptr<testing::ModelDir> dir_;
  std::unique_ptr<ModelHost> worker_, query_;
  std::shared_ptr<ContextShard> shard_;
  std::unique_ptr<ShardServer> server_;
};

TEST_F(CudaDataPlane, DevicePathGivesTheDirectCallsPartialsBitForBit) {
  check_path(DataPath::ucx_device);
  EXPECT_EQ(server_->refused(), 0u);
}

TEST_F(CudaDataPlane, StagedPathGivesTheDirectCallsPartialsBitForBit) {
  check_path(DataPath::ucx);
  EXPECT_EQ(server_->refused(), 0u);
}

}  // namespace
}  // namespace starattn
