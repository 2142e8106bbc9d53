#include "server/http_api.h"

#include <cmath>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

namespace starattn::server {
namespace {

using json = nlohmann::json;

// Generated text is whatever bytes the model produced; invalid UTF-8 becomes U+FFFD instead of
// making the serializer throw.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// The parser is iterative, but deeply nested values are still useless and costly to build and
// destroy; refuse them before parsing. Brackets inside strings do not count.
void check_depth(const std::string& body) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (char c : body) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth)
        throw bad_request("", "the request nests JSON deeper than " + std::to_string(kMaxJsonDepth) + " levels");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

const char* type_name(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

ApiError wrong_type(const std::string& field, const char* expected, const json& v) {
  return bad_request(field, "'" + field + "' must be " + expected + ", got " + type_name(v));
}

int64_t get_int(const json& v, const std::string& field, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) throw wrong_type(field, "an integer", v);
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi))
    throw bad_request(field, "'" + field + "' must be at most " + std::to_string(hi));
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    throw bad_request(field, "'" + field + "' must be between " + std::to_string(lo) + " and " +
                                 std::to_string(hi) + ", got " + std::to_string(x));
  return x;
}

double get_number(const json& v, const std::string& field) {
  if (!v.is_number()) throw wrong_type(field, "a number", v);
  const double x = v.get<double>();
  if (!std::isfinite(x)) throw bad_request(field, "'" + field + "' must be finite");
  return x;
}

bool get_bool(const json& v, const std::string& field) {
  if (!v.is_boolean()) throw wrong_type(field, "a boolean", v);
  return v.get<bool>();
}

std::string get_string(const json& v, const std::string& field) {
  if (!v.is_string()) throw wrong_type(field, "a string", v);
  return v.get<std::string>();
}

std::vector<std::string> get_stop(const json& v) {
  if (v.is_string()) return {v.get<std::string>()};
  if (!v.is_array()) throw wrong_type("stop", "a string or an array of strings", v);
  if (v.size() > 16) throw bad_request("stop", "'stop' may hold at most 16 strings");
  std::vector<std::string> out;
  for (const auto& s : v) out.push_back(get_string(s, "stop"));
  return out;
}

// Message content: a string, or OpenAI's list of parts of which we take the text parts.
std::string get_content(const json& v, const std::string& field) {
  if (v.is_string()) return v.get<std::string>();
  if (!v.is_array()) throw wrong_type(field, "a string or an array of text parts", v);
  std::string text;
  for (const auto& part : v) {
    if (!part.is_object()) throw wrong_type(field, "an array of objects", part);
    const auto type = part.find("type");
    if (type == part.end() || !type->is_string() || *type != "text" || !part.contains("text"))
      throw bad_request(field, "'" + field + "' parts must be {\"type\":\"text\",\"text\":...}");
    text += get_string(part["text"], field + ".text");
  }
  return text;
}

std::vector<ChatMessage> get_messages(const json& v) {
  if (!v.is_array()) throw wrong_type("messages", "an array", v);
  if (v.empty()) throw bad_request("messages", "'messages' must not be empty");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string field = "messages[" + std::to_string(i) + "]";
    const json& m = v[i];
    if (!m.is_object()) throw wrong_type(field, "an object", m);
    ChatMessage msg;
    bool have_role = false, have_content = false;
    for (const auto& [key, value] : m.items()) {
      if (key == "role") {
        msg.role = get_string(value, field + ".role");
        have_role = true;
      } else if (key == "content") {
        msg.content = get_content(value, field + ".content");
        have_content = true;
      } else if (key != "name") {
        throw bad_request(field + "." + key, "unknown field '" + key + "' in " + field);
      }
    }
    if (!have_role) throw bad_request(field + ".role", field + " has no 'role'");
    if (!have_content) throw bad_request(field + ".content", field + " has no 'content'");
    static const std::set<std::string> kRoles{"system", "developer", "user", "assistant", "tool"};
    if (!kRoles.count(msg.role))
      throw bad_request(field + ".role", "unknown role '" + msg.role + "' in " + field);
    if (msg.role == "developer") msg.role = "system";  // OpenAI's newer name for it
    out.push_back(std::move(msg));
  }
  return out;
}

