// safetensors: half-precision conversions, write/read round trips, sharded directories, and
// every malformed-file case reported at open with the file and tensor named.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "runtime/safetensors.h"
#include "tests/support/test_models.h"

namespace starattn {
namespace {

using ::testing::HasSubstr;
using starattn::testing::TempDir;

float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// A file made of an explicit header length, header text and data bytes.
void write_raw(const std::string& path, uint64_t header_length, const std::string& header,
               const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(&header_length), 8);
  out << header << data;
}
void write_raw(const std::string& path, const std::string& header, size_t data_bytes) {
  std::string data(data_bytes, '\0');
  for (size_t i = 0; i < data_bytes; ++i) data[i] = static_cast<char>(i * 37 + 11);
  write_raw(path, header.size(), header, data);
}

// Opening `path` must fail with a message containing every one of `parts`.
void expect_open_error(const std::string& path, const std::vector<std::string>& parts) {
  try {
    SafetensorsFile file(path);
    ADD_FAILURE() << "opening " << path << " succeeded";
  } catch (const std::runtime_error& e) {
    for (const std::string& part : parts) EXPECT_THAT(e.what(), HasSubstr(part));
  }
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

std::vector<float> random_values(std::mt19937_64& rng, size_t n, float scale) {
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// ---- conversions ----

TEST(HalfConversion, Bf16KnownValues) {
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xC000), -2.0f);
  EXPECT_EQ(bf16_to_f32(0x0001), std::ldexp(1.0f, -133));  // smallest subnormal
  EXPECT_EQ(bf16_to_f32(0x7F80), std::numeric_limits<float>::infinity());
  EXPECT_EQ(bf16_to_f32(0xFF80), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(bf16_to_f32(0x7FC0)));

  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(f32_to_bf16(-2.0f), 0xC000);
  // Ties go to even: 1 + 2^-8 lies halfway between 0x3F80 and 0x3F81.
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3F81);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::max()), 0x7F80);  // rounds past the max
  EXPECT_EQ(f32_to_bf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  // A NaN whose payload sits only in the low bits must not truncate to infinity.
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(bits_to_float(0x7F800001u)))));
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(bits_to_float(0xFFC00000u)))));
  EXPECT_EQ(f32_to_bf16(bits_to_float(0xFFC00000u)) & 0x8000, 0x8000);
}

TEST(HalfConversion, F16KnownValues) {
  EXPECT_EQ(f16_to_f32(0x3C00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xC000), -2.0f);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x03FF), 1023 * std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x0400), std::ldexp(1.0f, -14));
  EXPECT_EQ(f16_to_f32(0x7BFF), 65504.0f);
  EXPECT_EQ(f16_to_f32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_to_f32(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7E00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7C01)));
  EXPECT_TRUE(std::signbit(f16_to_f32(0x8000)));
  EXPECT_EQ(f16_to_f32(0x8000), 0.0f);

  EXPECT_EQ(f32_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xC000);
  EXPECT_EQ(f32_to_f16(1.0f / 3.0f), 0x3555);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7BFF);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);  // the tie above the max rounds to infinity
  EXPECT_EQ(f32_to_f16(1e10f), 0x7C00);
  EXPECT_EQ(f32_to_f16(-1e10f), 0xFC00);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 2^-24: even
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0001f, -25)), 0x0001);
  EXPECT_EQ(f32_to_f16(3 * std::ldexp(1.0f, -25)), 0x0002);  // 1.5 units: tie to even
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(f32_to_f16(-std::ldexp(1.0f, -30)), 0x8000);
  // 2^-14 - 2^-25 rounds up into the smallest normal.
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -25)), 0x0400);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(std::nanf("")))));
  EXPECT_TRUE(std::isnan(f16_to_f32(f32_to_f16(bits_to_float(0x7F800001u)))));
}

// Every half value converts to float and back unchanged (NaNs stay NaN).
TEST(HalfConversion, ExhaustiveRoundTrip) {
  for (uint32_t v = 0; v <= 0xFFFF; ++v) {
    const auto h = static_cast<uint16_t>(v);
    const float b = bf16_to_f32(h);
    if (std::isnan(b))
      ASSERT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(b)))) << v;
    else
      ASSERT_EQ(f32_to_bf16(b), h) << v;
    const float f = f16_to_f32(h);
    if (std::isnan(f))
      ASSERT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f)))) << v;
    else
      ASSERT_EQ(f32_to_f16(f), h) << v;
  }
}

