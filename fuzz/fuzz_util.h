#pragma once
// Helpers shared by the fuzz targets: stream framing, and a file the parsers that take a path
// can read the input from.

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

namespace kvtier::fuzz {

// Stops the run with a message: libFuzzer records the input that got here as a crash.
[[noreturn]] inline void Fail(const std::string& what) {
  std::fprintf(stderr, "fuzz invariant broken: %s\n", what.c_str());
  std::abort();
}
#define KVTIER_FUZZ_CHECK(cond, what)                                      \
  do {                                                                     \
    if (!(cond)) ::kvtier::fuzz::Fail(std::string(#cond) + ": " + (what)); \
  } while (0)

// A stream of messages, each framed as a 2-byte little-endian length and that many bytes (the
// last frame may be cut short: it is then whatever bytes are left).
inline std::vector<std::string_view> Frames(const uint8_t* data, size_t size) {
  std::vector<std::string_view> out;
  size_t at = 0;
  while (at + 2 <= size) {
    const size_t n = data[at] | size_t{data[at + 1]} << 8;
    at += 2;
    const size_t take = n < size - at ? n : size - at;
    out.emplace_back(reinterpret_cast<const char*>(data + at), take);
    at += take;
  }
  return out;
}

inline std::string Frame(std::string_view bytes) {
  std::string out;
  out.push_back(static_cast<char>(bytes.size() & 0xff));
  out.push_back(static_cast<char>(bytes.size() >> 8));
  out.append(bytes);
  return out;
}

// An in-memory file (memfd) that holds one input at a time, for parsers that read a path, so that
// they are fuzzed through the very entry point the daemon calls. Nothing is left on disk.
class MemFile {
 public:
  MemFile() : fd_(memfd_create("kvtier-fuzz", 0)) {
    if (fd_ < 0) Fail("memfd_create");
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;

  // Replaces the file's contents.
  void Set(std::string_view bytes) {
    if (ftruncate(fd_, 0) != 0) Fail("ftruncate");
    size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n =
          pwrite(fd_, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
      if (n <= 0) Fail("pwrite");
      done += static_cast<size_t>(n);
    }
  }
  const std::string& path() const { return path_; }

 private:
  int fd_;
  std::string path_;
};

}  // namespace kvtier::fuzz
