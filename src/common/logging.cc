#include "common/logging.h"

#include <chrono>
#include <cstdio>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "spdlog/pattern_formatter.h"
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

namespace {

// %* in a pattern: the message, escaped for a JSON string.
class JsonMessage final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    auto put = [&dest](std::string_view text) {
      dest.append(text.data(), text.data() + text.size());
    };
    for (char c : std::string_view(msg.payload.data(), msg.payload.size())) {
      switch (c) {
        case '"':
          put("\\\"");
          break;
        case '\\':
          put("\\\\");
          break;
        case '\n':
          put("\\n");
          break;
        case '\t':
          put("\\t");
          break;
        default:
          if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof(buf), "\\u%04x", c);
            put(buf);
          } else {
            dest.push_back(c);
          }
      }
    }
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonMessage>();
  }
};

}  // namespace

std::unique_ptr<spdlog::formatter> MakeJsonLogFormatter() {
  auto f = std::make_unique<spdlog::pattern_formatter>();
  f->add_flag<JsonMessage>('*').set_pattern(
      R"({"ts":"%Y-%m-%dT%H:%M:%S.%e","level":"%l","msg":"%*"})");
  return f;
}

absl::Status InitLogging(const std::string& level, const std::string& format) {
  if (absl::Status st = ValidateLogLevel(level); !st.ok()) return st;
  if (format != "text" && format != "json") {
    return absl::InvalidArgumentError(
        absl::StrCat("log format: unknown '", format, "' (text or json)"));
  }
  const spdlog::level::level_enum parsed = spdlog::level::from_str(level);
  auto logger = spdlog::get("kvtier");
  if (logger == nullptr) logger = spdlog::stderr_color_mt("kvtier");
  if (format == "json") {
    logger->set_formatter(MakeJsonLogFormatter());
  } else {
    logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  }
  spdlog::set_default_logger(logger);
  spdlog::set_level(parsed);
  return absl::OkStatus();
}

bool LogLimiter::Allow(uint64_t* dropped) {
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  int64_t second = second_.load(std::memory_order_relaxed);
  if (second != now && second_.compare_exchange_strong(second, now)) {
    in_second_.store(0, std::memory_order_relaxed);
  }
  if (in_second_.fetch_add(1, std::memory_order_relaxed) >= per_second_) {
    dropped_.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  *dropped = dropped_.exchange(0, std::memory_order_relaxed);
  return true;
}

}  // namespace kvtier
