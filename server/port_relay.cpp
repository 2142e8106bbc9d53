#include "server/port_relay.h"

#include <array>
#include <optional>
#include <thread>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include "runtime/log.h"

namespace starattn::server {
namespace {

namespace net = boost::asio;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;
using Clock = std::chrono::steady_clock;

// One relayed connection: the client's socket, ours to the target, and the bytes between them.
// Everything runs on the client socket's strand. When either side ends or fails, both close.
class Tunnel : public std::enable_shared_from_this<Tunnel> {
 public:
  Tunnel(tcp::socket client, ConnectionSlot slot, std::chrono::milliseconds idle)
      : client_(std::move(client)), target_(client_.get_executor()), timer_(client_.get_executor()),
        slot_(std::move(slot)), idle_(idle) {}

  void start(const tcp::endpoint& target) {
    touch();
    arm_idle();
    target_.async_connect(target, [self = shared_from_this(), target](error_code ec) {
      if (ec) {
        logging::warn("relay: cannot reach %s:%u: %s", target.address().to_string().c_str(),
                      static_cast<unsigned>(target.port()), ec.message().c_str());
        return self->close();
      }
      error_code ignored;
      self->target_.set_option(tcp::no_delay(true), ignored);
      self->client_.set_option(tcp::no_delay(true), ignored);
      self->pump(self->client_, self->target_, self->up_);
      self->pump(self->target_, self->client_, self->down_);
    });
  }

 private:
  using Buffer = std::array<char, 16384>;

  void pump(tcp::socket& from, tcp::socket& to, Buffer& buf) {
    if (closed_) return;
    from.async_read_some(net::buffer(buf), [self = shared_from_this(), &from, &to, &buf](error_code ec, size_t n) {
      if (ec) return self->close();
      self->touch();
      net::async_write(to, net::buffer(buf.data(), n), [self, &from, &to, &buf](error_code ec2, size_t) {
        if (ec2) return self->close();
        self->touch();
        self->pump(from, to, buf);
      });
    });
  }

  void touch() { last_ = Clock::now(); }

  // Wakes up once per idle period and closes the tunnel if nothing moved since the last wake-up.
  void arm_idle() {
    if (idle_.count() <= 0 || closed_) return;
    timer_.expires_at(last_ + idle_);
    timer_.async_wait([self = shared_from_this()](error_code ec) {
      if (ec || self->closed_) return;
      if (Clock::now() - self->last_ >= self->idle_) {
        logging::debug("relay: closing a connection idle for %lld ms", static_cast<long long>(self->idle_.count()));
        return self->close();
      }
      self->arm_idle();
    });
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    error_code ignored;
    timer_.cancel();
    client_.close(ignored);
    target_.close(ignored);
  }

  tcp::socket client_, target_;
  net::steady_timer timer_;
  ConnectionSlot slot_;
  std::chrono::milliseconds idle_;
  Clock::time_point last_;
  Buffer up_{}, down_{};
  bool closed_ = false;
};

}  // namespace

struct PortRelay::Impl {
  net::io_context io;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  std::optional<Acceptor> acceptor;
  std::thread thread;
};

PortRelay::PortRelay(std::string name, const std::string& host, uint16_t port, ConnectionLimits limits,
                     Metrics* metrics)
    : impl_(std::make_unique<Impl>()) {
  impl_->acceptor.emplace(impl_->io, std::move(name), host, port, limits, metrics);
  impl_->work.emplace(net::make_work_guard(impl_->io));
  impl_->thread = std::thread([io = &impl_->io] { io->run(); });
}

PortRelay::~PortRelay() {
  impl_->acceptor->stop();
  impl_->work.reset();
  impl_->io.stop();  // abandons the tunnels; their sockets close as the io_context is destroyed
  impl_->thread.join();
}

void PortRelay::start(const std::string& target_host, uint16_t target_port) {
  const tcp::endpoint target(net::ip::make_address(target_host), target_port);
  const auto idle = impl_->acceptor->limits().idle_timeout;
  impl_->acceptor->start([target, idle](tcp::socket s, ConnectionSlot slot) {
    std::make_shared<Tunnel>(std::move(s), std::move(slot), idle)->start(target);
  });
}

uint16_t PortRelay::port() const { return impl_->acceptor->port(); }
size_t PortRelay::open_connections() const { return impl_->acceptor->open_connections(); }

}  // namespace starattn::server
