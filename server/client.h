// A blocking C++ client of the framed TCP protocol (server/serving.proto): connect once, run
// requests one after another, receive tokens through a callback as they are generated.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

#include "runtime/generation_service.h"
#include "server/serving.pb.h"

namespace starattn::server {

// The server answered with an Error frame; `code` is its code ("capacity", "invalid_request",
// "unsupported_version", ...).
class ServerError : public std::runtime_error {
 public:
  ServerError(std::string code_, const std::string& message)
      : std::runtime_error(code_ + ": " + message), code(std::move(code_)) {}
  std::string code;
};

class Client {
 public:
  // Connects (throws std::runtime_error naming the address when it cannot). A non-empty
  // `api_key` is sent first, in an Auth frame; a server that refuses it answers the first
  // request with ServerError "invalid_api_key".
  Client(const std::string& host, uint16_t port,
         std::chrono::milliseconds connect_timeout = std::chrono::seconds(10),
         const std::string& api_key = "");
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Runs one request. on_token gets every token frame; returning false sends a Cancel (the
  // request then ends with finish_reason "cancelled"). Throws ServerError for an Error frame and
  // std::runtime_error when the connection fails.
  RequestStats generate(const RequestSpec& request,
                        const std::function<bool(const TokenEvent&)>& on_token);
  // The same with the request's image on this wire as given: the server, not the client, judges
  // its fields (`starattn client` passes --mode through this way).
  RequestStats generate(const serving::GenerateRequest& request,
                        const std::function<bool(const TokenEvent&)>& on_token);

  // Sends a raw frame with any protocol version (tests of the version check).
  void send_raw_frame(const std::string& frame_bytes);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace starattn::server
