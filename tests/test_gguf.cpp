// GGUF: dequantizers against the format definition, write/read round trips of a small Llama in
// every supported type, llama.cpp's q/k row permutation (checked through RoPE and logits),
// every malformed-file case with its message, and the real SmolLM2 file when present.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <random>

#include "runtime/gguf.h"
#include "runtime/random_model.h"
#include "runtime/safetensors.h"
#include "tests/support/gguf_writer.h"
#include "tests/support/reference_model.h"
#include "tests/support/smollm2.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

using ::testing::HasSubstr;
using namespace starattn::testing;

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  ADD_FAILURE() << "no exception";
  return "";
}

// f16 bits of a random finite value of moderate size (scales in real files are like this).
uint16_t random_half(std::mt19937_64& rng) {
  std::uniform_real_distribution<float> d(-0.05f, 0.05f);
  return f32_to_f16(d(rng));
}

void put16(std::vector<uint8_t>& v, uint16_t h) {
  v.push_back(static_cast<uint8_t>(h & 0xFF));
  v.push_back(static_cast<uint8_t>(h >> 8));
}

// ---- dequantizers: random raw blocks, expected values from the format definition ----

TEST(GgufDequantize, Q8_0) {
  std::mt19937_64 rng(1);
  std::vector<uint8_t> raw;
  std::vector<float> expected;
  for (int b = 0; b < 8; ++b) {
    const uint16_t d = random_half(rng);
    put16(raw, d);
    for (int k = 0; k < 32; ++k) {
      const auto q = static_cast<int8_t>(rng() & 0xFF);
      raw.push_back(static_cast<uint8_t>(q));
      expected.push_back(f16_to_f32(d) * static_cast<float>(q));
    }
  }
  std::vector<float> out(expected.size());
  ggml_dequantize(ggml_type::q8_0, raw.data(), 256, out.data());
  EXPECT_EQ(out, expected);
}

TEST(GgufDequantize, Q4_0) {
  std::mt19937_64 rng(2);
  std::vector<uint8_t> raw;
  std::vector<float> expected;
  for (int b = 0; b < 8; ++b) {
    const uint16_t d = random_half(rng);
    put16(raw, d);
    int q[32];
    for (int& x : q) x = static_cast<int>(rng() % 16);
    // Byte k holds element k in its low nibble and element k + 16 in its high nibble.
    for (int k = 0; k < 16; ++k) raw.push_back(static_cast<uint8_t>(q[k] + 16 * q[k + 16]));
    for (int k = 0; k < 32; ++k) expected.push_back(static_cast<float>(q[k] - 8) * f16_to_f32(d));
  }
  std::vector<float> out(expected.size());
  ggml_dequantize(ggml_type::q4_0, raw.data(), 256, out.data());
  EXPECT_EQ(out, expected);
}

TEST(GgufDequantize, Q4_1) {
  std::mt19937_64 rng(3);
  std::vector<uint8_t> raw;
  std::vector<float> expected;
  for (int b = 0; b < 8; ++b) {
    const uint16_t d = random_half(rng), m = random_half(rng);
    put16(raw, d);
    put16(raw, m);
    int q[32];
    for (int& x : q) x = static_cast<int>(rng() % 16);
    for (int k = 0; k < 16; ++k) raw.push_back(static_cast<uint8_t>(q[k] + 16 * q[k + 16]));
    for (int k = 0; k < 32; ++k)
      expected.push_back(static_cast<float>(q[k]) * f16_to_f32(d) + f16_to_f32(m));
  }
  std::vector<float> out(expected.size());
  ggml_dequantize(ggml_type::q4_1, raw.data(), 256, out.data());
  EXPECT_EQ(out, expected);
}

