// The OpenAI API's answers: model listings, errors, and the completion / chat bodies and stream
// chunks built from the runtime's token events and stats. Requests: http_api_request.cpp.
#include "server/http_api.h"

#include <cmath>
#include <limits>
#include <mutex>
#include <set>

#include <nlohmann/json.hpp>

#include "runtime/log.h"

namespace starattn::server {
namespace {

using json = nlohmann::json;

// Generated text is whatever bytes the model produced; invalid UTF-8 becomes U+FFFD instead of
// making the serializer throw.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

}  // namespace

namespace {
ApiError model_not_found(const std::string& model, const ServiceInfo& info) {
  return ApiError(404, "invalid_request_error", "model", "model_not_found",
                  "The model `" + model + "` does not exist. This server serves `" + info.model + "`.");
}
}  // namespace

void check_model(const std::string& model, const ServiceInfo& info) {
  if (!model.empty() && model != info.model) throw model_not_found(model, info);
}

void check_for_service(const ApiRequest& request, const ServiceInfo& info) {
  check_model(request.model, info);
  if (request.logprobs >= 0 && !info.token_bytes)
    throw bad_request("logprobs", "logprobs are not available from this server: its generation service cannot "
                                  "name tokens");
}

std::string models_json(const ServiceInfo& info) {
  return dump(json{{"object", "list"}, {"data", json::array({json::parse(model_json(info.model, info))})}});
}

std::string model_json(const std::string& id, const ServiceInfo& info) {
  if (id != info.model) throw model_not_found(id, info);
  return dump(json{{"id", info.model}, {"object", "model"}, {"created", 0}, {"owned_by", "starattn"}});
}

bool model_path_id(const std::string& path, std::string& id) {
  static const std::string prefix = "/v1/models/";
  if (path.size() <= prefix.size() || path.compare(0, prefix.size(), prefix) != 0) return false;
  // Model names may hold '/' ("org/name") and arrive percent-encoded.
  id.clear();
  for (size_t i = prefix.size(); i < path.size(); ++i) {
    const auto hex = [](char c) {
      return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    };
    if (path[i] == '%' && i + 2 < path.size() && hex(path[i + 1]) >= 0 && hex(path[i + 2]) >= 0) {
      id += static_cast<char>(hex(path[i + 1]) * 16 + hex(path[i + 2]));
      i += 2;
    } else {
      id += path[i];
    }
  }
  return true;
}

std::string error_json(const ApiError& e) {
  json err{{"message", e.what()}, {"type", e.type}};
  err["param"] = e.param.empty() ? json(nullptr) : json(e.param);
  err["code"] = e.code.empty() ? json(nullptr) : json(e.code);
  return dump(json{{"error", err}});
}

std::string openai_finish_reason(const std::string& finish_reason) {
  return finish_reason == "length" ? "length" : "stop";
}

// ---- submitting the choices ----

namespace {

struct ChoicesHandle : RequestHandle {
  std::mutex mutex;
  bool cancelled = false;
  std::vector<std::shared_ptr<RequestHandle>> handles;

  void add(std::shared_ptr<RequestHandle> h) {
    bool cancel_now;
    {
      std::lock_guard<std::mutex> lock(mutex);
      handles.push_back(h);
      cancel_now = cancelled;
    }
    if (cancel_now && h) h->cancel();
  }

