#include "server/contexts.h"

#include <cstdio>

#include <nlohmann/json.hpp>

#include "runtime/log.h"

namespace starattn::server {
namespace {

using json = nlohmann::json;

ApiError bad(const std::string& param, const std::string& message) {
  return ApiError(400, "invalid_request_error", param, "", message);
}

// The request that encodes a context's blocks and pins them under its id: the same prompt
// layout as a question about it (the document's ids do not depend on the question), no tokens.
RequestSpec pin_request(const RegisteredContext& c, const std::string& id) {
  RequestSpec r;
  if (c.ids) {
    r.prompt.context = c.tokens;
    r.prompt.query = {c.tokens.front()};
  } else {
    r.prompt.context_is_text = r.prompt.query_is_text = true;
    r.prompt.context_text = c.document;
    r.prompt.query_text = "?";
  }
  r.mode = c.mode;
  r.block_size = c.block_size;
  r.anchor_size = c.anchor_size;
  r.max_tokens = 0;
  r.pin_context = id;
  return r;
}

}  // namespace

std::string ContextRegistry::create(GenerationService& service, const std::string& body) {
  json doc;
  try {
    doc = json::parse(body);
  } catch (const json::parse_error& e) {
    throw bad("", std::string("the body is not valid JSON: ") + e.what());
  }
  if (!doc.is_object()) throw bad("", "the body must be a JSON object");
  RegisteredContext c;
  bool given = false;
  for (const auto& [key, v] : doc.items()) {
    if (key == "document") {
      if (!v.is_string()) throw bad(key, "'document' must be a string");
      c.document = v.get<std::string>();
      if (c.document.empty()) throw bad(key, "'document' must not be empty");
      given = true;
    } else if (key == "context_ids") {
      if (!v.is_array() || v.empty()) throw bad(key, "'context_ids' must be a non-empty array of token ids");
      for (const auto& t : v) {
        if (!t.is_number_integer()) throw bad(key, "'context_ids' must hold integers");
        c.tokens.push_back(t.get<int32_t>());
      }
      c.ids = given = true;
    } else if (key == "mode") {
      if (!v.is_string()) throw bad(key, "'mode' must be \"star\" or \"full\"");
      try {
        c.mode = parse_mode(v.get<std::string>());
      } catch (const std::exception& e) {
        throw bad(key, e.what());
      }
    } else if (key == "block_size" || key == "anchor_size") {
      if (!v.is_number_integer() || v.get<int64_t>() < 0) throw bad(key, "'" + key + "' must be a non-negative integer");
      (key == "block_size" ? c.block_size : c.anchor_size) = v.get<int64_t>();
    } else if (key != "model") {
      throw bad(key, "unknown field '" + key + "' (document, context_ids, mode, block_size, anchor_size)");
    }
  }
  if (!given) throw bad("document", "give 'document' (text) or 'context_ids' (token ids)");
  if (!c.document.empty() && c.ids) throw bad("document", "give 'document' or 'context_ids', not both");
  std::string id;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (contexts_.size() >= max_)
      throw ApiError(429, "rate_limit_error", "", "too_many_contexts",
                     std::to_string(max_) + " contexts are registered: DELETE one first");
    char text[32];
    std::snprintf(text, sizeof(text), "ctx-%llx", static_cast<unsigned long long>(next_++));
    id = text;
    contexts_[id] = c;
  }
  // Encoding runs in the background like any request; a question naming the context before it
  // ends is still right (it encodes or waits behind it) and pins the blocks too.
  StreamCallbacks cb;
  cb.on_token = [](const TokenEvent&) { return true; };
  cb.on_done = [](const RequestStats&) {};
  cb.on_error = [id](const Error& e) {
    logging::warn("context %s: encoding its blocks failed: %s", id.c_str(), e.what());
  };
  service.submit(pin_request(c, id), std::move(cb));
  json out{{"id", id}, {"object", "context"}, {"mode", mode_name(c.mode)}};
  if (c.ids) out["context_tokens"] = c.tokens.size();
  return out.dump();
}

std::string ContextRegistry::remove(GenerationService& service, const std::string& id) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (contexts_.erase(id) == 0)
      throw ApiError(404, "invalid_request_error", "context_id", "context_not_found", "no context '" + id + "'");
  }
  service.release_context(id);
  return json{{"id", id}, {"object", "context"}, {"deleted", true}}.dump();
}

void ContextRegistry::apply(ApiRequest& request) const {
  if (request.context_id.empty()) return;
  RegisteredContext c;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = contexts_.find(request.context_id);
    if (it == contexts_.end())
      throw ApiError(404, "invalid_request_error", "context_id", "context_not_found",
                     "no context '" + request.context_id + "' (POST /v1/contexts registers one)");
    c = it->second;
  }
  for (RequestSpec& r : request.choices) {
    if (c.ids) {
      if (r.prompt.query_is_text)
        throw ApiError(400, "invalid_request_error", "prompt", "",
                       "context '" + request.context_id + "' holds token ids: the prompt must be ids too");
      r.prompt.context = c.tokens;
    } else {
      if (!r.prompt.query_is_text)
        throw ApiError(400, "invalid_request_error", "prompt", "",
                       "context '" + request.context_id + "' holds text: the prompt must be text too");
      r.prompt.context_is_text = true;
      r.prompt.context_text = c.document;
    }
    r.mode = c.mode;
    if (r.block_size == 0) r.block_size = c.block_size;
    if (r.anchor_size == 0) r.anchor_size = c.anchor_size;
    r.pin_context = request.context_id;
  }
}

bool context_path_id(const std::string& path, std::string& id) {
  const std::string prefix = "/v1/contexts/";
  if (path.rfind(prefix, 0) != 0 || path.size() == prefix.size()) return false;
  id = path.substr(prefix.size());
  return id.find('/') == std::string::npos;
}

}  // namespace starattn::server
