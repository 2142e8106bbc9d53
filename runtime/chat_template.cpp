// Chat templates: the model's Jinja template rendered as transformers does, or, for a model that
// ships none, a built-in layout chosen from its vocabulary.
#include "runtime/chat_template.h"

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "runtime/bpe_tokenizer.h"
#include "runtime/gguf.h"
#include "runtime/jinja.h"

namespace starattn {
namespace {

std::string trim(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const size_t begin = s.find_first_not_of(ws);
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(ws) - begin + 1);
}

// The text of the tokenizer's special token `id`; "" when there is none.
std::string special_text(const Tokenizer& tokenizer, int32_t id) {
  const auto* bpe = dynamic_cast<const BpeTokenizer*>(&tokenizer);
  if (!bpe || id < 0 || id >= bpe->vocab_size()) return "";
  return bpe->token_text(id);
}

// transformers' strftime_now: datetime.now().strftime(format).
std::string strftime_now(const std::string& format, const std::optional<std::tm>& fixed_now) {
  std::tm now{};
  if (fixed_now) {
    now = *fixed_now;
  } else {
    const std::time_t t = std::time(nullptr);
    localtime_r(&t, &now);
  }
  char buf[256];
  const size_t n = std::strftime(buf, sizeof(buf), format.c_str(), &now);
  if (n == 0 && !format.empty()) throw std::runtime_error("strftime_now(\"" + format + "\") gave nothing or too much");
  return std::string(buf, n);
}

std::string render_jinja(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                         bool add_generation_prompt) {
  using jinja::Value;
  jinja::ValueList list;
  for (const ChatMessage& m : messages) {
    jinja::ValueDict d;
    d.set("role", Value::string(m.role));
    d.set("content", Value::string(m.content));
    list.push_back(Value::dict(std::move(d)));
  }
  jinja::ValueDict vars;
  vars.set("messages", Value::list(std::move(list)));
  vars.set("add_generation_prompt", Value::boolean(add_generation_prompt));
  vars.set("tools", Value::none());
  vars.set("documents", Value::none());
  if (!t.bos_token.empty()) vars.set("bos_token", Value::string(t.bos_token));
  if (!t.eos_token.empty()) vars.set("eos_token", Value::string(t.eos_token));
  vars.set("raise_exception", Value::function("raise_exception", [](const jinja::CallArgs& a) -> Value {
    throw jinja::RaisedError(a.positional.empty() ? std::string() : jinja::to_str(a.positional[0]));
  }));
  const std::optional<std::tm> fixed_now = t.fixed_now;
  vars.set("strftime_now", Value::function("strftime_now", [fixed_now](const jinja::CallArgs& a) {
    if (a.positional.size() != 1 || !a.positional[0].is_string())
      throw std::runtime_error("strftime_now takes one format string");
    return Value::string(strftime_now(a.positional[0].as_string(), fixed_now));
  }));
  try {
    return t.jinja->render(vars);
  } catch (const jinja::RaisedError& e) {
    throw std::invalid_argument(std::string("the model's chat template rejects this conversation: ") + e.what());
  }
}

}  // namespace

const char* chat_template_name(ChatTemplateKind kind) {
  return kind == ChatTemplateKind::llama3 ? "llama3" : "chatml";
}

std::string apply_chat_template(ChatTemplateKind kind, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt) {
  std::string out;
  if (kind == ChatTemplateKind::chatml) {
    for (const ChatMessage& m : messages)
      out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    if (add_generation_prompt) out += "<|im_start|>assistant\n";
    return out;
  }
  out = "<|begin_of_text|>";
  for (const ChatMessage& m : messages)
    out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + trim(m.content) + "<|eot_id|>";
  if (add_generation_prompt) out += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return out;
}

std::string apply_chat_template(const ChatTemplate& t, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt) {
  if (t.jinja) return render_jinja(t, messages, add_generation_prompt);
  return apply_chat_template(t.kind, messages, add_generation_prompt);
}

ChatTemplate resolve_chat_template(const std::string& text, const Tokenizer& tokenizer) {
  ChatTemplate t;
  const auto* bpe = dynamic_cast<const BpeTokenizer*>(&tokenizer);
  if (!text.empty()) {
    t.jinja = std::make_shared<const jinja::CompiledTemplate>(text);
    t.bos_token = special_text(tokenizer, tokenizer.bos_id());
    const std::vector<int32_t> eos = tokenizer.eos_ids();
    if (!eos.empty()) t.eos_token = special_text(tokenizer, eos.front());
    if (text.find("<|start_header_id|>") != std::string::npos) t.kind = ChatTemplateKind::llama3;
    return t;
  }
  if (bpe && bpe->token_id("<|start_header_id|>") >= 0) {
    t.kind = ChatTemplateKind::llama3;
    t.note = "the model has no chat template; its vocabulary has <|start_header_id|>, so using the built-in Llama 3 layout";
  } else if (bpe && bpe->token_id("<|im_start|>") >= 0) {
    t.note = "the model has no chat template; its vocabulary has <|im_start|>, so using the built-in ChatML layout";
  } else {
    t.note = "the model has no chat template; falling back to the built-in ChatML layout";
  }
  std::fprintf(stderr, "starattn: chat template: %s\n", t.note.c_str());
  return t;
}

std::string read_chat_template(const std::string& model_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_regular_file(model_path, ec)) {
    const GgufFile f(model_path);
    return f.get_string("tokenizer.chat_template", "");
  }
  std::ifstream in(fs::path(model_path) / "tokenizer_config.json");
  if (!in) return "";
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("chat_template")) return "";
  const nlohmann::json& t = j["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (t.is_array())
    for (const nlohmann::json& named : t)
      if (named.is_object() && named.value("name", "") == "default" && named.contains("template") &&
          named["template"].is_string())
        return named["template"].get<std::string>();
  return "";
}

}  // namespace starattn