json usage(const Completion& done) {
  return {{"prompt_tokens", done.prompt_tokens},
          {"completion_tokens", done.completion_tokens},
          {"total_tokens", done.prompt_tokens + done.completion_tokens}};
}

const char* object_name(Endpoint endpoint, bool chunk) {
  if (endpoint == Endpoint::completions) return "text_completion";
  return chunk ? "chat.completion.chunk" : "chat.completion";
}

json envelope(Endpoint endpoint, const ResponseMeta& meta, bool chunk) {
  return {{"id", meta.id}, {"object", object_name(endpoint, chunk)}, {"created", meta.created},
          {"model", meta.model}};
}

}  // namespace

ApiError bad_request(const std::string& param, const std::string& message) {
  return ApiError(400, "invalid_request_error", param, "", message);
}

ApiError service_error_to_api(const ServiceError& e) {
  switch (e.kind) {
    case ErrorKind::invalid_request:
      return ApiError(400, "invalid_request_error", "", "", e.message);
    case ErrorKind::capacity:
      return ApiError(400, "invalid_request_error", "prompt", "context_length_exceeded", e.message);
    case ErrorKind::overloaded:
      return ApiError(503, "server_error", "", "overloaded", e.message);
    case ErrorKind::shutting_down:
      return ApiError(503, "server_error", "", "shutting_down", e.message);
    case ErrorKind::worker_failed:
      return ApiError(503, "server_error", "", "worker_failed", e.message);
    case ErrorKind::timeout:
      return ApiError(504, "server_error", "", "timeout", e.message);
    case ErrorKind::internal:
      break;
  }
  return ApiError(500, "server_error", "", "internal_error", e.message);
}

ApiRequest parse_api_request(Endpoint endpoint, const std::string& body) {
  check_depth(body);
  const json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) throw bad_request("", "the request body is not valid JSON");
  if (!doc.is_object()) throw bad_request("", "the request body must be a JSON object, got " + std::string(type_name(doc)));

  ApiRequest out;
  TextRequest& r = out.request;
  r.chat = endpoint == Endpoint::chat_completions;
  bool have_prompt = false, have_query = false, have_messages = false;
  for (const auto& [key, v] : doc.items()) {
    // null means "not given" for every optional field, as OpenAI's API treats it.
    if (v.is_null() && key != "prompt" && key != "query" && key != "messages") continue;
    if (key == "model") {
      out.model = get_string(v, key);
    } else if (key == "stream") {
      out.stream = get_bool(v, key);
    } else if (key == "stream_options") {
      if (!v.is_object()) throw wrong_type(key, "an object", v);
      for (const auto& [k2, v2] : v.items()) {
        if (k2 != "include_usage") throw bad_request(key + "." + k2, "unknown field '" + k2 + "' in stream_options");
        out.include_usage = get_bool(v2, key + "." + k2);
      }
    } else if (key == "max_tokens" || (r.chat && key == "max_completion_tokens")) {
      r.max_tokens = static_cast<int>(get_int(v, key, 0, kMaxTokensLimit));
    } else if (key == "temperature") {
      const double t = get_number(v, key);
      if (t < 0 || t > 100) throw bad_request(key, "'temperature' must be between 0 and 100");
      r.sampling.temperature = static_cast<float>(t);
    } else if (key == "top_p") {
      const double p = get_number(v, key);
      if (!(p > 0 && p <= 1)) throw bad_request(key, "'top_p' must be in (0, 1]");
      r.sampling.top_p = static_cast<float>(p);
    } else if (key == "top_k") {
      r.sampling.top_k = static_cast<int>(get_int(v, key, 0, std::numeric_limits<int>::max()));
    } else if (key == "seed") {
      if (!v.is_number_integer()) throw wrong_type(key, "an integer", v);
      r.sampling.seed = v.is_number_unsigned() ? v.get<uint64_t>() : static_cast<uint64_t>(v.get<int64_t>());
    } else if (key == "stop") {
      r.stop = get_stop(v);
    } else if (key == "block_size") {
      r.block_size = get_int(v, key, 0, std::numeric_limits<int64_t>::max());
    } else if (key == "anchor_size") {
      r.anchor_size = get_int(v, key, 0, std::numeric_limits<int64_t>::max());
    } else if (key == "mode") {
      r.mode = get_string(v, key);
      if (r.mode != "star" && r.mode != "full")
        throw bad_request(key, "'mode' must be \"star\" or \"full\", got \"" + r.mode + "\"");
    } else if (key == "ignore_eos") {
      r.ignore_eos = get_bool(v, key);
    } else if (key == "n") {
      if (get_int(v, key, 1, 1) != 1) throw bad_request(key, "'n' must be 1");
    } else if (key == "user") {
      get_string(v, key);  // accepted for compatibility, not used
    } else if (!r.chat && key == "prompt") {
      // A string, or a list holding one string (what some clients send).
      if (v.is_array() && v.size() == 1 && v[0].is_string()) r.context = v[0].get<std::string>();
      else r.context = get_string(v, key);
      have_prompt = true;
    } else if (!r.chat && key == "query") {
      r.query = get_string(v, key);
      have_query = true;
    } else if (r.chat && key == "messages") {
      r.messages = get_messages(v);
      have_messages = true;
    } else {
      throw bad_request(key, "unknown field '" + key + "'");
    }
  }
  if (r.chat) {
    if (!have_messages) throw bad_request("messages", "'messages' is required");
    bool has_user = false;
    for (const auto& m : r.messages) has_user |= m.role == "user";
    if (!has_user) throw bad_request("messages", "'messages' needs at least one \"user\" message");
  } else {
    if (!have_prompt) throw bad_request("prompt", "'prompt' (the context) is required");
    if (!have_query) throw bad_request("query", "'query' (the question about the prompt) is required");
    if (r.query.empty()) throw bad_request("query", "'query' must not be empty");
  }
  if (r.anchor_size > 0 && r.block_size > 0 && r.anchor_size > r.block_size)
    throw bad_request("anchor_size", "'anchor_size' (" + std::to_string(r.anchor_size) +
                                         ") must not exceed 'block_size' (" + std::to_string(r.block_size) + ")");
  return out;
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

