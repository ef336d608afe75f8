#include "common/process_metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/version.h"

namespace kvtier {
namespace {

prometheus::MetricFamily One(const char* name, const char* help, prometheus::MetricType type,
                             double value) {
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  return {name, help, type, {m}};
}

// The fields of /proc/self/stat after the command name (which may hold spaces), numbered as in
// proc(5) from 3 (state) on: fields[0] is field 3.
std::vector<std::string> StatFields() {
  std::ifstream in("/proc/self/stat");
  std::string line;
  std::getline(in, line);
  const size_t close = line.rfind(')');
  std::vector<std::string> fields;
  if (close == std::string::npos) return fields;
  std::istringstream rest(line.substr(close + 1));
  for (std::string f; rest >> f;) fields.push_back(f);
  return fields;
}

double Field(const std::vector<std::string>& fields, size_t proc_number) {
  const size_t i = proc_number - 3;
  return i < fields.size() ? std::stod(fields[i]) : 0;
}

// Seconds since the epoch at which the machine booted (/proc/stat btime).
double BootTime() {
  std::ifstream in("/proc/stat");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("btime ", 0) == 0) return std::stod(line.substr(6));
  }
  return 0;
}

}  // namespace

std::vector<prometheus::MetricFamily> ProcessMetrics::Collect() const {
  using T = prometheus::MetricType;
  std::vector<prometheus::MetricFamily> out;
  prometheus::ClientMetric info;
  info.label = {{"binary", binary_}, {"version", Version()}, {"commit", BuildCommit()}};
  info.gauge.value = 1;
  out.push_back({"kvtier_build_info", "The binary, its version and the commit it was built from.",
                 T::Gauge, {info}});

  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
  const std::vector<std::string> stat = StatFields();
  out.push_back(One("process_cpu_seconds_total", "User and system CPU time spent, seconds.",
                    T::Counter, (Field(stat, 14) + Field(stat, 15)) / ticks));
  out.push_back(One("process_virtual_memory_bytes", "Virtual memory size, bytes.", T::Gauge,
                    Field(stat, 23)));
  out.push_back(One("process_resident_memory_bytes", "Resident memory size, bytes.", T::Gauge,
                    Field(stat, 24) * page));
  out.push_back(One("process_threads", "Threads of the process.", T::Gauge, Field(stat, 20)));
  out.push_back(One("process_start_time_seconds",
                    "Start time of the process since the Unix epoch, seconds.", T::Gauge,
                    BootTime() + Field(stat, 22) / ticks));
  std::error_code ec;
  double fds = 0;
  for (auto it = std::filesystem::directory_iterator("/proc/self/fd", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++fds;
  }
  out.push_back(One("process_open_fds", "Open file descriptors.", T::Gauge, fds));
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  out.push_back(One("process_max_fds", "Most file descriptors the process may open.", T::Gauge,
                    static_cast<double>(limit.rlim_cur)));
  return out;
}

}  // namespace kvtier