TEST(GgufDequantize, HalfTypes) {
  std::mt19937_64 rng(4);
  std::vector<uint8_t> f16, bf16;
  std::vector<float> want16, wantbf;
  for (int i = 0; i < 100; ++i) {
    const auto h = static_cast<uint16_t>(rng() & 0x7BFF);  // finite f16 of either sign
    const auto b = static_cast<uint16_t>(rng() & 0xFF7F);  // finite bf16
    put16(f16, h);
    put16(bf16, b);
    want16.push_back(f16_to_f32(h));
    wantbf.push_back(bf16_to_f32(b));
  }
  std::vector<float> out(100);
  ggml_dequantize(ggml_type::f16, f16.data(), 100, out.data());
  EXPECT_EQ(out, want16);
  ggml_dequantize(ggml_type::bf16, bf16.data(), 100, out.data());
  EXPECT_EQ(out, wantbf);
  // A type we do not dequantize (Q5_0, id 6) is named; the K-quants are in test_kquants.cpp.
  EXPECT_THAT(error_of([&] { ggml_dequantize(6, f16.data(), 32, out.data()); }), HasSubstr("Q5_0"));
}

// The writer's quantizers (used for test files) stay within half a quantization step.
TEST(GgufDequantize, QuantizeRoundTripBounds) {
  std::mt19937_64 rng(5);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(32 * 64);
  for (float& v : x) v = d(rng);
  for (uint32_t type : {ggml_type::q8_0, ggml_type::q4_0, ggml_type::q4_1}) {
    const std::vector<uint8_t> raw = ggml_quantize(type, x.data(), static_cast<int64_t>(x.size()));
    std::vector<float> y(x.size());
    ggml_dequantize(type, raw.data(), static_cast<int64_t>(x.size()), y.data());
    for (size_t b = 0; b < x.size() / 32; ++b) {
      float amax = 0, lo = x[32 * b], hi = x[32 * b];
      for (size_t k = 32 * b; k < 32 * b + 32; ++k) {
        amax = std::max(amax, std::fabs(x[k]));
        lo = std::min(lo, x[k]);
        hi = std::max(hi, x[k]);
      }
      const float step = type == ggml_type::q8_0 ? amax / 127 : type == ggml_type::q4_0 ? amax / 7 : (hi - lo) / 15;
      for (size_t k = 32 * b; k < 32 * b + 32; ++k)
        ASSERT_LE(std::fabs(x[k] - y[k]), 0.5f * step * 1.01f + 2e-3f * std::fabs(x[k]))
            << ggml_type_name(type) << " element " << k;
    }
  }
}

// ---- metadata and round trips ----

TEST(GgufFile, MetadataOfEveryType) {
  TempDir dir;
  GgufValue u64;
  u64.type = GgufType::u64;
  u64.u = 0xFFFFFFFFFFFFFFFFull;
  GgufValue f64;
  f64.type = GgufType::f64;
  f64.f = 0.125;
  GgufValue nested;
  nested.type = GgufType::array;
  nested.array_type = GgufType::array;
  nested.array = {gguf_i32s({1, 2}), gguf_i32s({3})};
  for (uint32_t version : {2u, 3u}) {
    const std::string path = dir.file("m" + std::to_string(version) + ".gguf");
    write_gguf(path,
               {{"s", gguf_string("h\xC3\xA9llo")}, {"u", gguf_u32(7)}, {"i", gguf_i32(-3)},
                {"f", gguf_f32(1.5f)}, {"b", gguf_bool(true)}, {"big", u64}, {"d", f64},
                {"names", gguf_strings({"a", "", "c"})}, {"nested", nested},
                {"general.alignment", gguf_u32(64)}},
               {{"t", {2, 32}, std::vector<float>(64, 1.0f), ggml_type::f32}}, version, 64);
    GgufFile f(path);
    EXPECT_EQ(f.version(), version);
    EXPECT_EQ(f.alignment(), 64u);
    EXPECT_EQ(f.get_string("s", ""), "h\xC3\xA9llo");
    EXPECT_EQ(f.get_int("u", 0), 7);
    EXPECT_EQ(f.get_int("i", 0), -3);
    EXPECT_EQ(f.get_float("f", 0), 1.5);
    EXPECT_TRUE(f.get_bool("b", false));
    EXPECT_EQ(f.find("big")->u, 0xFFFFFFFFFFFFFFFFull);
    EXPECT_EQ(f.get_float("d", 0), 0.125);
    EXPECT_EQ(f.get_strings("names"), (std::vector<std::string>{"a", "", "c"}));
    EXPECT_EQ(f.find("nested")->array[1].array[0].i, 3);
    EXPECT_EQ(f.get_int("absent", 42), 42);
    EXPECT_THAT(error_of([&] { f.get_int("s", 0); }), HasSubstr("\"s\" has type string"));
    EXPECT_EQ(f.tensors()[0].shape(), (std::vector<int64_t>{2, 32}));
  }
}

