// Chat templates: the published templates of Llama 3.1, Llama 3.2, Qwen2.5, Mistral v0.3,
// Phi-3, Gemma 2 and SmolLM2 (tests/data/chat_templates/) rendered by our Jinja interpreter
// byte for byte as jinja2 renders them the way transformers does; the reference re-rendered live
// with jinja2; SmolLM2's template from its GGUF; the built-in layouts for models without one;
// and the prompt split (context / query) on every published template.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "runtime/bpe_tokenizer.h"
#include "runtime/chat_template.h"
#include "runtime/jinja.h"
#include "runtime/prompt.h"
#include "tests/support/smollm2.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

const fs::path kRepo = fs::path(STARATTN_SOURCE_DIR);
const fs::path kData = kRepo / "tests" / "data" / "chat_templates";

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

nlohmann::ordered_json read_json(const fs::path& p) { return nlohmann::ordered_json::parse(read_file(p)); }

// The reference script's strftime_now time: 2024-09-05 14:30.
std::tm fixed_now() {
  std::tm t{};
  t.tm_year = 2024 - 1900;
  t.tm_mon = 8;
  t.tm_mday = 5;
  t.tm_hour = 14;
  t.tm_min = 30;
  return t;
}

// The published templates by name, set up as transformers passes them (bos/eos strings).
std::map<std::string, ChatTemplate> published_templates() {
  std::map<std::string, ChatTemplate> out;
  for (const auto& m : read_json(kData / "models.json")) {
    ChatTemplate t;
    t.jinja = std::make_shared<const jinja::CompiledTemplate>(read_file(kData / m["template"].get<std::string>()));
    t.bos_token = m.value("bos_token", "");
    t.eos_token = m.value("eos_token", "");
    t.fixed_now = fixed_now();
    out[m["name"]] = t;
  }
  return out;
}

std::vector<ChatMessage> messages_of(const nlohmann::ordered_json& j) {
  std::vector<ChatMessage> out;
  for (const auto& m : j) out.push_back({m["role"], m["content"]});
  return out;
}

TEST(ChatTemplate, PublishedTemplatesMatchJinja2) {
  const auto templates = published_templates();
  ASSERT_EQ(templates.size(), 7u);
  const nlohmann::ordered_json expected = read_json(kData / "expected.json");
  size_t rendered = 0, rejected = 0;
  for (const auto& c : expected["chats"]) {
    const std::string label = c["template"].get<std::string>() + " / " + c["conversation"].get<std::string>() +
                              (c["add_generation_prompt"].get<bool>() ? " + generation prompt" : "");
    const ChatTemplate& t = templates.at(c["template"]);
    const auto messages = messages_of(c["messages"]);
    if (c.contains("output")) {
      EXPECT_EQ(apply_chat_template(t, messages, c["add_generation_prompt"]), c["output"].get<std::string>()) << label;
      ++rendered;
    } else {
      try {
        apply_chat_template(t, messages, c["add_generation_prompt"]);
        ADD_FAILURE() << label << ": rendered; jinja2 raised " << c["error"];
      } catch (const std::invalid_argument& e) {
        EXPECT_THAT(e.what(), HasSubstr(c["error"].get<std::string>())) << label;
        ++rejected;
      }
    }
  }
  EXPECT_EQ(rendered + rejected, 7u * 7u * 2u);
  EXPECT_GT(rejected, 0u);  // Gemma 2 refuses system messages
}

// Where the Python with jinja2 is: the active venv (deploy/test.sh exports VIRTUAL_ENV), the
// repository's .venv, else python3.
std::string python() {
  if (const char* venv = std::getenv("VIRTUAL_ENV"); venv && fs::exists(fs::path(venv) / "bin" / "python"))
    return (fs::path(venv) / "bin" / "python").string();
  if (fs::exists(kRepo / ".venv" / "bin" / "python")) return (kRepo / ".venv" / "bin" / "python").string();
  return "python3";
}

