#include "server/tcp_server.h"

#include <array>
#include <deque>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>

#include "server/framed_protocol.h"
#include "server/listener.h"

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
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, std::shared_ptr<Shared> shared)
      : socket_(std::move(socket)), strand_(socket_.get_executor()), timer_(strand_), shared_(std::move(shared)) {
    shared_->metrics.connection_opened();
  }
  ~Session() { shared_->metrics.connection_closed(); }

  void start() {
    net::dispatch(strand_, [self = shared_from_this()] { self->read_prefix(); });
  }

 private:
  void arm_timer(std::chrono::milliseconds limit) {
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
    if (!handle_) arm_timer(shared_->options.idle_timeout);
    net::async_read(socket_, net::buffer(prefix_), [self = shared_from_this()](error_code ec, size_t) {
      self->timer_.cancel();
      if (ec) return self->hang_up();
      const uint32_t n = decode_frame_length(self->prefix_.data());
      if (n > kMaxServingFrame)
        return self->protocol_error("frame_too_large", "a frame of " + std::to_string(n) +
                                                           " bytes exceeds the limit of " +
                                                           std::to_string(kMaxServingFrame));
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
    if (frame.has_cancel()) {
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

  void start(TextRequest request) {
    arrived_ = Clock::now();
    got_token_ = false;
    shared_->metrics.stream_started();
    auto self = shared_from_this();
    StreamCallbacks cb;
    cb.on_token = [self](const TokenEvent& ev) {
      net::post(self->strand_, [self, ev] { self->on_token(ev); });
      return true;
    };
    cb.on_done = [self](const Completion& c) {
      net::post(self->strand_, [self, c] {
        self->finish_request("ok");
        serving::ServerFrame f;
        *f.mutable_done() = completion_to_proto(c);
        self->send(f);
      });
    };
    cb.on_error = [self](const ServiceError& e) {
      net::post(self->strand_, [self, e] {
        self->finish_request(error_kind_name(e.kind));
        self->send_error(error_kind_name(e.kind), e.message);
      });
    };
    handle_ = shared_->service.submit(std::move(request), std::move(cb));
  }

  void on_token(const TokenEvent& ev) {
    if (!ev.tokens.empty()) {
      const auto now = Clock::now();
      if (!got_token_) shared_->metrics.observe_time_to_first_token(std::chrono::duration<double>(now - arrived_).count());
      else shared_->metrics.observe_inter_token_latency(std::chrono::duration<double>(now - last_token_).count());
      got_token_ = true;
      last_token_ = now;
      shared_->metrics.count_tokens(static_cast<int64_t>(ev.tokens.size()));
    }
    serving::ServerFrame f;
    f.mutable_token()->set_text(ev.text);
    for (int32_t t : ev.tokens) f.mutable_token()->add_tokens(t);
    send(f);
  }

  void finish_request(const std::string& status) {
    handle_.reset();
    shared_->metrics.stream_ended();
    shared_->metrics.count_request("tcp", status);
    if (status != "ok") shared_->metrics.count_error(status);
    // The connection idles again: the pending read gets the idle limit from now on.
    if (!closing_) arm_timer(shared_->options.idle_timeout);
  }

  void send_error(const std::string& code, const std::string& message) {
    serving::ServerFrame f;
    f.mutable_error()->set_code(code);
    f.mutable_error()->set_message(message);
    send(f);
  }

  // The stream has lost its boundaries or the peer misbehaves: say why, then close.
  void protocol_error(const std::string& code, const std::string& message) {
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
  std::shared_ptr<Shared> shared_;
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

struct TcpServer::Impl : std::enable_shared_from_this<Impl> {
  Impl(net::io_context& io_, std::shared_ptr<Shared> shared_)
      : io(io_), acceptor(net::make_strand(io_)), shared(std::move(shared_)) {}
  void accept() {
    acceptor.async_accept(net::make_strand(io), [self = shared_from_this()](error_code ec, tcp::socket s) {
      if (ec == net::error::operation_aborted || !self->acceptor.is_open()) return;
      if (!ec) {
        error_code ignored;
        s.set_option(tcp::no_delay(true), ignored);  // token frames are small and latency matters
        std::make_shared<Session>(std::move(s), self->shared)->start();
      }
      self->accept();
    });
  }
  net::io_context& io;
  tcp::acceptor acceptor;
  std::shared_ptr<Shared> shared;
  uint16_t port = 0;
};

TcpServer::TcpServer(net::io_context& io, GenerationService& service, Metrics& metrics, TcpServerOptions options) {
  impl_ = std::make_shared<Impl>(io, std::make_shared<Shared>(service, metrics, options));
  auto& a = impl_->acceptor;
  listen_on(a, options.host, options.port, "framed TCP");
  impl_->port = a.local_endpoint().port();
  impl_->accept();
}

TcpServer::~TcpServer() { stop(); }

uint16_t TcpServer::port() const { return impl_->port; }

void TcpServer::stop() {
  net::post(impl_->acceptor.get_executor(), [impl = impl_] {
    error_code ignored;
    impl->acceptor.close(ignored);
  });
}

}  // namespace starattn::server
