// The framed TCP protocol: frame encoding, request/done conversions, and the C++ client against
// the TCP server over loopback (streamed answer equals the engine's, cancel frees the KV, wrong
// versions and oversized frames are refused, errors carry the service's code).
#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "runtime/engine.h"
#include "runtime/random_model.h"
#include "server/client.h"
#include "server/engine_service.h"
#include "server/framed_protocol.h"
#include "server/tcp_server.h"
#include "tests/support/test_models.h"

namespace starattn::server {
namespace {

TEST(FramedProtocol, FramesCarryALittleEndianLength) {
  serving::ClientFrame f;
  f.set_protocol_version(kServingProtocolVersion);
  f.mutable_request()->set_query(std::string(300, 'q'));
  const std::string bytes = encode_frame(f);
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  ASSERT_EQ(decode_frame_length(p), bytes.size() - 4);
  EXPECT_EQ(p[0], (bytes.size() - 4) & 0xff);
  EXPECT_EQ(p[1], ((bytes.size() - 4) >> 8) & 0xff);
  serving::ClientFrame back;
  ASSERT_TRUE(back.ParseFromString(bytes.substr(4)));
  EXPECT_EQ(back.request().query(), std::string(300, 'q'));
}

TEST(FramedProtocol, RequestsAndCompletionsRoundTrip) {
  TextRequest r;
  r.context = "ctx\xff";  // bytes, not necessarily UTF-8
  r.query = "q";
  r.mode = "full";
  r.block_size = 16;
  r.anchor_size = 8;
  r.max_tokens = 7;
  r.sampling.temperature = 0.7f;
  r.sampling.top_k = 5;
  r.sampling.top_p = 0.5f;
  r.sampling.seed = 42;
  r.stop = {"a", "bc"};
  r.ignore_eos = true;
  const TextRequest b = request_from_proto(request_to_proto(r));
  EXPECT_EQ(b.context, r.context);
  EXPECT_EQ(b.mode, "full");
  EXPECT_EQ(b.block_size, 16);
  EXPECT_EQ(b.anchor_size, 8);
  EXPECT_EQ(b.max_tokens, 7);
  EXPECT_FLOAT_EQ(b.sampling.top_p, 0.5f);
  EXPECT_EQ(b.sampling.seed, 42u);
  EXPECT_EQ(b.stop, r.stop);
  EXPECT_TRUE(b.ignore_eos);

  serving::GenerateRequest bad = request_to_proto(r);
  bad.set_mode("half");
  EXPECT_THROW(request_from_proto(bad), std::invalid_argument);
  bad = request_to_proto(r);
  bad.set_query("");
  EXPECT_THROW(request_from_proto(bad), std::invalid_argument);

  Completion c;
  c.finish_reason = "length";
  c.prompt_tokens = 10;
  c.completion_tokens = 3;
  c.phase1_ms = 1.5;
  const Completion d = completion_from_proto(completion_to_proto(c));
  EXPECT_EQ(d.finish_reason, "length");
  EXPECT_EQ(d.prompt_tokens, 10);
  EXPECT_EQ(d.completion_tokens, 3);
  EXPECT_DOUBLE_EQ(d.phase1_ms, 1.5);
}

TEST(FramedProtocol, ParsesHostPort) {
  EXPECT_EQ(parse_host_port("127.0.0.1:80", "x"), std::make_pair(std::string("127.0.0.1"), uint16_t{80}));
  EXPECT_EQ(parse_host_port("[::1]:9", "x").first, "::1");
  EXPECT_THROW(parse_host_port("nohost", "x"), std::invalid_argument);
  EXPECT_THROW(parse_host_port("h:99999", "x"), std::invalid_argument);
  EXPECT_THROW(parse_host_port("h:1a", "x"), std::invalid_argument);
}

class TcpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    write_random_model(testing::test_config(), 5, dir_.path());
    EngineServiceOptions so;
    so.engine.model = dir_.path();
    so.engine.threads = 1;
    so.max_context_tokens = 256;
    service_ = std::make_unique<EngineService>(so);
    server_ = std::make_unique<TcpServer>(io_, *service_, metrics_, TcpServerOptions{});
    thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    server_->stop();
    work_.reset();
    io_.stop();
    thread_.join();
    service_.reset();  // before the io_context its callbacks post to
  }
  TextRequest request(int max_tokens) {
    TextRequest r;
    r.context = "Star attention splits the context into blocks. ";
    r.query = "What does it split?";
    r.max_tokens = max_tokens;
    r.ignore_eos = true;
    return r;
  }
  testing::TempDir dir_;
  std::unique_ptr<EngineService> service_;
  Metrics metrics_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_ =
      boost::asio::make_work_guard(io_);
  std::unique_ptr<TcpServer> server_;
  std::thread thread_;
};