// The chosen half value is the nearest one: its neighbours are never strictly closer.
TEST(HalfConversion, RoundsToNearest) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  std::uniform_int_distribution<int> exponent(-26, 15);
  for (int i = 0; i < 20000; ++i) {
    const float x = std::ldexp(mantissa(rng), exponent(rng)) * (i % 2 ? -1.0f : 1.0f);
    for (bool bf16 : {true, false}) {
      const uint16_t h = bf16 ? f32_to_bf16(x) : f32_to_f16(x);
      auto value = [&](uint16_t v) { return bf16 ? bf16_to_f32(v) : f16_to_f32(v); };
      if (std::isinf(value(h))) continue;  // overflow: checked in F16KnownValues
      const double err = std::fabs(double(value(h)) - x);
      for (int step : {-1, 1}) {
        const auto n = static_cast<uint16_t>(h + step);
        if ((n & 0x7FFF) == 0x7FFF || ((n ^ h) & 0x8000)) continue;  // wrapped past 0 or NaN
        if (std::isinf(value(n)) || std::isnan(value(n))) continue;
        ASSERT_LE(err, std::fabs(double(value(n)) - x)) << x << (bf16 ? " bf16" : " f16");
      }
    }
  }
}

// ---- round trips ----

class RoundTrip : public ::testing::TestWithParam<StDType> {};

