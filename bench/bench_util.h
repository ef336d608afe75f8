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
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Ordered key -> number pairs printed as `RESULT {json}`.
class Result {
 public:
  void Add(const std::string& key, double value) { values_.emplace_back(key, value); }
  void Print() const {
    std::string out = "RESULT {";
    for (size_t i = 0; i < values_.size(); ++i) {
      char buf[64];
      std::snprintf(buf, sizeof(buf), "%.6g", values_[i].second);
      out += (i ? ", \"" : "\"") + values_[i].first + "\": " + buf;
    }
    std::printf("%s}\n", out.c_str());
    std::fflush(stdout);
  }

 private:
  std::vector<std::pair<std::string, double>> values_;
};

}  // namespace kvtier::bench
