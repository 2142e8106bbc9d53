// The OpenAI API's requests: a JSON body checked field by field (types, ranges, nesting, what we
// do not support) into an ApiRequest, and the errors a client sees for a bad one.
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

double get_number_in(const json& v, const std::string& field, double lo, double hi) {
  const double x = get_number(v, field);
  if (x < lo || x > hi)
    throw bad_request(field, "'" + field + "' must be between " + json(lo).dump() + " and " + json(hi).dump() +
                                 ", got " + json(x).dump());
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

// logit_bias: {"token id": bias}, ids as decimal strings, as OpenAI's API takes them.
std::vector<std::pair<int32_t, float>> get_logit_bias(const json& v) {
  const std::string field = "logit_bias";
  if (!v.is_object()) throw wrong_type(field, "an object mapping token ids to numbers", v);
  if (v.size() > kMaxLogitBias)
    throw bad_request(field, "'logit_bias' may hold at most " + std::to_string(kMaxLogitBias) + " tokens");
  std::vector<std::pair<int32_t, float>> out;
  for (const auto& [key, bias] : v.items()) {
    const std::string name = field + "[" + key + "]";
    const bool digits = !key.empty() && key.size() <= 10 &&
                        key.find_first_not_of("0123456789") == std::string::npos;
    if (!digits || std::stoll(key) > std::numeric_limits<int32_t>::max())
      throw bad_request(field, "'logit_bias' keys must be token ids (non-negative integers), got \"" + key + "\"");
    out.push_back({static_cast<int32_t>(std::stoll(key)), static_cast<float>(get_number_in(bias, name, -100, 100))});
  }
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

std::vector<ChatMessage> get_messages(const json& v, std::vector<std::string>& ignored) {
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
      } else {
        ignored.push_back(field + "." + key);  // name, tool_calls, refusal, ...: no effect here
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

// A completions prompt: text or token ids, one or several.
struct Prompts {
  bool ids = false;
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> id_lists;
};

const char* kPromptForms = "a string, an array of strings, an array of token ids or an array of arrays of token ids";

std::vector<int32_t> get_ids(const json& v, const std::string& field) {
  if (v.empty()) throw bad_request(field, "'" + field + "' must not be an empty list of token ids");
  std::vector<int32_t> out;
  out.reserve(v.size());
  for (const auto& id : v) {
    if (!id.is_number_integer()) throw bad_request(field, "'" + field + "' must be " + kPromptForms);
    out.push_back(static_cast<int32_t>(get_int(id, field, 0, std::numeric_limits<int32_t>::max())));
  }
  return out;
}

Prompts get_prompts(const json& v) {
  Prompts p;
  if (v.is_string()) {
    p.texts.push_back(v.get<std::string>());
    return p;
  }
  if (!v.is_array() || v.empty()) throw bad_request("prompt", std::string("'prompt' must be ") + kPromptForms);
  if (v[0].is_string()) {
    for (const auto& s : v) {
      if (!s.is_string()) throw bad_request("prompt", std::string("'prompt' must be ") + kPromptForms);
      p.texts.push_back(s.get<std::string>());
    }
  } else if (v[0].is_number_integer()) {
    p.ids = true;
    p.id_lists.push_back(get_ids(v, "prompt"));
  } else if (v[0].is_array()) {
    p.ids = true;
    for (const auto& list : v) {
      if (!list.is_array()) throw bad_request("prompt", std::string("'prompt' must be ") + kPromptForms);
      p.id_lists.push_back(get_ids(list, "prompt"));
    }
  } else {
    throw bad_request("prompt", std::string("'prompt' must be ") + kPromptForms);
  }
  return p;
}

const char* endpoint_path(Endpoint e) {
  return e == Endpoint::completions ? "/v1/completions" : "/v1/chat/completions";
}

// Features a client may ask for with a field OpenAI defines and that this server does not have:
// answering without them would be a silently different answer, so they are refused by name.
void refuse_unsupported(Endpoint endpoint, const std::string& key, const json& v) {
  auto refuse = [&](const std::string& what) {
    throw bad_request(key, "'" + key + "' is not supported by this server: " + what);
  };
  if (endpoint == Endpoint::completions) {
    if (key == "echo" && get_bool(v, key)) refuse("the answer cannot repeat the prompt");
    if (key == "suffix" && !get_string(v, key).empty()) refuse("there is no insertion mode");
  } else {
    if ((key == "tools" || key == "functions") && (!v.is_array() || !v.empty()))
      refuse("there is no tool calling");
    if (key == "response_format") {
      if (!v.is_object() || !v.contains("type") || !v["type"].is_string())
        throw wrong_type(key, "an object with a string 'type'", v);
      if (v["type"] != "text") refuse("only {\"type\": \"text\"}");
    }
  }
}

}  // namespace

ApiError bad_request(const std::string& param, const std::string& message) {
  return ApiError(400, "invalid_request_error", param, "", message);
}

ApiError service_error_to_api(const Error& e) {
  switch (e.kind()) {
    case ErrorKind::invalid_request:
      return ApiError(400, "invalid_request_error", "", "", e.what());
    case ErrorKind::capacity:
      return ApiError(400, "invalid_request_error", "prompt", "context_length_exceeded", e.what());
    case ErrorKind::overloaded:
      return ApiError(503, "server_error", "", "overloaded", e.what());
    case ErrorKind::shutting_down:
      return ApiError(503, "server_error", "", "shutting_down", e.what());
    case ErrorKind::worker_failed:
      return ApiError(503, "server_error", "", "worker_failed", e.what());
    case ErrorKind::timeout:
      return ApiError(504, "server_error", "", "timeout", e.what());
    case ErrorKind::internal:
      break;
  }
  return ApiError(500, "server_error", "", "internal_error", e.what());
}

ApiRequest parse_api_request(Endpoint endpoint, const std::string& body) {
  check_depth(body);
  const json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) throw bad_request("", "the request body is not valid JSON");
  if (!doc.is_object()) throw bad_request("", "the request body must be a JSON object, got " + std::string(type_name(doc)));

  ApiRequest out;
  RequestSpec r;  // what every choice shares
  const bool chat = endpoint == Endpoint::chat_completions;
  r.prompt.chat = chat;
  const json* prompt = nullptr;
  const json* query = nullptr;
  bool have_messages = false, chat_logprobs = false;
  int top_logprobs = -1;
  int64_t best_of = 0;
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
        if (k2 == "include_usage") out.include_usage = get_bool(v2, key + "." + k2);
        else out.ignored_fields.push_back(key + "." + k2);
      }
    } else if (key == "max_tokens" || (chat && key == "max_completion_tokens")) {
      r.max_tokens = static_cast<int>(get_int(v, key, 0, kMaxTokensLimit));
    } else if (key == "temperature") {
      r.sampling.temperature = static_cast<float>(get_number_in(v, key, 0, 100));
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
      r.stop_strings = get_stop(v);
    } else if (key == "block_size") {
      r.block_size = get_int(v, key, 0, std::numeric_limits<int64_t>::max());
    } else if (key == "anchor_size") {
      r.anchor_size = get_int(v, key, 0, std::numeric_limits<int64_t>::max());
    } else if (key == "mode") {
      const std::string mode = get_string(v, key);
      if (mode != "star" && mode != "full")
        throw bad_request(key, "'mode' must be \"star\" or \"full\", got \"" + mode + "\"");
      r.mode = parse_mode(mode);
    } else if (key == "ignore_eos") {
      r.ignore_eos = get_bool(v, key);
    } else if (key == "n") {
      out.n = static_cast<int>(get_int(v, key, 1, kMaxChoices));
    } else if (key == "user") {
      get_string(v, key);  // accepted for compatibility, not used
    } else if (key == "presence_penalty") {
      r.logits.presence_penalty = static_cast<float>(get_number_in(v, key, -2, 2));
    } else if (key == "frequency_penalty") {
      r.logits.frequency_penalty = static_cast<float>(get_number_in(v, key, -2, 2));
    } else if (key == "logit_bias") {
      r.logits.logit_bias = get_logit_bias(v);
    } else if (!chat && key == "logprobs") {
      // An integer as OpenAI defines it; a boolean too, as some clients send `false`.
      if (v.is_boolean()) out.logprobs = v.get<bool>() ? 0 : -1;
      else out.logprobs = static_cast<int>(get_int(v, key, 0, kMaxTopLogprobs));
    } else if (chat && key == "logprobs") {
      chat_logprobs = get_bool(v, key);
    } else if (chat && key == "top_logprobs") {
      top_logprobs = static_cast<int>(get_int(v, key, 0, kMaxTopLogprobs));
    } else if (!chat && key == "best_of") {
      best_of = get_int(v, key, 1, kMaxChoices);
    } else if (!chat && (key == "echo" || key == "suffix")) {
      refuse_unsupported(endpoint, key, v);
    } else if (chat && (key == "tools" || key == "functions" || key == "response_format")) {
      refuse_unsupported(endpoint, key, v);
    } else if (key == "context_id") {
      out.context_id = get_string(v, key);
      if (out.context_id.empty()) throw bad_request(key, "'context_id' must not be empty");
    } else if (!chat && key == "prompt") {
      prompt = &v;
    } else if (!chat && key == "query") {
      query = &v;
    } else if (chat && key == "messages") {
      r.prompt.messages = get_messages(v, out.ignored_fields);
      have_messages = true;
    } else {
      out.ignored_fields.push_back(key);
    }
  }
  if (chat) {
    if (top_logprobs >= 0 && !chat_logprobs)
      throw bad_request("top_logprobs", "'top_logprobs' needs 'logprobs': true");
    if (chat_logprobs) out.logprobs = top_logprobs < 0 ? 0 : top_logprobs;
  }
  if (best_of > out.n)
    throw bad_request("best_of", "'best_of' larger than 'n' is not supported by this server (every generated "
                                 "choice is returned)");
  r.logits.top_logprobs = out.logprobs;
  if (r.anchor_size > 0 && r.block_size > 0 && r.anchor_size > r.block_size)
    throw bad_request("anchor_size", "'anchor_size' (" + std::to_string(r.anchor_size) +
                                         ") must not exceed 'block_size' (" + std::to_string(r.block_size) + ")");

  std::vector<RequestSpec> prompts;  // one per prompt, before n
  if (chat) {
    if (!have_messages) throw bad_request("messages", "'messages' is required");
    bool has_user = false;
    for (const auto& m : r.prompt.messages) has_user |= m.role == "user";
    if (!has_user) throw bad_request("messages", "'messages' needs at least one \"user\" message");
    if (!out.context_id.empty()) {
      // The document is the context; the one user message is the question about it.
      if (r.prompt.messages.size() != 1)
        throw bad_request("messages", "a chat naming 'context_id' takes one \"user\" message (the question)");
      RequestSpec t = r;
      t.prompt.chat = false;
      t.prompt.query_is_text = true;
      t.prompt.query_text = r.prompt.messages.front().content;
      t.prompt.messages.clear();
      if (t.prompt.query_text.empty()) throw bad_request("messages", "the question must not be empty");
      prompts.push_back(std::move(t));
    } else {
      prompts.push_back(r);
    }
  } else {
    if (!prompt) throw bad_request("prompt", "'prompt' is required");
    const Prompts p = get_prompts(*prompt);
    const size_t count = p.ids ? p.id_lists.size() : p.texts.size();
    if (count * static_cast<size_t>(out.n) > static_cast<size_t>(kMaxChoices))
      throw bad_request(out.n > 1 ? "n" : "prompt", "prompts x n must be at most " + std::to_string(kMaxChoices) +
                                                        ", got " + std::to_string(count) + " x " + std::to_string(out.n));
    if (!out.context_id.empty()) {
      // The document registered under context_id is the context; every prompt is a question.
      if (query) throw bad_request("query", "give 'context_id' or 'query', not both");
      for (size_t i = 0; i < count; ++i) {
        RequestSpec t = r;
        if (p.ids) {
          t.prompt.query = p.id_lists[i];
        } else {
          if (p.texts[i].empty()) throw bad_request("prompt", "'prompt' must not be empty");
          t.prompt.query_is_text = true;
          t.prompt.query_text = p.texts[i];
        }
        prompts.push_back(std::move(t));
      }
    } else if (query) {
      // The explicit split: every prompt is a context, `query` the question about each.
      if (p.ids) {
        if (!query->is_array()) throw bad_request("query", "with token-id prompts 'query' must be token ids too");
        const std::vector<int32_t> q = get_ids(*query, "query");
        for (const auto& ids : p.id_lists) {
          RequestSpec t = r;
          t.prompt.context = ids;
          t.prompt.query = q;
          prompts.push_back(std::move(t));
        }
      } else {
        const std::string q = get_string(*query, "query");
        if (q.empty()) throw bad_request("query", "'query' must not be empty");
        for (const auto& text : p.texts) {
          RequestSpec t = r;
          t.prompt.context_is_text = t.prompt.query_is_text = true;
          t.prompt.context_text = text;
          t.prompt.query_text = q;
          prompts.push_back(std::move(t));
        }
      }
    } else if (p.ids) {
      for (const auto& ids : p.id_lists) {
        PlainPromptIdsSplit s = split_plain_prompt_ids(ids, kPlainPromptLimits);
        RequestSpec t = r;
        t.prompt.context = std::move(s.context);
        t.prompt.query = std::move(s.query);
        prompts.push_back(std::move(t));
      }
    } else {
      for (size_t i = 0; i < p.texts.size(); ++i) {
        if (p.texts[i].empty())
          throw bad_request("prompt", p.texts.size() > 1 ? "prompt " + std::to_string(i) + " is empty"
                                                         : "'prompt' must not be empty");
        PlainPromptSplit s = split_plain_prompt(p.texts[i], kPlainPromptLimits);
        RequestSpec t = r;
        t.prompt.context_is_text = t.prompt.query_is_text = true;
        t.prompt.context_text = std::move(s.context);
        t.prompt.query_text = std::move(s.query);
        prompts.push_back(std::move(t));
      }
    }
  }
  // n copies of each prompt; sampled copies get seeds seed, seed + 1, ... so they differ and each
  // stays reproducible. Greedy copies are the same request n times.
  for (const RequestSpec& t : prompts) {
    for (int j = 0; j < out.n; ++j) {
      out.choices.push_back(t);
      if (t.sampling.temperature > 0) out.choices.back().sampling.seed = t.sampling.seed + static_cast<uint64_t>(j);
    }
  }
  if (!out.ignored_fields.empty() && logging::enabled(logging::Level::debug)) {
    std::string names;
    for (const auto& f : out.ignored_fields) names += (names.empty() ? "" : ", ") + f;
    logging::debug("%s: ignoring fields this server does not define: %s", endpoint_path(endpoint), names.c_str());
  }
  return out;
}

}  // namespace starattn::server
