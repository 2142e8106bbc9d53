// The HTTP front end: stop strings, serve-local's prompt layout, a randomized fuzzing run of the
// request parsers (JSON and raw HTTP), and the server end to end over loopback against the
// Engine's answer. The OpenAI JSON mapping has its own suite (test_openai_api.cpp).
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <random>
#include <thread>

#include "runtime/engine.h"
#include "runtime/random_model.h"
#include "server/engine_service.h"
#include "server/http_api.h"
#include "server/http_server.h"
#include "tests/support/smollm2.h"
#include "tests/support/test_models.h"

namespace starattn::server {
namespace {

using json = nlohmann::json;

// The OpenAI JSON mapping (request fields, response shapes) is tested in test_openai_api.cpp.

TEST(StopMatcher, HoldsBackPrefixesAndCutsAtTheStop) {
  StopMatcher m({"END", "xy"});
  EXPECT_EQ(m.push("hello E"), "hello ");
  EXPECT_EQ(m.push("N"), "");
  EXPECT_EQ(m.push("x"), "EN");  // "ENx" can no longer be "END", but "x" may start "xy"
  EXPECT_EQ(m.push("yz"), "");   // "xy" matched: nothing more comes out
  EXPECT_TRUE(m.stopped());
  StopMatcher m2({"END"});
  EXPECT_EQ(m2.push("abE"), "ab");
  EXPECT_EQ(m2.push("ND tail"), "");
  EXPECT_TRUE(m2.stopped());
  StopMatcher m3({"zz"});
  EXPECT_EQ(m3.push("az"), "a");
  EXPECT_EQ(m3.flush(), "z");
}

// Randomized inputs (deterministic seed): mutated valid bodies and random bytes must either parse
// or be refused with ApiError 400, never crash or throw anything else. The raw HTTP parser gets
// the same treatment with mutated request heads.
TEST(HttpApiFuzz, RequestParsersSurviveRandomInputs) {
  std::mt19937_64 rng(20240607);
  const std::vector<std::string> seeds{
      R"({"model":"m","prompt":"ctx","query":"q","max_tokens":5,"stop":["a"],"stream":true})",
      R"({"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":[{"type":"text","text":"x"}]}],"top_k":2})",
      R"({"prompt":["p"],"query":"\u00e9\ud83d\ude00","seed":18446744073709551615,"temperature":1e308})",
  };
  static const char kAlphabet[] = "{}[]\":,0123456789-+.eE truefalsn\\u\x00\xff\xc3\xa9" "abc";
  const std::string alphabet(kAlphabet, sizeof kAlphabet - 1);  // keeps the NUL byte
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  int runs = 0;
  while (std::chrono::steady_clock::now() < deadline || runs < 2000) {
    std::string body = seeds[rng() % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits && !body.empty(); ++e) {
      const size_t pos = rng() % body.size();
      switch (rng() % 4) {
        case 0: body[pos] = alphabet[rng() % alphabet.size()]; break;
        case 1: body.insert(pos, 1, alphabet[rng() % alphabet.size()]); break;
        case 2: body.erase(pos, 1 + rng() % 4); break;
        default: body.resize(pos); break;
      }
    }
    for (Endpoint ep : {Endpoint::completions, Endpoint::chat_completions}) {
      try {
        parse_api_request(ep, body);
      } catch (const ApiError& err) {
        ASSERT_EQ(err.status, 400) << body;
        ASSERT_NO_THROW(json::parse(error_json(err)));
      } catch (const std::exception& other) {
        FAIL() << "unexpected exception " << other.what() << " for " << body;
      }
    }
    // The HTTP parser on a mutated request head plus body.
    std::string raw = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " +
                      std::to_string(body.size()) + "\r\n\r\n" + body;
    for (int e = 0; e < 3; ++e) raw[rng() % raw.size()] = static_cast<char>(rng() & 0xff);
    boost::beast::http::request_parser<boost::beast::http::string_body> parser;
    parser.body_limit(1 << 20);
    boost::beast::error_code ec;
    parser.put(boost::asio::buffer(raw), ec);
    ++runs;
  }
  EXPECT_GT(runs, 1000);
}

// ---- the server over loopback ----

struct HttpReply {
  int status = 0;
  std::string head, body;
};

// A tiny blocking HTTP/1.1 client with Connection: close (the body ends at EOF; chunked
// framing is undone by the caller when needed).
HttpReply http_request(uint16_t port, const std::string& method, const std::string& path,
                       const std::string& body, const std::string& extra_headers = "") {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    throw std::runtime_error("connect failed");
  }
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" +
                    extra_headers + "Content-Type: application/json\r\nContent-Length: " +
                    std::to_string(body.size()) + "\r\n\r\n" + body;
  for (size_t off = 0; off < req.size();) {
    const ssize_t n = send(fd, req.data() + off, req.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  std::string all;
  char buf[4096];
  for (ssize_t n; (n = recv(fd, buf, sizeof buf, 0)) > 0;) all.append(buf, static_cast<size_t>(n));
  close(fd);
  HttpReply r;
  const size_t split = all.find("\r\n\r\n");
  if (split == std::string::npos) return r;
  r.head = all.substr(0, split);
  r.body = all.substr(split + 4);
  r.status = std::stoi(all.substr(9, 3));
  return r;
}

std::string unchunk(const std::string& body) {
  std::string out;
  size_t pos = 0;
  while (pos < body.size()) {
    const size_t eol = body.find("\r\n", pos);
    const size_t n = std::stoul(body.substr(pos, eol - pos), nullptr, 16);
    if (n == 0) break;
    out += body.substr(eol + 2, n);
    pos = eol + 2 + n + 2;
  }
  return out;
}

// serve-local lays requests out as the head's scheduler and `starattn run` do (runtime/prompt.h):
// with a chat-template model a completion's context is the template's system and user turn
// around the document, not the raw text; a chat's context is every turn before the last user one.
TEST(EngineServiceLayout, CompletionsAndChatsUseThePromptLayoutsOfTheHead) {
  const std::string model = testing::smollm2_gguf_path();
  ASSERT_FALSE(model.empty()) << testing::smollm2_missing_message();
  EngineServiceOptions so;
  so.engine.model = model;
  EngineService service(so);
  EngineOptions eo;
  eo.model = model;
  Engine engine(eo);
  const auto sizes_of = [&](RequestSpec r) {
    r.max_tokens = 1;
    auto done = std::make_shared<std::promise<RequestStats>>();
    StreamCallbacks cb;
    cb.on_token = [](const TokenEvent&) { return true; };
    cb.on_done = [done](const RequestStats& c) { done->set_value(c); };
    cb.on_error = [done](const Error& e) {
      done->set_exception(std::make_exception_ptr(std::runtime_error(e.what())));
    };
    service.submit(std::move(r), cb);
    const RequestStats c = done->get_future().get();
    return std::make_pair(c.context_tokens, c.prompt_tokens() - c.context_tokens);
  };

  RequestSpec completion;
  completion.prompt.context_is_text = completion.prompt.query_is_text = true;
  completion.prompt.context_text = "The keeper of the north light is Marguerite.";
  completion.prompt.query_text = "Who keeps the north light?";
  const PromptIds doc = engine.document_prompt(completion.prompt.context_text, completion.prompt.query_text);
  const auto got = sizes_of(completion);
  EXPECT_EQ(got.first, static_cast<int64_t>(doc.context.size()));
  EXPECT_EQ(got.second, static_cast<int64_t>(doc.query.size()));
  // The raw text would be far shorter than the template's turns around it.
  EXPECT_GT(got.first, static_cast<int64_t>(engine.tokenizer().encode(completion.prompt.context_text).size()) + 10);

  RequestSpec chat;
  chat.prompt.chat = true;
  chat.prompt.messages = {{"system", "Answer briefly."}, {"user", completion.prompt.context_text}, {"assistant", "Noted."},
                   {"user", completion.prompt.query_text}};
  const PromptIds turns = chat_prompt(engine.tokenizer(), *engine.chat_template(), chat.prompt.messages);
  const auto got_chat = sizes_of(chat);
  EXPECT_EQ(got_chat.first, static_cast<int64_t>(turns.context.size()));
  EXPECT_EQ(got_chat.second, static_cast<int64_t>(turns.query.size()));
}

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    write_random_model(testing::test_config(), 99, dir_.path());
    EngineServiceOptions so;
    so.engine.model = dir_.path();
    so.engine.threads = 1;
    so.max_context_tokens = 512;
    so.engine.context_cache_bytes = int64_t{64} << 20;  // context reuse on, as serve-local has it
    service_ = std::make_unique<EngineService>(so);
    HttpServerOptions ho;
    ho.bearer_token = "sekret";
    server_ = std::make_unique<HttpServer>(io_, *service_, metrics_, ho);
    for (int i = 0; i < 2; ++i) threads_.emplace_back([this] { io_.run(); });
  }
  void TearDown() override {
    server_->stop();
    work_.reset();
    io_.stop();
    for (auto& t : threads_) t.join();
    service_.reset();  // before the io_context its callbacks post to
  }
  // The Engine's own answer for the same text, greedy.
  std::string reference(const std::string& context, const std::string& query, int max_tokens) {
    EngineOptions o;
    o.model = dir_.path();
    o.threads = 1;
    Engine engine(o);
    const PromptIds p = engine.document_prompt(context, query);
    RequestSpec g;
    g.prompt.context = p.context;
    g.prompt.query = p.query;
    g.max_tokens = max_tokens;
    g.ignore_eos = true;
    StreamDecoder dec(engine.tokenizer());
    std::string text;
    engine.generate(g, [&](int32_t id, const float*) {
      text += dec.push(id);
      return true;
    });
    return text + dec.flush();
  }
  const std::string auth_ = "Authorization: Bearer sekret\r\n";
  testing::TempDir dir_;
  std::unique_ptr<EngineService> service_;
  Metrics metrics_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_ =
      boost::asio::make_work_guard(io_);
  std::unique_ptr<HttpServer> server_;
  std::vector<std::thread> threads_;
};

TEST_F(HttpServerTest, AnswersLikeTheEngineStreamedAndWhole) {
  const uint16_t port = server_->port();
  const std::string context = "The quick brown fox jumps over the lazy dog. ";
  const std::string expected = reference(context, "Who jumps?", 12);
  const json req{{"prompt", context}, {"query", "Who jumps?"}, {"max_tokens", 12}, {"ignore_eos", true}};

  const HttpReply whole = http_request(port, "POST", "/v1/completions", req.dump(), auth_);
  ASSERT_EQ(whole.status, 200) << whole.body;
  const json j = json::parse(whole.body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["usage"]["completion_tokens"], 12);
  const std::string got_whole = j["choices"][0]["text"];
  // The JSON text is the engine's bytes with invalid UTF-8 replaced; compare through json.
  EXPECT_EQ(got_whole, json::parse(json(expected).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>());

  json sreq = req;
  sreq["stream"] = true;
  const HttpReply streamed = http_request(port, "POST", "/v1/completions", sreq.dump(), auth_);
  ASSERT_EQ(streamed.status, 200);
  EXPECT_NE(streamed.head.find("text/event-stream"), std::string::npos);
  const std::string events = unchunk(streamed.body);
  std::string text;
  size_t pos = 0;
  bool done = false;
  while ((pos = events.find("data: ", pos)) != std::string::npos) {
    const size_t end = events.find("\n\n", pos);
    const std::string data = events.substr(pos + 6, end - pos - 6);
    pos = end;
    if (data == "[DONE]") {
      done = true;
      break;
    }
    text += json::parse(data)["choices"][0]["text"].get<std::string>();
  }
  EXPECT_TRUE(done);
  EXPECT_EQ(text, got_whole);
}

TEST_F(HttpServerTest, StopStringsEndTheAnswerBeforeTheMatch) {
  const std::string context = "Stop strings are checked on the decoded text. ";
  const std::string expected = reference(context, "Go.", 32);
  // A printable two-byte stop string whose first occurrence is past the start of the answer.
  size_t cut = std::string::npos;
  for (size_t p = 2; p + 1 < expected.size() && cut == std::string::npos; ++p) {
    const auto printable = [](char c) { return c >= 0x20 && c < 0x7f; };
    if (printable(expected[p]) && printable(expected[p + 1]) && expected.find(expected.substr(p, 2)) == p) cut = p;
  }
  if (cut == std::string::npos) GTEST_SKIP() << "no usable stop string in this model's answer";
  const json req{{"prompt", context}, {"query", "Go."}, {"max_tokens", 32}, {"ignore_eos", true},
                 {"stop", {"\x01never", expected.substr(cut, 2)}}};
  const HttpReply r = http_request(server_->port(), "POST", "/v1/completions", req.dump(), auth_);
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = json::parse(r.body);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  const std::string want = expected.substr(0, cut);
  EXPECT_EQ(j["choices"][0]["text"].get<std::string>(),
            json::parse(json(want).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>());
}

TEST_F(HttpServerTest, ErrorsAreJsonAndTheServerKeepsServing) {
  const uint16_t port = server_->port();
  EXPECT_EQ(http_request(port, "GET", "/health", "").status, 200);  // no token needed
  EXPECT_EQ(http_request(port, "GET", "/metrics", "").status, 401);
  const HttpReply bad = http_request(port, "POST", "/v1/completions", "{oops", auth_);
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(json::parse(bad.body)["error"]["type"], "invalid_request_error");
  EXPECT_EQ(http_request(port, "POST", "/v1/nothing", "{}", auth_).status, 404);
  EXPECT_EQ(http_request(port, "GET", "/v1/completions", "", auth_).status, 405);
  const json big{{"prompt", std::string(2000, 'a')}, {"query", "q"}};
  const HttpReply cap = http_request(port, "POST", "/v1/completions", big.dump(), auth_);
  EXPECT_EQ(cap.status, 400);
  EXPECT_EQ(json::parse(cap.body)["error"]["code"], "context_length_exceeded");
  const HttpReply m = http_request(port, "GET", "/metrics", "", auth_);
  EXPECT_EQ(m.status, 200);
  EXPECT_NE(m.body.find("starattn_requests_total{endpoint=\"/v1/completions\",status=\"400\"} 2"), std::string::npos)
      << m.body;
  EXPECT_NE(m.body.find("starattn_kv_tokens_held{worker=\"engine0\"} 0"), std::string::npos);
}

}  // namespace
}  // namespace starattn::server

namespace starattn::server {
namespace {

// The value of `name{worker="engine0"}` in a /metrics page; -1 when absent.
double metric(const std::string& page, const std::string& name) {
  const std::string key = name + "{worker=\"engine0\"} ";
  const size_t at = page.find(key);
  return at == std::string::npos ? -1 : std::stod(page.substr(at + key.size()));
}

TEST_F(HttpServerTest, ContextsArePinnedNamedAndReleased) {
  const uint16_t port = server_->port();
  const std::string doc = "Ada wrote the first program for the Analytical Engine in 1843. ";
  const HttpReply made = http_request(port, "POST", "/v1/contexts", json{{"document", doc}}.dump(), auth_);
  ASSERT_EQ(made.status, 200) << made.body;
  const std::string id = json::parse(made.body)["id"];
  EXPECT_EQ(id.rfind("ctx-", 0), 0u) << id;

  // Two questions naming it: each answer equals a cold engine's for the same document.
  for (const std::string q : {"Who wrote it?", "When?"}) {
    const json req{{"context_id", id}, {"prompt", q}, {"max_tokens", 8}, {"ignore_eos", true}};
    const HttpReply r = http_request(port, "POST", "/v1/completions", req.dump(), auth_);
    ASSERT_EQ(r.status, 200) << r.body;
    const std::string expected = reference(doc, q, 8);
    EXPECT_EQ(json::parse(r.body)["choices"][0]["text"].get<std::string>(),
              json::parse(json(expected).dump(-1, ' ', false, json::error_handler_t::replace)).get<std::string>())
        << q;
  }
  const json chat{{"context_id", id}, {"messages", json::array({{{"role", "user"}, {"content", "Who?"}}})},
                  {"max_tokens", 4}};
  EXPECT_EQ(http_request(port, "POST", "/v1/chat/completions", chat.dump(), auth_).status, 200);

  std::string page = http_request(port, "GET", "/metrics", "", auth_).body;
  // The pin request missed (one block), the three questions hit it.
  EXPECT_EQ(metric(page, "starattn_context_cache_misses_total"), 1) << page;
  EXPECT_EQ(metric(page, "starattn_context_cache_hits_total"), 3) << page;
  EXPECT_EQ(metric(page, "starattn_context_cache_pinned_blocks"), 1) << page;
  EXPECT_GT(metric(page, "starattn_context_cache_bytes"), 0) << page;

  const HttpReply gone = http_request(port, "DELETE", "/v1/contexts/" + id, "", auth_);
  ASSERT_EQ(gone.status, 200) << gone.body;
  EXPECT_EQ(json::parse(gone.body)["deleted"], true);
  page = http_request(port, "GET", "/metrics", "", auth_).body;
  EXPECT_EQ(metric(page, "starattn_context_cache_pinned_blocks"), 0) << page;
  EXPECT_EQ(http_request(port, "DELETE", "/v1/contexts/" + id, "", auth_).status, 404);
  const json late{{"context_id", id}, {"prompt", "Who?"}, {"max_tokens", 2}};
  EXPECT_EQ(http_request(port, "POST", "/v1/completions", late.dump(), auth_).status, 404);
  // Bad bodies are clear 400s and the server keeps serving.
  EXPECT_EQ(http_request(port, "POST", "/v1/contexts", "{}", auth_).status, 400);
  EXPECT_EQ(http_request(port, "POST", "/v1/contexts", json{{"document", 3}}.dump(), auth_).status, 400);
  EXPECT_EQ(http_request(port, "GET", "/v1/contexts", "", auth_).status, 405);
  const json both{{"context_id", "x"}, {"prompt", "a"}, {"query", "b"}};
  EXPECT_EQ(http_request(port, "POST", "/v1/completions", both.dump(), auth_).status, 400);
}

}  // namespace
}  // namespace starattn::server
