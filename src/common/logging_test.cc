#include "common/logging.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

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

}  // namespace
}  // namespace kvtier
