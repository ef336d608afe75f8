#include "common/metrics_server.h"

#include <fcntl.h>
#include <netdb.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <prometheus/collectable.h>
#include <prometheus/text_serializer.h>

#include <chrono>
#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/process_metrics.h"

namespace kvtier {
namespace {

constexpr size_t kMaxRequestBytes = 8 << 10;
constexpr size_t kMaxConnections = 256;
constexpr auto kRequestTimeout = std::chrono::seconds(5);

struct Connection {
  std::string in;
  std::string out;  // the answer, once the request is whole
  size_t sent = 0;
  std::chrono::steady_clock::time_point opened;
};

std::string Answer(int code, const char* reason, const std::string& body,
                   const char* type = "text/plain; version=0.0.4; charset=utf-8") {
  return absl::StrCat("HTTP/1.1 ", code, " ", reason, "\r\nContent-Type: ", type,
                      "\r\nContent-Length: ", body.size(), "\r\nConnection: close\r\n\r\n",
                      body);
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& listen,
                                                                    const std::string& binary) {
  auto fail = [&](const std::string& why) {
    return absl::UnavailableError(absl::StrCat("metrics-listen: cannot serve on ", listen, ": ", why));
  };
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return fail("expected HOST:PORT");
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::string port = listen.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found);
      rc != 0) {
    return fail(gai_strerror(rc));
  }
  std::unique_ptr<MetricsServer> s(new MetricsServer());
  std::string error = "no address";
  for (addrinfo* a = found; a != nullptr && s->listen_fd_ < 0; a = a->ai_next) {
    const int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) continue;
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // not SO_REUSEPORT: no sharing
    if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 128) == 0) {
      s->listen_fd_ = fd;
    } else {
      error = std::strerror(errno);
      close(fd);
    }
  }
  freeaddrinfo(found);
  if (s->listen_fd_ < 0) return fail(error);
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  getsockname(s->listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len);
  s->port_ = ntohs(bound.ss_family == AF_INET6
                       ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                       : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  s->epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  s->stop_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (s->epoll_fd_ < 0 || s->stop_fd_ < 0) return fail(std::strerror(errno));
  for (int fd : {s->listen_fd_, s->stop_fd_}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    epoll_ctl(s->epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  }
  s->process_ = std::make_shared<ProcessMetrics>(binary);
  s->RegisterCollectable(s->process_);
  s->thread_ = std::thread([raw = s.get()] { raw->Run(); });
  return s;
}

MetricsServer::~MetricsServer() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    (void)!write(stop_fd_, &one, sizeof(one));
    thread_.join();
  }
  for (int fd : {listen_fd_, epoll_fd_, stop_fd_}) {
    if (fd >= 0) close(fd);
  }
}

void MetricsServer::RegisterCollectable(const std::weak_ptr<prometheus::Collectable>& c) {
  std::lock_guard l(mu_);
  collectables_.push_back(c);
}

void MetricsServer::SetPage(std::function<std::string()> page) {
  std::lock_guard l(mu_);
  page_ = std::move(page);
}

std::function<std::string()> MetricsServer::Page() {
  std::lock_guard l(mu_);
  return page_;
}

std::string MetricsServer::Scrape() {
  std::vector<std::shared_ptr<prometheus::Collectable>> live;
  {
    std::lock_guard l(mu_);
    for (const auto& w : collectables_) {
      if (auto c = w.lock()) live.push_back(std::move(c));
    }
  }
  std::vector<prometheus::MetricFamily> families;
  for (const auto& c : live) {
    auto f = c->Collect();
    families.insert(families.end(), std::make_move_iterator(f.begin()),
                    std::make_move_iterator(f.end()));
  }
  return prometheus::TextSerializer().Serialize(families);
}

void MetricsServer::Run() {
  std::map<int, Connection> conns;
  auto drop = [&](int fd) {
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
    close(fd);
    conns.erase(fd);
  };
  // Sends what is left of the answer; true when the connection is done with.
  auto send_some = [&](int fd, Connection& c) {
    while (c.sent < c.out.size()) {
      const ssize_t n = send(fd, c.out.data() + c.sent, c.out.size() - c.sent, MSG_NOSIGNAL);
      if (n > 0) {
        c.sent += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
      return true;  // the peer went away
    }
    return true;
  };
  epoll_event events[64];
  for (;;) {
    const int n = epoll_wait(epoll_fd_, events, 64, 1000);
    const auto now = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == stop_fd_) {
        for (auto it = conns.begin(); it != conns.end();) close((it++)->first);
        return;
      }
      if (fd == listen_fd_) {
        for (;;) {
          const int c = accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (c < 0) break;
          if (conns.size() >= kMaxConnections) {  // the oldest goes
            auto oldest = conns.begin();
            for (auto o = conns.begin(); o != conns.end(); ++o) {
              if (o->second.opened < oldest->second.opened) oldest = o;
            }
            drop(oldest->first);
          }
          epoll_event ev{};
          ev.events = EPOLLIN | EPOLLRDHUP;
          ev.data.fd = c;
          epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, c, &ev);
          conns[c].opened = now;
        }
        continue;
      }
      auto it = conns.find(fd);
      if (it == conns.end()) continue;
      Connection& c = it->second;
      if (!c.out.empty()) {  // writable again
        if (send_some(fd, c)) drop(fd);
        continue;
      }
      char buf[4096];
      bool closed = false;
      for (;;) {
        const ssize_t r = recv(fd, buf, sizeof(buf), 0);
        if (r > 0) {
          c.in.append(buf, static_cast<size_t>(r));
          if (c.in.size() > kMaxRequestBytes) break;
          continue;
        }
        closed = r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
        break;
      }
      const size_t end = c.in.find("\r\n\r\n");
      if (end == std::string::npos && c.in.size() <= kMaxRequestBytes) {
        if (closed) drop(fd);
        continue;
      }
      if (end == std::string::npos) {
        c.out = Answer(431, "Request Header Fields Too Large", "");
      } else if (c.in.rfind("GET / ", 0) == 0 && Page()) {
        c.out = Answer(200, "OK", Page()(), "text/html; charset=utf-8");
      } else if (c.in.rfind("GET /metrics ", 0) == 0 || c.in.rfind("GET / ", 0) == 0) {
        c.out = Answer(200, "OK", Scrape());
      } else if (c.in.rfind("GET ", 0) == 0) {
        c.out = Answer(404, "Not Found", "only / and /metrics are served here\n");
      } else {
        c.out = Answer(405, "Method Not Allowed", "");
      }
      if (send_some(fd, c)) {
        drop(fd);
      } else {
        epoll_event ev{};
        ev.events = EPOLLOUT | EPOLLRDHUP;
        ev.data.fd = fd;
        epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev);
      }
    }
    // Connections that sent no whole request in time, or do not take their answer.
    for (auto it = conns.begin(); it != conns.end();) {
      const int fd = it->first;
      const bool late = now - it->second.opened >
                        (it->second.out.empty() ? kRequestTimeout : 2 * kRequestTimeout);
      ++it;
      if (late) drop(fd);
    }
  }
}

}  // namespace kvtier
