// Chat templates built in: ChatML (SmolLM2, Qwen) and Llama 3. A model's own template (a Jinja
// string in GGUF metadata or tokenizer_config.json) is only inspected to pick one of these; we
// do not run Jinja.
#pragma once

#include <string>
#include <vector>

#include "runtime/tokenizer.h"

namespace starattn {

enum class ChatTemplateKind { chatml, llama3 };
const char* chat_template_name(ChatTemplateKind kind);

struct ChatMessage {
  std::string role;  // "system", "user", "assistant", ...
  std::string content;
};

// A template choice plus what the model's template adds on its own.
struct ChatTemplate {
  ChatTemplateKind kind = ChatTemplateKind::chatml;
  // Inserted as the first message when the conversation has no system message (SmolLM2's
  // template does this with "You are a helpful AI assistant named SmolLM, trained by Hugging
  // Face"); empty: none.
  std::string default_system;
  // Why this template was chosen, when it was a guess (no or unrecognised template text).
  std::string note;
};

// ChatML:  <|im_start|>{role}\n{content}<|im_end|>\n ... [<|im_start|>assistant\n]
// Llama 3: <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content, trimmed}
//          <|eot_id|> ... [<|start_header_id|>assistant<|end_header_id|>\n\n]
// The Llama 3 text starts with BOS itself: do not add another.
std::string apply_chat_template(ChatTemplateKind kind, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt);
std::string apply_chat_template(const ChatTemplate& chat_template,
                                const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt);

// Picks the template from the model's template text: "<|im_start|>" means ChatML,
// "<|start_header_id|>" Llama 3. With no or unrecognised text the tokenizer's special tokens
// decide, and failing that ChatML, with a note saying so. A ChatML template that writes a fixed
// "<|im_start|>system\n...<|im_end|>" gives that text as the default system message.
ChatTemplate detect_chat_template(const std::string& template_text, const Tokenizer& tokenizer);

// The template text of a model path: a .gguf's tokenizer.chat_template, or a directory's
// tokenizer_config.json "chat_template" (the "default" one when it is a list); "" when none.
std::string read_chat_template(const std::string& model_path);

}  // namespace starattn
