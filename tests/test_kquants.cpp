// GGUF K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): the dequantizers bit for bit against the `gguf`
// Python package's reference dequantizers run now, a hand-built block per type from the format's
// definition, and whole models stored in K-quants through the engine against the same weights
// in float32.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>

#include "runtime/backend.h"
#include "runtime/gguf.h"
#include "runtime/memory_weights.h"
#include "runtime/star_attention.h"
#include "runtime/transformer.h"
#include "tests/support/gguf_writer.h"
#include "tests/support/reference_model.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

namespace fs = std::filesystem;
using namespace starattn::testing;

constexpr uint32_t kKTypes[] = {ggml_type::q2_k, ggml_type::q3_k, ggml_type::q4_k, ggml_type::q5_k,
                                ggml_type::q6_k};

fs::path source_dir() { return fs::path(STARATTN_SOURCE_DIR); }

// The Python with gguf and numpy: the active venv (deploy/test.sh exports VIRTUAL_ENV), the
// source tree's .venv, else python3.
std::string python() {
  if (const char* venv = std::getenv("VIRTUAL_ENV"); venv && fs::exists(fs::path(venv) / "bin" / "python"))
    return (fs::path(venv) / "bin" / "python").string();
  const fs::path local = source_dir() / ".venv" / "bin" / "python";
  if (fs::exists(local)) return local.string();
  return "python3";
}

// Reads every <id>.bin in the directory given, dequantizes it with gguf.quants.dequantize as
// that ggml type and writes the float32 values to <id>.f32.
const char* const kDequantizeScript = R"PY(
import sys, pathlib
import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
d = pathlib.Path(sys.argv[1])
for f in sorted(d.glob("*.bin")):
    raw = np.fromfile(f, dtype=np.uint8)
    out = dequantize(raw, GGMLQuantizationType(int(f.stem))).astype(np.float32)
    out.tofile(d / (f.stem + ".f32"))
)PY";

