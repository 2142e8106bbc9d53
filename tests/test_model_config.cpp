// ModelConfig: real Hugging Face configs (Llama 3.2, Mistral, Mistral Nemo, Qwen2.5, SmolLM2),
// defaults, every rejection naming file and field, and to_json/from_json round trips.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <string>

#include "runtime/model_config.h"
#include "runtime/random_model.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

using ::testing::HasSubstr;
using starattn::testing::TempDir;

const char* kLlama32 = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64,
  "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02,
  "intermediate_size": 8192, "max_position_embeddings": 131072, "mlp_bias": false,
  "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
  "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16",
  "transformers_version": "4.45.0.dev0", "use_cache": true, "vocab_size": 128256})";

const char* kMistral7B = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
  "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true,
  "vocab_size": 32000})";

// Mistral Nemo: head_dim 128 although hidden_size / heads = 160.
const char* kMistralNemo = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
  "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120, "intermediate_size": 14336,
  "max_position_embeddings": 1024000, "model_type": "mistral", "num_attention_heads": 32,
  "num_hidden_layers": 40, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0, "sliding_window": null, "tie_word_embeddings": false,
  "vocab_size": 131072})";

const char* kQwen25 = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896,
  "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
  "max_window_layers": 24, "model_type": "qwen2", "num_attention_heads": 14,
  "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false,
  "vocab_size": 151936})";

const char* kSmolLM2 = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 1,
  "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576, "intermediate_size": 1536,
  "max_position_embeddings": 8192, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 100000,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "vocab_size": 49152})";

// A minimal valid llama config with `extra` fields appended (later keys win in the tests'
// intent; nlohmann keeps the last duplicate).
std::string minimal(const std::string& extra = "") {
  std::string text = R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 64,
      "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4)";
  if (!extra.empty()) text += ", " + extra;
  return text + "}";
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no exception";
  return "";
}

std::string parse_error(const std::string& text) {
  return error_of([&] { ModelConfig::from_json(text, "some/dir/config.json"); });
}

void expect_same(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
  EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
  EXPECT_EQ(a.rope_scaling.original_max_position_embeddings,
            b.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.attention_bias, b.attention_bias);
  EXPECT_EQ(a.o_proj_bias, b.o_proj_bias);
  EXPECT_EQ(a.mlp_bias, b.mlp_bias);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
}

void expect_round_trip(const ModelConfig& c) {
  const std::string text = c.to_json();
  SCOPED_TRACE(text);
  expect_same(ModelConfig::from_json(text, "round-trip"), c);
}

TEST(ModelConfig, Llama32WithLlama3Scaling) {
  const ModelConfig c = ModelConfig::from_json(kLlama32, "llama32/config.json");
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.intermediate_size, 8192);
  EXPECT_EQ(c.num_layers, 16);
  EXPECT_EQ(c.num_heads, 32);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.q_dim(), 2048);
  EXPECT_EQ(c.kv_dim(), 512);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_EQ(c.rope_theta, 500000.0f);
  EXPECT_EQ(c.rope_scaling.type, "llama3");
  EXPECT_EQ(c.rope_scaling.factor, 32.0f);
  EXPECT_EQ(c.rope_scaling.low_freq_factor, 1.0f);
  EXPECT_EQ(c.rope_scaling.high_freq_factor, 4.0f);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_FALSE(c.o_proj_bias);
  EXPECT_FALSE(c.mlp_bias);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{128001, 128008, 128009}));
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_FLOAT_EQ(c.attention_scale(), 0.125f);
  EXPECT_EQ(c.kv_bytes_per_token(2), 2 * 16 * 512 * 2);
  expect_round_trip(c);
}

TEST(ModelConfig, MistralSlidingWindowAndDefaults) {
  const ModelConfig c = ModelConfig::from_json(kMistral7B, "mistral/config.json");
  EXPECT_EQ(c.architecture, "mistral");
  EXPECT_EQ(c.head_dim, 128);  // hidden / heads
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.rope_scaling.type, "");
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{2}));
  expect_round_trip(c);
}

