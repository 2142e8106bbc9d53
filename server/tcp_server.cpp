#include "server/tcp_server.h"

#include <array>
#include <atomic>
#include <deque>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>

#include "runtime/log.h"
#include "server/access_log.h"
#include "server/api_key.h"
#include "server/framed_protocol.h"

namespace starattn::server {
namespace {

namespace net = boost::asio;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;
using Clock = std::chrono::steady_clock;

struct Shared {
  Shared(GenerationService& s, Metrics& m, TcpServerOptions o) : service(s), metrics(m), options(std::move(o)) {}
  GenerationService& service;
  Metrics& metrics;
  TcpServerOptions options;
  std::atomic<uint64_t> next_id{1};
};

std::string peer_of(const tcp::socket& socket) {
  error_code ec;
  const auto remote = socket.remote_endpoint(ec);
  if (ec) return "?";
  return remote.address().to_string() + ":" + std::to_string(remote.port());
}

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, ConnectionSlot slot, std::shared_ptr<Shared> shared)
      : socket_(std::move(socket)), strand_(socket_.get_executor()), timer_(strand_), slot_(std::move(slot)),
        shared_(std::move(shared)), peer_(peer_of(socket_)), authed_(shared_->options.api_key.empty()) {
    shared_->metrics.connection_opened();
  }
  ~Session() { shared_->metrics.connection_closed(); }

  void start() {
    net::dispatch(strand_, [self = shared_from_this()] { self->read_prefix(); });
  }

 private:
  void arm_timer(std::chrono::milliseconds limit) {
    if (limit.count() <= 0) return;  // no limit
    timer_.expires_after(limit);
    timer_.async_wait([self = shared_from_this()](error_code ec) {
      if (ec) return;
      error_code ignored;
      self->socket_.close(ignored);  // the pending read fails and ends the session
    });
  }

  void read_prefix() {
    if (closing_) return;
    // While a request runs the client may legitimately stay silent for as long as it takes.
    if (!handle_) arm_timer(shared_->options.limits.idle_timeout);
    net::async_read(socket_, net::buffer(prefix_), [self = shared_from_this()](error_code ec, size_t) {
      self->timer_.cancel();
      if (ec) return self->hang_up();
      uint32_t n = 0;
      try {
        n = transport::decode_frame_prefix(self->prefix_.data(), kMaxServingFrame);
      } catch (const transport::FrameError& e) {
        return self->protocol_error("frame_too_large", e.what());
      }
      self->body_.resize(n);
      self->arm_timer(self->shared_->options.frame_timeout);
      net::async_read(self->socket_, net::buffer(self->body_), [self](error_code ec2, size_t) {
        self->timer_.cancel();
        if (ec2) return self->hang_up();
        self->on_frame();
      });
    });
  }

  void on_frame() {
    serving::ClientFrame frame;
    if (!frame.ParseFromString(body_))
      return protocol_error("bad_frame", "the frame is not a starattn.serving.ClientFrame");
    if (frame.protocol_version() != kServingProtocolVersion)
      return protocol_error("unsupported_version",
                            "protocol version " + std::to_string(frame.protocol_version()) +
                                " is not supported; this server speaks version " +
                                std::to_string(kServingProtocolVersion));
    if (frame.has_auth()) {
      // A key sent to a server that needs none is accepted: clients may always send theirs.
      if (!shared_->options.api_key.empty() && !same_secret(frame.auth().api_key(), shared_->options.api_key))
        return protocol_error("invalid_api_key", "wrong API key");
      authed_ = true;
    } else if (!authed_) {
      return protocol_error("invalid_api_key",
                            "this server needs an API key: send an Auth frame first "
                            "(starattn client --api-key-env VAR)");
    } else if (frame.has_cancel()) {
      if (handle_) handle_->cancel();
    } else if (frame.has_request()) {
      if (handle_) return protocol_error("busy", "a request is already running on this connection");
      try {
        start(request_from_proto(frame.request()));
      } catch (const std::invalid_argument& e) {
        send_error("invalid_request", e.what());
      }
    } else {
      return protocol_error("bad_frame", "the frame holds neither a request nor a cancel");
    }
    read_prefix();
  }

  void start(RequestSpec request) {
    arrived_ = Clock::now();
    got_token_ = false;
    access_ = AccessRecord();
    access_.id = "tcp-" + std::to_string(shared_->next_id++);
    access_.client = peer_;
    access_.endpoint = "tcp";
    shared_->metrics.stream_started();
    auto self = shared_from_this();
    StreamCallbacks cb;
    cb.on_token = [self](const TokenEvent& ev) {
      net::post(self->strand_, [self, ev] { self->on_token(ev); });
      return true;
    };
    cb.on_done = [self](const RequestStats& c) {
      net::post(self->strand_, [self, c] {
        self->access_.tokens_in = c.prompt_tokens();
        self->access_.tokens_out = c.generated;
        self->finish_request("ok");
        serving::ServerFrame f;
        *f.mutable_done() = completion_to_proto(c);
        self->send(f);
      });
    };
    cb.on_error = [self](const Error& e) {
      net::post(self->strand_, [self, e] {
        self->finish_request(error_kind_name(e.kind()));
        self->send_error(error_kind_name(e.kind()), e.what());
      });
    };
    handle_ = shared_->service.submit(std::move(request), std::move(cb));
  }

