// open_model and check_model_tensors on random model directories, and the random-weight
// generator itself (deterministic, never zero, scaled as documented).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include "runtime/bpe_tokenizer.h"
#include "runtime/random_model.h"
#include "runtime/safetensors.h"
#include "runtime/weight_source.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

using ::testing::HasSubstr;
using starattn::testing::TempDir;

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

std::vector<float> read_all(const WeightSource& w, const std::string& name) {
  int64_t n = 1;
  for (int64_t d : w.shape(name)) n *= d;
  std::vector<float> out(static_cast<size_t>(n));
  w.read_f32(name, out.data());
  return out;
}

// A written random model opens, and holds exactly the generated weights.
TEST(OpenModel, RandomModelDirectories) {
  for (const std::string& preset : preset_names()) {
    SCOPED_TRACE(preset);
    TempDir dir;
    const ModelConfig config = preset_config(preset);
    write_random_model(config, 42, dir.path());
    const LoadedModel model = open_model(dir.path());
    EXPECT_EQ(model.path, dir.path());
    EXPECT_EQ(model.config.to_json(), config.to_json());
    const std::vector<NamedTensor> expected = random_weights(config, 42);
    const auto source = random_weight_source(config, 42);
    check_model_tensors(config, *source);
    for (const NamedTensor& t : expected) {
      EXPECT_EQ(model.weights->shape(t.name), t.shape) << t.name;
      EXPECT_EQ(read_all(*model.weights, t.name), t.data) << t.name;
      EXPECT_EQ(read_all(*source, t.name), t.data) << t.name;
    }
    EXPECT_EQ(model.weights->has("lm_head.weight"), !config.tie_word_embeddings);
  }
}

TEST(OpenModel, ShardedModelDirectory) {
  TempDir dir;
  const ModelConfig config = preset_config("tiny");
  std::vector<NamedTensor> tensors = random_weights(config, 3);
  const size_t half = tensors.size() / 2;
  std::vector<NamedTensor> first(tensors.begin(), tensors.begin() + half);
  std::vector<NamedTensor> second(tensors.begin() + half, tensors.end());
  write_safetensors(dir.file("model-00001-of-00002.safetensors"), first, StDType::bf16);
  write_safetensors(dir.file("model-00002-of-00002.safetensors"), second, StDType::bf16);
  std::string map;
  for (size_t i = 0; i < tensors.size(); ++i)
    map += (i ? ",\"" : "\"") + tensors[i].name + "\":\"model-0000" + (i < half ? "1" : "2") +
           "-of-00002.safetensors\"";
  std::ofstream(dir.file("model.safetensors.index.json")) << "{\"weight_map\":{" << map << "}}";
  std::ofstream(dir.file("config.json")) << config.to_json();
  const LoadedModel model = open_model(dir.path());
  for (const NamedTensor& t : tensors) {
    const std::vector<float> back = read_all(*model.weights, t.name);
    for (size_t i = 0; i < back.size(); ++i)
      ASSERT_EQ(back[i], bf16_to_f32(f32_to_bf16(t.data[i]))) << t.name;
  }
}

// Rewrites dir's model.safetensors from `tensors` after `edit`.
template <typename Edit>
std::string open_error_after(const ModelConfig& config, Edit edit) {
  TempDir dir;
  write_random_model(config, 5, dir.path());
  std::vector<NamedTensor> tensors = random_weights(config, 5);
  edit(tensors);
  write_safetensors(dir.file("model.safetensors"), tensors);
  std::string e = error_of([&] { open_model(dir.path()); });
  EXPECT_THAT(e, HasSubstr(dir.path()));
  return e;
}

TEST(OpenModel, MissingTensorIsNamed) {
  const std::string e = open_error_after(preset_config("tiny"), [](std::vector<NamedTensor>& t) {
    for (auto it = t.begin(); it != t.end(); ++it)
      if (it->name == "model.layers.1.mlp.up_proj.weight") {
        t.erase(it);
        break;
      }
  });
  EXPECT_THAT(e, HasSubstr("missing tensor \"model.layers.1.mlp.up_proj.weight\""));
  EXPECT_THAT(e, HasSubstr("expected shape [160, 64]"));
  EXPECT_THAT(e, HasSubstr("(1 problem)"));
}

TEST(OpenModel, WrongShapeIsNamedWithBothShapes) {
  const std::string e = open_error_after(preset_config("tiny"), [](std::vector<NamedTensor>& t) {
    for (NamedTensor& x : t)
      if (x.name == "model.layers.0.self_attn.k_proj.weight") {
        x.shape = {16, 64};
        x.data.resize(16 * 64);
      }
  });
  EXPECT_THAT(e, HasSubstr("tensor \"model.layers.0.self_attn.k_proj.weight\" has shape "
                           "[16, 64], expected [32, 64]"));
}