TEST_P(RoundTrip, WriteThenRead) {
  const StDType dtype = GetParam();
  TempDir dir;
  std::mt19937_64 rng(1234 + static_cast<int>(dtype));
  // Given order differs from name order, so the data order is visible in the offsets.
  std::vector<NamedTensor> tensors = {
      {"z.first", {3, 5}, random_values(rng, 15, 3.0f)},
      {"a.scalar", {}, random_values(rng, 1, 100.0f)},
      {"m.empty", {0, 4}, {}},
      {"b.vector", {7}, random_values(rng, 7, 0.01f)},
      {"c.cube", {2, 3, 4}, random_values(rng, 24, 1000.0f)},
  };
  const std::string path = dir.file("t.safetensors");
  write_safetensors(path, tensors, dtype);

  SafetensorsFile file(path);
  ASSERT_EQ(file.tensors().size(), tensors.size());
  EXPECT_EQ(file.find("z.first")->begin, 0u);
  EXPECT_LT(file.find("a.scalar")->begin, file.find("b.vector")->begin);
  EXPECT_EQ(file.find("missing"), nullptr);
  // bf16 keeps 8 significant bits, f16 11: round to nearest errs by at most half a unit.
  const double rel = dtype == StDType::f32 ? 0.0 : dtype == StDType::bf16 ? 0x1p-8 : 0x1p-11;
  for (const NamedTensor& t : tensors) {
    const SafetensorInfo* info = file.find(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    EXPECT_EQ(info->dtype, dtype);
    EXPECT_EQ(info->shape, t.shape);
    EXPECT_EQ(info->elements(), static_cast<int64_t>(t.data.size()));
    std::vector<float> back(t.data.size() + 1, -7.0f);
    file.read_f32(t.name, back.data());
    EXPECT_EQ(back.back(), -7.0f) << "read past the tensor " << t.name;
    for (size_t i = 0; i < t.data.size(); ++i) {
      const float x = t.data[i];
      ASSERT_LE(std::fabs(back[i] - x), rel * std::fabs(x) + 1e-7) << t.name << "[" << i << "]";
      if (dtype == StDType::bf16) {
        ASSERT_EQ(back[i], bf16_to_f32(f32_to_bf16(x)));
      } else if (dtype == StDType::f16) {
        ASSERT_EQ(back[i], f16_to_f32(f32_to_f16(x)));
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, RoundTrip,
                         ::testing::Values(StDType::f32, StDType::bf16, StDType::f16));

TEST(SafetensorsWrite, HeaderIsPaddedToEightBytes) {
  TempDir dir;
  std::mt19937_64 rng(5);
  for (int n = 1; n <= 9; ++n) {
    const std::string path = dir.file("p" + std::to_string(n) + ".safetensors");
    write_safetensors(path, {{std::string(static_cast<size_t>(n), 'x'), {3}, random_values(rng, 3, 1)}},
                      StDType::bf16);
    std::ifstream in(path, std::ios::binary);
    uint64_t header_length = 0;
    in.read(reinterpret_cast<char*>(&header_length), 8);
    EXPECT_EQ((8 + header_length) % 8, 0u);
    std::string header(header_length, '\0');
    in.read(header.data(), static_cast<std::streamsize>(header_length));
    EXPECT_EQ(header.front(), '{');
    EXPECT_THAT(header, HasSubstr("\"__metadata__\":{\"format\":\"pt\"}"));
    EXPECT_EQ(header.find_last_not_of(' '), header.find_last_of('}'));
  }
}

TEST(SafetensorsWrite, RejectsInconsistentTensors) {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  std::string e = error_of([&] { write_safetensors(path, {{"w.short", {2, 3}, {1, 2, 3}}}); });
  EXPECT_THAT(e, HasSubstr("w.short"));
  EXPECT_THAT(e, HasSubstr("bad.safetensors"));
  EXPECT_THAT(e, HasSubstr("needs 6 values but 3"));
  e = error_of([&] { write_safetensors(path, {{"dup", {1}, {1}}, {"dup", {1}, {2}}}); });
  EXPECT_THAT(e, HasSubstr("\"dup\""));
  EXPECT_THAT(e, HasSubstr("twice"));
}

// A hand-written file: no metadata, header not padded (data unaligned), f16 and bf16 data.
TEST(SafetensorsRead, UnpaddedHeaderAndMetadataIgnored) {
  TempDir dir;
  const std::string path = dir.file("hand.safetensors");
  const std::string header =
      R"({"__metadata__":{"anything":"goes"},"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},)"
      R"("b":{"dtype":"BF16","shape":[1,1],"data_offsets":[4,6]}})";
  const uint16_t values[3] = {0x3C00, 0xC000, 0x3F80};  // f16 1, f16 -2, bf16 1
  write_raw(path, header.size(), header, std::string(reinterpret_cast<const char*>(values), 6));
  SafetensorsFile file(path);
  EXPECT_EQ(file.tensors().size(), 2u);
  float h[2], b[1];
  file.read_f32("h", h);
  file.read_f32("b", b);
  EXPECT_EQ(h[0], 1.0f);
  EXPECT_EQ(h[1], -2.0f);
  EXPECT_EQ(b[0], 1.0f);
  const std::string e = error_of([&] { file.read_f32("nope.weight", h); });
  EXPECT_THAT(e, HasSubstr("hand.safetensors"));
  EXPECT_THAT(e, HasSubstr("nope.weight"));
}

// ---- malformed files ----

TEST(SafetensorsMalformed, FileLevelProblems) {
  TempDir dir;
  const std::string missing = dir.file("absent.safetensors");
  expect_open_error(missing, {"absent.safetensors", "cannot open"});

  const std::string empty = dir.file("empty.safetensors");
  std::ofstream(empty).close();
  expect_open_error(empty, {"empty.safetensors", "0 bytes", "shorter than the 8-byte"});

  const std::string short_file = dir.file("short.safetensors");
  std::ofstream(short_file, std::ios::binary) << "abcde";
  expect_open_error(short_file, {"short.safetensors", "5 bytes", "shorter than the 8-byte"});

  const std::string past = dir.file("past.safetensors");
  write_raw(past, 1000, R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "abcd");
  expect_open_error(past, {"past.safetensors", "header length 1000", "past the end of the file"});

  const std::string huge = dir.file("huge.safetensors");
  write_raw(huge, ~uint64_t{0}, "{}", "");
  expect_open_error(huge, {"huge.safetensors", "past the end of the file"});

  const std::string not_json = dir.file("notjson.safetensors");
  write_raw(not_json, R"({"w": {"dtype": "F32", )", 8);
  expect_open_error(not_json, {"notjson.safetensors", "not valid JSON"});

  const std::string array = dir.file("array.safetensors");
  write_raw(array, "[1, 2, 3]", 8);
  expect_open_error(array, {"array.safetensors", "header is a JSON array", "expected an object"});
}

struct BadHeader {
  const char* label;
  std::string header;
  size_t data_bytes;
  std::vector<std::string> expected;  // besides the file name
};

class SafetensorsBadHeader : public ::testing::TestWithParam<BadHeader> {};

TEST_P(SafetensorsBadHeader, NamesFileTensorAndProblem) {
  const BadHeader& c = GetParam();
  TempDir dir;
  const std::string path = dir.file(std::string(c.label) + ".safetensors");
  write_raw(path, c.header, c.data_bytes);
  std::vector<std::string> parts = c.expected;
  parts.push_back(std::string(c.label) + ".safetensors");
  expect_open_error(path, parts);
}

std::string entry(const std::string& name, const std::string& body) {
  return "\"" + name + "\":{" + body + "}";
}

INSTANTIATE_TEST_SUITE_P(
    AllCases, SafetensorsBadHeader,
    ::testing::Values(
        BadHeader{"entry_not_object", R"({"layers.0.w": [1, 2]})", 8,
                  {"\"layers.0.w\"", "not an object"}},
        BadHeader{"no_dtype", "{" + entry("layers.0.q", R"("shape":[2],"data_offsets":[0,8])") + "}",
                  8, {"\"layers.0.q\"", "no dtype"}},
        BadHeader{"no_shape", "{" + entry("layers.0.k", R"("dtype":"F32","data_offsets":[0,8])") + "}",
                  8, {"\"layers.0.k\"", "no shape"}},
        BadHeader{"no_offsets", "{" + entry("layers.0.v", R"("dtype":"F32","shape":[2])") + "}", 8,
                  {"\"layers.0.v\"", "no data_offsets"}},
        BadHeader{"dtype_not_string",
                  "{" + entry("emb", R"("dtype":4,"shape":[2],"data_offsets":[0,8])") + "}", 8,
                  {"\"emb\"", "dtype is not a string"}},
        BadHeader{"unknown_dtype",
                  "{" + entry("emb.i64", R"("dtype":"I64","shape":[1],"data_offsets":[0,8])") + "}",
                  8, {"\"emb.i64\"", "dtype \"I64\" is not supported", "F32, F16, BF16"}},
        BadHeader{"shape_not_array",
                  "{" + entry("norm", R"("dtype":"F32","shape":2,"data_offsets":[0,8])") + "}", 8,
                  {"\"norm\"", "shape is not an array"}},
        BadHeader{"shape_not_integer",
                  "{" + entry("norm2", R"("dtype":"F32","shape":["2"],"data_offsets":[0,8])") + "}",
                  8, {"\"norm2\"", "non-integer dimension"}},
        BadHeader{"negative_shape",
                  "{" + entry("neg.w", R"("dtype":"F32","shape":[-2],"data_offsets":[0,8])") + "}",
                  8, {"\"neg.w\"", "negative dimension"}},
        BadHeader{"oversized_shape",
                  "{" +
                      entry("big.w",
                            R"("dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8])") +
                      "}",
                  8, {"\"big.w\"", "oversized"}},
        BadHeader{"oversized_bytes",
                  "{" + entry("big.b", R"("dtype":"F32","shape":[4611686018427387904],)"
                                       R"("data_offsets":[0,8])") + "}",
                  8, {"\"big.b\"", "oversized"}},
        BadHeader{"offsets_one_value",
                  "{" + entry("off.a", R"("dtype":"F32","shape":[2],"data_offsets":[8])") + "}", 8,
                  {"\"off.a\"", "data_offsets must be two non-negative integers"}},
        BadHeader{"offsets_negative",
                  "{" + entry("off.b", R"("dtype":"F32","shape":[2],"data_offsets":[-8,0])") + "}",
                  8, {"\"off.b\"", "data_offsets must be two non-negative integers"}},
        BadHeader{"offsets_strings",
                  "{" + entry("off.c", R"("dtype":"F32","shape":[2],"data_offsets":["0","8"])") +
                      "}",
                  8, {"\"off.c\"", "data_offsets must be two"}},
        BadHeader{"begin_after_end",
                  "{" + entry("rev.w", R"("dtype":"F32","shape":[2],"data_offsets":[8,0])") + "}",
                  8, {"\"rev.w\"", "begin > end"}},
        BadHeader{"past_data_end",
                  "{" + entry("tail.w", R"("dtype":"F32","shape":[4],"data_offsets":[8,24])") + "}",
                  16, {"\"tail.w\"", "[8, 24]", "past the end of the data area (16 bytes)"}},
        BadHeader{"size_mismatch",
                  "{" + entry("mis.w", R"("dtype":"BF16","shape":[3,2],"data_offsets":[0,8])") +
                      "}",
                  8, {"\"mis.w\"", "span 8 bytes", "[3, 2] of BF16 needs 12 bytes"}},
        BadHeader{"overlap",
                  "{" + entry("first.w", R"("dtype":"F32","shape":[2],"data_offsets":[0,8])") +
                      "," + entry("second.w", R"("dtype":"F32","shape":[2],"data_offsets":[4,12])") +
                      "}",
                  16, {"\"second.w\"", "\"first.w\"", "overlap"}},
        // One range wholly inside another (of another dtype): both named.
        BadHeader{"overlap_inside",
                  "{" + entry("outer.w", R"("dtype":"F32","shape":[4],"data_offsets":[0,16])") +
                      "," + entry("inner.w", R"("dtype":"F16","shape":[2],"data_offsets":[4,8])") + "}",
                  16, {"\"outer.w\"", "\"inner.w\"", "overlap"}},
        BadHeader{"unknown_dtype_name",
                  "{" + entry("emb.f8", R"("dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8])") + "}",
                  8, {"\"emb.f8\"", "dtype \"F8_E4M3\" is not supported"}},
        BadHeader{"duplicate",
                  "{" + entry("twin.w", R"("dtype":"F32","shape":[1],"data_offsets":[0,4])") + "," +
                      entry("twin.w", R"("dtype":"F32","shape":[1],"data_offsets":[4,8])") + "}",
                  8, {"\"twin.w\"", "appears twice"}}),
    [](const ::testing::TestParamInfo<BadHeader>& p) { return std::string(p.param.label); });

