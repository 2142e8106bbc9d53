// The OpenAI-style JSON of the HTTP server, without any networking: request bodies to one
// RequestSpec per choice (fields OpenAI defines are checked and named in errors; fields nobody
// defines are ignored and logged at debug level), the choices submitted together, and their
// tokens back to OpenAI's response and stream-chunk shapes (logprobs included). Kept apart from
// the sockets so it can be tested and fuzzed alone.
#pragma once

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/generation_service.h"
#include "runtime/plain_prompt.h"

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
ApiError service_error_to_api(const Error& error);

struct ApiRequest {
  // One request per choice, in choice order: prompt p's copy j is choice p * n + j.
  std::vector<RequestSpec> choices;
  int n = 1;
  std::string model;  // as the client named it; "" when it named none
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with usage
  // -1: no logprobs; k >= 0: the chosen token's and the k most likely (completions: `logprobs`,
  // chat: `logprobs: true` + `top_logprobs`).
  int logprobs = -1;
  std::vector<std::string> ignored_fields;  // fields OpenAI does not define (logged at debug)
  // Context reuse: the request's context is the document registered under this id
  // (POST /v1/contexts); the prompt (completions) or the one user message (chat) is the
  // question. The server fills each choice's context (server/contexts.h).
  std::string context_id;
};

// Limits of a request.
constexpr int kMaxTokensLimit = 1 << 20;
constexpr int kMaxJsonDepth = 32;
constexpr int kMaxChoices = 128;       // prompts x n
constexpr int kMaxTopLogprobs = 20;    // `logprobs` (completions) and `top_logprobs` (chat)
constexpr size_t kMaxLogitBias = 1024;  // entries of logit_bias
// How a prompt without `query` is split (runtime/plain_prompt.h).
constexpr PlainPromptLimits kPlainPromptLimits{};

// Throws ApiError (status 400) for malformed JSON, a body that is not an object, wrong types and
// out-of-range values, and for features asked for that the server does not have (echo, suffix,
// best_of > n, tools, response_format other than text).
ApiRequest parse_api_request(Endpoint endpoint, const std::string& body);

// Models. The server knows one name: ServiceInfo::model, exactly (no aliases: a client that
// names another model is misconfigured and is told so). A request without `model` gets it too.
// check_model throws 404 model_not_found, as OpenAI and vLLM answer.
void check_model(const std::string& model, const ServiceInfo& info);
// check_model, and 400 for logprobs when the service cannot name tokens (no token_bytes).
void check_for_service(const ApiRequest& request, const ServiceInfo& info);
std::string models_json(const ServiceInfo& info);                       // GET /v1/models
std::string model_json(const std::string& id, const ServiceInfo& info);  // GET /v1/models/{id}
// "/v1/models/{id}" -> id (percent-decoded); false for other paths.
bool model_path_id(const std::string& path, std::string& id);

std::string error_json(const ApiError& error);
// OpenAI reports "stop" or "length"; anything else ("cancelled") is reported as "stop".
std::string openai_finish_reason(const std::string& finish_reason);

// Submits every choice of a request; the callbacks get the choice index. The handle cancels
// them all. Each choice ends with exactly one on_done or on_error, as StreamCallbacks promise.
struct ChoiceCallbacks {
  std::function<bool(size_t choice, const TokenEvent&)> on_token;
  std::function<void(size_t choice, const RequestStats&)> on_done;
  std::function<void(size_t choice, const Error&)> on_error;
};
std::shared_ptr<RequestHandle> submit_choices(GenerationService& service, std::vector<RequestSpec> choices,
                                              ChoiceCallbacks callbacks);

struct ResponseMeta {
  std::string id;  // "cmpl-..." / "chatcmpl-..."
  std::string model;
  long long created = 0;  // Unix time
};

// The answer to one request, built from its choices' token events: either streamed (one chunk
// per event) or whole at the end. `token_bytes` names the tokens in logprobs (ServiceInfo).
class ApiResponse {
 public:
  using TokenBytes = std::function<std::string(int32_t)>;
  ApiResponse(Endpoint endpoint, ResponseMeta meta, size_t choices, int n, int logprobs,
              TokenBytes token_bytes);

  // Record a token event. Returns the stream chunk for it ("" when it carries neither text nor
  // logprobs). Throws ApiError 500 when logprobs were asked for and the event lacks them.
  std::string add(size_t choice, const TokenEvent& event);
  // Record the end of a choice; returns its stream chunk with finish_reason.
  std::string finish(size_t choice, const RequestStats& done);
  bool all_finished() const;

  // Stream pieces: chat's first chunks (delta.role, one per choice) and the usage chunk.
  std::vector<std::string> stream_start() const;
  std::string usage_chunk() const;
  // The whole answer (after every choice finished).
  std::string whole_json() const;
  // Totals over the choices: prompt tokens once per prompt, completion tokens of every choice.
  RequestStats usage() const;

 private:
  struct Choice;
  std::string chunk(size_t choice, const std::string& text, const std::vector<TokenLogprob>* logprobs,
                    size_t first_offset, const std::string& finish_reason) const;

  Endpoint endpoint_;
  ResponseMeta meta_;
  int n_;
  int logprobs_;
  TokenBytes token_bytes_;
  std::vector<std::shared_ptr<Choice>> choices_;
};

}  // namespace starattn::server