TEST(OpenModel, UntiedModelNeedsLmHead) {
  const std::string e = open_error_after(preset_config("small"), [](std::vector<NamedTensor>& t) {
    t.pop_back();  // lm_head.weight comes last
  });
  EXPECT_THAT(e, HasSubstr("missing tensor \"lm_head.weight\" (expected shape [259, 256])"));
  EXPECT_THAT(e, HasSubstr("tie_word_embeddings=false"));
}

TEST(OpenModel, ManyProblemsAreSummarised) {
  const std::string e = open_error_after(preset_config("small"), [](std::vector<NamedTensor>& t) {
    t.erase(t.begin() + 1, t.end());  // only the embeddings remain
  });
  const size_t total = model_tensor_specs(preset_config("small")).size() - 1;
  EXPECT_THAT(e, HasSubstr("(" + std::to_string(total) + " problems)"));
  EXPECT_THAT(e, HasSubstr("and " + std::to_string(total - 8) + " more"));
}

TEST(OpenModel, Qwen2BiasTensorsAreRequired) {
  ModelConfig config = preset_config("tiny");
  config.architecture = "qwen2";
  config.attention_bias = true;
  TempDir dir;
  write_random_model(config, 8, dir.path());
  EXPECT_TRUE(open_model(dir.path()).weights->has("model.layers.0.self_attn.q_proj.bias"));
  const std::string e = open_error_after(config, [](std::vector<NamedTensor>& t) {
    for (NamedTensor& x : t)
      if (x.name == "model.layers.1.self_attn.v_proj.bias") x.name = "model.layers.1.v_bias";
  });
  EXPECT_THAT(e, HasSubstr("missing tensor \"model.layers.1.self_attn.v_proj.bias\" "
                           "(expected shape [32])"));
}

TEST(OpenModel, BadPaths) {
  TempDir dir;
  EXPECT_EQ(error_of([&] { open_model(dir.file("absent")); }),
            "model path " + dir.file("absent") + " does not exist");
  std::ofstream(dir.file("model.gguf")) << "GGUF";
  // A .gguf path goes to the GGUF reader, whose errors name the file and the problem.
  EXPECT_EQ(error_of([&] { open_model(dir.file("model.gguf")); }),
            dir.file("model.gguf") +
                ": header version: needs 4 bytes at offset 4 but the file ends at 4 (truncated)");
  std::ofstream(dir.file("weights.bin")) << "x";
  EXPECT_THAT(error_of([&] { open_model(dir.file("weights.bin")); }),
              HasSubstr("is a file; expected a Hugging Face model directory"));
  EXPECT_THAT(error_of([&] { open_model(dir.path()); }), HasSubstr("no config.json"));
  std::ofstream(dir.file("config.json")) << preset_config("tiny").to_json();
  EXPECT_EQ(error_of([&] { open_model(dir.path()); }),
            "no model.safetensors or model.safetensors.index.json in " + dir.path());
  std::ofstream(dir.file("config.json")) << R"({"model_type": "bert"})";
  EXPECT_THAT(error_of([&] { open_model(dir.path()); }),
              HasSubstr(dir.file("config.json") + ": model_type \"bert\" is not supported"));
}