struct RoundTrip {
  uint32_t type;
  double tolerance;  // max |error| relative to the tensor's max |value|
};

class GgufModelRoundTrip : public ::testing::TestWithParam<RoundTrip> {};

TEST_P(GgufModelRoundTrip, TensorsAndConfig) {
  const RoundTrip rt = GetParam();
  for (bool bias_and_scaling : {false, true}) {
    ModelConfig config = test_config(bias_and_scaling);
    config.intermediate_size = 96;  // rows of down_proj must be whole 32-element blocks
    const std::vector<NamedTensor> tensors = random_weights(config, 11);
    TempDir dir;
    const std::string path = dir.file("model.gguf");
    write_llama_gguf(path, config, tensors, rt.type);
    const LoadedModel model = open_gguf(path);
    const ModelConfig& c = model.config;
    EXPECT_EQ(c.architecture, "llama");
    EXPECT_EQ(c.vocab_size, config.vocab_size);
    EXPECT_EQ(c.hidden_size, config.hidden_size);
    EXPECT_EQ(c.intermediate_size, config.intermediate_size);
    EXPECT_EQ(c.num_layers, config.num_layers);
    EXPECT_EQ(c.num_heads, config.num_heads);
    EXPECT_EQ(c.num_kv_heads, config.num_kv_heads);
    EXPECT_EQ(c.head_dim, config.head_dim);
    EXPECT_FLOAT_EQ(c.rms_norm_eps, config.rms_norm_eps);
    EXPECT_FLOAT_EQ(c.rope_theta, config.rope_theta);
    EXPECT_EQ(c.tie_word_embeddings, config.tie_word_embeddings);
    EXPECT_EQ(c.attention_bias, config.attention_bias);
    EXPECT_EQ(c.o_proj_bias, config.o_proj_bias);
    EXPECT_EQ(c.mlp_bias, config.mlp_bias);
    EXPECT_EQ(c.rope_scaling.type, config.rope_scaling.type);
    EXPECT_NEAR(c.rope_scaling.factor, config.rope_scaling.factor, 1e-5);
    EXPECT_EQ(c.rope_scaling.original_max_position_embeddings,
              config.rope_scaling.original_max_position_embeddings);
    EXPECT_EQ(c.bos_token_id, config.bos_token_id);
    EXPECT_EQ(c.eos_token_ids, config.eos_token_ids);
    for (const NamedTensor& t : tensors) {
      ASSERT_EQ(model.weights->shape(t.name), t.shape) << t.name;
      std::vector<float> got(t.data.size());
      model.weights->read_f32(t.name, got.data());
      float amax = 0;
      for (float v : t.data) amax = std::max(amax, std::fabs(v));
      const double tol = t.shape.size() == 2 ? rt.tolerance * amax : 0.0;  // vectors stay F32
      EXPECT_LE(max_abs_diff(got, t.data), tol) << t.name << " as " << ggml_type_name(rt.type);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Types, GgufModelRoundTrip,
    ::testing::Values(RoundTrip{ggml_type::f32, 0.0}, RoundTrip{ggml_type::f16, 1.0 / 1024},
                      RoundTrip{ggml_type::bf16, 1.0 / 128}, RoundTrip{ggml_type::q8_0, 1.0 / 250},
                      RoundTrip{ggml_type::q4_0, 1.0 / 13}, RoundTrip{ggml_type::q4_1, 1.0 / 14}),
    [](const ::testing::TestParamInfo<RoundTrip>& p) { return ggml_type_name(p.param.type); });

// ---- llama.cpp's q/k permutation ----

// The converter's permutation written as its numpy definition: rows reshaped to
// (heads, 2, D/2) and the last two axes swapped, i.e. out[h][j][s] = in[h][s][j].
TEST(GgufPermutation, MatchesConverterDefinition) {
  const int64_t heads = 3, d = 8, cols = 5;
  std::vector<float> w(static_cast<size_t>(heads * d * cols));
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i);
  std::vector<float> p = w;
  gguf_permute_rows(p.data(), heads, d, cols);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t j = 0; j < d / 2; ++j)
      for (int64_t s = 0; s < 2; ++s)
        for (int64_t c = 0; c < cols; ++c)
          ASSERT_EQ(p[static_cast<size_t>(((h * d) + j * 2 + s) * cols + c)],
                    w[static_cast<size_t>(((h * d) + s * d / 2 + j) * cols + c)]);
  gguf_unpermute_rows(p.data(), heads, d, cols);
  EXPECT_EQ(p, w);
}

