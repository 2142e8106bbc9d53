// The framed TCP protocol: frame encoding, request/done conversions, and the C++ client against
// the TCP server over loopback (streamed answer equals the engine's, cancel frees the KV, wrong
// versions and oversized frames are refused, errors carry the service's code).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <random>
#include <thread>

#include "runtime/engine.h"
#include "runtime/random_model.h"
#include "server/access_log.h"
#include "server/client.h"
#include "server/engine_service.h"
#include "server/framed_protocol.h"
#include "server/port_relay.h"
#include "server/tcp_server.h"
#include "tests/support/test_models.h"
#include "transport/address.h"

namespace starattn::server {
namespace {

TEST(FramedProtocol, FramesCarryALittleEndianLength) {
  serving::ClientFrame f;
  f.set_protocol_version(kServingProtocolVersion);
  f.mutable_request()->set_query(std::string(300, 'q'));
  const std::string bytes = encode_frame(f);
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  ASSERT_EQ(transport::decode_frame_prefix(p), bytes.size() - 4);
  EXPECT_EQ(p[0], (bytes.size() - 4) & 0xff);
  EXPECT_EQ(p[1], ((bytes.size() - 4) >> 8) & 0xff);
  serving::ClientFrame back;
  ASSERT_TRUE(back.ParseFromString(bytes.substr(4)));
  EXPECT_EQ(back.request().query(), std::string(300, 'q'));
}

TEST(FramedProtocol, RequestsAndCompletionsRoundTrip) {
  RequestSpec r;
  r.prompt.context_is_text = r.prompt.query_is_text = true;
  r.prompt.context_text = "ctx\xff";  // bytes, not necessarily UTF-8
  r.prompt.query_text = "q";
  r.mode = AttentionMode::full;
  r.block_size = 16;
  r.anchor_size = 8;
  r.max_tokens = 7;
  r.sampling.temperature = 0.7f;
  r.sampling.top_k = 5;
  r.sampling.top_p = 0.5f;
  r.sampling.seed = 42;
  r.stop_strings = {"a", "bc"};
  r.ignore_eos = true;
  const RequestSpec b = request_from_proto(request_to_proto(r));
  EXPECT_TRUE(b.prompt.context_is_text && b.prompt.query_is_text);
  EXPECT_EQ(b.prompt.context_text, r.prompt.context_text);
  EXPECT_EQ(b.prompt.query_text, "q");
  EXPECT_EQ(b.mode, AttentionMode::full);
  EXPECT_EQ(b.block_size, 16);
  EXPECT_EQ(b.anchor_size, 8);
  EXPECT_EQ(b.max_tokens, 7);
  EXPECT_FLOAT_EQ(b.sampling.top_p, 0.5f);
  EXPECT_EQ(b.sampling.seed, 42u);
  EXPECT_EQ(b.stop_strings, r.stop_strings);
  EXPECT_TRUE(b.ignore_eos);

  serving::GenerateRequest bad = request_to_proto(r);
  bad.set_mode("half");
  EXPECT_THROW(request_from_proto(bad), std::invalid_argument);
  bad = request_to_proto(r);
  bad.set_query("");
  EXPECT_THROW(request_from_proto(bad), std::invalid_argument);

  RequestStats c;
  c.finish_reason = "length";
  c.context_tokens = 7;
  c.query_tokens = 3;
  c.generated = 3;
  c.phase1_ms = 1.5;
  const RequestStats d = completion_from_proto(completion_to_proto(c));
  EXPECT_EQ(d.finish_reason, "length");
  EXPECT_EQ(d.context_tokens, 7);
  EXPECT_EQ(d.prompt_tokens(), 10);
  EXPECT_EQ(d.generated, 3);
  EXPECT_DOUBLE_EQ(d.phase1_ms, 1.5);
}

TEST(Address, ParsesHostPortWithTheSameRulesForEveryOption) {
  const auto v4 = transport::parse_host_port("127.0.0.1:80", "--http");
  EXPECT_EQ(v4.host, "127.0.0.1");
  EXPECT_EQ(v4.port, 80);
  const auto v6 = transport::parse_host_port("[::1]:65535", "--tcp");
  EXPECT_EQ(v6.host, "::1");
  EXPECT_EQ(v6.port, 65535);
  EXPECT_EQ(transport::parse_host_port("node7:0", "--listen").port, 0);
  EXPECT_EQ(transport::format_host_port("::1", 9), "[::1]:9");
  EXPECT_EQ(transport::format_host_port("10.0.0.1", 9), "10.0.0.1:9");
  // Each refusal names the option and says what is wrong.
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"nohost", "no ':PORT'"},        {":80", "host is empty"},
      {"h:99999", "out of range"},     {"h:65536", "out of range"},
      {"h:1a", "not a number"},        {"h:", "port is empty"},
      {"h:-1", "not a number"},        {"::1:80", "needs brackets"},
      {"[::1:80", "not closed"},       {"[::1]80", "no ':PORT' after ']'"},
      {"[]:80", "host is empty"},      {"h:123456", "out of range"},
  };
  for (const auto& [text, why] : bad) {
    try {
      transport::parse_host_port(text, "--connect");
      ADD_FAILURE() << text << " was accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_THAT(e.what(), ::testing::HasSubstr("--connect")) << text;
      EXPECT_THAT(e.what(), ::testing::HasSubstr(why)) << text;
    }
  }
}

