#pragma once
// DaemonProcess: runs a kvtier daemon binary as a real child process for integration tests,
// waits for its "... listening on HOST:PORT" line (or another line that says it is ready), and
// stops it with SIGTERM (SIGKILL on destruction if still running). RunToEnd: runs a binary that
// checks something and exits, and takes its exit status and output.

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

extern char** environ;

namespace kvtier::testing {

// Starts `binary` with `args`, its stdout (and its stderr, `with_stderr`) going to a pipe whose
// read end it returns; *pid is the child's, 0 if it could not be started.
inline int Spawn(const std::string& binary, const std::vector<std::string>& args, bool with_stderr,
                 pid_t* pid) {
  *pid = 0;
  int fds[2];
  if (pipe(fds) != 0) return -1;
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  if (with_stderr) posix_spawn_file_actions_adddup2(&actions, fds[1], STDERR_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  std::vector<std::string> all = {binary};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  if (posix_spawn(pid, binary.c_str(), &actions, nullptr, argv.data(), environ) != 0) *pid = 0;
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  return fds[0];
}

class DaemonProcess {
 public:
  // Starts `binary` with `args`; address() is empty if it did not report listening within
  // `timeout`. A process that reports being ready otherwise names its line's `ready` prefix.
  DaemonProcess(const std::string& binary, const std::vector<std::string>& args,
                std::chrono::milliseconds timeout = std::chrono::seconds(30),
                const std::string& ready = "listening on ") {
    out_ = Spawn(binary, args, /*with_stderr=*/false, &pid_);
    if (pid_ == 0) return;
    // Read until the listening line, bounded in time.
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string text;
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{out_, POLLIN, 0};
      if (poll(&p, 1, 100) <= 0) continue;
      char buf[256];
      const ssize_t n = read(out_, buf, sizeof(buf));
      if (n <= 0) break;
      text.append(buf, static_cast<size_t>(n));
      output_ = text;
      const size_t at = text.find(ready);
      const size_t eol = at == std::string::npos ? at : text.find('\n', at);
      if (eol != std::string::npos) {
        address_ = text.substr(at + ready.size(), eol - at - ready.size());
        break;
      }
    }
  }
  ~DaemonProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) close(out_);
  }
  DaemonProcess(const DaemonProcess&) = delete;
  DaemonProcess& operator=(const DaemonProcess&) = delete;

  const std::string& address() const { return address_; }
  // What the daemon printed on stdout up to its listening line.
  const std::string& output() const { return output_; }
  // The HOST:PORT after `what` + " on " in output() ("metrics" gives the metrics endpoint), or "".
  std::string AddressOf(const std::string& what) const {
    const size_t at = output_.find(what + " on ");
    if (at == std::string::npos) return "";
    const size_t start = at + what.size() + 4;
    return output_.substr(start, output_.find('\n', start) - start);
  }
  pid_t pid() const { return pid_; }

  // SIGTERM, then waits up to `timeout`; returns the exit status as waitpid reports it, or -1 if
  // it had to be killed.
  int Stop(std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
    if (pid_ <= 0) return -1;
    kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = 0;
        return status;
      }
      usleep(10'000);
    }
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = 0;
    return -1;
  }

 private:
  pid_t pid_ = 0;
  int out_ = -1;
  std::string address_;
  std::string output_;
};

// What a process run to its end did: its exit status as waitpid reports it (-1 if it could not
// be started) and all it wrote to stdout and stderr, in one string.
struct ProcessRun {
  int status = -1;
  std::string output;
};

// Runs `binary` with `args` and waits for it to end (for a command that checks and exits, like
// `--check-config`; a server would never return).
inline ProcessRun RunToEnd(const std::string& binary, const std::vector<std::string>& args) {
  ProcessRun run;
  pid_t pid = 0;
  const int out = Spawn(binary, args, /*with_stderr=*/true, &pid);
  if (out < 0) return run;
  char buf[4096];
  for (ssize_t n; pid != 0 && (n = read(out, buf, sizeof(buf))) > 0;) {
    run.output.append(buf, static_cast<size_t>(n));
  }
  close(out);
  if (pid != 0) waitpid(pid, &run.status, 0);
  return run;
}

}  // namespace kvtier::testing
