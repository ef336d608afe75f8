#include "common/logging.h"

#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "spdlog/sinks/ostream_sink.h"
#include "spdlog/spdlog.h"

namespace kvtier {
namespace {

TEST(Logging, JsonLinesParseAndKeepTheMessage) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  sink->set_formatter(MakeJsonLogFormatter());
  spdlog::logger logger("json-test", sink);
  logger.warn("block {} is \"odd\"\n\tand\\or \x01", 7);
  logger.flush();
  auto j = nlohmann::json::parse(out.str());
  EXPECT_EQ(j["level"], "warning");
  EXPECT_EQ(j["msg"], "block 7 is \"odd\"\n\tand\\or \x01");
  EXPECT_FALSE(j["ts"].get<std::string>().empty());
}

TEST(Logging, RejectsUnknownLevelsAndFormats) {
  EXPECT_EQ(InitLogging("chatty").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(InitLogging("info", "xml").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(InitLogging("warn", "json").ok());
  EXPECT_TRUE(InitLogging("info", "text").ok());
}

TEST(Logging, ALimiterLetsAFewLinesASecondThroughAndCountsTheRest) {
  LogLimiter limiter(3);
  uint64_t dropped = 99;
  int allowed = 0;
  for (int i = 0; i < 1000; ++i) allowed += limiter.Allow(&dropped) ? 1 : 0;
  // Within one second three lines, or six if the loop crossed into the next.
  EXPECT_GE(allowed, 3);
  EXPECT_LE(allowed, 6);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  ASSERT_TRUE(limiter.Allow(&dropped));
  EXPECT_EQ(dropped, 1000u - allowed) << "the next line says how many were refused";
}

}  // namespace
}  // namespace kvtier
