#pragma once
// Process-wide logging set-up for kvtier's programs: structured lines on stderr, so that stdout
// carries only a program's output (tables, JSON, RESULT lines).

#include <string>

#include "absl/status/status.h"

namespace kvtier {

// Sends spdlog's default logger to stderr at `level` (trace, debug, info, warn, error, critical,
// off). INVALID_ARGUMENT for another level name.
absl::Status InitLogging(const std::string& level = "info");

// OK if `level` is one of the names above, else INVALID_ARGUMENT.
absl::Status ValidateLogLevel(const std::string& level);

}  // namespace kvtier