// Why the permutation exists: llama.cpp rotates adjacent pairs (2i, 2i+1); Hugging Face rotates
// (i, i + D/2). Projections with permuted rows under interleaved RoPE must give the same
// attention scores as the original rows under rotate-half RoPE.
TEST(GgufPermutation, InterleavedRopeOnPermutedRowsEqualsRotateHalf) {
  const int d = 16, cols = 24;
  const double theta = 10000.0;
  std::mt19937_64 rng(7);
  std::normal_distribution<double> nd;
  std::vector<float> wq(d * cols), wk(d * cols), x1(cols), x2(cols);
  for (auto* v : {&wq, &wk, &x1, &x2})
    for (float& e : *v) e = static_cast<float>(nd(rng));
  auto project = [&](const std::vector<float>& w, const std::vector<float>& x) {
    std::vector<double> y(d, 0.0);
    for (int r = 0; r < d; ++r)
      for (int c = 0; c < cols; ++c) y[r] += double(w[r * cols + c]) * x[c];
    return y;
  };
  auto rotate = [&](std::vector<double> y, int pos, bool interleaved) {
    std::vector<double> out = y;
    for (int i = 0; i < d / 2; ++i) {
      const double angle = pos * std::pow(theta, -2.0 * i / d);
      const int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + d / 2;
      out[a] = y[a] * std::cos(angle) - y[b] * std::sin(angle);
      out[b] = y[b] * std::cos(angle) + y[a] * std::sin(angle);
    }
    return out;
  };
  auto dot = [](const std::vector<double>& a, const std::vector<double>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
    return s;
  };
  std::vector<float> pq = wq, pk = wk;
  gguf_permute_rows(pq.data(), 1, d, cols);
  gguf_permute_rows(pk.data(), 1, d, cols);
  for (int p1 : {0, 3, 17})
    for (int p2 : {0, 5, 100}) {
      const double hf = dot(rotate(project(wq, x1), p1, false), rotate(project(wk, x2), p2, false));
      const double cpp = dot(rotate(project(pq, x1), p1, true), rotate(project(pk, x2), p2, true));
      EXPECT_NEAR(hf, cpp, 1e-9 * (1 + std::fabs(hf)));
      // And without un-permuting, the scores would differ.
      const double wrong = dot(rotate(project(pq, x1), p1, false), rotate(project(pk, x2), p2, false));
      if (p1 != p2) {
        EXPECT_GT(std::fabs(hf - wrong), 1e-6);
      }
    }
}

