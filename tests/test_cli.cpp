// The starattn command line as a user drives it: init-model, then run in its modes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "tests/support/test_models.h"

namespace starattn {
namespace {

struct Result {
  int status = -1;
  std::string out;  // stdout
  std::string err;  // stderr
};

Result run_cli(const std::string& args, const testing::TempDir& tmp) {
  const std::string err_file = tmp.file("stderr.txt");
  // A bundle moved to another host points STARATTN_CLI at its own copy of the binary.
  const char* env = std::getenv("STARATTN_CLI");
  const std::string cmd = std::string(env ? env : STARATTN_CLI) + " " + args + " 2>" + err_file;
  Result r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  r.status = pclose(p);
  std::ifstream e(err_file);
  std::stringstream ss;
  ss << e.rdbuf();
  r.err = ss.str();
  return r;
}

std::string id_list(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = tmp_.file("model");
    const Result r = run_cli("init-model --preset tiny --seed 3 --out " + model_, tmp_);
    ASSERT_EQ(r.status, 0) << r.err;
    std::mt19937_64 rng(17);
    context_ = id_list(testing::random_tokens(rng, 150, 256));
    query_ = id_list(testing::random_tokens(rng, 6, 256));
  }
  std::string run_args(const std::string& extra) {
    return "run --model " + model_ + " --context-ids " + context_ + " --query-ids " + query_ +
           " --max-tokens 10 --ignore-eos --output ids " + extra;
  }
  testing::TempDir tmp_;
  std::string model_, context_, query_;
};

TEST_F(Cli, InitModelWritesAHuggingFaceDirectory) {
  std::ifstream config(model_ + "/config.json");
  ASSERT_TRUE(config.good());
  std::stringstream ss;
  ss << config.rdbuf();
  EXPECT_THAT(ss.str(), ::testing::HasSubstr("\"model_type\": \"llama\""));
  EXPECT_THAT(ss.str(), ::testing::HasSubstr("\"vocab_size\": 259"));
  EXPECT_TRUE(std::ifstream(model_ + "/model.safetensors").good());
}

TEST_F(Cli, StarWithBlockCoveringContextPrintsTheSameIdsAsFull) {
  const Result full = run_cli(run_args("--mode full"), tmp_);
  ASSERT_EQ(full.status, 0) << full.err;
  const Result star = run_cli(run_args("--mode star --workers 3 --block-size 150"), tmp_);
  ASSERT_EQ(star.status, 0) << star.err;
  EXPECT_EQ(star.out, full.out);
  // The in-process actors encode in chunks when asked (a serving worker's default), with the
  // same greedy tokens (chunks round in the last bits only: test_phase1_chunks).
  const Result chunked = run_cli(run_args("--mode star --workers 3 --block-size 150 --phase1-chunk 7"), tmp_);
  ASSERT_EQ(chunked.status, 0) << chunked.err;
  EXPECT_EQ(chunked.out, full.out);
  // Ten ids separated by spaces, then a newline.
  std::istringstream ids(full.out);
  int count = 0, id;
  while (ids >> id) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, 259);
    ++count;
  }
  EXPECT_EQ(count, 10);
  EXPECT_THAT(star.err, ::testing::HasSubstr("phase 1 (context encoding)"));
  EXPECT_THAT(star.err, ::testing::HasSubstr("first token"));
}

TEST_F(Cli, LogitsDumpHoldsOneVocabularyRowPerToken) {
  const std::string dump = tmp_.file("logits.bin");
  const Result r = run_cli(run_args("--mode star --workers 2 --block-size 40 --dump-logits " + dump), tmp_);
  ASSERT_EQ(r.status, 0) << r.err;
  std::ifstream in(dump, std::ios::binary | std::ios::ate);
  EXPECT_EQ(static_cast<long>(in.tellg()), 10L * 259 * 4);
}