  void on_token(const TokenEvent& ev) {
    if (!ev.tokens.empty()) {
      const auto now = Clock::now();
      if (!got_token_) {
        shared_->metrics.observe_time_to_first_token(std::chrono::duration<double>(now - arrived_).count());
        access_.ttft_ms = std::chrono::duration<double, std::milli>(now - arrived_).count();
      }
      else shared_->metrics.observe_inter_token_latency(std::chrono::duration<double>(now - last_token_).count());
      got_token_ = true;
      last_token_ = now;
      shared_->metrics.count_tokens(static_cast<int64_t>(ev.tokens.size()));
      access_.tokens_out += static_cast<int64_t>(ev.tokens.size());
    }
    serving::ServerFrame f;
    *f.mutable_token() = token_to_proto(ev);
    send(f);
  }

  void finish_request(const std::string& status) {
    handle_.reset();
    shared_->metrics.stream_ended();
    shared_->metrics.count_request("tcp", status);
    if (status != "ok") shared_->metrics.count_error(status);
    access_.status = status;
    access_.total_ms = ms_since(arrived_);
    log_access(access_);
    // The connection idles again: the pending read gets the idle limit from now on.
    if (!closing_) arm_timer(shared_->options.limits.idle_timeout);
  }

  void send_error(const std::string& code, const std::string& message) {
    serving::ServerFrame f;
    f.mutable_error()->set_code(code);
    f.mutable_error()->set_message(message);
    send(f);
  }

  // The stream has lost its boundaries or the peer misbehaves: say why, then close.
  void protocol_error(const std::string& code, const std::string& message) {
    logging::debug("tcp: %s from %s: %s", code.c_str(), peer_.c_str(), message.c_str());
    shared_->metrics.count_request("tcp", code);
    shared_->metrics.count_error(code);
    send_error(code, message);
    if (handle_) handle_->cancel();
    closing_ = true;
  }

  void hang_up() {
    closing_ = true;
    if (handle_) handle_->cancel();
    out_.clear();
    error_code ignored;
    socket_.close(ignored);
  }

  void send(const serving::ServerFrame& frame_without_version) {
    serving::ServerFrame f = frame_without_version;
    f.set_protocol_version(kServingProtocolVersion);
    if (!socket_.is_open()) return;
    out_.push_back(encode_frame(f));
    if (!writing_) write_next();
  }

  void write_next() {
    buf_.clear();
    for (auto& s : out_) buf_ += s;
    out_.clear();
    writing_ = true;
    net::async_write(socket_, net::buffer(buf_), [self = shared_from_this()](error_code ec, size_t) {
      self->writing_ = false;
      if (ec) return self->hang_up();
      if (!self->out_.empty()) return self->write_next();
      if (self->closing_ && !self->handle_) {
        error_code ignored;
        self->socket_.shutdown(tcp::socket::shutdown_both, ignored);
        self->socket_.close(ignored);
      }
    });
  }

  tcp::socket socket_;
  net::any_io_executor strand_;
  net::steady_timer timer_;
  ConnectionSlot slot_;  // our place under the port's connection limits
  std::shared_ptr<Shared> shared_;
  std::string peer_;
  bool authed_;
  AccessRecord access_;
  std::array<unsigned char, 4> prefix_{};
  std::string body_;
  std::shared_ptr<RequestHandle> handle_;
  bool closing_ = false;
  bool got_token_ = false;
  Clock::time_point arrived_, last_token_;
  std::deque<std::string> out_;
  std::string buf_;
  bool writing_ = false;
};

}  // namespace

struct TcpServer::Impl {
  Impl(Acceptor a, std::shared_ptr<Shared> s) : acceptor(std::move(a)), shared(std::move(s)) {}
  Acceptor acceptor;
  std::shared_ptr<Shared> shared;
};

TcpServer::TcpServer(net::io_context& io, GenerationService& service, Metrics& metrics, TcpServerOptions options)
    : TcpServer(io, service, metrics, options,
                Acceptor(io, "tcp", options.host, options.port, options.limits, &metrics)) {}

TcpServer::TcpServer(net::io_context& io, GenerationService& service, Metrics& metrics, TcpServerOptions options,
                     Acceptor bound) {
  options.limits = bound.limits();
  auto shared = std::make_shared<Shared>(service, metrics, std::move(options));
  impl_ = std::make_shared<Impl>(std::move(bound), shared);
  impl_->acceptor.start([shared](tcp::socket s, ConnectionSlot slot) {
    error_code ignored;
    s.set_option(tcp::no_delay(true), ignored);  // token frames are small and latency matters
    std::make_shared<Session>(std::move(s), std::move(slot), shared)->start();
  });
}

TcpServer::~TcpServer() { stop(); }

uint16_t TcpServer::port() const { return impl_->acceptor.port(); }

void TcpServer::stop() { impl_->acceptor.stop(); }

}  // namespace starattn::server
