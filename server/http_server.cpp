#include "server/http_server.h"

#include <array>
#include <atomic>
#include <ctime>
#include <deque>
#include <optional>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "server/http_api.h"
#include "server/listener.h"

namespace starattn::server {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

struct Shared {
  Shared(GenerationService& s, Metrics& m, HttpServerOptions o)
      : service(s), metrics(m), options(std::move(o)) {}
  GenerationService& service;
  Metrics& metrics;
  HttpServerOptions options;
  std::atomic<uint64_t> next_id{1};
};

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Compares without an early exit, so response time says nothing about how much of a guessed
// token was right.
bool same_secret(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

std::string to_hex(size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  do {
    out.insert(out.begin(), digits[n % 16]);
    n /= 16;
  } while (n);
  return out;
}

// One client connection. Requests are read one at a time; while one is answered a one-byte read
// watches the socket so a client that hangs up cancels its generation at once, even during a
// long prefill when nothing is being written.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, std::shared_ptr<Shared> shared)
      : stream_(std::move(socket)), strand_(stream_.get_executor()), timer_(strand_),
        shared_(std::move(shared)) {
    shared_->metrics.connection_opened();
  }
  ~Session() { shared_->metrics.connection_closed(); }

  void start() {
    net::dispatch(strand_, [self = shared_from_this()] { self->read_header(); });
  }

 private:
  enum class Phase { reading, working, draining, closed };

  // ---- reading a request ----
  void arm_timer(std::chrono::milliseconds limit) {
    timed_out_ = false;
    timer_.expires_after(limit);
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec) return;  // cancelled: the read finished in time
      self->timed_out_ = true;
      beast::error_code ignored;
      self->stream_.socket().cancel(ignored);
    });
  }

  void read_header() {
    phase_ = Phase::reading;
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(shared_->options.max_header_bytes));
    parser_->body_limit(shared_->options.max_body_bytes);
    stream_.expires_never();  // reads use our own timer: on timeout we still want to answer 408
    arm_timer(shared_->options.header_timeout);
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, size_t) {
                              self->timer_.cancel();
                              if (ec) return self->on_read_error(ec);
                              self->read_body();
                            });
  }

  void read_body() {
    if (parser_->is_done()) return on_request();
    arm_timer(shared_->options.body_timeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) {
                       self->timer_.cancel();
                       if (ec) return self->on_read_error(ec);
                       self->on_request();
                     });
  }

  void on_read_error(beast::error_code ec) {
    keep_alive_ = false;
    linger_ = true;  // the client may still be sending: read it away so it sees our answer
    if (timed_out_) {
      // An idle keep-alive connection just closes; a client that started a request and
      // stalled is told why.
      if (!parser_->got_some()) return close();
      return send_error(ApiError(408, "invalid_request_error", "", "request_timeout",
                                 "the request was not received in time (headers " +
                                     std::to_string(shared_->options.header_timeout.count()) +
                                     " ms, body " + std::to_string(shared_->options.body_timeout.count()) +
                                     " ms)"),
                        "other");
    }
    if (ec == http::error::end_of_stream || ec == net::error::eof ||
        ec == net::error::connection_reset || ec == net::error::operation_aborted)
      return close();
    if (ec == http::error::body_limit)
      return send_error(ApiError(413, "invalid_request_error", "", "request_too_large",
                                 "the request body is larger than the limit of " +
                                     std::to_string(shared_->options.max_body_bytes) + " bytes"),
                        "other");
    if (ec == http::error::header_limit)
      return send_error(ApiError(431, "invalid_request_error", "", "headers_too_large",
                                 "the request headers are larger than the limit of " +
                                     std::to_string(shared_->options.max_header_bytes) + " bytes"),
                        "other");
    send_error(bad_request("", "malformed HTTP request: " + ec.message()), "other");
  }

  // ---- routing ----
  void on_request() {
    http::request<http::string_body> req = parser_->release();
    keep_alive_ = req.keep_alive();
    http11_ = req.version() >= 11;
    arrived_ = Clock::now();
    const std::string target(req.target());
    const std::string path = target.substr(0, target.find('?'));
    const bool known = path == "/health" || path == "/metrics" || path == "/v1/models" ||
                       path == "/v1/completions" || path == "/v1/chat/completions";
    const std::string label = known ? path : "other";

    const std::string& token = shared_->options.bearer_token;
    if (!token.empty() && path != "/health") {
      const std::string auth(req[http::field::authorization]);
      if (auth.rfind("Bearer ", 0) != 0 || !same_secret(auth.substr(7), token))
        return send_error(ApiError(401, "invalid_request_error", "", "invalid_api_key",
                                   "missing or wrong bearer token (Authorization: Bearer ...)"),
                          label, "WWW-Authenticate: Bearer\r\n");
    }
    const bool get = req.method() == http::verb::get;
    const bool post = req.method() == http::verb::post;
    if (!known)
      return send_error(ApiError(404, "invalid_request_error", "", "not_found", "no such endpoint: " + path), label);
    if (path == "/v1/completions" || path == "/v1/chat/completions") {
      if (!post)
        return send_error(ApiError(405, "invalid_request_error", "", "method_not_allowed", path + " takes POST"),
                          label, "Allow: POST\r\n");
      const Endpoint endpoint = path == "/v1/completions" ? Endpoint::completions : Endpoint::chat_completions;
      try {
        start_generation(endpoint, label, parse_api_request(endpoint, req.body()));
      } catch (const ApiError& e) {
        send_error(e, label);
      }
      return;
    }
    if (!get)
      return send_error(ApiError(405, "invalid_request_error", "", "method_not_allowed", path + " takes GET"),
                        label, "Allow: GET\r\n");
    const ServiceInfo info = shared_->service.info();
    if (path == "/metrics") {
      shared_->metrics.count_request(label, "200");
      return send_whole(200, "text/plain; version=0.0.4", shared_->metrics.render(shared_->service));
    }
    nlohmann::json body;
    if (path == "/health") {
      body = {{"status", "ok"}, {"model", info.model}, {"queued", shared_->service.queued()}};
    } else {
      body = {{"object", "list"},
              {"data", nlohmann::json::array({{{"id", info.model}, {"object", "model"}, {"created", 0},
                                               {"owned_by", "starattn"}}})}};
    }
    shared_->metrics.count_request(label, "200");
    send_whole(200, "application/json", body.dump());
  }

  // ---- generation ----
  void start_generation(Endpoint endpoint, const std::string& label, ApiRequest api) {
    phase_ = Phase::working;
    endpoint_ = endpoint;
    label_ = label;
    stream_mode_ = api.stream;
    include_usage_ = api.include_usage;
    headers_sent_ = got_token_ = false;
    text_.clear();
    meta_.id = std::string(endpoint == Endpoint::completions ? "cmpl-" : "chatcmpl-") +
               to_hex(shared_->next_id++);
    meta_.model = api.model.empty() ? shared_->service.info().model : api.model;
    meta_.created = static_cast<long long>(std::time(nullptr));
    gone_flag_ = std::make_shared<std::atomic<bool>>(false);
    shared_->metrics.stream_started();

    StreamCallbacks cb;
    auto self = shared_from_this();
    auto gone = gone_flag_;
    cb.on_token = [self, gone](const TokenEvent& ev) {
      if (*gone) return false;
      net::post(self->strand_, [self, ev] { self->on_token(ev); });
      return true;
    };
    cb.on_done = [self](const Completion& c) { net::post(self->strand_, [self, c] { self->on_done(c); }); };
    cb.on_error = [self](const ServiceError& e) { net::post(self->strand_, [self, e] { self->on_error(e); }); };
    watch_for_hangup();
    handle_ = shared_->service.submit(std::move(api.request), std::move(cb));
  }

  void on_token(const TokenEvent& ev) {
    if (phase_ != Phase::working || gone_) return;
    if (!ev.tokens.empty()) {
      const auto now = Clock::now();
      if (!got_token_) shared_->metrics.observe_time_to_first_token(seconds_between(arrived_, now));
      else shared_->metrics.observe_inter_token_latency(seconds_between(last_token_, now));
      got_token_ = true;
      last_token_ = now;
      shared_->metrics.count_tokens(static_cast<int64_t>(ev.tokens.size()));
    }
    if (!stream_mode_) {
      text_ += ev.text;
      return;
    }
    send_stream_headers();
    if (!ev.text.empty()) send_event(chunk_json(endpoint_, meta_, ev.text, ""));
  }

  void on_done(const Completion& c) {
    handle_.reset();
    shared_->metrics.stream_ended();
    if (gone_) {
      shared_->metrics.count_request(label_, "499");  // the client closed the connection
      return finish();
    }
    shared_->metrics.count_request(label_, "200");
    if (!stream_mode_) {
      phase_ = Phase::draining;
      return send_whole(200, "application/json", completion_json(endpoint_, meta_, text_, c));
    }
    send_stream_headers();
    send_event(chunk_json(endpoint_, meta_, "", c.finish_reason.empty() ? "stop" : c.finish_reason));
    if (include_usage_) send_event(usage_chunk_json(endpoint_, meta_, c));
    end_stream();
  }

  void on_error(const ServiceError& e) {
    handle_.reset();
    shared_->metrics.stream_ended();
    const ApiError api = service_error_to_api(e);
    if (gone_) {
      shared_->metrics.count_request(label_, "499");
      return finish();
    }
    if (!headers_sent_) return send_error(api, label_);
    // The status line is gone already: report the error as an event, as OpenAI does.
    shared_->metrics.count_request(label_, std::to_string(api.status));
    shared_->metrics.count_error(api.code.empty() ? api.type : api.code);
    send_event(error_json(api));
    end_stream();
  }

  void send_stream_headers() {
    if (headers_sent_) return;
    headers_sent_ = true;
    if (!http11_) keep_alive_ = false;  // HTTP/1.0 has no chunked encoding: the end is the close
    std::string h = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n";
    h += http11_ ? "Transfer-Encoding: chunked\r\n" : "";
    h += keep_alive_ ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
    enqueue(std::move(h));
    if (endpoint_ == Endpoint::chat_completions) send_event(chat_role_chunk_json(meta_));
  }

  void send_event(const std::string& json) { send_body_part("data: " + json + "\n\n"); }

  void send_body_part(const std::string& data) {
    if (!http11_) return enqueue(data);
    enqueue(to_hex(data.size()) + "\r\n" + data + "\r\n");
  }

  void end_stream() {
    send_body_part("data: [DONE]\n\n");
    if (http11_) enqueue("0\r\n\r\n");
    finish();
  }

  // ---- responses ----
  void send_whole(int status, const std::string& content_type, const std::string& body,
                  const std::string& extra_headers = "") {
    std::string r = "HTTP/1.1 " + std::to_string(status) + " " +
                    std::string(http::obsolete_reason(http::int_to_status(static_cast<unsigned>(status)))) + "\r\n";
    r += "Content-Type: " + content_type + "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
    r += extra_headers;
    r += keep_alive_ ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
    r += body;
    enqueue(std::move(r));
    finish();
  }

  void send_error(const ApiError& e, const std::string& label, const std::string& extra_headers = "") {
    shared_->metrics.count_request(label, std::to_string(e.status));
    shared_->metrics.count_error(e.code.empty() ? e.type : e.code);
    send_whole(e.status, "application/json", error_json(e), extra_headers);
  }

  // The response is complete once what is queued has been written.
  void finish() {
    phase_ = Phase::draining;
    if (!writing_ && out_.empty()) after_drain();
  }

  void enqueue(std::string data) {
    if (gone_ || phase_ == Phase::closed) return;
    out_.push_back(std::move(data));
    if (!writing_) write_next();
  }

  void write_next() {
    // Everything queued goes out in one write: tokens that arrive while a write is in flight
    // are coalesced instead of costing a system call each.
    writing_buf_.clear();
    for (auto& s : out_) writing_buf_ += s;
    out_.clear();
    writing_ = true;
    stream_.expires_after(shared_->options.write_timeout);
    net::async_write(stream_, net::buffer(writing_buf_),
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->on_write(ec); });
  }

  void on_write(beast::error_code ec) {
    writing_ = false;
    if (ec) return client_gone();
    if (!out_.empty()) return write_next();
    if (phase_ == Phase::draining) after_drain();
  }

  void after_drain() {
    if (watching_) {
      // Stop the hang-up watch first; its handler comes back here.
      beast::error_code ignored;
      stream_.socket().cancel(ignored);
      return;
    }
    if (gone_ || !keep_alive_) return close();
    read_header();
  }

  // ---- hang-ups ----
  void watch_for_hangup() {
    watching_ = true;
    stream_.socket().async_read_some(
        net::buffer(&watch_byte_, 1), [self = shared_from_this()](beast::error_code ec, size_t n) {
          self->watching_ = false;
          if (self->phase_ == Phase::working) {
            // Data here is a pipelined request: we took a byte of it, so this connection
            // cannot serve it; finish this response and close.
            if (ec) self->client_gone();
            else self->keep_alive_ = false;
          } else if (self->phase_ == Phase::draining) {
            if (!ec && n > 0) self->keep_alive_ = false;
            if (!self->writing_ && self->out_.empty()) self->after_drain();
          }
        });
  }

  void client_gone() {
    if (gone_) return;
    gone_ = true;
    keep_alive_ = false;
    if (gone_flag_) *gone_flag_ = true;
    out_.clear();
    if (handle_) handle_->cancel();  // frees the request's KV in the service
    beast::error_code ignored;
    stream_.socket().close(ignored);
    if (phase_ == Phase::draining && !writing_) close();
  }

  void close() {
    if (phase_ == Phase::closed) return;
    phase_ = Phase::closed;
    timer_.cancel();
    beast::error_code ignored;
    if (linger_ && !gone_) {
      // Closing with unread input makes the kernel send a reset, which can destroy our error
      // response before the client reads it. Stop sending, then discard input for a while.
      stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
      arm_timer(std::chrono::milliseconds(2000));
      return discard_input();
    }
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
  }

  void discard_input() {
    stream_.socket().async_read_some(net::buffer(scratch_), [self = shared_from_this()](beast::error_code ec, size_t) {
      if (!ec) return self->discard_input();
      self->timer_.cancel();
      beast::error_code ignored;
      self->stream_.socket().close(ignored);
    });
  }

  beast::tcp_stream stream_;
  net::any_io_executor strand_;
  net::steady_timer timer_;
  std::shared_ptr<Shared> shared_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  Phase phase_ = Phase::reading;
  bool timed_out_ = false;
  bool linger_ = false;
  std::array<char, 4096> scratch_{};
  bool keep_alive_ = true;
  bool http11_ = true;

  // The request being answered.
  Endpoint endpoint_ = Endpoint::completions;
  std::string label_;
  bool stream_mode_ = false, include_usage_ = false;
  ResponseMeta meta_;
  std::shared_ptr<RequestHandle> handle_;
  std::shared_ptr<std::atomic<bool>> gone_flag_;  // read by service threads
  bool gone_ = false;
  bool headers_sent_ = false;
  bool got_token_ = false;
  std::string text_;
  Clock::time_point arrived_, last_token_;

  std::deque<std::string> out_;
  std::string writing_buf_;
  bool writing_ = false;
  bool watching_ = false;
  char watch_byte_ = 0;
};

}  // namespace

