#include "cuda/cuda_ipc.h"

#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <stdexcept>
#include <string>

#include "cuda/common.cuh"

namespace starattn::cuda_detail {
namespace {

using cuda::check_cuda;

class CudaEvent final : public DeviceEvent {
 public:
  explicit CudaEvent(cudaEvent_t e) : event(e) {}
  // Also for imported events: destroying releases this process's handle only.
  ~CudaEvent() override {
    if (event) cudaEventDestroy(event);
  }
  cudaEvent_t event = nullptr;
};

template <class Handle>
std::string to_bytes(const Handle& h) {
  return std::string(reinterpret_cast<const char*>(&h), sizeof(Handle));
}

template <class Handle>
Handle from_bytes(const std::string& bytes, const char* what) {
  Handle h;
  if (bytes.size() != sizeof(Handle))
    throw std::invalid_argument(std::string("cuda ipc: a ") + what + " handle of " +
                                std::to_string(bytes.size()) + " bytes (expected " +
                                std::to_string(sizeof(Handle)) + ")");
  std::memcpy(&h, bytes.data(), sizeof(Handle));
  return h;
}

class CudaIpc final : public DeviceIpc {
 public:
  CudaIpc(int device, cudaStream_t stream) : device_(device), stream_(stream) {
    cudaDeviceProp prop{};
    check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties (ipc)");
    char text[64] = "GPU-";
    size_t n = 4;
    for (unsigned char b : prop.uuid.bytes) n += std::snprintf(text + n, sizeof(text) - n, "%02x", b);
    device_id_ = text;
  }

  std::string device_id() const override { return device_id_; }

  std::string export_memory(const Tensor& t) override {
    bind();
    cudaIpcMemHandle_t h;
    check_cuda(cudaIpcGetMemHandle(&h, t.data), "cudaIpcGetMemHandle");
    return to_bytes(h);
  }

  Tensor import_memory(const std::string& handle, DType dtype, int64_t rows,
                       int64_t cols) override {
    bind();
    const auto h = from_bytes<cudaIpcMemHandle_t>(handle, "memory");
    void* p = nullptr;
    check_cuda(cudaIpcOpenMemHandle(&p, h, cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle");
    std::lock_guard<std::mutex> lock(mutex_);
    opened_[p] = 1;
    Tensor t;
    t.data = p;
    t.dtype = dtype;
    t.rows = rows;
    t.cols = cols;
    t.stride = cols;
    return t;
  }

  void close_memory(const Tensor& view) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (opened_.erase(view.data) == 0) return;
    }
    bind();
    cudaIpcCloseMemHandle(view.data);  // nothing to do about a failure at teardown
  }

  std::unique_ptr<DeviceEvent> create_event() override {
    bind();
    cudaEvent_t e = nullptr;
    check_cuda(cudaEventCreateWithFlags(&e, cudaEventDisableTiming | cudaEventInterprocess),
               "cudaEventCreateWithFlags (interprocess)");
    return std::make_unique<CudaEvent>(e);
  }

  std::string export_event(DeviceEvent& event) override {
    cudaIpcEventHandle_t h;
    check_cuda(cudaIpcGetEventHandle(&h, as_cuda(event)), "cudaIpcGetEventHandle");
    return to_bytes(h);
  }

  std::unique_ptr<DeviceEvent> import_event(const std::string& handle) override {
    bind();
    const auto h = from_bytes<cudaIpcEventHandle_t>(handle, "event");
    cudaEvent_t e = nullptr;
    check_cuda(cudaIpcOpenEventHandle(&e, h), "cudaIpcOpenEventHandle");
    return std::make_unique<CudaEvent>(e);
  }

  void record(DeviceEvent& event) override {
    check_cuda(cudaEventRecord(as_cuda(event), stream_), "cudaEventRecord (ipc)");
  }

  void wait(DeviceEvent& event) override {
    check_cuda(cudaStreamWaitEvent(stream_, as_cuda(event), 0), "cudaStreamWaitEvent (ipc)");
  }

 private:
  static cudaEvent_t as_cuda(DeviceEvent& e) {
    auto* c = dynamic_cast<CudaEvent*>(&e);
    if (!c) throw std::invalid_argument("cuda ipc: an event of another backend");
    return c->event;
  }
  void bind() const { check_cuda(cudaSetDevice(device_), "cudaSetDevice (ipc)"); }

  int device_;
  cudaStream_t stream_;
  std::string device_id_;
  std::mutex mutex_;
  std::map<void*, int> opened_;
};

}  // namespace

std::unique_ptr<DeviceIpc> make_cuda_ipc(int device, cudaStream_t stream) {
  return std::make_unique<CudaIpc>(device, stream);
}

}  // namespace starattn::cuda_detail
