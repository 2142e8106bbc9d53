#include "server/client.h"

#include <array>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include "server/framed_protocol.h"

namespace starattn::server {

namespace net = boost::asio;
using tcp = net::ip::tcp;

std::pair<std::string, uint16_t> parse_host_port(const std::string& text, const std::string& what) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
    throw std::invalid_argument(what + " must be HOST:PORT, got '" + text + "'");
  std::string host = text.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::string port_text = text.substr(colon + 1);
  if (port_text.find_first_not_of("0123456789") != std::string::npos || port_text.size() > 5 ||
      std::stoul(port_text) > 65535)
    throw std::invalid_argument(what + ": bad port '" + port_text + "' in '" + text + "'");
  return {host, static_cast<uint16_t>(std::stoul(port_text))};
}

struct Client::Impl {
  net::io_context io;
  tcp::socket socket{io};

  void write(const std::string& bytes) {
    boost::system::error_code ec;
    net::write(socket, net::buffer(bytes), ec);
    if (ec) throw std::runtime_error("sending to the server failed: " + ec.message());
  }

  serving::ServerFrame read() {
    std::array<unsigned char, 4> prefix{};
    boost::system::error_code ec;
    net::read(socket, net::buffer(prefix), ec);
    if (ec == net::error::eof) throw std::runtime_error("the server closed the connection");
    if (ec) throw std::runtime_error("reading from the server failed: " + ec.message());
    const uint32_t n = decode_frame_length(prefix.data());
    if (n > kMaxServingFrame)
      throw std::runtime_error("the server sent a frame of " + std::to_string(n) + " bytes (limit " +
                               std::to_string(kMaxServingFrame) + "): not a starattn server?");
    std::string body(n, '\0');
    net::read(socket, net::buffer(body), ec);
    if (ec) throw std::runtime_error("the connection ended inside a frame: " + ec.message());
    serving::ServerFrame f;
    if (!f.ParseFromString(body)) throw std::runtime_error("the server sent a frame that is not a ServerFrame");
    if (f.protocol_version() != kServingProtocolVersion)
      throw std::runtime_error("the server speaks protocol version " + std::to_string(f.protocol_version()) +
                               ", this client " + std::to_string(kServingProtocolVersion));
    return f;
  }
};

Client::Client(const std::string& host, uint16_t port, std::chrono::milliseconds connect_timeout)
    : impl_(std::make_unique<Impl>()) {
  boost::system::error_code ec;
  tcp::resolver resolver(impl_->io);
  const auto endpoints = resolver.resolve(host, std::to_string(port), ec);
  if (ec) throw std::runtime_error("cannot resolve " + host + ": " + ec.message());
  // A blocking connect with a deadline: run the asynchronous one for at most connect_timeout.
  net::async_connect(impl_->socket, endpoints,
                     [&](const boost::system::error_code& e, const tcp::endpoint&) { ec = e; });
  impl_->io.run_for(connect_timeout);
  if (!impl_->io.stopped()) {
    impl_->socket.close();
    impl_->io.run();
    throw std::runtime_error("connecting to " + host + ":" + std::to_string(port) + " timed out");
  }
  impl_->io.restart();
  if (ec) throw std::runtime_error("cannot connect to " + host + ":" + std::to_string(port) + ": " + ec.message());
  impl_->socket.set_option(tcp::no_delay(true));
}

Client::~Client() = default;

void Client::send_raw_frame(const std::string& frame_bytes) { impl_->write(frame_bytes); }

Completion Client::generate(const TextRequest& request,
                            const std::function<bool(const TokenEvent&)>& on_token) {
  serving::ClientFrame frame;
  frame.set_protocol_version(kServingProtocolVersion);
  *frame.mutable_request() = request_to_proto(request);
  impl_->write(encode_frame(frame));
  bool cancel_sent = false;
  for (;;) {
    const serving::ServerFrame f = impl_->read();
    if (f.has_token()) {
      TokenEvent ev;
      ev.text = f.token().text();
      ev.tokens.assign(f.token().tokens().begin(), f.token().tokens().end());
      if (!cancel_sent && on_token && !on_token(ev)) {
        serving::ClientFrame cancel;
        cancel.set_protocol_version(kServingProtocolVersion);
        cancel.mutable_cancel();
        impl_->write(encode_frame(cancel));
        cancel_sent = true;  // later tokens already in flight are dropped
      }
    } else if (f.has_done()) {
      return completion_from_proto(f.done());
    } else if (f.has_error()) {
      throw ServerError(f.error().code(), f.error().message());
    } else {
      throw std::runtime_error("the server sent an empty frame");
    }
  }
}

}  // namespace starattn::server
