// BPE tokenizers against the reference `tokenizers` library: SmolLM2's vocabulary from its GGUF
// on a varied corpus (ids recorded in tests/data/smollm2_tokenizer_reference.json by
// tools/reference/tokenizer_reference.py), the GPT-2 / Llama 3 / Qwen2 pre-tokenizers through
// tokenizer.json files, SentencePiece-style vocabularies with byte fallback, streaming decode.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>

#include <cstdlib>

#include <nlohmann/json.hpp>

#include "runtime/bpe_tokenizer.h"
#include "runtime/gguf.h"
#include "runtime/unicode.h"
#include "tests/support/gguf_writer.h"
#include "tests/support/smollm2.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;
using namespace starattn::testing;

const json& fixture() {
  static const json j = [] {
    // STARATTN_TOKENIZER_REFERENCE points at ids freshly made by the `tokenizers` library
    // (tests/tokenizer_live.sh); otherwise the recorded copy.
    const char* env = std::getenv("STARATTN_TOKENIZER_REFERENCE");
    const auto path = env && *env ? std::filesystem::path(env)
                                  : std::filesystem::path(STARATTN_SOURCE_DIR) / "tests" / "data" /
                                        "smollm2_tokenizer_reference.json";
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot open " + path.string());
    return json::parse(in);
  }();
  return j;
}

// SmolLM2's GGUF, opened once; null when missing (the tests then fail with the reason).
const GgufFile* smollm_file() {
  static const std::unique_ptr<GgufFile> f = [] {
    const std::string path = smollm2_gguf_path();
    return path.empty() ? nullptr : std::make_unique<GgufFile>(path);
  }();
  return f.get();
}

const BpeTokenizer* smollm() {
  static const std::unique_ptr<BpeTokenizer> t =
      smollm_file() ? load_gguf_tokenizer(*smollm_file()) : nullptr;
  return t.get();
}

#define REQUIRE_SMOLLM2() ASSERT_NE(smollm(), nullptr) << smollm2_missing_message()

std::string show(const std::string& text) { return json(text).dump(); }

TEST(BpeSmolLM2, VocabularyFacts) {
  REQUIRE_SMOLLM2();
  const BpeTokenizer& t = *smollm();
  EXPECT_EQ(t.vocab_size(), 49152);
  EXPECT_EQ(fixture()["vocab_size"], 49152);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_ids(), std::vector<int32_t>{2});
  EXPECT_FALSE(t.add_bos());
  EXPECT_EQ(t.vocab().pre_steps, (std::vector<PreStep>{PreStep::digits_individual, PreStep::gpt2}));
  EXPECT_EQ(t.token_text(1), "<|im_start|>");
  EXPECT_EQ(t.encode("<|im_start|>"), std::vector<int32_t>{1});
  // As untrusted text, the same characters are ordinary tokens.
  const std::vector<int32_t> plain = t.encode("<|im_start|>", false);
  EXPECT_GT(plain.size(), 1u);
  EXPECT_EQ(t.decode(plain), "<|im_start|>");
}

TEST(BpeSmolLM2, MatchesReferenceIds) {
  REQUIRE_SMOLLM2();
  const json& cases = fixture()["smollm"]["cases"];
  ASSERT_GT(cases.size(), 30u);
  for (const json& c : cases) {
    const std::string text = c["text"];
    const std::vector<int32_t> want = c["ids"];
    EXPECT_EQ(smollm()->encode(text), want) << show(text);
    EXPECT_EQ(smollm()->decode(want), text) << show(text);
  }
}