TEST_F(Cli, TextContextStreamsText) {
  std::ofstream(tmp_.file("ctx.txt")) << "The quick brown fox jumps over the lazy dog. ";
  const Result r = run_cli("run --model " + model_ + " --context-file " + tmp_.file("ctx.txt") +
                               " --query 'Who jumps?' --max-tokens 5 --workers 2",
                           tmp_);
  EXPECT_EQ(r.status, 0) << r.err;
  EXPECT_THAT(r.err, ::testing::HasSubstr("[star] context 46 tokens"));
}

TEST_F(Cli, BadArgumentsFailWithAMessage) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {run_args("--mode sideways"), "unknown attention mode"},
      {run_args("--block-size 8 --anchor-size 9"), "anchor size"},
      {run_args("--workers 0"), "workers must be at least 1"},
      {run_args("--phase1-chunk -1"), "--phase1-chunk must be >= 0"},
      {run_args("--engine --phase1-chunk 8"), "not with --engine"},
      {run_args("--bogus 1"), "unknown option --bogus"},
      {"run --model " + tmp_.file("nowhere") + " --context-ids 1 --query-ids 2", "nowhere"},
      {"run --model " + model_ + " --context-ids 1,x --query-ids 2", "not a token id"},
      {"init-model --preset huge --out " + tmp_.file("m2"), "huge"},
  };
  for (const auto& [args, needle] : cases) {
    const Result r = run_cli(args, tmp_);
    EXPECT_NE(r.status, 0) << args;
    EXPECT_THAT(r.err, ::testing::HasSubstr(needle)) << args;
  }
}

TEST_F(Cli, VersionAndLogLevel) {
  const Result v = run_cli("--version", tmp_);
  EXPECT_EQ(v.status, 0);
  EXPECT_THAT(v.out, ::testing::MatchesRegex("starattn [0-9]+\\.[0-9]+\\.[0-9]+.*\n"));
  const Result bad = run_cli("--log-level loud " + run_args(""), tmp_);
  EXPECT_NE(bad.status, 0);
  EXPECT_THAT(bad.err, ::testing::HasSubstr("--log-level must be error, warn, info or debug"));
  // Error lines carry a UTC timestamp and their level; --log-level may come anywhere.
  const Result failed = run_cli(run_args("--mode sideways --log-level=debug"), tmp_);
  EXPECT_NE(failed.status, 0);
  EXPECT_THAT(failed.err, ::testing::ContainsRegex("20[0-9][0-9]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:"
                                                   "[0-6][0-9]\\.[0-9][0-9][0-9]Z error "));
  const Result ok = run_cli(run_args("--log-level error"), tmp_);
  EXPECT_EQ(ok.status, 0) << ok.err;
  // Phase 1 reports each block with its time (at info level from 16K tokens, always at debug).
  const Result debug = run_cli(run_args("--mode star --workers 2 --block-size 60 --log-level debug"), tmp_);
  EXPECT_EQ(debug.status, 0) << debug.err;
  EXPECT_THAT(debug.err, ::testing::ContainsRegex("debug phase 1: block 1 \\(positions 60\\.\\.119, anchor 60\\) "
                                                  "encoded in [0-9]+\\.[0-9] ms"));
}

TEST_F(Cli, ServeLocalBindsItsPortBeforeLoadingTheModel) {
  // A port that is taken fails at once, before the (here missing) model would be loaded.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(listen(fd, 1), 0);
  socklen_t len = sizeof addr;
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string port = std::to_string(ntohs(addr.sin_port));
  const Result r = run_cli("serve-local --model " + model_ + " --http 127.0.0.1:" + port, tmp_);
  close(fd);
  EXPECT_NE(r.status, 0);
  EXPECT_THAT(r.err, ::testing::HasSubstr("cannot listen for http on 127.0.0.1:" + port));
  EXPECT_THAT(r.err, ::testing::Not(::testing::HasSubstr("loading")));
  const Result bad = run_cli("serve-local --model " + model_ + " --tcp 127.0.0.1:70000", tmp_);
  EXPECT_THAT(bad.err, ::testing::HasSubstr("--tcp wants HOST:PORT"));
  EXPECT_THAT(bad.err, ::testing::HasSubstr("out of range"));
}

}  // namespace
}  // namespace starattn
