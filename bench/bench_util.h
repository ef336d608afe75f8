#pragma once
// Small helpers shared by kvtier's benchmark programs: timing, medians, RESULT lines.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace kvtier::bench {

inline double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Parses the only flags a benchmark takes: --quick and --help (which prints `usage`). Returns -1
// to go on, else the exit code (0 after --help, 2 for an unknown argument).
inline int ParseBenchFlags(int argc, char** argv, const char* name, const char* usage,
                           bool* quick) {
  *quick = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quick") {
      *quick = true;
    } else if (arg == "--help") {
      std::printf("usage: %s [--quick]\n%s", name, usage);
      return 0;
    } else {
      std::fprintf(stderr, "%s: unknown argument '%s'\n", name, argv[i]);
      return 2;
    }
  }
  return -1;
}

// Ordered key -> value pairs printed as `RESULT {json}`.
class Result {
 public:
  void Add(const std::string& key, double value) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "%.6g", value);
    values_.emplace_back(key, buf);
  }
  // A string value (no characters that need escaping).
  void AddString(const std::string& key, const std::string& value) {
    values_.emplace_back(key, "\"" + value + "\"");
  }
  void Print() const {
    std::string out = "RESULT {";
    for (size_t i = 0; i < values_.size(); ++i) {
      out += (i ? ", \"" : "\"") + values_[i].first + "\": " + values_[i].second;
    }
    std::printf("%s}\n", out.c_str());
    std::fflush(stdout);
  }

 private:
  std::vector<std::pair<std::string, std::string>> values_;  // key, JSON value
};

}  // namespace kvtier::bench