TEST(AccessLog, OneLineWithEveryField) {
  AccessRecord r;
  r.id = "cmpl-1f";
  r.client = "127.0.0.1:50312";
  r.endpoint = "/v1/completions";
  r.status = "200";
  r.tokens_in = 812;
  r.tokens_out = 64;
  r.ttft_ms = 35.24;
  r.total_ms = 402.66;
  EXPECT_EQ(format_access(r),
            "access id=cmpl-1f client=127.0.0.1:50312 endpoint=/v1/completions status=200 tokens_in=812 "
            "tokens_out=64 ttft_ms=35.2 total_ms=402.7");
  r.id.clear();
  r.ttft_ms = -1;
  EXPECT_THAT(format_access(r), ::testing::HasSubstr("access id=- "));
  EXPECT_THAT(format_access(r), ::testing::HasSubstr(" ttft_ms=- total_ms=402.7"));
}

// Far more tokens than a test waits for, within the test model's 4096 positions.
constexpr int kLong = 3900;

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
  // Replaces the server by one with these options.
  void restart(const TcpServerOptions& options) {
    server_->stop();
    server_ = std::make_unique<TcpServer>(io_, *service_, metrics_, options);
  }
  // One line of /metrics, or "" when absent.
  std::string metric(const std::string& prefix) {
    const std::string text = metrics_.render(*service_);
    const size_t at = text.find("\n" + prefix);
    if (at == std::string::npos) return "";
    return text.substr(at + 1, text.find('\n', at + 1) - at - 1);
  }
  void TearDown() override {
    server_->stop();
    work_.reset();
    io_.stop();
    thread_.join();
    service_.reset();  // before the io_context its callbacks post to
  }
  RequestSpec request(int max_tokens) {
    RequestSpec r;
    r.prompt.context_is_text = r.prompt.query_is_text = true;
    r.prompt.context_text = "Star attention splits the context into blocks. ";
    r.prompt.query_text = "What does it split?";
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
  const RequestSpec r = request(10);
  RequestSpec g;
  g.prompt.context.push_back(engine.config().bos_token_id);
  for (int32_t t : engine.tokenizer().encode(r.prompt.context_text)) g.prompt.context.push_back(t);
  g.prompt.query = engine.tokenizer().encode(r.prompt.query_text);
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
    const RequestStats c = client.generate(r, [&](const TokenEvent& ev) {
      got.insert(got.end(), ev.tokens.begin(), ev.tokens.end());
      return true;
    });
    EXPECT_EQ(got, expected);
    EXPECT_EQ(c.finish_reason, "length");
    EXPECT_EQ(c.generated, 10);
    EXPECT_EQ(c.prompt_tokens(), static_cast<int64_t>(g.prompt.context.size() + g.prompt.query.size()));
  }
}