TEST(KQuants, BitIdenticalToGgufPythonPackage) {
  const std::string py = python();
  if (std::system(("'" + py + "' -c 'import gguf.quants, numpy' 2>/dev/null").c_str()) != 0) {
    if (std::getenv("VIRTUAL_ENV") != nullptr)  // CI (deploy/test.sh) installs gguf: must run
      FAIL() << py << " has no gguf package; deploy/test.sh installs it";
    GTEST_SKIP() << py << " has no gguf package (pip install gguf numpy to run this check)";
  }
  TempDir dir;
  const int64_t n = 64 * 256;  // 64 super-blocks of each type
  std::map<uint32_t, std::vector<uint8_t>> blocks;
  for (uint32_t type : kKTypes) {
    // Random bytes throughout, then finite f16 scales of either sign and of sizes from tiny to
    // large, so every bit of every field is exercised.
    std::vector<uint8_t> raw = random_kquant_blocks(type, n, 0.02f, 100 + type);
    std::mt19937_64 rng(type);
    int64_t be = 0, bb = 0;
    ASSERT_TRUE(ggml_type_layout(type, be, bb));
    const bool with_min = type == ggml_type::q2_k || type == ggml_type::q4_k || type == ggml_type::q5_k;
    const int d_at = type == ggml_type::q2_k ? 80 : type == ggml_type::q3_k ? 108 : type == ggml_type::q6_k ? 208 : 0;
    std::uniform_real_distribution<float> exponent(-14.0f, 4.0f);
    for (int64_t b = 0; b < n / be; ++b) {
      for (int k = 0; k < (with_min ? 2 : 1); ++k) {
        const float v = std::exp2(exponent(rng)) * (rng() & 1 ? 1.0f : -1.0f);
        const uint16_t h = f32_to_f16(v);
        std::memcpy(&raw[static_cast<size_t>(b * bb + d_at + 2 * k)], &h, 2);
      }
    }
    std::ofstream(dir.file(std::to_string(type) + ".bin"), std::ios::binary)
        .write(reinterpret_cast<const char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
    blocks[type] = std::move(raw);
  }
  const std::string script = dir.file("dequantize.py");
  std::ofstream(script) << kDequantizeScript;
  const std::string cmd = "'" + py + "' '" + script + "' '" + dir.path() + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;

  for (uint32_t type : kKTypes) {
    std::vector<float> want(static_cast<size_t>(n)), got(static_cast<size_t>(n));
    std::ifstream in(dir.file(std::to_string(type) + ".f32"), std::ios::binary);
    in.read(reinterpret_cast<char*>(want.data()), static_cast<std::streamsize>(want.size() * 4));
    ASSERT_EQ(in.gcount(), static_cast<std::streamsize>(want.size() * 4)) << ggml_type_name(type);
    ggml_dequantize(type, blocks[type].data(), n, got.data());
    int64_t differing = 0, nonzero = 0, first = -1;
    for (int64_t i = 0; i < n; ++i) {
      nonzero += got[static_cast<size_t>(i)] != 0.0f;
      if (std::memcmp(&got[static_cast<size_t>(i)], &want[static_cast<size_t>(i)], 4) != 0) {
        if (first < 0) first = i;
        ++differing;
      }
    }
    EXPECT_EQ(differing, 0) << ggml_type_name(type) << ": first differing value " << first << ": ours "
                            << (first >= 0 ? got[static_cast<size_t>(first)] : 0) << ", gguf "
                            << (first >= 0 ? want[static_cast<size_t>(first)] : 0);
    EXPECT_GT(nonzero, n / 2) << ggml_type_name(type);  // the comparison is not of zeros
  }
}

// One block per type written from the format's description, independent of Python: every
// value is computed here from its own fields.
TEST(KQuants, HandBuiltBlocksFollowTheFormat) {
  auto put_half = [](std::vector<uint8_t>& b, size_t at, float v) {
    const uint16_t h = f32_to_f16(v);
    std::memcpy(&b[at], &h, 2);
  };
  std::mt19937_64 rng(5);
  auto byte = [&] { return static_cast<uint8_t>(rng()); };
  std::vector<float> out(256);

  {  // Q4_K: d = 0.5, dmin = 0.25; sub-block j has scale j + 1 and min 2j (j < 4: low 6 bits
     // of bytes j and j + 4; j >= 4: nibbles of byte j + 4, top bits in bytes j - 4 and j).
    std::vector<uint8_t> b(144);
    put_half(b, 0, 0.5f);
    put_half(b, 2, 0.25f);
    int sc[8], mn[8];
    for (int j = 0; j < 8; ++j) {
      sc[j] = j + 1 + (j >= 4 ? 48 : 0);  // > 15 for j >= 4 exercises the top bits
      mn[j] = 2 * j + (j >= 4 ? 16 : 0);
    }
    for (int j = 0; j < 4; ++j) {
      b[4 + j] = static_cast<uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
      b[8 + j] = static_cast<uint8_t>(mn[j] | ((mn[j + 4] >> 4) << 6));
      b[12 + j] = static_cast<uint8_t>((sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4));
    }
    for (int i = 16; i < 144; ++i) b[i] = byte();
    ggml_dequantize(ggml_type::q4_k, b.data(), 256, out.data());
    for (int e = 0; e < 256; ++e) {
      const int s = e / 32, l = e % 32;
      const int q = (b[16 + 32 * (s / 2) + l] >> (4 * (s % 2))) & 0xF;
      ASSERT_EQ(out[e], 0.5f * sc[s] * q - 0.25f * mn[s]) << "Q4_K value " << e;
    }
  }
  {  // Q6_K: d = 2^-6; int8 scales; value = d * scale * (6-bit q - 32).
    std::vector<uint8_t> b(210);
    for (int i = 0; i < 208; ++i) b[i] = byte();
    put_half(b, 208, 1.0f / 64);
    ggml_dequantize(ggml_type::q6_k, b.data(), 256, out.data());
    for (int e = 0; e < 256; ++e) {
      const int h = e / 128, r = e % 128;
      const int low = (b[64 * h + r % 64] >> (4 * (r / 64))) & 0xF;
      const int high = (b[128 + 32 * h + r % 32] >> (2 * (r / 32))) & 3;
      const int scale = static_cast<int8_t>(b[192 + e / 16]);
      ASSERT_EQ(out[e], (1.0f / 64) * scale * ((low | (high << 4)) - 32)) << "Q6_K value " << e;
    }
  }
  {  // Q2_K: scale and min nibbles per 16 values; 2-bit q.
    std::vector<uint8_t> b(84);
    for (int i = 0; i < 80; ++i) b[i] = byte();
    put_half(b, 80, 0.125f);
    put_half(b, 82, 0.0625f);
    ggml_dequantize(ggml_type::q2_k, b.data(), 256, out.data());
    for (int e = 0; e < 256; ++e) {
      const int q = (b[16 + 32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
      const uint8_t s = b[e / 16];
      ASSERT_EQ(out[e], 0.125f * (s & 0xF) * q - 0.0625f * (s >> 4)) << "Q2_K value " << e;
    }
  }
  {  // Q3_K: all sixteen 6-bit scales 33 (scale 1 after the bias of 32); q = low 2 bits minus 4
     // where the hmask bit is clear.
    std::vector<uint8_t> b(110);
    for (int i = 0; i < 96; ++i) b[i] = byte();
    for (int i = 0; i < 8; ++i) b[96 + i] = 0x11;   // low nibbles 1
    for (int i = 0; i < 4; ++i) b[104 + i] = 0xAA;  // high 2 bits 2 (0b10) for every scale
    put_half(b, 108, 0.5f);
    ggml_dequantize(ggml_type::q3_k, b.data(), 256, out.data());
    for (int e = 0; e < 256; ++e) {
      const int low = (b[32 + 32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
      const int hbit = (b[e % 32] >> (e / 32)) & 1;
      ASSERT_EQ(out[e], 0.5f * 1 * (low - (hbit ? 0 : 4))) << "Q3_K value " << e;
    }
  }
  {  // Q5_K: Q4_K's scales with a fifth bit from qh; scales 1, mins 0, d = 1: the value is q.
    std::vector<uint8_t> b(176);
    put_half(b, 0, 1.0f);
    put_half(b, 2, 0.0f);
    for (int j = 0; j < 4; ++j) {
      b[4 + j] = 1;
      b[8 + j] = 0;
      b[12 + j] = 1;
    }
    for (int i = 16; i < 176; ++i) b[i] = byte();
    ggml_dequantize(ggml_type::q5_k, b.data(), 256, out.data());
    for (int e = 0; e < 256; ++e) {
      const int s = e / 32, l = e % 32;
      const int q = ((b[48 + 32 * (s / 2) + l] >> (4 * (s % 2))) & 0xF) | (((b[16 + l] >> s) & 1) << 4);
      ASSERT_EQ(out[e], static_cast<float>(q)) << "Q5_K value " << e;
    }
  }
}

// ---- whole models ----

// A Llama whose matrices have 256-multiple rows (K-quant blocks never straddle rows).
ModelConfig kquant_config() {
  ModelConfig c;
  c.architecture = "llama";
  c.vocab_size = 300;
  c.hidden_size = 256;
  c.intermediate_size = 512;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  c.max_position_embeddings = 1024;
  c.tie_word_embeddings = false;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

// Next-token logits of `tokens` from the engine's forward on the cpu backend.
std::vector<float> engine_logits(const LoadedModel& model, const std::vector<int32_t>& tokens) {
  const auto backend = make_backend("cpu");
  const Transformer transformer(model.config, *model.weights, *backend);
  LocalShards none({});
  QuerySession session(transformer, none, 0, static_cast<int64_t>(tokens.size()));
  session.feed(tokens);
  std::vector<float> out(static_cast<size_t>(model.config.vocab_size));
  backend->download(session.logits(), out.data());
  return out;
}

// The model's tensors as its weight source serves them (Hugging Face names and row order).
std::vector<NamedTensor> read_all(const LoadedModel& model) {
  std::vector<NamedTensor> out;
  for (const TensorSpec& spec : model_tensor_specs(model.config)) {
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    NamedTensor t{spec.name, spec.shape, std::vector<float>(static_cast<size_t>(n))};
    model.weights->read_f32(spec.name, t.data.data());
    out.push_back(std::move(t));
  }
  return out;
}

// The same model as K-quant blocks (every K type in use) and as float32 values dequantized from
// those blocks: the engine gives the same logits, and both agree with the double-precision
// reference on those values.
TEST(KQuantModel, SameLogitsAsItsFloat32Values) {
  const ModelConfig c = kquant_config();
  const std::vector<uint32_t> matrix_types = {ggml_type::q2_k, ggml_type::q3_k, ggml_type::q4_k,
                                              ggml_type::q5_k, ggml_type::q6_k};
  std::vector<GgufTensorToWrite> quantized, dense;
  size_t next_type = 0;
  uint64_t seed = 1;
  std::map<uint32_t, int> used;
  for (const TensorSpec& spec : model_tensor_specs(c)) {
    const std::string name = GgufWeights::gguf_name(spec.name);
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    if (spec.shape.size() == 1) {  // norm weights: F32 in both files, as llama.cpp writes them
      std::vector<float> v(static_cast<size_t>(n));
      std::mt19937_64 rng(seed++);
      std::uniform_real_distribution<float> u(0.9f, 1.1f);
      for (float& x : v) x = u(rng);
      quantized.push_back({name, spec.shape, v, ggml_type::f32, {}});
      dense.push_back({name, spec.shape, v, ggml_type::f32, {}});
      continue;
    }
    const uint32_t type = matrix_types[next_type++ % matrix_types.size()];
    ++used[type];
    const float stddev = 1.0f / std::sqrt(static_cast<float>(spec.shape[1]));
    GgufTensorToWrite q{name, spec.shape, {}, type, random_kquant_blocks(type, n, stddev, seed++)};
    std::vector<float> values(static_cast<size_t>(n));
    ggml_dequantize(type, q.raw.data(), n, values.data());
    quantized.push_back(std::move(q));
    // Stored rows exactly as in the quantized file (q/k still permuted for llama.cpp's RoPE).
    dense.push_back({name, spec.shape, std::move(values), ggml_type::f32, {}});
  }
  ASSERT_EQ(used.size(), matrix_types.size());  // every K type carries some matrix
  GgufMetadata md = {
      {"general.architecture", gguf_string("llama")},
      {"llama.context_length", gguf_u32(1024)},
      {"llama.embedding_length", gguf_u32(256)},
      {"llama.block_count", gguf_u32(2)},
      {"llama.feed_forward_length", gguf_u32(512)},
      {"llama.attention.head_count", gguf_u32(4)},
      {"llama.attention.head_count_kv", gguf_u32(2)},
      {"llama.attention.layer_norm_rms_epsilon", gguf_f32(1e-5f)},
      {"llama.rope.freq_base", gguf_f32(10000.0f)},
      {"llama.vocab_size", gguf_u32(300)},
      {"tokenizer.ggml.bos_token_id", gguf_u32(1)},
      {"tokenizer.ggml.eos_token_id", gguf_u32(2)},
  };
  TempDir dir;
  write_gguf(dir.file("k.gguf"), md, quantized);
  write_gguf(dir.file("f32.gguf"), md, dense);
  const LoadedModel kq = open_gguf(dir.file("k.gguf"));
  const LoadedModel f32 = open_gguf(dir.file("f32.gguf"));
  EXPECT_EQ(kq.config.to_json(), f32.config.to_json());

  std::mt19937_64 rng(7);
  const std::vector<int32_t> tokens = random_tokens(rng, 10, c.vocab_size);
  const std::vector<float> a = engine_logits(kq, tokens);
  const std::vector<float> b = engine_logits(f32, tokens);
  // The two files hold the same values, so the engine holds the same (bf16) weights and runs
  // the same float operations: the logits are expected to be identical, and 1e-6 of the
  // largest logit is the bound.
  double amax = 0;
  for (float v : b) amax = std::max(amax, static_cast<double>(std::fabs(v)));
  ASSERT_GT(amax, 0.1);
  EXPECT_LE(max_abs_diff(a, b), 1e-6 * amax);

  // Against the double-precision reference on the float32 values: the cpu backend holds weights
  // in bf16 (8 significant bits, relative rounding <= 2^-9 per weight), which through two layers
  // and the head moves logits by about 0.5% of the largest; 2% bounds it. On the same weights
  // rounded to bf16 the reference agrees to float32 accuracy (2e-4, the engine tests' bound).
  std::vector<int32_t> positions(tokens.size());
  for (size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<int32_t>(i);
  const auto mask = causal_mask(static_cast<int64_t>(tokens.size()));
  std::vector<NamedTensor> values = read_all(f32);
  const ReferenceResult exact = reference_forward(f32.config, MemoryWeights(values), tokens, positions, mask);
  const std::vector<double>& want = exact.logits.back();
  const double bf16_diff = max_abs_diff(a.data(), want.data(), want.size());
  EXPECT_LE(bf16_diff, 2e-2 * max_abs(want));
  for (NamedTensor& t : values)
    for (float& v : t.data) v = bf16_to_f32(f32_to_bf16(v));
  const ReferenceResult rounded = reference_forward(f32.config, MemoryWeights(values), tokens, positions, mask);
  EXPECT_LE(max_abs_diff(a.data(), rounded.logits.back().data(), want.size()),
            2e-4 * std::max(1.0, max_abs(rounded.logits.back())));
  std::cout << "K-quant model: max |logit| " << amax << ", engine (bf16 weights) vs float32 reference "
            << bf16_diff << "\n";
}

// A K-quant matrix whose rows are not whole super-blocks cannot exist: the row length is named.
TEST(KQuantModel, RowsMustBeWholeSuperBlocks) {
  TempDir dir;
  GgufTensorToWrite t{"w", {2, 128}, {}, ggml_type::q4_k, std::vector<uint8_t>(144, 0)};
  write_gguf(dir.file("bad.gguf"), {{"general.architecture", gguf_string("llama")}}, {t});
  try {
    GgufFile f(dir.file("bad.gguf"));
    FAIL() << "opened";
  } catch (const std::exception& e) {
    EXPECT_THAT(e.what(), ::testing::HasSubstr("row length 128 is not a multiple of the Q4_K block size 256"));
  }
}

}  // namespace
}  // namespace starattn