TEST_F(TcpServerTest, StreamsTheEnginesAnswer) {
  EngineOptions o;
  o.model = dir_.path();
  o.threads = 1;
  Engine engine(o);
  const TextRequest r = request(10);
  GenerateRequest g;
  g.context.push_back(engine.config().bos_token_id);
  for (int32_t t : engine.tokenizer().encode(r.context)) g.context.push_back(t);
  g.query = engine.tokenizer().encode(r.query);
  g.max_tokens = 10;
  g.ignore_eos = true;
  std::vector<int32_t> expected;
  engine.generate(g, [&](int32_t id, const float*) {
    expected.push_back(id);
    return true;
  });

  Client client("127.0.0.1", server_->port());
  for (int round = 0; round < 2; ++round) {  // one connection, requests one after another
    std::vector<int32_t> got;
    const Completion c = client.generate(r, [&](const TokenEvent& ev) {
      got.insert(got.end(), ev.tokens.begin(), ev.tokens.end());
      return true;
    });
    EXPECT_EQ(got, expected);
    EXPECT_EQ(c.finish_reason, "length");
    EXPECT_EQ(c.completion_tokens, 10);
    EXPECT_EQ(c.prompt_tokens, static_cast<int64_t>(g.context.size() + g.query.size()));
  }
}

TEST_F(TcpServerTest, CancelStopsTheRequestAndFreesItsKv) {
  Client client("127.0.0.1", server_->port());
  int seen = 0;
  const Completion c = client.generate(request(100000), [&](const TokenEvent& ev) {
    seen += static_cast<int>(ev.tokens.size());
    if (seen >= 3) {
      // While the request runs, its KV is held.
      EXPECT_GT(service_->load().at(0).kv_tokens, 0);
      return false;
    }
    return true;
  });
  EXPECT_EQ(c.finish_reason, "cancelled");
  EXPECT_LT(c.completion_tokens, 100000);
  EXPECT_EQ(service_->load().at(0).kv_tokens, 0);
  // The connection still works.
  const Completion again = client.generate(request(2), nullptr);
  EXPECT_EQ(again.completion_tokens, 2);
}

