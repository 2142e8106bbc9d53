// Chat templates: exact ChatML and Llama 3 text, the choice from template text / vocabulary,
// SmolLM2's default system message, and SmolLM2's real template from its GGUF.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>

#include "runtime/bpe_tokenizer.h"
#include "runtime/chat_template.h"
#include "tests/support/smollm2.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

using ::testing::HasSubstr;

// SmolLM2-135M-Instruct's tokenizer.chat_template, as its GGUF holds it.
const char* const kSmolLM2Template =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\n' }}{% endif %}";

const std::vector<ChatMessage> kChat = {
    {"system", "Be brief."}, {"user", "Hi!"}, {"assistant", "Hello."}, {"user", "  2+2?\n"}};

TEST(ChatTemplate, ChatML) {
  EXPECT_EQ(apply_chat_template(ChatTemplateKind::chatml, kChat, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n  2+2?\n<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(apply_chat_template(ChatTemplateKind::chatml, {{"user", "x"}}, false),
            "<|im_start|>user\nx<|im_end|>\n");
}

TEST(ChatTemplate, Llama3) {
  EXPECT_EQ(apply_chat_template(ChatTemplateKind::llama3, kChat, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplate, SmolLM2DefaultSystemMessage) {
  const ByteTokenizer bytes;
  const ChatTemplate t = detect_chat_template(kSmolLM2Template, bytes);
  EXPECT_EQ(t.kind, ChatTemplateKind::chatml);
  EXPECT_EQ(t.default_system, "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  EXPECT_TRUE(t.note.empty());
  EXPECT_EQ(apply_chat_template(t, {{"user", "Hi"}}, true),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
            "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  // A system message of the caller's replaces it.
  EXPECT_EQ(apply_chat_template(t, {{"system", "S"}, {"user", "Hi"}}, false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n");
}

TEST(ChatTemplate, Detection) {
  const ByteTokenizer bytes;
  const std::string qwen_like =
      "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
      "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
  const ChatTemplate chatml = detect_chat_template(qwen_like, bytes);
  EXPECT_EQ(chatml.kind, ChatTemplateKind::chatml);
  EXPECT_EQ(chatml.default_system, "");
  const ChatTemplate qwen25 = detect_chat_template(
      "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
      "assistant.<|im_end|>\\n' }}",
      bytes);
  EXPECT_EQ(qwen25.default_system, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  EXPECT_EQ(detect_chat_template("{{ '<|start_header_id|>' + message['role'] }}", bytes).kind,
            ChatTemplateKind::llama3);
  const ChatTemplate none = detect_chat_template("", bytes);
  EXPECT_EQ(none.kind, ChatTemplateKind::chatml);
  EXPECT_THAT(none.note, HasSubstr("no chat template; falling back to ChatML"));
  EXPECT_THAT(detect_chat_template("{{ weird }}", bytes).note, HasSubstr("not one we recognise"));

  // Without template text, the vocabulary's special tokens decide.
  BpeVocab v;
  v.tokens = {"a"};
  v.added = {{"<|start_header_id|>", 1}};
  const BpeTokenizer llama_vocab(v);
  const ChatTemplate by_vocab = detect_chat_template("", llama_vocab);
  EXPECT_EQ(by_vocab.kind, ChatTemplateKind::llama3);
  EXPECT_THAT(by_vocab.note, HasSubstr("<|start_header_id|>"));
}

TEST(ChatTemplate, ReadsTemplateText) {
  starattn::testing::TempDir dir;
  EXPECT_EQ(read_chat_template(dir.path()), "");
  std::ofstream(dir.file("tokenizer_config.json"))
      << R"({"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "<|im_start|>"}]})";
  EXPECT_EQ(read_chat_template(dir.path()), "<|im_start|>");
}

TEST(ChatTemplate, SmolLM2FromGguf) {
  const std::string path = starattn::testing::smollm2_gguf_path();
  if (path.empty()) GTEST_SKIP() << starattn::testing::smollm2_missing_message();
  const std::string text = read_chat_template(path);
  EXPECT_EQ(text, kSmolLM2Template);
  const auto tokenizer = load_tokenizer(path);
  const ChatTemplate t = detect_chat_template(text, *tokenizer);
  EXPECT_EQ(t.kind, ChatTemplateKind::chatml);
  EXPECT_EQ(t.default_system, "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  // The prompt's special tokens come out as single ids.
  const std::vector<int32_t> ids = tokenizer->encode(apply_chat_template(t, {{"user", "Hi"}}, true));
  EXPECT_EQ(ids.front(), 1);                          // <|im_start|>
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 2);  // <|im_end|> after system and user
}

}  // namespace
}  // namespace starattn