struct HttpServer::Impl : std::enable_shared_from_this<Impl> {
  Impl(net::io_context& io_, std::shared_ptr<Shared> shared_)
      : io(io_), acceptor(net::make_strand(io_)), shared(std::move(shared_)) {}

  void accept() {
    acceptor.async_accept(net::make_strand(io), [self = shared_from_this()](beast::error_code ec, tcp::socket s) {
      if (ec == net::error::operation_aborted || !self->acceptor.is_open()) return;
      if (!ec) std::make_shared<Session>(std::move(s), self->shared)->start();
      self->accept();  // a failed accept (e.g. out of file descriptors) must not stop the server
    });
  }

  net::io_context& io;
  tcp::acceptor acceptor;
  std::shared_ptr<Shared> shared;
  uint16_t port = 0;
};

HttpServer::HttpServer(net::io_context& io, GenerationService& service, Metrics& metrics,
                       HttpServerOptions options) {
  auto shared = std::make_shared<Shared>(service, metrics, options);
  impl_ = std::make_shared<Impl>(io, shared);
  auto& a = impl_->acceptor;
  listen_on(a, options.host, options.port, "HTTP");
  impl_->port = a.local_endpoint().port();
  impl_->accept();
}

HttpServer::~HttpServer() { stop(); }

uint16_t HttpServer::port() const { return impl_->port; }

void HttpServer::stop() {
  net::post(impl_->acceptor.get_executor(), [impl = impl_] {
    beast::error_code ignored;
    impl->acceptor.close(ignored);
  });
}

}  // namespace starattn::server
