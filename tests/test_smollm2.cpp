// The real pretrained default model (SmolLM2-135M-Instruct, Q4_1 GGUF) through the engine:
// it answers a question from a document, and star with B >= C equals full.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "runtime/engine.h"
#include "tests/support/smollm2.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

class SmolLM2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string path = testing::smollm2_gguf_path();
    if (path.empty()) return;
    EngineOptions o;
    o.model = path;
    o.workers = 2;
    engine_ = new Engine(o);
  }
  static void TearDownTestSuite() {
    delete engine_;
    engine_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(engine_, nullptr) << testing::smollm2_missing_message();
  }
  struct Answer {
    std::vector<int32_t> ids;
    std::vector<std::vector<float>> logits;
    std::string text;
  };
  static Answer answer(const PromptIds& p, AttentionMode mode, int64_t block, int max_tokens) {
    RequestSpec r;
    r.prompt.context = p.context;
    r.prompt.query = p.query;
    r.mode = mode;
    r.block_size = block;
    r.max_tokens = max_tokens;
    r.want_logits = true;
    Answer a;
    StreamDecoder dec(engine_->tokenizer());
    engine_->generate(r, [&](int32_t id, const float* logits) {
      a.ids.push_back(id);
      a.logits.emplace_back(logits, logits + engine_->config().vocab_size);
      a.text += dec.push(id);
      return true;
    });
    a.text += dec.flush();
    return a;
  }
  static Engine* engine_;
};
Engine* SmolLM2::engine_ = nullptr;

const char* kDocument =
    "Notes from the harbour office.\n"
    "The ferry to the island leaves at seven in the morning and returns at noon.\n"
    "The lighthouse keeper is called Marguerite Olsen and she has kept the light for thirty "
    "years.\n"
    "Fishing boats must report their catch to the office before sunset.\n"
    "The harbour master's favourite colour is green.\n";

TEST_F(SmolLM2, ChatTemplateIsChatMLWithItsDefaultSystemPrompt) {
  ASSERT_TRUE(engine_->chat_template().has_value());
  EXPECT_EQ(engine_->chat_template()->kind, ChatTemplateKind::chatml);
  const PromptIds p = engine_->document_prompt("doc", "q?");
  std::string context;
  for (int32_t id : p.context) context += engine_->tokenizer().token_bytes(id);
  EXPECT_THAT(context, ::testing::StartsWith("<|im_start|>system\nYou are a helpful AI assistant"));
  EXPECT_THAT(context, ::testing::EndsWith("<|im_start|>user\ndoc"));
}

TEST_F(SmolLM2, AnswersFromTheDocumentInStarMode) {
  const PromptIds p = engine_->document_prompt(kDocument, "What is the name of the lighthouse keeper?");
  const Answer star = answer(p, AttentionMode::star, 48, 16);
  EXPECT_THAT(star.text, ::testing::HasSubstr("Marguerite")) << star.text;
}

TEST_F(SmolLM2, StarWithBlockCoveringContextEqualsFull) {
  const PromptIds p = engine_->document_prompt(kDocument, "When does the ferry leave?");
  const Answer full = answer(p, AttentionMode::full, 0, 10);
  const Answer star = answer(p, AttentionMode::star, static_cast<int64_t>(p.context.size()), 10);
  EXPECT_EQ(star.ids, full.ids) << star.text << " vs " << full.text;
  ASSERT_EQ(star.logits.size(), full.logits.size());
  for (size_t s = 0; s < star.logits.size(); ++s)
    EXPECT_LE(testing::max_abs_diff(star.logits[s], full.logits[s]), 1e-3) << "step " << s;
  EXPECT_THAT(full.text, ::testing::HasSubstr("seven")) << full.text;
}

}  // namespace
}  // namespace starattn
