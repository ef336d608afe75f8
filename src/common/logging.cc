#include "common/logging.h"

#include "absl/strings/str_cat.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

namespace kvtier {

absl::Status ValidateLogLevel(const std::string& level) {
  if (spdlog::level::from_str(level) == spdlog::level::off && level != "off") {
    return absl::InvalidArgumentError(absl::StrCat(
        "log level: unknown '", level, "' (trace, debug, info, warn, error, critical, off)"));
  }
  return absl::OkStatus();
}

absl::Status InitLogging(const std::string& level) {
  if (absl::Status st = ValidateLogLevel(level); !st.ok()) return st;
  const spdlog::level::level_enum parsed = spdlog::level::from_str(level);
  auto logger = spdlog::get("kvtier");
  if (logger == nullptr) logger = spdlog::stderr_color_mt("kvtier");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(parsed);
  return absl::OkStatus();
}

}  // namespace kvtier
