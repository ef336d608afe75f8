#include "router/membership.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <algorithm>
#include <chrono>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "spdlog/spdlog.h"

namespace kvtier::router {
namespace {

class List final : public MembershipSource {
 public:
  explicit List(std::string list) : list_(std::move(list)) {}
  absl::StatusOr<std::vector<RingNode>> Fetch() override { return ParseNodeList(list_); }
  bool changes() const override { return false; }

 private:
  const std::string list_;
};

class File final : public MembershipSource {
 public:
  explicit File(std::string path) : path_(std::move(path)) {}
  absl::StatusOr<std::vector<RingNode>> Fetch() override { return ReadNodeFile(path_); }
  bool changes() const override { return true; }

 private:
  const std::string path_;
};

class Dns final : public MembershipSource {
 public:
  explicit Dns(std::string name_port) : name_port_(std::move(name_port)) {}
  absl::StatusOr<std::vector<RingNode>> Fetch() override { return ResolveNodes(name_port_); }
  bool changes() const override { return true; }

 private:
  const std::string name_port_;
};

bool Same(const std::vector<RingNode>& a, const std::vector<RingNode>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name || a[i].weight != b[i].weight) return false;
  }
  return true;
}

}  // namespace

std::unique_ptr<MembershipSource> ListMembership(std::string list) {
  return std::make_unique<List>(std::move(list));
}
std::unique_ptr<MembershipSource> FileMembership(std::string path) {
  return std::make_unique<File>(std::move(path));
}
std::unique_ptr<MembershipSource> DnsMembership(std::string name_port) {
  return std::make_unique<Dns>(std::move(name_port));
}

MembershipRefresher::MembershipRefresher(
    MembershipSource* source, std::vector<RingNode> initial, int refresh_ms,
    std::function<void(const std::vector<RingNode>&)> on_change)
    : thread_([this, source, current = std::move(initial), refresh_ms,
               on_change = std::move(on_change)]() mutable {
        while (!stop_) {
          for (int w = 0; w < refresh_ms && !stop_; w += 10) {
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
          }
          if (stop_) break;
          auto next = source->Fetch();
          if (!next.ok()) {
            // Keep routing over the last good membership.
            spdlog::warn("kvtier-router: membership not refreshed: {}", next.status().ToString());
            continue;
          }
          if (Same(*next, current)) continue;
          on_change(*next);
          current = std::move(*next);
        }
      }) {}

MembershipRefresher::~MembershipRefresher() {
  stop_ = true;
  thread_.join();
}

absl::StatusOr<std::vector<RingNode>> ParseNodeList(const std::string& list) {
  std::vector<RingNode> nodes;
  for (absl::string_view entry : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    std::vector<std::string> parts = absl::StrSplit(entry, '=');
    RingNode n{.name = parts[0], .weight = 1.0};
    if (parts[0].rfind(':') == std::string::npos || parts.size() > 2 ||
        (parts.size() == 2 && (!absl::SimpleAtod(parts[1], &n.weight) || n.weight <= 0))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "nodes: '", std::string(entry), "' is not host:port or host:port=weight (weight > 0)"));
    }
    for (const RingNode& other : nodes) {
      if (other.name == n.name) {
        return absl::InvalidArgumentError(absl::StrCat("nodes: ", n.name, " listed twice"));
      }
    }
    nodes.push_back(n);
  }
  if (nodes.empty()) return absl::InvalidArgumentError("nodes: the list is empty");
  return nodes;
}

absl::StatusOr<std::vector<RingNode>> ReadNodeFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("nodes file: cannot read ", path));
  std::string line, list;
  while (std::getline(in, line)) {
    const size_t hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    line = std::string(absl::StripAsciiWhitespace(line));
    if (line.empty()) continue;
    list += (list.empty() ? "" : ",") + line;
  }
  auto nodes = ParseNodeList(list);
  if (!nodes.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", nodes.status().message()));
  }
  return nodes;
}

absl::StatusOr<std::vector<RingNode>> ResolveNodes(const std::string& host_port) {
  const size_t colon = host_port.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("nodes-dns: '", host_port, "' is not NAME:PORT"));
  }
  const std::string host = host_port.substr(0, colon), port = host_port.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    return absl::UnavailableError(
        absl::StrCat("nodes-dns: ", host, " does not resolve: ", gai_strerror(rc)));
  }
  std::vector<std::string> names;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    char ip[INET6_ADDRSTRLEN] = {};
    if (a->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, ip, sizeof(ip));
      names.push_back(absl::StrCat(ip, ":", port));
    } else if (a->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, ip, sizeof(ip));
      names.push_back(absl::StrCat("[", ip, "]:", port));
    }
  }
  freeaddrinfo(res);
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  std::vector<RingNode> nodes;
  for (const std::string& n : names) nodes.push_back({n, 1.0});
  if (nodes.empty()) return absl::UnavailableError("nodes-dns: " + host + " has no addresses");
  return nodes;
}

}  // namespace kvtier::router
