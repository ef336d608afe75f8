#pragma once
// Process-wide logging set-up for kvtier's programs: structured lines on stderr, so that stdout
// carries only a program's output (tables, JSON, RESULT lines).

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

}  // namespace kvtier