  void cancel() override {
    std::vector<std::shared_ptr<RequestHandle>> all;
    {
      std::lock_guard<std::mutex> lock(mutex);
      cancelled = true;
      all = handles;
    }
    for (auto& h : all)
      if (h) h->cancel();
  }
};

}  // namespace

std::shared_ptr<RequestHandle> submit_choices(GenerationService& service, std::vector<RequestSpec> choices,
                                              ChoiceCallbacks callbacks) {
  auto handle = std::make_shared<ChoicesHandle>();
  auto shared = std::make_shared<ChoiceCallbacks>(std::move(callbacks));
  for (size_t i = 0; i < choices.size(); ++i) {
    StreamCallbacks cb;
    cb.on_token = [shared, i](const TokenEvent& ev) { return shared->on_token(i, ev); };
    cb.on_done = [shared, i](const RequestStats& c) { shared->on_done(i, c); };
    cb.on_error = [shared, i](const Error& e) { shared->on_error(i, e); };
    handle->add(service.submit(std::move(choices[i]), std::move(cb)));
  }
  return handle;
}

// ---- responses ----

namespace {

json usage_json(const RequestStats& done) {
  return {{"prompt_tokens", done.prompt_tokens()},
          {"completion_tokens", done.generated},
          {"total_tokens", done.prompt_tokens() + done.generated}};
}

const char* object_name(Endpoint endpoint, bool chunk) {
  if (endpoint == Endpoint::completions) return "text_completion";
  return chunk ? "chat.completion.chunk" : "chat.completion";
}

json envelope(Endpoint endpoint, const ResponseMeta& meta, bool chunk) {
  return {{"id", meta.id}, {"object", object_name(endpoint, chunk)}, {"created", meta.created},
          {"model", meta.model}};
}

// JSON has no -inf; OpenAI reports impossible tokens as -9999.
double logprob_value(float lp) { return std::isfinite(lp) ? static_cast<double>(lp) : -9999.0; }

json bytes_json(const std::string& s) {
  json out = json::array();
  for (unsigned char c : s) out.push_back(static_cast<int>(c));
  return out;
}

}  // namespace

struct ApiResponse::Choice {
  std::string text;
  std::vector<TokenLogprob> logprobs;
  std::vector<size_t> offsets;  // text_offset of each token: bytes of the tokens before it
  size_t offset = 0;
  bool finished = false;
  RequestStats done;
};

ApiResponse::ApiResponse(Endpoint endpoint, ResponseMeta meta, size_t choices, int n, int logprobs,
                         TokenBytes token_bytes)
    : endpoint_(endpoint), meta_(std::move(meta)), n_(n < 1 ? 1 : n), logprobs_(logprobs),
      token_bytes_(std::move(token_bytes)) {
  for (size_t i = 0; i < choices; ++i) choices_.push_back(std::make_shared<Choice>());
}

std::string ApiResponse::add(size_t index, const TokenEvent& ev) {
  Choice& c = *choices_.at(index);
  c.text += ev.text;
  const size_t first = c.logprobs.size();
  if (logprobs_ >= 0) {
    if (ev.logprobs.size() != ev.tokens.size())
      throw ApiError(500, "server_error", "logprobs", "internal_error",
                     "the generation service sent " + std::to_string(ev.tokens.size()) + " token(s) with " +
                         std::to_string(ev.logprobs.size()) + " logprobs");
    for (const TokenLogprob& lp : ev.logprobs) {
      c.logprobs.push_back(lp);
      c.offsets.push_back(c.offset);
      c.offset += token_bytes_(lp.token).size();
    }
  }
  if (ev.text.empty() && c.logprobs.size() == first) return "";
  return chunk(index, ev.text, logprobs_ >= 0 ? &c.logprobs : nullptr, first, "");
}

std::string ApiResponse::finish(size_t index, const RequestStats& done) {
  Choice& c = *choices_.at(index);
  c.finished = true;
  c.done = done;
  return chunk(index, "", nullptr, 0, done.finish_reason.empty() ? "stop" : done.finish_reason);
}

bool ApiResponse::all_finished() const {
  for (const auto& c : choices_)
    if (!c->finished) return false;
  return true;
}

// logprobs for tokens [first, end) of a choice, in the endpoint's shape.
static json logprobs_json(Endpoint endpoint, const std::vector<TokenLogprob>& lps, const std::vector<size_t>& offsets,
                          size_t first, const std::function<std::string(int32_t)>& token_bytes) {
  if (endpoint == Endpoint::completions) {
    // The legacy shape: parallel lists; each top_logprobs entry holds the k most likely tokens
    // and the chosen one.
    json tokens = json::array(), values = json::array(), tops = json::array(), text_offset = json::array();
    for (size_t i = first; i < lps.size(); ++i) {
      const TokenLogprob& lp = lps[i];
      tokens.push_back(token_bytes(lp.token));
      values.push_back(logprob_value(lp.logprob));
      json top = json::object();
      for (const auto& [id, value] : lp.top) top[token_bytes(id)] = logprob_value(value);
      top[token_bytes(lp.token)] = logprob_value(lp.logprob);
      tops.push_back(std::move(top));
      text_offset.push_back(offsets[i]);
    }
    return {{"tokens", tokens}, {"token_logprobs", values}, {"top_logprobs", tops}, {"text_offset", text_offset}};
  }
  json content = json::array();
  for (size_t i = first; i < lps.size(); ++i) {
    const TokenLogprob& lp = lps[i];
    const std::string bytes = token_bytes(lp.token);
    json top = json::array();
    for (const auto& [id, value] : lp.top) {
      const std::string b = token_bytes(id);
      top.push_back({{"token", b}, {"logprob", logprob_value(value)}, {"bytes", bytes_json(b)}});
    }
    content.push_back({{"token", bytes}, {"logprob", logprob_value(lp.logprob)}, {"bytes", bytes_json(bytes)},
                       {"top_logprobs", top}});
  }
  return {{"content", content}, {"refusal", nullptr}};
}

std::string ApiResponse::chunk(size_t index, const std::string& text, const std::vector<TokenLogprob>* logprobs,
                               size_t first, const std::string& finish_reason) const {
  json choice{{"index", index}};
  const json lp = logprobs ? logprobs_json(endpoint_, *logprobs, choices_[index]->offsets, first, token_bytes_)
                           : json(nullptr);
  if (endpoint_ == Endpoint::completions) {
    choice["text"] = text;
  } else {
    choice["delta"] = finish_reason.empty() ? json{{"content", text}} : json::object();
  }
  choice["logprobs"] = lp;
  choice["finish_reason"] = finish_reason.empty() ? json(nullptr) : json(openai_finish_reason(finish_reason));
  json j = envelope(endpoint_, meta_, true);
  j["choices"] = json::array({choice});
  return dump(j);
}

std::vector<std::string> ApiResponse::stream_start() const {
  std::vector<std::string> out;
  if (endpoint_ != Endpoint::chat_completions) return out;
  for (size_t i = 0; i < choices_.size(); ++i) {
    json j = envelope(endpoint_, meta_, true);
    j["choices"] = json::array({json{{"index", i},
                                     {"delta", {{"role", "assistant"}, {"content", ""}}},
                                     {"logprobs", nullptr},
                                     {"finish_reason", nullptr}}});
    out.push_back(dump(j));
  }
  return out;
}

RequestStats ApiResponse::usage() const {
  RequestStats total;
  for (size_t i = 0; i < choices_.size(); ++i) {
    const RequestStats& d = choices_[i]->done;
    if (i % static_cast<size_t>(n_) == 0) {  // once per prompt
      total.context_tokens += d.context_tokens;
      total.query_tokens += d.query_tokens;
    }
    total.generated += d.generated;
  }
  return total;
}

std::string ApiResponse::usage_chunk() const {
  json j = envelope(endpoint_, meta_, true);
  j["choices"] = json::array();
  j["usage"] = usage_json(usage());
  return dump(j);
}

std::string ApiResponse::whole_json() const {
  json choices = json::array();
  for (size_t i = 0; i < choices_.size(); ++i) {
    const Choice& c = *choices_[i];
    json choice{{"index", i}};
    if (endpoint_ == Endpoint::completions) choice["text"] = c.text;
    else choice["message"] = {{"role", "assistant"}, {"content", c.text}};
    choice["logprobs"] = logprobs_ >= 0 ? logprobs_json(endpoint_, c.logprobs, c.offsets, 0, token_bytes_) : json(nullptr);
    choice["finish_reason"] = openai_finish_reason(c.done.finish_reason);
    choices.push_back(std::move(choice));
  }
  json j = envelope(endpoint_, meta_, false);
  j["choices"] = std::move(choices);
  j["usage"] = usage_json(usage());
  return dump(j);
}

}  // namespace starattn::server