// The committed reference against jinja2 run now: the script renders everything again, and
// every case must come out the same (so the comparisons above and in test_jinja are with the
// jinja2 of today, not a stale file).
TEST(ChatTemplate, ReferenceRenderedLiveWithJinja2) {
  const std::string py = python();
  if (std::system(("'" + py + "' -c 'import jinja2' 2>/dev/null").c_str()) != 0) {
    if (std::getenv("VIRTUAL_ENV") != nullptr)  // CI (deploy/test.sh) installs jinja2: must run
      FAIL() << py << " has no jinja2; deploy/test.sh installs it";
    GTEST_SKIP() << py << " has no jinja2 (pip install jinja2 to run this check)";
  }
  starattn::testing::TempDir dir;
  const std::string out = dir.file("expected.json");
  const std::string cmd = "'" + py + "' '" + (kRepo / "tools" / "reference" / "render_chat_templates.py").string() +
                          "' --out '" + out + "' 2>/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  const nlohmann::ordered_json live = read_json(out);
  const nlohmann::ordered_json committed = read_json(kData / "expected.json");
  for (const char* part : {"chats", "features"}) {
    ASSERT_EQ(live[part].size(), committed[part].size()) << part << ": rerun the script and commit its output";
    for (size_t i = 0; i < live[part].size(); ++i) {
      nlohmann::ordered_json a = live[part][i], b = committed[part][i];
      EXPECT_EQ(a.dump(), b.dump()) << part << " case " << i << ": rerun tools/reference/render_chat_templates.py";
    }
  }
}

TEST(ChatTemplate, BuiltInChatML) {
  const std::vector<ChatMessage> chat = {{"system", "Be brief."}, {"user", "Hi!"}, {"assistant", "Hello."}, {"user", "  2+2?\n"}};
  EXPECT_EQ(apply_chat_template(ChatTemplateKind::chatml, chat, true),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\n  2+2?\n<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(apply_chat_template(ChatTemplateKind::chatml, {{"user", "x"}}, false), "<|im_start|>user\nx<|im_end|>\n");
  EXPECT_EQ(apply_chat_template(ChatTemplateKind::llama3, chat, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplate, ResolveUsesTheModelsTemplateElseAnExplicitFallback) {
  const ByteTokenizer bytes;
  const ChatTemplate own = resolve_chat_template(read_file(kData / "phi-3.jinja"), bytes);
  ASSERT_NE(own.jinja, nullptr);
  EXPECT_TRUE(own.note.empty());
  EXPECT_EQ(apply_chat_template(own, {{"user", "Hi"}}, true), "<|user|>\nHi<|end|>\n<|assistant|>\n");

  const ChatTemplate none = resolve_chat_template("", bytes);
  EXPECT_EQ(none.jinja, nullptr);
  EXPECT_EQ(none.kind, ChatTemplateKind::chatml);
  EXPECT_THAT(none.note, HasSubstr("no chat template; falling back to the built-in ChatML layout"));

  BpeVocab v;
  v.tokens = {"a"};
  v.added = {{"<|start_header_id|>", 1}};
  const ChatTemplate by_vocab = resolve_chat_template("", BpeTokenizer(v));
  EXPECT_EQ(by_vocab.kind, ChatTemplateKind::llama3);
  EXPECT_THAT(by_vocab.note, HasSubstr("<|start_header_id|>"));

  // A template we cannot render is an error, never a silent fallback.
  EXPECT_THROW(resolve_chat_template("{% include 'other.jinja' %}", bytes), jinja::Error);
}

TEST(ChatTemplate, ReadsTemplateText) {
  starattn::testing::TempDir dir;
  EXPECT_EQ(read_chat_template(dir.path()), "");
  std::ofstream(dir.file("tokenizer_config.json"))
      << R"({"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "<|im_start|>"}]})";
  EXPECT_EQ(read_chat_template(dir.path()), "<|im_start|>");
  std::ofstream(dir.file("tokenizer_config.json")) << R"({"chat_template": "{{ messages }}"})";
  EXPECT_EQ(read_chat_template(dir.path()), "{{ messages }}");
}