TEST(ModelConfig, ExplicitHeadDim) {
  const ModelConfig c = ModelConfig::from_json(kMistralNemo, "nemo/config.json");
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.q_dim(), 4096);
  EXPECT_EQ(c.kv_dim(), 1024);
  EXPECT_EQ(c.sliding_window, 0);  // null
  expect_round_trip(c);
  // head_dim null means the default, hidden / heads.
  EXPECT_EQ(ModelConfig::from_json(minimal(R"("head_dim": null)"), "x").head_dim, 16);
  EXPECT_EQ(ModelConfig::from_json(minimal(R"("head_dim": 32)"), "x").head_dim, 32);
}

TEST(ModelConfig, Qwen2AlwaysHasQkvBias) {
  ModelConfig c = ModelConfig::from_json(kQwen25, "qwen/config.json");
  EXPECT_EQ(c.architecture, "qwen2");
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_TRUE(c.attention_bias);
  EXPECT_FALSE(c.o_proj_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.sliding_window, 0);  // use_sliding_window is false
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-6f);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int>{151643}));
  expect_round_trip(c);

  std::string text = kQwen25;
  text.replace(text.find("\"use_sliding_window\": false"), 27, "\"use_sliding_window\": true");
  c = ModelConfig::from_json(text, "qwen/config.json");
  EXPECT_EQ(c.sliding_window, 32768);
  expect_round_trip(c);
  // "attention_bias": false does not remove Qwen2's bias.
  std::string no_bias = kQwen25;
  no_bias.insert(1, R"("attention_bias": false, )");
  EXPECT_TRUE(ModelConfig::from_json(no_bias, "q").attention_bias);
}

TEST(ModelConfig, SmolLM2TiedEmbeddingsAndNullScaling) {
  const ModelConfig c = ModelConfig::from_json(kSmolLM2, "smol/config.json");
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.rope_theta, 100000.0f);  // an integer literal is fine for a float field
  EXPECT_EQ(c.rope_scaling.type, "");
  expect_round_trip(c);
}

TEST(ModelConfig, LlamaAttentionBiasCoversOProj) {
  const ModelConfig c = ModelConfig::from_json(
      minimal(R"("attention_bias": true, "mlp_bias": true)"), "x");
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.o_proj_bias);
  EXPECT_TRUE(c.mlp_bias);
  expect_round_trip(c);
}

TEST(ModelConfig, Defaults) {
  const ModelConfig c = ModelConfig::from_json(minimal(), "x");
  EXPECT_EQ(c.num_kv_heads, 4);  // = num_attention_heads
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.rope_theta, 10000.0f);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_EQ(c.rope_scaling.type, "");
  expect_round_trip(c);
}

TEST(ModelConfig, ArchitecturesWithoutModelType) {
  std::string text = minimal();
  text.replace(text.find(R"("model_type": "llama")"), 21,
               R"("architectures": ["SomethingElse", "Qwen2ForCausalLM"])");
  EXPECT_EQ(ModelConfig::from_json(text, "x").architecture, "qwen2");
}

