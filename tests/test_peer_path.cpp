// The choice of data path per shard (transport/peer_path.h) and the transport name read from
// UCX's endpoint printout: pure functions, tested without GPUs or a network.
#include <gtest/gtest.h>

#include "transport/peer_path.h"
#include "transport/ucx_endpoint.h"

namespace starattn::transport {
namespace {

const PeerPlace kHeadGpu{"boot-a/host1", 11, "GPU-aa"};

TEST(PeerPath, SameProcessSameBackendIsInProcess) {
  const PathChoice c = choose_data_path(kHeadGpu, {"boot-a/host1", 11, "GPU-aa"}, true);
  EXPECT_EQ(c.path, DataPath::in_process) << c.reason;
}

TEST(PeerPath, SameProcessAnotherBackendIsStagedNotIpc) {
  // CUDA IPC handles cannot be opened by the process that exported them.
  const PathChoice c = choose_data_path(kHeadGpu, {"boot-a/host1", 11, "GPU-bb"}, false);
  EXPECT_EQ(c.path, DataPath::ucx) << c.reason;
}

TEST(PeerPath, AnotherProcessOnTheSameHostWithGpusIsCudaIpc) {
  PathChoice c = choose_data_path(kHeadGpu, {"boot-a/host1", 12, "GPU-aa"}, false);
  EXPECT_EQ(c.path, DataPath::cuda_ipc);
  EXPECT_NE(c.reason.find("same GPU"), std::string::npos) << c.reason;
  c = choose_data_path(kHeadGpu, {"boot-a/host1", 12, "GPU-bb"}, false);
  EXPECT_EQ(c.path, DataPath::cuda_ipc);
  EXPECT_NE(c.reason.find("peers"), std::string::npos) << c.reason;
  // "In-process" is only believed for the same process: a stale flag changes nothing.
  EXPECT_EQ(choose_data_path(kHeadGpu, {"boot-a/host1", 12, "GPU-aa"}, true).path, DataPath::cuda_ipc);
}

TEST(PeerPath, CpuOnEitherEndOrAnotherHostIsStaged) {
  EXPECT_EQ(choose_data_path(kHeadGpu, {"boot-a/host1", 12, ""}, false).path, DataPath::ucx);
  EXPECT_EQ(choose_data_path({"boot-a/host1", 11, ""}, {"boot-a/host1", 12, "GPU-aa"}, false).path,
            DataPath::ucx);
  const PathChoice c = choose_data_path(kHeadGpu, {"boot-b/host2", 12, "GPU-cc"}, false);
  EXPECT_EQ(c.path, DataPath::ucx);
  EXPECT_NE(c.reason.find("another host"), std::string::npos) << c.reason;
  // An unknown place (an old worker that registered none) never counts as local.
  EXPECT_EQ(choose_data_path(kHeadGpu, {"", 0, ""}, true).path, DataPath::ucx);
}

TEST(PeerPath, GpusOnAnotherHostWithDeviceCapableUcxGoDeviceToDevice) {
  const PeerPlace head{"boot-a/host1", 11, "GPU-aa", true};
  PathChoice c = choose_data_path(head, {"boot-b/host2", 12, "GPU-cc", true}, false);
  EXPECT_EQ(c.path, DataPath::ucx_device) << c.reason;
  EXPECT_NE(c.reason.find("device memory"), std::string::npos) << c.reason;
  // Either end without it (Debian's UCX, a cpu backend, STARATTN_UCX_DEVICE_MEMORY=0): staged.
  c = choose_data_path(head, {"boot-b/host2", 12, "GPU-cc", false}, false);
  EXPECT_EQ(c.path, DataPath::ucx) << c.reason;
  EXPECT_NE(c.reason.find("without device memory"), std::string::npos) << c.reason;
  EXPECT_EQ(choose_data_path(kHeadGpu, {"boot-b/host2", 12, "GPU-cc", true}, false).path, DataPath::ucx);
  // On one host CUDA IPC still wins; device memory over UCX only where IPC is missing.
  EXPECT_EQ(choose_data_path(head, {"boot-a/host1", 12, "GPU-bb", true}, false).path, DataPath::cuda_ipc);
  EXPECT_EQ(choose_data_path({"boot-a/host1", 11, "", true}, {"boot-a/host1", 12, "", true}, false).path,
            DataPath::ucx_device);
  // The same process keeps its direct calls.
  EXPECT_EQ(choose_data_path(head, {"boot-a/host1", 11, "GPU-aa", true}, true).path, DataPath::in_process);
  EXPECT_STREQ(data_path_name(DataPath::ucx_device), "ucx_device");
}

TEST(PeerPath, ThisProcessHasAStableIdentity) {
  const PeerPlace a = this_process("GPU-x"), b = this_process("");
  EXPECT_FALSE(a.host_id.empty());
  EXPECT_EQ(a.host_id, b.host_id);
  EXPECT_EQ(a.process_id, b.process_id);
  EXPECT_NE(a.process_id, 0u);
  EXPECT_EQ(a.ipc_device, "GPU-x");
  EXPECT_FALSE(a.ucx_device);
  EXPECT_TRUE(this_process("GPU-x", true).ucx_device);
}

TEST(UcxLaneTransport, ReadsTheActiveMessageLane) {
  const std::string tcp =
      "#\n# UCP endpoint\n#\n#               peer: <no debug data>\n"
      "#                 lane[0]:  1:tcp/lo.0 md[1]           -> md[1]/tcp/sysdev[255] rma_bw#0 am am_bw#0\n"
      "#\n";
  EXPECT_EQ(ucx_lane_transport(tcp), "tcp");
  const std::string shm =
      "#                 lane[0]:  8:rc_mlx5/mlx5_0:1 md[4]    -> md[4]/ib/sysdev[255] rma_bw#0 wireup\n"
      "#                 lane[1]:  3:sysv/memory md[2]         -> md[2]/sysv/sysdev[255] am am_bw#0\n";
  EXPECT_EQ(ucx_lane_transport(shm), "sysv");
  EXPECT_EQ(ucx_lane_transport("no lanes here"), "unknown");
}

TEST(UcxLaneTransport, AnEndpointInThisProcessNamesARealTransport) {
  UcxWorker a, b;
  const auto ep = a.connect(b.address(), "b", UcxWorker::PeerFailure::control_plane);
  for (int i = 0; i < 50; ++i) {
    a.progress();
    b.progress();
  }
  const std::string t = a.transport(ep);
  EXPECT_NE(t, "unknown");
  EXPECT_FALSE(t.empty());
}

}  // namespace
}  // namespace starattn::transport