// Empty tensors occupy no bytes, so they overlap nothing even inside another's range.
TEST(SafetensorsRead, EmptyTensorsNeverOverlap) {
  TempDir dir;
  const std::string path = dir.file("empty_ok.safetensors");
  write_raw(path,
            "{" + entry("full", R"("dtype":"F32","shape":[2],"data_offsets":[0,8])") + "," +
                entry("none", R"("dtype":"F32","shape":[0,3],"data_offsets":[4,4])") + "}",
            8);
  SafetensorsFile file(path);
  EXPECT_EQ(file.tensors().size(), 2u);
}

// ---- model directories ----

TEST(SafetensorsWeights, SingleFileDirectory) {
  TempDir dir;
  std::mt19937_64 rng(11);
  const std::vector<float> w = random_values(rng, 12, 2.0f);
  write_safetensors(dir.file("model.safetensors"), {{"x.weight", {3, 4}, w}}, StDType::f16);
  SafetensorsWeights weights(dir.path());
  EXPECT_TRUE(weights.has("x.weight"));
  EXPECT_FALSE(weights.has("y.weight"));
  EXPECT_EQ(weights.shape("x.weight"), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(weights.describe(), dir.path());
  std::vector<float> back(12);
  weights.read_f32("x.weight", back.data());
  for (size_t i = 0; i < w.size(); ++i) EXPECT_EQ(back[i], f16_to_f32(f32_to_f16(w[i])));
  for (const std::string& e : {error_of([&] { weights.shape("y.weight"); }),
                               error_of([&] { weights.read_f32("y.weight", back.data()); })}) {
    EXPECT_THAT(e, HasSubstr(dir.path()));
    EXPECT_THAT(e, HasSubstr("\"y.weight\""));
  }
}

class ShardedDirectory : public ::testing::Test {
 protected:
  void SetUp() override {
    std::mt19937_64 rng(99);
    a_ = random_values(rng, 6, 1.0f);
    b_ = random_values(rng, 4, 1.0f);
    c_ = random_values(rng, 5, 1.0f);
    write_safetensors(dir_.file("model-00001-of-00002.safetensors"),
                      {{"a.weight", {2, 3}, a_}, {"b.weight", {4}, b_}}, StDType::f32);
    write_safetensors(dir_.file("model-00002-of-00002.safetensors"), {{"c.weight", {5}, c_}},
                      StDType::bf16);
  }
  void write_index(const std::string& text) {
    std::ofstream(dir_.file("model.safetensors.index.json")) << text;
  }
  static std::string index_json(const std::string& c_shard) {
    return R"({"metadata": {"total_size": 60}, "weight_map": {)"
           R"("a.weight": "model-00001-of-00002.safetensors",)"
           R"("b.weight": "model-00001-of-00002.safetensors",)"
           R"("c.weight": ")" + c_shard + "\"}}";
  }
  TempDir dir_;
  std::vector<float> a_, b_, c_;
};

