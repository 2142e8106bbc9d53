#include "server/client.h"

#include <optional>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "server/framed_protocol.h"

namespace starattn::server {

namespace net = boost::asio;
using tcp = net::ip::tcp;

struct Client::Impl {
  net::io_context io;
  tcp::socket socket{io};

  // Frames go through transport/framing.h on the connected socket, which is blocking again
  // once the connect (asynchronous, for its deadline) is done.
  void write(const std::string& bytes) {
    try {
      transport::write_bytes(socket.native_handle(), bytes);
    } catch (const transport::FrameError& e) {
      throw std::runtime_error(std::string("sending to the server failed: ") + e.what());
    }
  }

  serving::ServerFrame read() {
    std::optional<std::string> body;
    try {
      body = transport::read_frame(socket.native_handle(), kMaxServingFrame);
    } catch (const transport::FrameError& e) {
      throw std::runtime_error(std::string("reading from the server failed: ") + e.what() +
                               " (not a starattn server?)");
    }
    if (!body) throw std::runtime_error("the server closed the connection");
    serving::ServerFrame f;
    if (!f.ParseFromString(*body)) throw std::runtime_error("the server sent a frame that is not a ServerFrame");
    if (f.protocol_version() != kServingProtocolVersion)
      throw std::runtime_error("the server speaks protocol version " + std::to_string(f.protocol_version()) +
                               ", this client " + std::to_string(kServingProtocolVersion));
    return f;
  }
};

Client::Client(const std::string& host, uint16_t port, std::chrono::milliseconds connect_timeout,
               const std::string& api_key)
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
  impl_->socket.native_non_blocking(false);
  if (!api_key.empty()) {
    serving::ClientFrame auth;
    auth.set_protocol_version(kServingProtocolVersion);
    auth.mutable_auth()->set_api_key(api_key);
    impl_->write(encode_frame(auth));
  }
}

Client::~Client() = default;

void Client::send_raw_frame(const std::string& frame_bytes) { impl_->write(frame_bytes); }

RequestStats Client::generate(const RequestSpec& request,
                              const std::function<bool(const TokenEvent&)>& on_token) {
  return generate(request_to_proto(request), on_token);
}

RequestStats Client::generate(const serving::GenerateRequest& request,
                              const std::function<bool(const TokenEvent&)>& on_token) {
  serving::ClientFrame frame;
  frame.set_protocol_version(kServingProtocolVersion);
  *frame.mutable_request() = request;
  impl_->write(encode_frame(frame));
  bool cancel_sent = false;
  for (;;) {
    const serving::ServerFrame f = impl_->read();
    if (f.has_token()) {
      const TokenEvent ev = token_from_proto(f.token());
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