TEST(ModelConfig, RopeScalingVariants) {
  const ModelConfig old_key = ModelConfig::from_json(
      minimal(R"("rope_scaling": {"type": "llama3", "factor": 8, "low_freq_factor": 1,
                 "high_freq_factor": 4, "original_max_position_embeddings": 8192})"),
      "x");
  EXPECT_EQ(old_key.rope_scaling.type, "llama3");
  EXPECT_EQ(old_key.rope_scaling.factor, 8.0f);
  const ModelConfig plain =
      ModelConfig::from_json(minimal(R"("rope_scaling": {"rope_type": "default"})"), "x");
  EXPECT_EQ(plain.rope_scaling.type, "");

  std::string e = parse_error(minimal(R"("rope_scaling": {"rope_type": "yarn", "factor": 4})"));
  EXPECT_THAT(e, HasSubstr("some/dir/config.json"));
  EXPECT_THAT(e, HasSubstr("\"yarn\""));
  EXPECT_THAT(e, HasSubstr("not supported (supported: llama3"));
  e = parse_error(minimal(R"("rope_scaling": {"type": "linear", "factor": 2})"));
  EXPECT_THAT(e, HasSubstr("\"linear\""));
  e = parse_error(minimal(R"("rope_scaling": {"factor": 2})"));
  EXPECT_THAT(e, HasSubstr("neither \"rope_type\" nor \"type\""));
  e = parse_error(minimal(R"("rope_scaling": {"rope_type": "llama3", "factor": 8})"));
  EXPECT_THAT(e, HasSubstr("\"rope_scaling.low_freq_factor\" is missing"));
  e = parse_error(minimal(R"("rope_scaling": {"rope_type": "llama3", "factor": "8",
      "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 64})"));
  EXPECT_THAT(e, HasSubstr("\"rope_scaling.factor\" must be a number, got string"));
  e = parse_error(minimal(R"("rope_scaling": 8)"));
  EXPECT_THAT(e, HasSubstr("\"rope_scaling\" must be an object or null"));
  e = parse_error(minimal(R"("rope_scaling": {"rope_type": "llama3", "factor": 8,
      "low_freq_factor": 4, "high_freq_factor": 4, "original_max_position_embeddings": 64})"));
  EXPECT_THAT(e, HasSubstr("high_freq_factor must exceed low_freq_factor"));
}

TEST(ModelConfigErrors, UnknownArchitecture) {
  std::string text = minimal();
  text.replace(text.find("\"llama\""), 7, "\"gpt2\"");
  std::string e = parse_error(text);
  EXPECT_THAT(e, HasSubstr("some/dir/config.json"));
  EXPECT_THAT(e, HasSubstr("model_type \"gpt2\" is not supported"));
  EXPECT_THAT(e, HasSubstr("llama, mistral, qwen2"));

  text = minimal();
  text.replace(text.find(R"("model_type": "llama")"), 21, R"("architectures": ["GPT2LMHeadModel"])");
  e = parse_error(text);
  EXPECT_THAT(e, HasSubstr("GPT2LMHeadModel"));
  EXPECT_THAT(e, HasSubstr("llama, mistral, qwen2"));

  text = minimal();
  text.replace(text.find(R"("model_type": "llama",)"), 22, "");
  e = parse_error(text);
  EXPECT_THAT(e, HasSubstr("neither \"model_type\" nor \"architectures\""));
}

TEST(ModelConfigErrors, WrongTypesNameFieldAndFile) {
  struct Case {
    std::string extra, expected;
  };
  const Case cases[] = {
      {R"("num_key_value_heads": "2")", "\"num_key_value_heads\" must be an integer, got string"},
      {R"("num_key_value_heads": 2.5)", "\"num_key_value_heads\" must be an integer, got number"},
      {R"("max_position_embeddings": 99999999999)", "\"max_position_embeddings\" is out of range"},
      {R"("rms_norm_eps": "1e-5")", "\"rms_norm_eps\" must be a number, got string"},
      {R"("tie_word_embeddings": "yes")", "\"tie_word_embeddings\" must be true or false"},
      {R"("eos_token_id": [2, "3"])", "\"eos_token_id[1]\" must be an integer"},
      {R"("eos_token_id": "2")", "\"eos_token_id\" must be an integer"},
      {R"("bos_token_id": true)", "\"bos_token_id\" must be an integer, got boolean"},
      {R"("model_type": 7)", "\"model_type\" must be a string"},
      {R"("head_dim": [16])", "\"head_dim\" must be an integer, got array"},
      {R"("hidden_act": "gelu")", "\"hidden_act\" is \"gelu\"; only \"silu\""},
      {R"("quantization_config": {"quant_method": "gptq"})", "quantization_config"},
      {R"("torch_dtype": "float99")", "field \"torch_dtype\" is \"float99\", which is not a supported"},
      {R"("dtype": "int8")", "field \"dtype\" is \"int8\", which is not a supported"},
      {R"("torch_dtype": 16)", "field \"torch_dtype\" must be a string, got number"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.extra);
    const std::string e = parse_error(minimal(c.extra));
    EXPECT_THAT(e, HasSubstr("some/dir/config.json"));
    EXPECT_THAT(e, HasSubstr(c.expected));
  }
}