TEST_F(ShardedDirectory, ReadsEveryShard) {
  write_index(index_json("model-00002-of-00002.safetensors"));
  SafetensorsWeights weights(dir_.path());
  EXPECT_EQ(weights.shape("a.weight"), (std::vector<int64_t>{2, 3}));
  std::vector<float> a(6), b(4), c(5);
  weights.read_f32("a.weight", a.data());
  weights.read_f32("b.weight", b.data());
  weights.read_f32("c.weight", c.data());
  EXPECT_EQ(a, a_);
  EXPECT_EQ(b, b_);
  for (size_t i = 0; i < c.size(); ++i) EXPECT_EQ(c[i], bf16_to_f32(f32_to_bf16(c_[i])));
}

TEST_F(ShardedDirectory, MissingShardIsNamed) {
  write_index(index_json("model-00003-of-00003.safetensors"));
  const std::string e = error_of([&] { SafetensorsWeights w(dir_.path()); });
  EXPECT_THAT(e, HasSubstr(dir_.path()));
  EXPECT_THAT(e, HasSubstr("model-00003-of-00003.safetensors"));
  EXPECT_THAT(e, HasSubstr("\"c.weight\""));
  EXPECT_THAT(e, HasSubstr("does not exist"));
}

TEST_F(ShardedDirectory, TensorAbsentFromItsShardIsNamed) {
  write_index(index_json("model-00001-of-00002.safetensors"));
  const std::string e = error_of([&] { SafetensorsWeights w(dir_.path()); });
  EXPECT_THAT(e, HasSubstr(dir_.path()));
  EXPECT_THAT(e, HasSubstr("\"c.weight\""));
  EXPECT_THAT(e, HasSubstr("model-00001-of-00002.safetensors"));
  EXPECT_THAT(e, HasSubstr("does not contain it"));
}

