#include "server/acceptor.h"

#include <map>
#include <mutex>
#include <stdexcept>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include "runtime/log.h"
#include "server/metrics.h"
#include "transport/address.h"

namespace starattn::server {

namespace net = boost::asio;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;

struct Acceptor::Impl : std::enable_shared_from_this<Impl> {
  Impl(net::io_context& io_, std::string name_, ConnectionLimits limits_, Metrics* metrics_)
      : io(io_), acceptor(net::make_strand(io_)), retry(acceptor.get_executor()), name(std::move(name_)),
        limits(limits_), metrics(metrics_) {}

  // The slot of one admitted connection: gives its place back when the last owner lets go.
  struct Slot {
    Slot(std::shared_ptr<Impl> o, std::string p) : owner(std::move(o)), peer(std::move(p)) {}
    ~Slot() { owner->release(peer); }
    std::shared_ptr<Impl> owner;
    std::string peer;
  };

  // "" when admitted, else the reason of the refusal.
  const char* admit(const std::string& peer) {
    std::lock_guard<std::mutex> lock(mutex);
    if (limits.max_connections && open >= limits.max_connections) return "max_connections";
    size_t& mine = per_peer[peer];
    if (limits.max_per_peer && mine >= limits.max_per_peer) {
      if (mine == 0) per_peer.erase(peer);
      return "max_per_peer";
    }
    ++mine;
    ++open;
    return "";
  }

  void release(const std::string& peer) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      --open;
      auto it = per_peer.find(peer);
      if (it != per_peer.end() && --it->second == 0) per_peer.erase(it);
    }
    if (metrics) metrics->connection_released(name);
  }

  void refuse(tcp::socket& socket, const std::string& peer, const std::string& reason) {
    if (metrics) metrics->count_refused(name, reason);
    logging::debug("%s: refused a connection from %s (%s)", name.c_str(), peer.c_str(), reason.c_str());
    // A reset instead of an orderly close: the peer learns at once, and no TIME_WAIT is left here.
    error_code ignored;
    socket.set_option(net::socket_base::linger(true, 0), ignored);
    socket.close(ignored);
  }

  void accept_next() {
    acceptor.async_accept(net::make_strand(io), [self = shared_from_this()](error_code ec, tcp::socket s) {
      if (ec == net::error::operation_aborted || !self->acceptor.is_open()) return;
      if (ec) {
        // Out of file descriptors, most likely: count it, and retry a little later rather than
        // spinning on an accept that fails at once.
        if (self->metrics) self->metrics->count_refused(self->name, "accept_failed");
        logging::warn("%s: accept failed: %s", self->name.c_str(), ec.message().c_str());
        self->retry.expires_after(std::chrono::milliseconds(50));
        self->retry.async_wait([self](error_code e) {
          if (!e) self->accept_next();
        });
        return;
      }
      error_code peer_ec;
      const auto remote = s.remote_endpoint(peer_ec);
      if (peer_ec) return self->accept_next();  // already gone
      const std::string peer = remote.address().to_string();
      const std::string refused = self->admit(peer);
      if (!refused.empty()) {
        self->refuse(s, peer, refused);
      } else {
        if (self->metrics) self->metrics->connection_admitted(self->name);
        self->handler(std::move(s), std::make_shared<Slot>(self, peer));
      }
      self->accept_next();
    });
  }

  net::io_context& io;
  tcp::acceptor acceptor;
  net::steady_timer retry;
  std::string name;
  ConnectionLimits limits;
  Metrics* metrics;
  Handler handler;
  uint16_t port = 0;
  mutable std::mutex mutex;
  size_t open = 0;
  std::map<std::string, size_t> per_peer;
};

Acceptor::Acceptor(net::io_context& io, std::string name, const std::string& host, uint16_t port,
                   ConnectionLimits limits, Metrics* metrics)
    : impl_(std::make_shared<Impl>(io, std::move(name), limits, metrics)) {
  const std::string where = transport::format_host_port(host, port);
  error_code ec;
  const auto address = net::ip::make_address(host, ec);
  if (ec)
    throw std::invalid_argument("bad " + impl_->name + " listen address '" + host + "': " + ec.message() +
                                " (give a numeric IP address)");
  const tcp::endpoint endpoint(address, port);
  auto& a = impl_->acceptor;
  a.open(endpoint.protocol());
  a.set_option(net::socket_base::reuse_address(true));
  a.bind(endpoint, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  if (ec) throw std::runtime_error("cannot listen for " + impl_->name + " on " + where + ": " + ec.message());
  impl_->port = a.local_endpoint().port();
}

Acceptor::~Acceptor() {
  if (impl_) stop();
}
Acceptor::Acceptor(Acceptor&&) noexcept = default;
Acceptor& Acceptor::operator=(Acceptor&&) noexcept = default;

void Acceptor::start(Handler handler) {
  net::post(impl_->acceptor.get_executor(), [impl = impl_, h = std::move(handler)]() mutable {
    impl->handler = std::move(h);
    impl->accept_next();
  });
}

void Acceptor::stop() {
  net::post(impl_->acceptor.get_executor(), [impl = impl_] {
    error_code ignored;
    impl->acceptor.close(ignored);
    impl->retry.cancel();
  });
}

uint16_t Acceptor::port() const { return impl_->port; }
const std::string& Acceptor::name() const { return impl_->name; }
const ConnectionLimits& Acceptor::limits() const { return impl_->limits; }

size_t Acceptor::open_connections() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->open;
}

}  // namespace starattn::server