TEST_F(TcpServerTest, HangingUpCancelsTheRequest) {
  {
    Client client("127.0.0.1", server_->port());
    struct HangUp {};
    int seen = 0;
    try {
      client.generate(request(100000), [&](const TokenEvent&) {
        if (++seen >= 2) throw HangUp{};
        return true;
      });
    } catch (const HangUp&) {
    }
  }  // the client is destroyed: the socket closes mid-stream
  for (int i = 0; i < 200 && service_->load().at(0).active_requests != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(service_->load().at(0).active_requests, 0);
  EXPECT_EQ(service_->load().at(0).kv_tokens, 0);
}

TEST_F(TcpServerTest, ErrorsCarryTheirCode) {
  Client client("127.0.0.1", server_->port());
  TextRequest big = request(1);
  big.context = std::string(1000, 'x');
  try {
    client.generate(big, nullptr);
    FAIL() << "expected a capacity error";
  } catch (const ServerError& e) {
    EXPECT_EQ(e.code, "capacity");
    EXPECT_NE(std::string(e.what()).find("256"), std::string::npos) << e.what();
  }
  TextRequest bad = request(1);
  bad.block_size = 4;
  bad.anchor_size = 8;  // anchor larger than the block: the engine refuses it
  EXPECT_THROW(client.generate(bad, nullptr), ServerError);
  EXPECT_EQ(client.generate(request(1), nullptr).completion_tokens, 1);  // still serving
}

TEST(EngineServiceQueue, RefusesBeyondTheQueueLimitAndCancelsQueuedRequests) {
  testing::TempDir dir;
  write_random_model(testing::test_config(), 5, dir.path());
  EngineServiceOptions so;
  so.engine.model = dir.path();
  so.engine.threads = 1;
  so.max_queue = 1;
  EngineService service(so);
  TextRequest long_one;
  long_one.context = "context";
  long_one.query = "q";
  long_one.max_tokens = 1000000;
  long_one.ignore_eos = true;

  std::mutex m;
  std::condition_variable cv;
  std::vector<std::string> finished;  // "done:<reason>" or "error:<kind>", in order
  int first_tokens = 0;
  const auto callbacks = [&](const std::string& name) {
    StreamCallbacks cb;
    cb.on_token = [&](const TokenEvent&) {
      std::lock_guard<std::mutex> lock(m);
      ++first_tokens;
      cv.notify_all();
      return true;
    };
    cb.on_done = [&, name](const Completion& c) {
      std::lock_guard<std::mutex> lock(m);
      finished.push_back(name + " done:" + c.finish_reason);
      cv.notify_all();
    };
    cb.on_error = [&, name](const ServiceError& e) {
      std::lock_guard<std::mutex> lock(m);
      finished.push_back(name + " error:" + error_kind_name(e.kind));
      cv.notify_all();
    };
    return cb;
  };
  auto running = service.submit(long_one, callbacks("a"));
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return first_tokens > 0; });  // "a" runs on the only engine
  }
  auto queued = service.submit(long_one, callbacks("b"));   // fills the queue of 1
  auto refused = service.submit(long_one, callbacks("c"));  // one too many
  EXPECT_EQ(service.queued(), 1);
  queued->cancel();  // dropped from the queue without running
  EXPECT_EQ(service.queued(), 0);
  running->cancel();
  std::unique_lock<std::mutex> lock(m);
  cv.wait(lock, [&] { return finished.size() == 3; });
  EXPECT_EQ(finished, (std::vector<std::string>{"c error:overloaded", "b done:cancelled", "a done:cancelled"}));
  EXPECT_EQ(service.load().at(0).kv_tokens, 0);
}

TEST_F(TcpServerTest, RefusesOtherVersionsAndOversizedFrames) {
  {
    Client client("127.0.0.1", server_->port());
    serving::ClientFrame f;
    f.set_protocol_version(kServingProtocolVersion + 1);
    *f.mutable_request() = request_to_proto(request(1));
    client.send_raw_frame(encode_frame(f));
    // The next read sees the server's Error frame.
    try {
      client.generate(request(1), nullptr);
      FAIL() << "expected unsupported_version";
    } catch (const ServerError& e) {
      EXPECT_EQ(e.code, "unsupported_version");
    }
  }
  {
    Client client("127.0.0.1", server_->port());
    client.send_raw_frame(std::string("\xff\xff\xff\x7f", 4));
    try {
      client.generate(request(1), nullptr);
      FAIL() << "expected frame_too_large";
    } catch (const ServerError& e) {
      EXPECT_EQ(e.code, "frame_too_large");
    }
  }
  Client fresh("127.0.0.1", server_->port());
  EXPECT_EQ(fresh.generate(request(1), nullptr).completion_tokens, 1);
}

}  // namespace
}  // namespace starattn::server
