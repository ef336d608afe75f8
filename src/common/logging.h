#pragma once
// Process-wide logging set-up for kvtier's programs: structured lines on stderr, so that stdout
// carries only a program's output (tables, JSON, RESULT lines).

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"

namespace spdlog {
class formatter;
}

namespace kvtier {

// Sends spdlog's default logger to stderr at `level` (trace, debug, info, warn, error, critical,
// off) in `format`: "text" (timestamp, level, message) or "json" (one object a line:
// {"ts":...,"level":...,"msg":...}, for log collectors). INVALID_ARGUMENT for other names.
absl::Status InitLogging(const std::string& level = "info", const std::string& format = "text");

// The formatter behind format "json" (exposed for tests).
std::unique_ptr<spdlog::formatter> MakeJsonLogFormatter();

// OK if `level` is one of the names above, else INVALID_ARGUMENT.
absl::Status ValidateLogLevel(const std::string& level);

// Lets through at most `per_second` lines a second (a burst of that many), so that a flood of
// bad requests cannot flood the log. Thread-safe, lock-free.
class LogLimiter {
 public:
  explicit LogLimiter(uint32_t per_second) : per_second_(per_second) {}
  // True if a line may be written now; then `*dropped` is how many were refused since the last
  // one let through (to say so in it).
  bool Allow(uint64_t* dropped);

 private:
  const uint32_t per_second_;
  std::atomic<int64_t> second_{-1};   // the second whose lines are being counted
  std::atomic<uint32_t> in_second_{0};
  std::atomic<uint64_t> dropped_{0};
};

}  // namespace kvtier
