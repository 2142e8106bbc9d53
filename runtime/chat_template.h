// Chat templates. A model that ships a template (a Jinja string in GGUF metadata or
// tokenizer_config.json) is rendered with that template, exactly as Hugging Face transformers'
// apply_chat_template renders it (runtime/jinja.h). Only a model that ships none gets one of the
// two built-in layouts, ChatML or Llama 3, as an explicit choice that is logged and noted.
#pragma once

#include <ctime>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/tokenizer.h"

namespace starattn {

namespace jinja {
class CompiledTemplate;
}

enum class ChatTemplateKind { chatml, llama3 };
const char* chat_template_name(ChatTemplateKind kind);

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

struct ChatTemplate {
  // The model's own template; null when the model ships none (then `kind` lays the chat out).
  std::shared_ptr<const jinja::CompiledTemplate> jinja;
  // The template's bos_token / eos_token variables, the tokenizer's BOS / EOS text as
  // transformers passes them; empty: left undefined.
  std::string bos_token;
  std::string eos_token;
  // The built-in layout: used to render when `jinja` is null; for a Jinja template, the family
  // its markup belongs to (informational).
  ChatTemplateKind kind = ChatTemplateKind::chatml;
  // Why a built-in layout was chosen (the model ships no template); empty for Jinja templates.
  std::string note;
  // strftime_now() in templates uses this time instead of the clock when set (tests).
  std::optional<std::tm> fixed_now;
};

// ChatML:  <|im_start|>{role}\n{content}<|im_end|>\n ... [<|im_start|>assistant\n]
// Llama 3: <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content, trimmed}
//          <|eot_id|> ... [<|start_header_id|>assistant<|end_header_id|>\n\n]
// The Llama 3 text starts with BOS itself: do not add another.
std::string apply_chat_template(ChatTemplateKind kind, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt);

// Renders `messages` with the model's Jinja template (variables: messages, add_generation_prompt,
// bos_token, eos_token, tools=None, documents=None; globals raise_exception and strftime_now) or,
// without one, with the built-in layout. A template that rejects the conversation with
// raise_exception throws std::invalid_argument carrying its message; a template we cannot render
// throws jinja::Error naming the construct and its position.
std::string apply_chat_template(const ChatTemplate& chat_template,
                                const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt);

// THE way to get a model's chat template. `model_template_text` is what read_chat_template()
// returns. Non-empty: that Jinja template, compiled now (a template we cannot parse throws
// jinja::Error), with the tokenizer's BOS / EOS text. Empty (the model ships none, byte-level
// models included): a built-in layout chosen from the vocabulary's special tokens
// (<|start_header_id|>: Llama 3, else ChatML), with a note saying so that is also logged.
ChatTemplate resolve_chat_template(const std::string& model_template_text, const Tokenizer& tokenizer);

// The template text of a model path: a .gguf's tokenizer.chat_template, or a directory's
// tokenizer_config.json "chat_template" (the "default" one when it is a list); "" when none.
std::string read_chat_template(const std::string& model_path);

}  // namespace starattn
