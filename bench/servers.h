#pragma once
// Baseline servers the benchmarks start for themselves on loopback: redis-server (persistence
// off), and free ports to put them on.
#include <arpa/inet.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "testing/daemon_process.h"

namespace kvtier::bench {

// A loopback TCP port that was free a moment ago.
inline int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

struct RedisServer {
  std::unique_ptr<testing::DaemonProcess> process;
  int port = 0;
};

// Starts /usr/bin/redis-server on a free loopback port with its files in `dir`, and waits until
// it accepts connections. Returns a null process when it does not start.
inline RedisServer StartRedis(const std::string& dir) {
  RedisServer r;
  r.port = FreePort();
  r.process = std::make_unique<testing::DaemonProcess>(
      "/usr/bin/redis-server",
      std::vector<std::string>{"--port", std::to_string(r.port), "--bind", "127.0.0.1", "--save",
                               "", "--appendonly", "no", "--protected-mode", "no", "--dir", dir,
                               "--loglevel", "warning", "--logfile", "", "--daemonize", "no"},
      // redis-server never prints "listening on" (and at this log level nothing at all), so
      // waiting for that line would only spend the whole timeout: wait for its port instead.
      std::chrono::milliseconds(0));
  for (int i = 0; i < 100; ++i) {
    redisContext* probe = redisConnect("127.0.0.1", r.port);
    const bool up = probe != nullptr && probe->err == 0;
    if (probe != nullptr) redisFree(probe);
    if (up) return r;
    usleep(50'000);
  }
  r.process.reset();
  return r;
}

}  // namespace kvtier::bench