// A GGUF written in llama.cpp's layout gives the Hugging Face model's logits.
TEST(GgufPermutation, LogitsMatchHuggingFaceLayout) {
  const ModelConfig config = test_config(true);
  const std::vector<NamedTensor> tensors = random_weights(config, 3);
  TempDir dir;
  write_llama_gguf(dir.file("m.gguf"), config, tensors, ggml_type::f32);
  const LoadedModel model = open_gguf(dir.file("m.gguf"));
  std::vector<NamedTensor> loaded;
  for (const NamedTensor& t : tensors) {
    NamedTensor copy{t.name, t.shape, std::vector<float>(t.data.size())};
    model.weights->read_f32(t.name, copy.data.data());
    loaded.push_back(std::move(copy));
  }
  std::mt19937_64 rng(9);
  const std::vector<int32_t> tokens = random_tokens(rng, 12, config.vocab_size);
  std::vector<int32_t> positions(tokens.size());
  for (size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<int32_t>(i);
  const auto mask = causal_mask(static_cast<int64_t>(tokens.size()));
  const ReferenceResult hf = reference_forward(config, MemoryWeights(tensors), tokens, positions, mask);
  const ReferenceResult gg = reference_forward(model.config, MemoryWeights(loaded), tokens, positions, mask);
  ASSERT_EQ(hf.logits.size(), gg.logits.size());
  for (size_t i = 0; i < hf.logits.size(); ++i)
    for (size_t v = 0; v < hf.logits[i].size(); ++v)
      ASSERT_NEAR(hf.logits[i][v], gg.logits[i][v], 1e-9) << "token " << i;
  // Read as if no permutation had been applied, the logits differ: the test can see it.
  std::vector<NamedTensor> scrambled = loaded;
  for (NamedTensor& t : scrambled)
    if (t.name.find(".q_proj.weight") != std::string::npos)
      gguf_permute_rows(t.data.data(), config.num_heads, config.head_dim, t.shape[1]);
  const ReferenceResult bad = reference_forward(config, MemoryWeights(scrambled), tokens, positions, mask);
  EXPECT_GT(std::fabs(bad.logits.back()[0] - hf.logits.back()[0]) +
                std::fabs(bad.logits.back()[1] - hf.logits.back()[1]), 1e-6);
}

// ---- malformed files ----

class GgufMalformed : public ::testing::Test {
 protected:
  std::string write(const std::string& bytes) {
    const std::string path = dir_.file("bad" + std::to_string(count_++) + ".gguf");
    std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path;
  }
  void expect_error(const std::string& bytes, const std::vector<std::string>& parts) {
    const std::string path = write(bytes);
    const std::string message = error_of([&] { GgufFile f(path); });
    EXPECT_THAT(message, HasSubstr(path));
    for (const std::string& part : parts) EXPECT_THAT(message, HasSubstr(part));
  }
  static std::string good() {
    return gguf_bytes({{"general.architecture", gguf_string("llama")}},
                      {{"a", {2, 32}, std::vector<float>(64, 0.5f), ggml_type::f32},
                       {"b", {32}, std::vector<float>(32, 0.25f), ggml_type::f32}});
  }
  // Byte offset of the first occurrence of `needle` in `bytes`.
  static size_t at(const std::string& bytes, const std::string& needle) { return bytes.find(needle); }
  template <typename T>
  static void patch(std::string& bytes, size_t pos, T v) {
    std::memcpy(&bytes[pos], &v, sizeof(T));
  }
  TempDir dir_;
  int count_ = 0;
};

TEST_F(GgufMalformed, GoodFileOpens) {
  GgufFile f(write(good()));
  EXPECT_EQ(f.tensors().size(), 2u);
}

TEST_F(GgufMalformed, HeaderProblems) {
  std::string b = good();
  b[0] = 'X';
  expect_error(b, {"bad magic"});
  expect_error("GGU", {"bad magic"});
  b = good();
  patch<uint32_t>(b, 4, 1);
  expect_error(b, {"version 1 is not supported"});
  patch<uint32_t>(b, 4, 4);
  expect_error(b, {"version 4 is not supported"});
  patch<uint32_t>(b, 4, 0x03000000);
  expect_error(b, {"big-endian"});
  expect_error(good().substr(0, 12), {"truncated"});
  b = good();
  patch<uint64_t>(b, 16, 1ull << 40);
  expect_error(b, {"metadata count"});
}

TEST_F(GgufMalformed, MetadataProblems) {
  const std::string g = good();
  // The key's string length points far past the end.
  std::string b = g;
  patch<uint64_t>(b, 24, 1ull << 40);
  expect_error(b, {"metadata entry 0 key", "runs past the end"});
  // The value's string length ("llama") points past the end.
  b = g;
  const size_t value = at(b, "llama") - 8;
  patch<uint64_t>(b, value, 1ull << 33);
  expect_error(b, {"general.architecture", "string length", "runs past the end"});
  // Cut inside the metadata.
  expect_error(g.substr(0, at(g, "llama") + 2), {"general.architecture"});
  // Unknown value type.
  b = g;
  patch<uint32_t>(b, value - 4, 99);
  expect_error(b, {"general.architecture", "value type 99"});
  // An array claiming more elements than the file holds.
  b = gguf_bytes({{"xs", gguf_i32s({1, 2, 3})}}, {});
  patch<uint64_t>(b, at(b, "xs") + 2 + 4 + 4, 1ull << 50);
  expect_error(b, {"\"xs\"", "array of", "runs past the end"});
  // Duplicate key; bad alignment.
  expect_error(gguf_bytes({{"k", gguf_u32(1)}, {"k", gguf_u32(2)}}, {}), {"\"k\"", "twice"});
  expect_error(gguf_bytes({{"general.alignment", gguf_u32(24)}}, {}), {"general.alignment", "power of two"});
}

TEST_F(GgufMalformed, TensorProblems) {
  const std::string g = good();
  const size_t info_a = at(g, std::string("\x01\x00\x00\x00\x00\x00\x00\x00" "a", 9)) + 9;  // after name "a"
  // n_dims 5
  std::string b = g;
  patch<uint32_t>(b, info_a, 5);
  expect_error(b, {"tensor \"a\"", "n_dims 5"});
  // unknown type id
  b = g;
  patch<uint32_t>(b, info_a + 4 + 16, 200);
  expect_error(b, {"tensor \"a\"", "unknown ggml type id 200"});
  // data past the end: a bigger shape
  b = g;
  patch<uint64_t>(b, info_a + 4 + 8, 1000);
  expect_error(b, {"tensor \"a\"", "runs past the end of the data area"});
  // overlap: b's offset moved onto a's data
  b = g;
  const size_t info_b = at(b, std::string("\x01\x00\x00\x00\x00\x00\x00\x00" "b", 9)) + 9;
  patch<uint64_t>(b, info_b + 4 + 8 + 4, 128);
  expect_error(b, {"tensor \"b\"", "overlaps tensor \"a\""});
  // misaligned offset
  patch<uint64_t>(b, info_b + 4 + 8 + 4, 260);
  expect_error(b, {"tensor \"b\"", "not a multiple of the alignment"});
  // truncated data area
  expect_error(g.substr(0, g.size() - 40), {"tensor \"b\"", "truncated"});
  // a Q8_0 row that is not whole blocks: dims[0] 64 -> 48
  b = gguf_bytes({}, {{"q", {1, 64}, std::vector<float>(64, 1.0f), ggml_type::q8_0}});
  patch<uint64_t>(b, at(b, "q") + 1 + 4, 48);
  expect_error(b, {"tensor \"q\"", "not a multiple of the Q8_0 block size"});
  // duplicate tensor name
  expect_error(gguf_bytes({}, {{"t", {32}, std::vector<float>(32, 1.0f), ggml_type::f32},
                               {"t", {32}, std::vector<float>(32, 1.0f), ggml_type::f32}}),
               {"tensor \"t\"", "twice"});
}

TEST_F(GgufMalformed, ModelProblems) {
  ModelConfig config = test_config();
  const std::vector<NamedTensor> tensors = random_weights(config, 1);
  // A tensor in a type we do not dequantize: named with its type and id at open_gguf.
  std::string b = [&] {
    TempDir d;
    write_llama_gguf(d.file("m.gguf"), config, tensors, ggml_type::q8_0);
    std::ifstream in(d.file("m.gguf"), std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  const size_t name = at(b, "blk.1.ffn_up.weight") + std::strlen("blk.1.ffn_up.weight");
  patch<uint32_t>(b, name + 4 + 16, 6);  // Q5_0: same block of 32, 22 bytes (fits the space)
  const std::string path = write(b);
  EXPECT_THAT(error_of([&] { open_gguf(path); }),
              ::testing::AllOf(HasSubstr(path), HasSubstr("blk.1.ffn_up.weight"), HasSubstr("Q5_0"),
                               HasSubstr("ggml type id 6")));
  // Shape mismatch against the metadata.
  std::vector<NamedTensor> wrong = tensors;
  for (NamedTensor& t : wrong)
    if (t.name == "model.layers.0.mlp.up_proj.weight") {
      t.shape = {config.intermediate_size - 32, config.hidden_size};
      t.data.resize(static_cast<size_t>(t.shape[0] * t.shape[1]));
    }
  write_llama_gguf(dir_.file("shape.gguf"), config, wrong, ggml_type::f32);
  EXPECT_THAT(error_of([&] { open_gguf(dir_.file("shape.gguf")); }),
              ::testing::AllOf(HasSubstr("shape.gguf"), HasSubstr("model.layers.0.mlp.up_proj.weight"),
                               HasSubstr("expected [160, 64]")));
  // Missing and unsupported architectures, missing hyperparameters.
  write_gguf(dir_.file("noarch.gguf"), {}, {});
  EXPECT_THAT(error_of([&] { open_gguf(dir_.file("noarch.gguf")); }), HasSubstr("general.architecture"));
  write_gguf(dir_.file("gpt2.gguf"), {{"general.architecture", gguf_string("gpt2")}}, {});
  EXPECT_THAT(error_of([&] { open_gguf(dir_.file("gpt2.gguf")); }), HasSubstr("\"gpt2\" is not supported"));
  write_gguf(dir_.file("nohidden.gguf"), {{"general.architecture", gguf_string("llama")}}, {});
  EXPECT_THAT(error_of([&] { open_gguf(dir_.file("nohidden.gguf")); }),
              HasSubstr("\"llama.embedding_length\" is missing"));
}

// ---- the real model ----

TEST(GgufSmolLM2, ConfigAndValues) {
  const std::string path = smollm2_gguf_path();
  if (path.empty()) GTEST_SKIP() << smollm2_missing_message();
  const LoadedModel model = open_gguf(path);
  const ModelConfig& c = model.config;
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.num_layers, 30);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.num_heads, 9);
  EXPECT_EQ(c.num_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_FLOAT_EQ(c.rope_theta, 100000.0f);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int>{2});
  // Values the `gguf` Python package dequantizes (token_embd is Q8_0, attn_q Q4_1), q rows
  // un-permuted with numpy's reshape(9, 32, 2, 576).swapaxes(1, 2).
  std::vector<float> embed(576 * 49152), q(576 * 576);
  model.weights->read_f32("model.embed_tokens.weight", embed.data());
  model.weights->read_f32("model.layers.0.self_attn.q_proj.weight", q.data());
  EXPECT_NEAR(embed[0], -0.10654449, 1e-6);
  EXPECT_NEAR(embed[1], 0.03297806, 1e-6);
  EXPECT_NEAR(q[0], -0.09631348, 1e-6);
  EXPECT_NEAR(q[1], 0.15734863, 1e-6);
  EXPECT_NEAR(q[576], -0.15917969, 1e-6);
}

}  // namespace
}  // namespace starattn