// SmolLM2's GGUF carries its template: read, rendered with the GGUF's own BOS / EOS text, and
// compared with jinja2's renderings of the published copy.
TEST(ChatTemplate, SmolLM2FromGguf) {
  const std::string path = starattn::testing::smollm2_gguf_path();
  if (path.empty()) GTEST_SKIP() << starattn::testing::smollm2_missing_message();
  const std::string text = read_chat_template(path);
  EXPECT_EQ(text, read_file(kData / "smollm2.jinja"));
  const auto tokenizer = load_tokenizer(path);
  const ChatTemplate t = resolve_chat_template(text, *tokenizer);
  ASSERT_NE(t.jinja, nullptr);
  EXPECT_EQ(t.bos_token, "<|im_start|>");
  EXPECT_EQ(t.eos_token, "<|im_end|>");
  size_t compared = 0;
  const nlohmann::ordered_json expected = read_json(kData / "expected.json");
  for (const auto& c : expected["chats"]) {
    if (c["template"] != "smollm2") continue;
    EXPECT_EQ(apply_chat_template(t, messages_of(c["messages"]), c["add_generation_prompt"]),
              c["output"].get<std::string>()) << c["conversation"];
    ++compared;
  }
  EXPECT_EQ(compared, 14u);
  // The prompt's special tokens come out as single ids.
  const std::vector<int32_t> ids = tokenizer->encode(apply_chat_template(t, {{"user", "Hi"}}, true));
  EXPECT_EQ(ids.front(), 1);                            // <|im_start|>
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 2), 2);  // <|im_end|> after system and user
}

std::string bytes_of(const std::vector<int32_t>& ids) {
  std::string s;
  for (int32_t id : ids) s += static_cast<char>(id);
  return s;
}

// With a byte tokenizer ids are the rendered bytes, so the split can be read back: context +
// query is the template's rendering exactly, and the query starts with the markup before the
// last user message.
TEST(ChatPrompt, SplitsEveryPublishedTemplateAtTheLastUserMessage) {
  const ByteTokenizer bytes;
  const nlohmann::ordered_json expected = read_json(kData / "expected.json");
  size_t checked = 0;
  for (const auto& [name, t] : published_templates()) {
    for (const auto& c : expected["chats"]) {
      if (c["template"] != name || !c["add_generation_prompt"].get<bool>() || !c.contains("output")) continue;
      const auto messages = messages_of(c["messages"]);
      if (messages.back().role != "user") continue;
      const std::string label = name + " / " + c["conversation"].get<std::string>();
      const PromptIds p = chat_prompt(bytes, t, messages);
      const std::string context = bytes_of(p.context), query = bytes_of(p.query);
      EXPECT_EQ(context + query, c["output"].get<std::string>()) << label;
      std::string last = messages.back().content;
      last.erase(0, last.find_first_not_of(" \t\n"));
      last.erase(last.find_last_not_of(" \t\n") + 1);
      EXPECT_THAT(query, HasSubstr(last)) << label;
      EXPECT_THAT(context, ::testing::Not(HasSubstr(last))) << label;
      ++checked;
    }
  }
  EXPECT_GE(checked, 30u);
}

TEST(ChatPrompt, DocumentPromptPutsTheDocumentInTheContext) {
  const ByteTokenizer bytes;
  for (const auto& [name, t] : published_templates()) {
    const PromptIds p = document_prompt(bytes, t, "The keeper is Marguerite.", "Who keeps the light?");
    const std::string context = bytes_of(p.context), query = bytes_of(p.query);
    EXPECT_THAT(context, ::testing::EndsWith("The keeper is Marguerite.")) << name;
    EXPECT_THAT(query, ::testing::StartsWith("\n\nWho keeps the light?")) << name;
    EXPECT_EQ(context + query,
              apply_chat_template(t, {{"user", "The keeper is Marguerite.\n\nWho keeps the light?"}}, true)) << name;
  }
}

TEST(ChatPrompt, TrimmedTextsAreEncodedAsTheTemplateWritesThem) {
  const ByteTokenizer bytes;
  const ChatTemplate gemma = published_templates().at("gemma-2");  // message['content'] | trim
  const PromptIds p = chat_prompt(bytes, gemma, {{"user", "  first \n"}, {"assistant", " ok "}, {"user", "\tsecond  "}});
  EXPECT_EQ(bytes_of(p.context), "<bos><start_of_turn>user\nfirst<end_of_turn>\n<start_of_turn>model\nok");
  EXPECT_EQ(bytes_of(p.query), "<end_of_turn>\n<start_of_turn>user\nsecond<end_of_turn>\n<start_of_turn>model\n");
}

TEST(ChatPrompt, RejectedConversationsAndMissingUsersAreErrors) {
  const ByteTokenizer bytes;
  const ChatTemplate gemma = published_templates().at("gemma-2");
  EXPECT_THROW(chat_prompt(bytes, gemma, {{"system", "s"}, {"user", "u"}}), std::invalid_argument);
  EXPECT_THROW(chat_prompt(bytes, gemma, {{"assistant", "a"}}), std::invalid_argument);
}

}  // namespace
}  // namespace starattn