TEST_F(ShardedDirectory, MalformedIndex) {
  write_index(R"({"metadata": {}})");
  EXPECT_THAT(error_of([&] { SafetensorsWeights w(dir_.path()); }),
              HasSubstr("model.safetensors.index.json: has no \"weight_map\" object"));
  write_index(R"({"weight_map": {"a.weight": )");
  EXPECT_THAT(error_of([&] { SafetensorsWeights w(dir_.path()); }), HasSubstr("not valid JSON"));
  write_index(R"({"weight_map": {"a.weight": 3}})");
  std::string e = error_of([&] { SafetensorsWeights w(dir_.path()); });
  EXPECT_THAT(e, HasSubstr("\"a.weight\""));
  EXPECT_THAT(e, HasSubstr("not a file name"));
  write_index(R"({"weight_map": {"a.weight": "../elsewhere.safetensors"}})");
  e = error_of([&] { SafetensorsWeights w(dir_.path()); });
  EXPECT_THAT(e, HasSubstr("not a plain file name"));
}

TEST_F(ShardedDirectory, CorruptShardIsNamed) {
  write_index(index_json("model-00002-of-00002.safetensors"));
  std::ofstream(dir_.file("model-00002-of-00002.safetensors"), std::ios::binary) << "1234";
  const std::string e = error_of([&] { SafetensorsWeights w(dir_.path()); });
  EXPECT_THAT(e, HasSubstr("model-00002-of-00002.safetensors"));
  EXPECT_THAT(e, HasSubstr("shorter than the 8-byte"));
}

TEST(SafetensorsWeights, EmptyDirectory) {
  TempDir dir;
  EXPECT_EQ(error_of([&] { SafetensorsWeights w(dir.path()); }),
            "no model.safetensors or model.safetensors.index.json in " + dir.path());
}

}  // namespace
}  // namespace starattn