// Context reuse needs nothing from a framed-TCP client (issue 15): with the server's block cache
// on, asking about the same document again takes its blocks from the cache (the metric counts
// the hits) and gives the same answer as the cold first time.
TEST_F(TcpServerTest, AskingAboutTheSameDocumentAgainReusesItsBlocks) {
  server_->stop();
  EngineServiceOptions so;
  so.engine.model = dir_.path();
  so.engine.threads = 1;
  so.max_context_tokens = 256;
  so.engine.context_cache_bytes = int64_t{64} << 20;
  service_ = std::make_unique<EngineService>(so);
  server_ = std::make_unique<TcpServer>(io_, *service_, metrics_, TcpServerOptions{});
  EXPECT_EQ(metric("starattn_context_cache_hits_total{"), "starattn_context_cache_hits_total{worker=\"engine0\"} 0");
  Client client("127.0.0.1", server_->port());
  std::vector<std::vector<int32_t>> answers;
  for (int round = 0; round < 2; ++round) {
    std::vector<int32_t> got;
    const RequestStats c = client.generate(request(8), [&](const TokenEvent& ev) {
      got.insert(got.end(), ev.tokens.begin(), ev.tokens.end());
      return true;
    });
    EXPECT_EQ(c.generated, 8);
    answers.push_back(got);
  }
  EXPECT_EQ(answers[1], answers[0]);
  EXPECT_EQ(metric("starattn_context_cache_misses_total{"), "starattn_context_cache_misses_total{worker=\"engine0\"} 1");
  EXPECT_EQ(metric("starattn_context_cache_hits_total{"), "starattn_context_cache_hits_total{worker=\"engine0\"} 1");
}

TEST_F(TcpServerTest, CancelStopsTheRequestAndFreesItsKv) {
  Client client("127.0.0.1", server_->port());
  int seen = 0;
  const RequestStats c = client.generate(request(kLong), [&](const TokenEvent& ev) {
    seen += static_cast<int>(ev.tokens.size());
    if (seen >= 3) {
      // While the request runs, its KV is held.
      EXPECT_GT(service_->load().at(0).kv_tokens, 0);
      return false;
    }
    return true;
  });
  EXPECT_EQ(c.finish_reason, "cancelled");
  EXPECT_LT(c.generated, kLong);
  EXPECT_EQ(service_->load().at(0).kv_tokens, 0);
  // The connection still works.
  const RequestStats again = client.generate(request(2), nullptr);
  EXPECT_EQ(again.generated, 2);
}

