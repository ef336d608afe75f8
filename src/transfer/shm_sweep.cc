#include "transfer/shm_sweep.h"

#include <dirent.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <ctime>
#include <filesystem>
#include <fstream>
#include <set>
#include <vector>

namespace kvtier::transfer {
namespace {

// Every /dev/shm path that a process maps or holds open (as far as /proc lets us see).
std::set<std::string> PathsInUse(const std::string& dir) {
  std::set<std::string> used;
  std::error_code ec;
  for (const auto& proc : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string pid = proc.path().filename();
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream maps(proc.path() / "maps");
    for (std::string line; std::getline(maps, line);) {
      const size_t at = line.find(dir + "/");
      if (at == std::string::npos) continue;
      std::string path = line.substr(at);
      if (const size_t del = path.find(" (deleted)"); del != std::string::npos) path.resize(del);
      used.insert(path);
    }
    std::error_code fd_ec;
    for (const auto& fd : std::filesystem::directory_iterator(proc.path() / "fd", fd_ec)) {
      std::error_code link_ec;
      const std::string target = std::filesystem::read_symlink(fd.path(), link_ec);
      if (!link_ec && target.rfind(dir + "/", 0) == 0) used.insert(target);
    }
  }
  return used;
}

}  // namespace

ShmSweep RemoveOrphanShmSegments(const std::string& dir, const std::string& prefix,
                                 std::chrono::seconds min_age) {
  ShmSweep sweep;
  std::vector<std::pair<std::string, uint64_t>> candidates;
  std::error_code ec;
  const time_t now = std::time(nullptr);
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.path().filename().string().rfind(prefix, 0) != 0) continue;
    struct stat st {};
    if (lstat(entry.path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (st.st_uid != geteuid() || now - st.st_mtime < min_age.count()) continue;
    candidates.emplace_back(entry.path().string(), static_cast<uint64_t>(st.st_size));
  }
  if (candidates.empty()) return sweep;
  const std::set<std::string> used = PathsInUse(dir);
  for (const auto& [path, size] : candidates) {
    if (used.contains(path) || unlink(path.c_str()) != 0) continue;
    ++sweep.removed;
    sweep.bytes += size;
  }
  return sweep;
}

std::optional<uint64_t> SharedMemoryFreeBytes(const std::string& dir) {
  struct statvfs fs {};
  if (statvfs(dir.c_str(), &fs) != 0) return std::nullopt;
  return uint64_t{fs.f_bavail} * fs.f_frsize;
}

}  // namespace kvtier::transfer