// tokenizer.json holding SmolLM2's vocabulary with a given pre-tokenizer.
std::string write_tokenizer_json(const TempDir& dir, const std::string& name, const json& pre,
                                 bool merges_as_pairs) {
  const GgufFile& f = *smollm_file();
  const std::vector<std::string> tokens = f.get_strings("tokenizer.ggml.tokens");
  const std::vector<double> types = f.get_numbers("tokenizer.ggml.token_type");
  json vocab = json::object(), merges = json::array(), added = json::array();
  for (size_t i = 0; i < tokens.size(); ++i) {
    vocab[tokens[i]] = i;
    if (types[i] == 3)
      added.push_back({{"id", i}, {"content", tokens[i]}, {"single_word", false}, {"lstrip", false},
                       {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  for (const std::string& m : f.get_strings("tokenizer.ggml.merges")) {
    const size_t space = m.find(' ');
    if (merges_as_pairs)
      merges.push_back({m.substr(0, space), m.substr(space + 1)});
    else
      merges.push_back(m);
  }
  const json j = {{"version", "1.0"},
                  {"added_tokens", added},
                  {"normalizer", nullptr},
                  {"pre_tokenizer", pre},
                  {"post_processor", nullptr},
                  {"decoder", {{"type", "ByteLevel"}}},
                  {"model",
                   {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                    {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                    {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
                    {"vocab", vocab}, {"merges", merges}}}};
  const std::string path = dir.file(name);
  std::ofstream(path) << j.dump();
  return path;
}

TEST(BpeSmolLM2, TokenizerJsonWithSmolLMPreTokenizer) {
  REQUIRE_SMOLLM2();
  TempDir dir;
  for (bool pairs : {false, true}) {
    const auto tok = load_tokenizer_json(
        write_tokenizer_json(dir, "t.json", fixture()["smollm"]["pre_tokenizer"], pairs));
    for (const json& c : fixture()["smollm"]["cases"])
      EXPECT_EQ(tok->encode(c["text"].get<std::string>()), c["ids"].get<std::vector<int32_t>>())
          << show(c["text"]) << (pairs ? " (merges as pairs)" : " (merges as strings)");
  }
}

class BpePattern : public ::testing::TestWithParam<std::string> {};

TEST_P(BpePattern, PiecesAndIdsMatchReference) {
  const json& p = fixture()["patterns"][GetParam()];
  const PreStep step = GetParam() == "gpt2" ? PreStep::gpt2 : GetParam() == "llama3" ? PreStep::llama3 : PreStep::qwen2;
  for (const json& c : p["cases"]) {
    const std::string text = c["text"];
    EXPECT_EQ(pre_tokenize(text, {step}), c["pieces"].get<std::vector<std::string>>()) << show(text);
  }
  REQUIRE_SMOLLM2();
  TempDir dir;
  const auto tok = load_tokenizer_json(write_tokenizer_json(dir, "t.json", p["pre_tokenizer"], true));
  EXPECT_EQ(tok->vocab().pre_steps.back(), step);
  for (const json& c : p["cases"])
    EXPECT_EQ(tok->encode(c["text"].get<std::string>()), c["ids"].get<std::vector<int32_t>>())
        << show(c["text"]);
}

INSTANTIATE_TEST_SUITE_P(Patterns, BpePattern, ::testing::Values("gpt2", "llama3", "qwen2"));

TEST(BpeSmolLM2, StreamingNeverSplitsCharacters) {
  REQUIRE_SMOLLM2();
  const std::string text = "Emoji 👨‍👩‍👧‍👦🇫🇷 中文测试 नमस्ते — ok";
  const std::vector<int32_t> ids = smollm()->encode(text);
  StreamDecoder decoder(*smollm());
  std::string joined;
  int partial_tokens = 0;
  for (int32_t id : ids) {
    const std::string piece = decoder.push(id);
    const std::string raw = smollm()->token_bytes(id);
    size_t len = 1;
    for (size_t pos = 0; pos < piece.size(); pos += len)
      ASSERT_NE(decode_utf8(piece, pos, len), kInvalidCodePoint) << "piece splits a character";
    partial_tokens += raw != piece;
    joined += piece;
  }
  joined += decoder.flush();
  EXPECT_EQ(joined, text);
  EXPECT_GT(partial_tokens, 0);  // the text does have tokens that end inside a character
}

TEST(BpeTokenizerLoad, ChoosesByPath) {
  TempDir dir;
  std::ofstream(dir.file("config.json")) << R"({"vocab_size": 259})";  // byte-level: see load_tokenizer
  EXPECT_NE(dynamic_cast<ByteTokenizer*>(load_tokenizer(dir.path()).get()), nullptr);
  REQUIRE_SMOLLM2();
  EXPECT_NE(dynamic_cast<BpeTokenizer*>(load_tokenizer(smollm2_gguf_path()).get()), nullptr);
  write_tokenizer_json(dir, "tokenizer.json", fixture()["smollm"]["pre_tokenizer"], false);
  std::ofstream(dir.file("config.json")) << R"({"bos_token_id": 1, "eos_token_id": [2, 0]})";
  const auto tok = load_tokenizer(dir.path());
  ASSERT_NE(dynamic_cast<BpeTokenizer*>(tok.get()), nullptr);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_ids(), (std::vector<int32_t>{2, 0}));
}

// ---- hand-made vocabularies ----

// A SentencePiece-style GGUF vocabulary: merges by score, U+2581 for spaces, byte fallback.
TEST(BpeSentencePiece, ScoresSpacesAndByteFallback) {
  const std::string m = "\xE2\x96\x81";  // U+2581
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> types = {2, 3, 3};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    tokens.push_back(name);
    types.push_back(6);
  }
  // id 259..: characters and merged pieces with scores (higher merges first)
  const std::vector<std::pair<std::string, float>> pieces = {
      {m, -1}, {"h", -2}, {"e", -2}, {"l", -2}, {"o", -2}, {"w", -2}, {"r", -2}, {"d", -2},
      {"ll", -3}, {m + "h", -4}, {"llo", -5}, {m + "he", -6}, {m + "hello", -7}, {"he", -8},
      {m + "w", -9}, {"or", -10}};
  std::vector<float> scores(tokens.size(), 0.0f);
  for (const auto& [text, score] : pieces) {
    tokens.push_back(text);
    types.push_back(1);
    scores.push_back(score);
  }
  TempDir dir;
  write_gguf(dir.file("spm.gguf"),
             {{"tokenizer.ggml.model", gguf_string("llama")}, {"tokenizer.ggml.tokens", gguf_strings(tokens)},
              {"tokenizer.ggml.scores", gguf_f32s(scores)}, {"tokenizer.ggml.token_type", gguf_i32s(types)},
              {"tokenizer.ggml.bos_token_id", gguf_u32(1)}, {"tokenizer.ggml.eos_token_id", gguf_u32(2)},
              {"tokenizer.ggml.unknown_token_id", gguf_u32(0)}},
             {});
  const GgufFile f(dir.file("spm.gguf"));
  const auto tok = load_gguf_tokenizer(f);
  auto id = [&](const std::string& s) { return tok->token_id(s); };
  EXPECT_TRUE(tok->add_bos());
  // "hello": ▁hello via ▁h(-4) → ll(-3) first → llo(-5) → ▁he(-6) → ▁hello(-7).
  EXPECT_EQ(tok->encode("hello"), (std::vector<int32_t>{id(m + "hello")}));
  // " world": leading ▁ is the prefix, the space becomes another ▁; "world" has w,or,l,d.
  EXPECT_EQ(tok->encode("hello world"),
            (std::vector<int32_t>{id(m + "hello"), id(m + "w"), id("or"), id("l"), id("d")}));
  // é is not in the vocabulary: its two UTF-8 bytes as <0xC3><0xA9>.
  EXPECT_EQ(tok->encode("hé"), (std::vector<int32_t>{id(m + "h"), id("<0xC3>"), id("<0xA9>")}));
  // Control tokens in the text; no prefix after the first segment.
  EXPECT_EQ(tok->encode("<s>he"), (std::vector<int32_t>{1, id("he")}));
  EXPECT_EQ(tok->decode(tok->encode("hello world hé")), " hello world hé");
}

// Llama 2 / Mistral style tokenizer.json: merges, byte fallback, the Prepend/Replace
// normalizer (applied to every segment between added tokens, as `tokenizers` does).
TEST(BpeSentencePiece, TokenizerJsonWithByteFallback) {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  const std::string m = "\xE2\x96\x81";
  int next = 259;
  for (const std::string& t : {m, std::string("h"), std::string("e"), std::string("l"), std::string("o"),
                              m + "h", std::string("ll"), m + "he", std::string("llo"), m + "hello"})
    vocab[t] = next++;
  const json j = {
      {"added_tokens", {{{"id", 1}, {"content", "<s>"}, {"special", true}}}},
      {"normalizer", {{"type", "Sequence"}, {"normalizers", {{{"type", "Prepend"}, {"prepend", m}},
                                                             {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", m}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor", {{"type", "TemplateProcessing"}, {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                                                       {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}}},
      {"model", {{"type", "BPE"}, {"byte_fallback", true}, {"unk_token", "<unk>"}, {"vocab", vocab},
                 {"merges", {m + " h", "l l", m + "h e", "ll o", m + "he llo"}}}}};
  TempDir dir;
  std::ofstream(dir.file("tokenizer.json")) << j.dump();
  const auto tok = load_tokenizer_json(dir.file("tokenizer.json"));
  const int32_t hello = vocab[m + "hello"];
  EXPECT_EQ(tok->encode("hello"), std::vector<int32_t>{hello});
  EXPECT_EQ(tok->encode("hé"), (std::vector<int32_t>{vocab[m + "h"], 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(tok->encode("<s>hello"), (std::vector<int32_t>{1, hello}));
  EXPECT_EQ(tok->encode("hello hello"), (std::vector<int32_t>{hello, hello}));
  EXPECT_EQ(tok->decode(tok->encode("hello hé")), " hello hé");
  EXPECT_TRUE(tok->add_bos());
  EXPECT_EQ(tok->bos_id(), 1);
}

TEST(BpeErrors, ClearMessages) {
  TempDir dir;
  auto gguf_with = [&](const std::string& name, const GgufMetadata& md) {
    write_gguf(dir.file(name), md, {});
    const GgufFile f(dir.file(name));
    load_gguf_tokenizer(f);
  };
  const GgufMetadata base = {{"tokenizer.ggml.tokens", gguf_strings({"a", "b", "ab"})},
                             {"tokenizer.ggml.merges", gguf_strings({"a b"})}};
  GgufMetadata md = base;
  md.push_back({"tokenizer.ggml.model", gguf_string("gpt2")});
  md.push_back({"tokenizer.ggml.pre", gguf_string("mystery")});
  EXPECT_THAT([&] { try { gguf_with("pre.gguf", md); } catch (const std::exception& e) { return std::string(e.what()); } return std::string(); }(),
              ::testing::AllOf(HasSubstr("pre.gguf"), HasSubstr("tokenizer.ggml.pre \"mystery\" is not supported")));
  md = base;
  md.push_back({"tokenizer.ggml.model", gguf_string("bert")});
  EXPECT_THROW(gguf_with("bert.gguf", md), std::runtime_error);
  md = {{"tokenizer.ggml.model", gguf_string("gpt2")}, {"tokenizer.ggml.tokens", gguf_strings({"a", "b"})},
        {"tokenizer.ggml.merges", gguf_strings({"a c"})}};
  try {
    gguf_with("merge.gguf", md);
    ADD_FAILURE() << "no error";
  } catch (const std::exception& e) {
    EXPECT_THAT(e.what(), HasSubstr("merge 0 (\"a\" \"c\") names a token missing"));
  }
  std::ofstream(dir.file("wp.json")) << R"({"model": {"type": "WordPiece", "vocab": {}}})";
  try {
    load_tokenizer_json(dir.file("wp.json"));
    ADD_FAILURE() << "no error";
  } catch (const std::exception& e) {
    EXPECT_THAT(e.what(), ::testing::AllOf(HasSubstr("wp.json"), HasSubstr("\"WordPiece\" is not supported")));
  }
  std::ofstream(dir.file("re.json"))
      << R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated", "invert": false}})";
  try {
    load_tokenizer_json(dir.file("re.json"));
    ADD_FAILURE() << "no error";
  } catch (const std::exception& e) {
    EXPECT_THAT(e.what(), ::testing::AllOf(HasSubstr("re.json"), HasSubstr("is not one we implement")));
  }
}

}  // namespace
}  // namespace starattn