// The float dtypes torch names, under either key transformers has used, are read.
TEST(ModelConfig, AcceptsTheFloatDtypes) {
  for (const char* key : {"torch_dtype", "dtype"})
    for (const char* dtype : {"float32", "float16", "bfloat16"}) {
      const std::string field = std::string("\"") + key + "\": \"" + dtype + "\"";
      EXPECT_NO_THROW(ModelConfig::from_json(minimal(field), "config.json")) << field;
    }
}

TEST(ModelConfigErrors, MissingFieldsAndBadJson) {
  std::string text = minimal();
  text.replace(text.find(R"("vocab_size": 100, )"), 19, "");
  EXPECT_THAT(parse_error(text), HasSubstr("\"vocab_size\" is missing"));
  EXPECT_THAT(parse_error(R"({"model_type": "llama",)"), HasSubstr("not valid JSON"));
  EXPECT_THAT(parse_error("[1, 2]"), HasSubstr("expected a JSON object at the top level"));
  EXPECT_THAT(parse_error(minimal(R"("hidden_size": 66)")),
              HasSubstr("not divisible by num_attention_heads"));
}

TEST(ModelConfigErrors, ValidateChecksConsistency) {
  const std::pair<std::string, std::string> cases[] = {
      {R"("num_key_value_heads": 3)", "not a multiple of num_key_value_heads"},
      {R"("head_dim": 15)", "head_dim must be even"},
      {R"("num_hidden_layers": 0)", "num_hidden_layers must be positive"},
      {R"("vocab_size": -5)", "vocab_size must be positive"},
      {R"("intermediate_size": 0)", "intermediate_size must be positive"},
      {R"("rms_norm_eps": 0)", "rms_norm_eps must be a positive number"},
      {R"("rope_theta": -1)", "rope_theta must be a positive number"},
      {R"("eos_token_id": [1, 100])", "eos_token_id 100 is outside the vocabulary"},
      {R"("bos_token_id": 200)", "bos_token_id 200 is outside the vocabulary"},
  };
  for (const auto& [extra, expected] : cases) {
    SCOPED_TRACE(extra);
    const std::string e = parse_error(minimal(extra));
    EXPECT_THAT(e, HasSubstr("some/dir/config.json: invalid model config"));
    EXPECT_THAT(e, HasSubstr(expected));
  }
  ModelConfig c = preset_config("tiny");
  c.architecture = "gpt2";
  EXPECT_THAT(error_of([&] { c.validate("mine"); }), HasSubstr("mine: invalid model config"));
}

TEST(ModelConfig, ToJsonIsLoadableByTransformers) {
  const std::string text = preset_config("small").to_json();
  EXPECT_THAT(text, HasSubstr(R"("architectures": [)"));
  EXPECT_THAT(text, HasSubstr(R"("LlamaForCausalLM")"));
  EXPECT_THAT(text, HasSubstr(R"("model_type": "llama")"));
  EXPECT_THAT(text, HasSubstr(R"("torch_dtype": "float32")"));
  EXPECT_THAT(text, HasSubstr(R"("rope_type": "llama3")"));
  EXPECT_THAT(text, HasSubstr(R"("rms_norm_eps": 1e-05)"));  // short decimal, not 9.99e-06
}