TEST_F(TcpServerTest, HangingUpCancelsTheRequest) {
  {
    Client client("127.0.0.1", server_->port());
    struct HangUp {};
    int seen = 0;
    try {
      client.generate(request(kLong), [&](const TokenEvent&) {
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
  RequestSpec big = request(1);
  big.prompt.context_text = std::string(1000, 'x');
  try {
    client.generate(big, nullptr);
    FAIL() << "expected a capacity error";
  } catch (const ServerError& e) {
    EXPECT_EQ(e.code, "capacity");
    EXPECT_NE(std::string(e.what()).find("256"), std::string::npos) << e.what();
  }
  RequestSpec bad = request(1);
  bad.block_size = 4;
  bad.anchor_size = 8;  // anchor larger than the block: the engine refuses it
  EXPECT_THROW(client.generate(bad, nullptr), ServerError);
  EXPECT_EQ(client.generate(request(1), nullptr).generated, 1);  // still serving
}

TEST(EngineServiceQueue, RefusesBeyondTheQueueLimitAndCancelsQueuedRequests) {
  testing::TempDir dir;
  write_random_model(testing::test_config(), 5, dir.path());
  EngineServiceOptions so;
  so.engine.model = dir.path();
  so.engine.threads = 1;
  so.max_batch = 1;  // one running request: the next one queues
  so.max_queue = 1;
  EngineService service(so);
  RequestSpec long_one;
  long_one.prompt.context_is_text = long_one.prompt.query_is_text = true;
  long_one.prompt.context_text = "context";
  long_one.prompt.query_text = "q";
  long_one.max_tokens = 4000;  // within the model's 4096 positions; cancelled long before
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
    cb.on_done = [&, name](const RequestStats& c) {
      std::lock_guard<std::mutex> lock(m);
      finished.push_back(name + " done:" + c.finish_reason);
      cv.notify_all();
    };
    cb.on_error = [&, name](const Error& e) {
      std::lock_guard<std::mutex> lock(m);
      finished.push_back(name + " error:" + error_kind_name(e.kind()));
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
  EXPECT_EQ(fresh.generate(request(1), nullptr).generated, 1);
}

TEST_F(TcpServerTest, EveryRequestGetsAnAccessLogLine) {
  Client client("127.0.0.1", server_->port());
  ::testing::internal::CaptureStderr();
  const RequestStats c = client.generate(request(3), nullptr);
  RequestSpec big = request(1);
  big.prompt.context_text = std::string(1000, 'x');  // over the service's 256 tokens
  EXPECT_THROW(client.generate(big, nullptr), ServerError);
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(log, ::testing::ContainsRegex("Z info  access id=tcp-[0-9]+ client=127\\.0\\.0\\.1:[0-9]+ endpoint=tcp "
                                            "status=ok tokens_in=" + std::to_string(c.prompt_tokens()) +
                                            " tokens_out=3 ttft_ms=[0-9.]+ total_ms=[0-9.]+\n"));
  EXPECT_THAT(log, ::testing::ContainsRegex("endpoint=tcp status=capacity tokens_in=0 tokens_out=0 ttft_ms=- "));
}

std::string random_key() {
  std::random_device rd;
  std::mt19937_64 rng(rd());
  std::string key;
  for (int i = 0; i < 24; ++i) key += "abcdefghijklmnopqrstuvwxyz0123456789"[rng() % 36];
  return key;
}

TEST_F(TcpServerTest, AnApiKeyIsRequiredFirstWhenConfigured) {
  TcpServerOptions o;
  o.api_key = random_key();
  restart(o);
  auto expect_refused = [&](const std::string& key) {
    Client client("127.0.0.1", server_->port(), std::chrono::seconds(10), key);
    try {
      client.generate(request(1), nullptr);
      ADD_FAILURE() << "a request with key '" << key << "' was answered";
    } catch (const ServerError& e) {
      EXPECT_EQ(e.code, "invalid_api_key");
      EXPECT_THAT(e.what(), ::testing::HasSubstr(key.empty() ? "Auth frame first" : "wrong API key"));
    }
  };
  expect_refused("");
  expect_refused(o.api_key.substr(1) + "x");
  expect_refused(o.api_key + "x");
  Client good("127.0.0.1", server_->port(), std::chrono::seconds(10), o.api_key);
  EXPECT_EQ(good.generate(request(2), nullptr).generated, 2);
  EXPECT_EQ(good.generate(request(1), nullptr).generated, 1);  // once per connection
  EXPECT_EQ(metric("starattn_requests_total{endpoint=\"tcp\",status=\"invalid_api_key\"}"),
            "starattn_requests_total{endpoint=\"tcp\",status=\"invalid_api_key\"} 3");
}

TEST_F(TcpServerTest, ConnectionsBeyondTheCapAreRefusedAndIdleOnesClosed) {
  TcpServerOptions o;
  o.limits.max_per_peer = 3;
  o.limits.idle_timeout = std::chrono::milliseconds(400);
  restart(o);
  std::vector<std::unique_ptr<Client>> held;
  for (int i = 0; i < 3; ++i) {
    held.push_back(std::make_unique<Client>("127.0.0.1", server_->port()));
    EXPECT_EQ(held.back()->generate(request(1), nullptr).generated, 1);  // admitted
  }
  try {
    // The kernel completes the handshake and the acceptor resets the connection: the reset may
    // reach the client while it connects or when it sends the request; both are the refusal.
    Client extra("127.0.0.1", server_->port());
    extra.generate(request(1), nullptr);
    ADD_FAILURE() << "the fourth connection from one address was served";
  } catch (const ServerError& e) {
    ADD_FAILURE() << "refused with a frame instead of a reset: " << e.what();
  } catch (const std::runtime_error&) {
  }
  EXPECT_EQ(metric("starattn_connections_refused_total{port=\"tcp\",reason=\"max_per_peer\"}"),
            "starattn_connections_refused_total{port=\"tcp\",reason=\"max_per_peer\"} 1");
  // Silent past the idle timeout, the held connections are closed and their places freed.
  const auto start = std::chrono::steady_clock::now();
  while (metric("starattn_port_connections{port=\"tcp\"}") != "starattn_port_connections{port=\"tcp\"} 0" &&
         std::chrono::steady_clock::now() - start < std::chrono::seconds(10))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(metric("starattn_port_connections{port=\"tcp\"}"), "starattn_port_connections{port=\"tcp\"} 0");
  EXPECT_LT(waited, 3.0);
  for (auto& c : held) EXPECT_THROW(c->generate(request(1), nullptr), std::runtime_error);
  Client fresh("127.0.0.1", server_->port());
  EXPECT_EQ(fresh.generate(request(1), nullptr).generated, 1);
}

TEST_F(TcpServerTest, ARelayInFrontKeepsTheAnswerAndEnforcesItsLimits) {
  ConnectionLimits limits;
  limits.max_connections = 2;
  limits.idle_timeout = std::chrono::milliseconds(400);
  PortRelay relay("worker", "127.0.0.1", 0, limits, &metrics_);
  relay.start("127.0.0.1", server_->port());
  Client direct("127.0.0.1", server_->port());
  std::vector<int32_t> want, got;
  direct.generate(request(6), [&](const TokenEvent& ev) {
    want.insert(want.end(), ev.tokens.begin(), ev.tokens.end());
    return true;
  });
  Client a("127.0.0.1", relay.port()), b("127.0.0.1", relay.port()), c("127.0.0.1", relay.port());
  a.generate(request(6), [&](const TokenEvent& ev) {
    got.insert(got.end(), ev.tokens.begin(), ev.tokens.end());
    return true;
  });
  EXPECT_EQ(got, want);
  EXPECT_EQ(b.generate(request(1), nullptr).generated, 1);
  EXPECT_THROW(c.generate(request(1), nullptr), std::runtime_error);  // the third is over the cap
  EXPECT_EQ(metric("starattn_connections_refused_total{port=\"worker\",reason=\"max_connections\"}"),
            "starattn_connections_refused_total{port=\"worker\",reason=\"max_connections\"} 1");
  // Both directions silent: the relay closes the tunnel (the server sees the hang-up too).
  const auto start = std::chrono::steady_clock::now();
  while (relay.open_connections() > 0 && std::chrono::steady_clock::now() - start < std::chrono::seconds(10))
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(relay.open_connections(), 0u);
  EXPECT_THROW(a.generate(request(1), nullptr), std::runtime_error);
  Client again("127.0.0.1", relay.port());
  EXPECT_EQ(again.generate(request(1), nullptr).generated, 1);
}

}  // namespace
}  // namespace starattn::server
