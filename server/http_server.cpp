#include "server/http_server.h"

#include "server/contexts.h"

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

#include "runtime/log.h"
#include "server/access_log.h"
#include "server/api_key.h"
#include "server/http_api.h"

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
  ContextRegistry contexts;  // POST/DELETE /v1/contexts (context reuse)
};

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

std::string peer_of(const tcp::socket& socket) {
  beast::error_code ec;
  const auto remote = socket.remote_endpoint(ec);
  if (ec) return "?";
  return remote.address().to_string() + ":" + std::to_string(remote.port());
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
  Session(tcp::socket socket, ConnectionSlot slot, std::shared_ptr<Shared> shared)
      : peer_(peer_of(socket)), stream_(std::move(socket)), strand_(stream_.get_executor()), timer_(strand_),
        slot_(std::move(slot)), shared_(std::move(shared)) {
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
    arrived_ = Clock::now();  // until a request arrives: errors while reading one count from here
    access_ = AccessRecord();
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(shared_->options.max_header_bytes));
    parser_->body_limit(shared_->options.max_body_bytes);
    stream_.expires_never();  // reads use our own timer: on timeout we still want to answer 408
    // The wait for headers is also the keep-alive idle time: both limits apply.
    auto limit = shared_->options.header_timeout;
    const auto idle = shared_->options.limits.idle_timeout;
    if (idle.count() > 0 && idle < limit) limit = idle;
    arm_timer(limit);
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

  // The request's line in /metrics and in the access log.
  void record(const std::string& label, const std::string& status) {
    shared_->metrics.count_request(label, status);
    access_.client = peer_;
    access_.endpoint = label;
    access_.status = status;
    access_.total_ms = ms_since(arrived_);
    log_access(access_);
  }

  // ---- routing ----
  void on_request() {
    http::request<http::string_body> req = parser_->release();
    keep_alive_ = req.keep_alive();
    http11_ = req.version() >= 11;
    arrived_ = Clock::now();
    access_ = AccessRecord();
    const std::string target(req.target());
    const std::string path = target.substr(0, target.find('?'));
    std::string model_id;
    const bool model_path = model_path_id(path, model_id);  // GET /v1/models/{id}
    std::string context_id;
    const bool context_path = context_path_id(path, context_id);  // DELETE /v1/contexts/{id}
    const bool known = path == "/health" || path == "/metrics" || path == "/v1/models" || model_path ||
                       path == "/v1/completions" || path == "/v1/chat/completions" ||
                       path == "/v1/contexts" || context_path;
    const std::string label = model_path     ? "/v1/models/{id}"
                              : context_path ? "/v1/contexts/{id}"
                              : known        ? path
                                             : "other";

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
        ApiRequest api = parse_api_request(endpoint, req.body());
        shared_->contexts.apply(api);
        check_for_service(api, shared_->service.info());
        start_generation(endpoint, label, std::move(api));
      } catch (const ApiError& e) {
        send_error(e, label);
      }
      return;
    }
    if (path == "/v1/contexts" || context_path) {
      const bool del = req.method() == http::verb::delete_;
      if (context_path ? !del : !post)
        return send_error(ApiError(405, "invalid_request_error", "", "method_not_allowed",
                                   path + (context_path ? " takes DELETE" : " takes POST")),
                          label, context_path ? "Allow: DELETE\r\n" : "Allow: POST\r\n");
      try {
        const std::string body = context_path ? shared_->contexts.remove(shared_->service, context_id)
                                              : shared_->contexts.create(shared_->service, req.body());
        record(label, "200");
        send_whole(200, "application/json", body);
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
      record(label, "200");
      return send_whole(200, "text/plain; version=0.0.4", shared_->metrics.render(shared_->service));
    }
    std::string body;
    if (path == "/health") {
      // "degraded" while some worker does not answer (it gets no new work), naming each.
      nlohmann::json unhealthy = nlohmann::json::array();
      for (const WorkerLoad& w : shared_->service.load())
        if (!w.unhealthy.empty()) unhealthy.push_back({{"worker", w.worker}, {"why", w.unhealthy}});
      nlohmann::json h{{"status", unhealthy.empty() ? "ok" : "degraded"}, {"model", info.model},
                       {"queued", shared_->service.queued()}};
      if (!unhealthy.empty()) h["unhealthy_workers"] = unhealthy;
      body = h.dump();
    } else if (model_path) {
      try {
        body = model_json(model_id, info);
      } catch (const ApiError& e) {
        return send_error(e, label);
      }
    } else {
      body = models_json(info);
    }
    record(label, "200");
    send_whole(200, "application/json", body);
  }

  // ---- generation ----
  void start_generation(Endpoint endpoint, const std::string& label, ApiRequest api) {
    phase_ = Phase::working;
    endpoint_ = endpoint;
    label_ = label;
    stream_mode_ = api.stream;
    include_usage_ = api.include_usage;
    headers_sent_ = got_token_ = false;
    failed_.reset();
    meta_.id = std::string(endpoint == Endpoint::completions ? "cmpl-" : "chatcmpl-") +
               to_hex(shared_->next_id++);
    meta_.model = api.model.empty() ? shared_->service.info().model : api.model;
    meta_.created = static_cast<long long>(std::time(nullptr));
    response_ = std::make_unique<ApiResponse>(endpoint, meta_, api.choices.size(), api.n, api.logprobs,
                                              shared_->service.info().token_bytes);
    pending_ = api.choices.size();
    access_.id = meta_.id;
    gone_flag_ = std::make_shared<std::atomic<bool>>(false);
    shared_->metrics.stream_started();

    // One service request per choice (prompts x n); the answer ends when every choice has.
    ChoiceCallbacks cb;
    auto self = shared_from_this();
    auto gone = gone_flag_;
    cb.on_token = [self, gone](size_t i, const TokenEvent& ev) {
      if (*gone) return false;
      net::post(self->strand_, [self, i, ev] { self->on_token(i, ev); });
      return true;
    };
    cb.on_done = [self](size_t i, const RequestStats& c) {
      net::post(self->strand_, [self, i, c] { self->on_choice_done(i, c); });
    };
    cb.on_error = [self](size_t i, const Error& e) {
      net::post(self->strand_, [self, e] { self->on_choice_error(service_error_to_api(e)); });
    };
    watch_for_hangup();
    handle_ = submit_choices(shared_->service, std::move(api.choices), std::move(cb));
  }

  void on_token(size_t choice, const TokenEvent& ev) {
    if (phase_ != Phase::working || gone_ || failed_) return;
    if (!ev.tokens.empty()) {
      const auto now = Clock::now();
      if (!got_token_) {
        shared_->metrics.observe_time_to_first_token(seconds_between(arrived_, now));
        access_.ttft_ms = seconds_between(arrived_, now) * 1000;
      } else {
        shared_->metrics.observe_inter_token_latency(seconds_between(last_token_, now));
      }
      access_.tokens_out += static_cast<int64_t>(ev.tokens.size());
      got_token_ = true;
      last_token_ = now;
      shared_->metrics.count_tokens(static_cast<int64_t>(ev.tokens.size()));
    }
    std::string chunk;
    try {
      chunk = response_->add(choice, ev);
    } catch (const ApiError& e) {
      return on_choice_error(e);
    }
    if (!stream_mode_) return;
    send_stream_headers();
    if (!chunk.empty()) send_event(chunk);
  }

  // A choice ended: streamed, its finish chunk goes out; the answer ends with the last choice
  // (after a failure, the others are cancelled and the first error is the answer).
  void on_choice_done(size_t choice, const RequestStats& c) {
    const std::string chunk = response_->finish(choice, c);
    if (stream_mode_ && !failed_ && !gone_ && phase_ == Phase::working) {
      send_stream_headers();
      send_event(chunk);
    }
    if (--pending_ > 0) return;
    if (failed_) return on_error(*failed_);
    on_done(response_->usage());
  }

  void on_choice_error(const ApiError& e) {
    if (!failed_) {
      failed_ = e;
      if (handle_) handle_->cancel();
    }
    if (--pending_ > 0) return;
    on_error(*failed_);
  }

  void on_done(const RequestStats& c) {
    handle_.reset();
    access_.tokens_in = c.prompt_tokens();
    access_.tokens_out = c.generated;
    shared_->metrics.stream_ended();
    if (gone_) {
      record(label_, "499");  // the client closed the connection
      return finish();
    }
    record(label_, "200");
    if (!stream_mode_) {
      phase_ = Phase::draining;
      return send_whole(200, "application/json", response_->whole_json());
    }
    send_stream_headers();
    if (include_usage_) send_event(response_->usage_chunk());
    end_stream();
  }

  void on_error(const ApiError& api) {
    handle_.reset();
    shared_->metrics.stream_ended();
    if (gone_) {
      record(label_, "499");
      return finish();
    }
    if (!headers_sent_) return send_error(api, label_);
    // The status line is gone already: report the error as an event, as OpenAI does.
    record(label_, std::to_string(api.status));
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
    for (const std::string& role_chunk : response_->stream_start()) send_event(role_chunk);
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
    record(label, std::to_string(e.status));
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
            // The client's next request began while this response drained: the byte is its
            // first, so it goes after whatever of it is buffered already.
            if (!ec && n > 0) {
              auto space = self->buffer_.prepare(1);
              *static_cast<char*>(space.data()) = self->watch_byte_;
              self->buffer_.commit(1);
            }
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

  std::string peer_;  // the client's address:port, for the access log
  beast::tcp_stream stream_;
  net::any_io_executor strand_;
  net::steady_timer timer_;
  ConnectionSlot slot_;  // our place under the port's connection limits
  std::shared_ptr<Shared> shared_;
  AccessRecord access_;
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
  std::unique_ptr<ApiResponse> response_;
  size_t pending_ = 0;              // choices not yet finished
  std::optional<ApiError> failed_;  // the first choice that failed
  Clock::time_point arrived_, last_token_;

  std::deque<std::string> out_;
  std::string writing_buf_;
  bool writing_ = false;
  bool watching_ = false;
  char watch_byte_ = 0;
};

}  // namespace

struct HttpServer::Impl {
  explicit Impl(Acceptor a) : acceptor(std::move(a)) {}
  Acceptor acceptor;
};

HttpServer::HttpServer(net::io_context& io, GenerationService& service, Metrics& metrics,
                       HttpServerOptions options)
    : HttpServer(io, service, metrics, options,
                 Acceptor(io, "http", options.host, options.port, options.limits, &metrics)) {}

HttpServer::HttpServer(net::io_context& io, GenerationService& service, Metrics& metrics,
                       HttpServerOptions options, Acceptor bound) {
  options.limits = bound.limits();
  auto shared = std::make_shared<Shared>(service, metrics, std::move(options));
  impl_ = std::make_shared<Impl>(std::move(bound));
  impl_->acceptor.start([shared](tcp::socket s, ConnectionSlot slot) {
    std::make_shared<Session>(std::move(s), std::move(slot), shared)->start();
  });
}

HttpServer::~HttpServer() { stop(); }

uint16_t HttpServer::port() const { return impl_->acceptor.port(); }

void HttpServer::stop() { impl_->acceptor.stop(); }

}  // namespace starattn::server
