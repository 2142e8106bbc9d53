// The built-in chat templates and choosing one from a model's own template text.
#include "runtime/chat_template.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "runtime/bpe_tokenizer.h"
#include "runtime/gguf.h"

namespace starattn {
namespace {

std::string trim(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const size_t begin = s.find_first_not_of(ws);
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(ws) - begin + 1);
}

bool has_system(const std::vector<ChatMessage>& messages) {
  return !messages.empty() && messages.front().role == "system";
}

// The fixed system message a ChatML template writes itself, if any: the text between a literal
// "<|im_start|>system\n" and the next "<|im_end|>" when it contains no template syntax. Jinja
// string literals spell the newline as the two characters "\n"; both spellings are accepted.
std::string fixed_system_message(const std::string& t) {
  for (const char* const open : {"<|im_start|>system\n", "<|im_start|>system\\n"}) {
    const size_t start = t.find(open);
    if (start == std::string::npos) continue;
    const size_t begin = start + std::strlen(open);
    const size_t end = t.find("<|im_end|>", begin);
    if (end == std::string::npos) continue;
    const std::string text = t.substr(begin, end - begin);
    if (text.empty() || text.find_first_of("{}'\"+") != std::string::npos) continue;
    return text;
  }
  return "";
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
  if (t.default_system.empty() || has_system(messages))
    return apply_chat_template(t.kind, messages, add_generation_prompt);
  std::vector<ChatMessage> with_system;
  with_system.push_back({"system", t.default_system});
  with_system.insert(with_system.end(), messages.begin(), messages.end());
  return apply_chat_template(t.kind, with_system, add_generation_prompt);
}

ChatTemplate detect_chat_template(const std::string& text, const Tokenizer& tokenizer) {
  ChatTemplate t;
  if (text.find("<|im_start|>") != std::string::npos) {
    t.kind = ChatTemplateKind::chatml;
    t.default_system = fixed_system_message(text);
    return t;
  }
  if (text.find("<|start_header_id|>") != std::string::npos) {
    t.kind = ChatTemplateKind::llama3;
    return t;
  }
  const std::string what = text.empty() ? "the model has no chat template"
                                        : "the model's chat template is not one we recognise";
  if (const auto* bpe = dynamic_cast<const BpeTokenizer*>(&tokenizer)) {
    if (bpe->token_id("<|start_header_id|>") >= 0) {
      t.kind = ChatTemplateKind::llama3;
      t.note = what + "; its vocabulary has <|start_header_id|>, so using Llama 3";
      return t;
    }
    if (bpe->token_id("<|im_start|>") >= 0) {
      t.note = what + "; its vocabulary has <|im_start|>, so using ChatML";
      return t;
    }
  }
  t.note = what + "; falling back to ChatML";
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