TEST(ModelConfig, RoundTripEdgeCases) {
  ModelConfig c = preset_config("tiny");
  c.eos_token_ids = {257, 258, 3};
  c.bos_token_id = -1;
  c.rms_norm_eps = 1.234567e-7f;
  c.rope_theta = 123456.7f;
  expect_round_trip(c);
  c.eos_token_ids.clear();
  expect_round_trip(c);
  c.architecture = "mistral";
  c.sliding_window = 77;
  expect_round_trip(c);
  // Combinations config.json cannot express are refused rather than silently changed.
  c = preset_config("tiny");
  c.attention_bias = true;
  EXPECT_THAT(error_of([&] { c.to_json(); }), HasSubstr("has no config.json form"));
}

TEST(ModelConfig, FromFile) {
  TempDir dir;
  const std::string path = dir.file("config.json");
  std::ofstream(path) << kQwen25;
  EXPECT_EQ(ModelConfig::from_file(path).architecture, "qwen2");
  std::ofstream(path) << R"({"model_type": "llama"})";
  const std::string e = error_of([&] { ModelConfig::from_file(path); });
  EXPECT_THAT(e, HasSubstr(path));
  EXPECT_THAT(e, HasSubstr("\"vocab_size\" is missing"));
  EXPECT_THAT(error_of([&] { ModelConfig::from_file(dir.file("nope.json")); }),
              HasSubstr("nope.json"));
}

TEST(Presets, TinyAndSmall) {
  const ModelConfig tiny = preset_config("tiny");
  EXPECT_EQ(tiny.vocab_size, 259);
  EXPECT_EQ(tiny.hidden_size, 64);
  EXPECT_EQ(tiny.head_dim, 16);
  EXPECT_TRUE(tiny.tie_word_embeddings);
  EXPECT_EQ(tiny.bos_token_id, 256);
  EXPECT_EQ(tiny.eos_token_ids, (std::vector<int>{257}));
  EXPECT_FLOAT_EQ(tiny.attention_scale(), 0.25f);
  EXPECT_EQ(tiny.kv_bytes_per_token(4), 2 * 2 * 32 * 4);
  const ModelConfig small = preset_config("small");
  EXPECT_EQ(small.num_layers, 4);
  EXPECT_EQ(small.num_heads, 8);
  EXPECT_EQ(small.intermediate_size, 688);
  EXPECT_FALSE(small.tie_word_embeddings);
  EXPECT_EQ(small.rope_scaling.type, "llama3");
  EXPECT_EQ(small.rope_scaling.original_max_position_embeddings, 1024);
  for (const std::string& name : preset_names()) {
    SCOPED_TRACE(name);
    preset_config(name).validate(name);
    expect_round_trip(preset_config(name));
  }
  const std::string e = error_of([] { preset_config("huge"); });
  EXPECT_THAT(e, HasSubstr("\"huge\""));
  EXPECT_THAT(e, HasSubstr("tiny, small"));
}

}  // namespace
}  // namespace starattn

namespace starattn {
namespace {

// transformers 5 writes RoPE settings only under rope_parameters (theta inside it).
TEST(ModelConfigTransformers5, ReadsRopeParameters) {
  const std::string llama3 = R"({"model_type": "llama", "vocab_size": 300, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0,
    "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64}})";
  const ModelConfig a = ModelConfig::from_json(llama3, "t5-llama3/config.json");
  EXPECT_FLOAT_EQ(a.rope_theta, 500000.0f);
  EXPECT_EQ(a.rope_scaling.type, "llama3");
  EXPECT_FLOAT_EQ(a.rope_scaling.factor, 8.0f);
  EXPECT_EQ(a.rope_scaling.original_max_position_embeddings, 64);

  const std::string plain = R"({"model_type": "qwen2", "vocab_size": 300, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "eos_token_id": null,
    "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}})";
  const ModelConfig b = ModelConfig::from_json(plain, "t5-qwen2/config.json");
  EXPECT_FLOAT_EQ(b.rope_theta, 1000000.0f);
  EXPECT_TRUE(b.rope_scaling.type.empty());

  const std::string bad = R"({"model_type": "llama", "vocab_size": 300, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}})";
  try {
    ModelConfig::from_json(bad, "t5-yarn/config.json");
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("rope_parameters"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("yarn"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace starattn
