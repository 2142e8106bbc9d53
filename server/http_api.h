// The OpenAI-style JSON of the HTTP server, without any networking: request bodies to
// TextRequests (strict: unknown fields and wrong types are errors naming the field), and
// completions, stream chunks and errors to JSON. Kept apart so it can be tested and fuzzed alone.
#pragma once

#include <stdexcept>
#include <string>

#include "runtime/generation_service.h"

namespace starattn::server {

enum class Endpoint { completions, chat_completions };

// An error a client gets as {"error":{"message","type","param","code"}} with an HTTP status.
struct ApiError : std::runtime_error {
  ApiError(int status_, std::string type_, std::string param_, std::string code_,
           const std::string& message)
      : std::runtime_error(message), status(status_), type(std::move(type_)),
        param(std::move(param_)), code(std::move(code_)) {}
  int status;
  std::string type;   // "invalid_request_error", "server_error", ...
  std::string param;  // the offending field, "" when none
  std::string code;   // machine-readable reason, "" when none
};

ApiError bad_request(const std::string& param, const std::string& message);
// The error a client sees for a service failure (capacity: 400 context_length_exceeded, ...).
ApiError service_error_to_api(const ServiceError& error);

struct ApiRequest {
  TextRequest request;
  std::string model;  // echoed back; not used to choose a model (the server has one)
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with usage
};

// Largest max_tokens and nesting depth a request may have.
constexpr int kMaxTokensLimit = 1 << 20;
constexpr int kMaxJsonDepth = 32;

// Throws ApiError (status 400) for malformed JSON, a body that is not an object, unknown fields,
// wrong types and out-of-range values.
ApiRequest parse_api_request(Endpoint endpoint, const std::string& body);

std::string error_json(const ApiError& error);

// Response bodies. `id` names the request ("cmpl-..."/"chatcmpl-..."), `created` is Unix time.
struct ResponseMeta {
  std::string id;
  std::string model;
  long long created = 0;
};
std::string completion_json(Endpoint endpoint, const ResponseMeta& meta, const std::string& text,
                            const Completion& done);
// One stream chunk: `text` as choices[0].text / delta.content; finish_reason null unless given.
std::string chunk_json(Endpoint endpoint, const ResponseMeta& meta, const std::string& text,
                       const std::string& finish_reason);
// The first chat chunk: delta {"role":"assistant","content":""}.
std::string chat_role_chunk_json(const ResponseMeta& meta);
// The last chunk when stream_options.include_usage: no choices, usage filled.
std::string usage_chunk_json(Endpoint endpoint, const ResponseMeta& meta, const Completion& done);
// OpenAI reports "stop" or "length"; anything else ("cancelled") is reported as "stop".
std::string openai_finish_reason(const std::string& finish_reason);

}  // namespace starattn::server