TEST(TensorSpecs, CoverTheArchitecture) {
  ModelConfig c = preset_config("tiny");
  std::vector<TensorSpec> specs = model_tensor_specs(c);
  EXPECT_EQ(specs.size(), 1u + 9u * 2 + 1);  // embeddings, 9 per layer, final norm (tied)
  EXPECT_EQ(specs.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(specs.back().name, "model.norm.weight");
  c.tie_word_embeddings = false;
  c.attention_bias = c.o_proj_bias = c.mlp_bias = true;
  specs = model_tensor_specs(c);
  EXPECT_EQ(specs.size(), 1u + 16u * 2 + 2);
  std::set<std::string> names;
  for (const TensorSpec& s : specs) names.insert(s.name);
  EXPECT_EQ(names.size(), specs.size());
  for (const char* n : {"model.layers.1.self_attn.o_proj.bias", "model.layers.0.mlp.down_proj.bias",
                        "model.layers.1.self_attn.k_proj.bias", "lm_head.weight"})
    EXPECT_EQ(names.count(n), 1u) << n;
}

TEST(RandomWeights, DeterministicScaledAndNonZero) {
  const ModelConfig c = preset_config("small");
  const std::vector<NamedTensor> a = random_weights(c, 1);
  const std::vector<NamedTensor> b = random_weights(c, 1);
  const std::vector<NamedTensor> other = random_weights(c, 2);
  ASSERT_EQ(a.size(), model_tensor_specs(c).size());
  for (size_t i = 0; i < a.size(); ++i) {
    const NamedTensor& t = a[i];
    SCOPED_TRACE(t.name);
    EXPECT_EQ(t.data, b[i].data);
    EXPECT_NE(t.data, other[i].data);
    double sum = 0, sq = 0;
    for (float x : t.data) {
      ASSERT_TRUE(std::isfinite(x));
      sum += x;
      sq += double(x) * x;
    }
    const double n = static_cast<double>(t.data.size());
    const double mean = sum / n;
    const double stddev = std::sqrt(sq / n - mean * mean);
    if (t.name.find("norm.weight") != std::string::npos) {
      EXPECT_NEAR(mean, 1.0, 0.03);
      EXPECT_NEAR(stddev, 0.1, 0.02);
    } else {
      const double expected = 1.0 / std::sqrt(static_cast<double>(t.shape[1]));
      EXPECT_NEAR(mean, 0.0, 0.1 * expected);
      EXPECT_NEAR(stddev, expected, 0.05 * expected);
    }
  }
  // Tensors differ from each other (no shared stream), e.g. q and k of one layer.
  EXPECT_NE(a[2].data[0], a[3].data[0]);
}

// ---- the vocabulary of a model directory (load_tokenizer's rule) ----

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

// Without tokenizer.json a directory is byte-level only when config.json says so; a real
// vocabulary without its tokenizer.json is an error naming the file, never a byte tokenizer.
TEST(ModelVocabulary, ByteLevelOnlyWhenTheConfigSaysSo) {
  TempDir dir;
  const std::string json = dir.file("tokenizer.json");
  // No config.json either: nothing says what the vocabulary is.
  EXPECT_THAT(error_of([&] { load_tokenizer(dir.path()); }),
              ::testing::AllOf(HasSubstr(json), HasSubstr("config.json"), HasSubstr("missing")));
  // A real vocabulary size: tokenizer.json is named, with the size.
  write_text(dir.file("config.json"), R"({"model_type": "llama", "vocab_size": 49152})");
  EXPECT_THAT(error_of([&] { load_tokenizer(dir.path()); }),
              ::testing::AllOf(HasSubstr(json + " is missing"), HasSubstr("vocab_size 49152")));
  // One past the byte vocabulary is already not byte-level.
  write_text(dir.file("config.json"), R"({"vocab_size": 260})");
  EXPECT_THAT(error_of([&] { load_tokenizer(dir.path()); }), HasSubstr(json + " is missing"));
  write_text(dir.file("config.json"), R"({"vocab_size": "259"})");
  EXPECT_THAT(error_of([&] { load_tokenizer(dir.path()); }), HasSubstr("vocab_size: is missing or not an integer"));
  write_text(dir.file("config.json"), R"({"vocab_size": 300, "starattn_byte_vocabulary": "yes"})");
  EXPECT_THAT(error_of([&] { load_tokenizer(dir.path()); }), HasSubstr("starattn_byte_vocabulary"));
  // The byte vocabulary itself, or a config marked byte-level: the byte tokenizer.
  write_text(dir.file("config.json"), R"({"vocab_size": 259})");
  EXPECT_NE(dynamic_cast<ByteTokenizer*>(load_tokenizer(dir.path()).get()), nullptr);
  write_text(dir.file("config.json"), R"({"vocab_size": 128256, "starattn_byte_vocabulary": true})");
  EXPECT_NE(dynamic_cast<ByteTokenizer*>(load_tokenizer(dir.path()).get()), nullptr);
  // Marked false: the size decides again.
  write_text(dir.file("config.json"), R"({"vocab_size": 128256, "starattn_byte_vocabulary": false})");
  EXPECT_THAT(error_of([&] { load_tokenizer(dir.path()); }), HasSubstr(json + " is missing"));
  // Not a directory at all.
  EXPECT_THAT(error_of([&] { load_tokenizer(dir.file("nothing")); }), HasSubstr("not a model directory"));
}

// Random models of a real model's shape are written marked byte-level, and read back so.
TEST(ModelVocabulary, RandomModelsAreMarkedByteLevel) {
  TempDir dir;
  ModelConfig config = preset_config("tiny");
  config.vocab_size = 1000;
  write_random_model(config, 3, dir.path());
  EXPECT_NE(dynamic_cast<ByteTokenizer*>(load_tokenizer(dir.path()).get()), nullptr);
  // The marker is a key transformers and our reader ignore: the config reads back the same.
  EXPECT_EQ(ModelConfig::from_file(dir.file("config.json")).to_json(), config.to_json());
}

}  // namespace
}  // namespace starattn
