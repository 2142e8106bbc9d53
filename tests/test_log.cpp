// The logging facility (runtime/log.h): levels filter, every line has a UTC timestamp and its
// level, a line is written whole.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "runtime/log.h"

namespace starattn {
namespace {

TEST(Log, TimestampsAreUtcWithMilliseconds) {
  EXPECT_EQ(logging::timestamp(0), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(logging::timestamp(1700000000123LL), "2023-11-14T22:13:20.123Z");
  EXPECT_EQ(logging::timestamp(951782400999LL), "2000-02-29T00:00:00.999Z");  // a leap day
}

TEST(Log, LevelsParseAndFilter) {
  EXPECT_EQ(logging::parse_level("debug"), logging::Level::debug);
  EXPECT_EQ(logging::parse_level("error"), logging::Level::error);
  EXPECT_THROW(logging::parse_level("verbose"), std::invalid_argument);
  std::mt19937 rng(11);
  const std::string marker = "m" + std::to_string(rng());
  logging::set_level(logging::Level::warn);
  ::testing::internal::CaptureStderr();
  logging::info("%s hidden", marker.c_str());
  logging::warn("%s shown %d", marker.c_str(), 7);
  logging::error("%s also shown", marker.c_str());
  const std::string out = ::testing::internal::GetCapturedStderr();
  logging::set_level(logging::Level::info);
  EXPECT_THAT(out, ::testing::Not(::testing::HasSubstr(marker + " hidden")));
  EXPECT_THAT(out, ::testing::ContainsRegex("Z warn  " + marker + " shown 7\n"));
  EXPECT_THAT(out, ::testing::ContainsRegex("Z error " + marker + " also shown\n"));
}

TEST(Log, LinesFromManyThreadsStayWhole) {
  ::testing::internal::CaptureStderr();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([t] {
      for (int i = 0; i < 200; ++i) logging::info("thread %d line %d %s", t, i, std::string(300, 'a' + t).c_str());
    });
  for (auto& th : threads) th.join();
  std::istringstream lines(::testing::internal::GetCapturedStderr());
  std::string line;
  int count = 0;
  while (std::getline(lines, line)) {
    if (line.find(" line ") == std::string::npos) continue;
    ++count;
    const int t = line[line.find("thread ") + 7] - '0';
    EXPECT_THAT(line, ::testing::EndsWith(std::string(300, static_cast<char>('a' + t)))) << line;
  }
  EXPECT_EQ(count, 800);
}

}  // namespace
}  // namespace starattn