std::string completion_json(Endpoint endpoint, const ResponseMeta& meta, const std::string& text,
                            const Completion& done) {
  json choice{{"index", 0}, {"finish_reason", openai_finish_reason(done.finish_reason)}};
  if (endpoint == Endpoint::completions) {
    choice["text"] = text;
    choice["logprobs"] = nullptr;
  } else {
    choice["message"] = {{"role", "assistant"}, {"content", text}};
  }
  json j = envelope(endpoint, meta, false);
  j["choices"] = json::array({choice});
  j["usage"] = usage(done);
  return dump(j);
}

std::string chunk_json(Endpoint endpoint, const ResponseMeta& meta, const std::string& text,
                       const std::string& finish_reason) {
  json choice{{"index", 0}};
  choice["finish_reason"] = finish_reason.empty() ? json(nullptr) : json(openai_finish_reason(finish_reason));
  if (endpoint == Endpoint::completions) {
    choice["text"] = text;
    choice["logprobs"] = nullptr;
  } else {
    choice["delta"] = finish_reason.empty() || !text.empty() ? json{{"content", text}} : json::object();
  }
  json j = envelope(endpoint, meta, true);
  j["choices"] = json::array({choice});
  return dump(j);
}

std::string chat_role_chunk_json(const ResponseMeta& meta) {
  json j = envelope(Endpoint::chat_completions, meta, true);
  j["choices"] = json::array({json{{"index", 0},
                                   {"delta", {{"role", "assistant"}, {"content", ""}}},
                                   {"finish_reason", nullptr}}});
  return dump(j);
}

std::string usage_chunk_json(Endpoint endpoint, const ResponseMeta& meta, const Completion& done) {
  json j = envelope(endpoint, meta, true);
  j["choices"] = json::array();
  j["usage"] = usage(done);
  return dump(j);
}

}  // namespace starattn::server
