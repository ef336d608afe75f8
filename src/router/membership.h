#pragma once
// Where kvtier-router's members come from: a fixed list, a file re-read when it changes, or every
// address a DNS name resolves to (a Kubernetes headless service). MembershipRefresher asks a
// source every refresh period and hands on each change; a failed refresh keeps the last good
// membership.

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "router/ring.h"

namespace kvtier::router {

class MembershipSource {
 public:
  virtual ~MembershipSource() = default;
  // The members now. INVALID_ARGUMENT for a malformed list; UNAVAILABLE or NOT_FOUND when the
  // source cannot be read now.
  virtual absl::StatusOr<std::vector<RingNode>> Fetch() = 0;
  // Whether it can change (a list cannot).
  virtual bool changes() const = 0;
};

// "host:port[=weight],..."
std::unique_ptr<MembershipSource> ListMembership(std::string list);
// One host:port[=weight] a line; blank lines and # comments are skipped.
std::unique_ptr<MembershipSource> FileMembership(std::string path);
// Every address NAME resolves to, as ip:port nodes of weight 1.
std::unique_ptr<MembershipSource> DnsMembership(std::string name_port);

// Calls `on_change` with each membership `source` gives that differs from the last (starting
// from `initial`), asking every `refresh_ms`, on its own thread, until destroyed.
class MembershipRefresher {
 public:
  MembershipRefresher(MembershipSource* source, std::vector<RingNode> initial, int refresh_ms,
                      std::function<void(const std::vector<RingNode>&)> on_change);
  ~MembershipRefresher();

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Parses "host:port[=weight],..." into nodes. INVALID_ARGUMENT names the bad entry.
absl::StatusOr<std::vector<RingNode>> ParseNodeList(const std::string& list);
// A node file: one host:port[=weight] a line; blank lines and # comments are skipped.
absl::StatusOr<std::vector<RingNode>> ReadNodeFile(const std::string& path);
// Every address `host` resolves to, as ip:port nodes of weight 1 (sorted). UNAVAILABLE when it
// does not resolve.
absl::StatusOr<std::vector<RingNode>> ResolveNodes(const std::string& host_port);

}  // namespace kvtier::router
