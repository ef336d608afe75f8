// kvtier-router as a process, in front of real kvtierd processes: routing over gRPC, health
// ejection and re-admission, bad input.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <thread>

#include "client/cache_client.h"
#include "client/router_client.h"
#include "kvtier/v1/router.grpc.pb.h"
#include "testing/daemon_process.h"
#include "testing/http_get.h"
#include "testing/test_certs.h"
#include "testing/test_util.h"

namespace kvtier {
namespace {

using ::kvtier::testing::DaemonProcess;

std::unique_ptr<DaemonProcess> StartDaemon(const std::string& listen) {
  return std::make_unique<DaemonProcess>(
      std::string(KVTIER_BINARY_DIR) + "/kvtierd",
      std::vector<std::string>{"--listen", listen, "--no-nvme", "--host-mib", "32",
                               "--ucx-listen", "off", "--metrics-listen", "", "--log-level",
                               "warn"});
}

// Blocks of 4 KiB for a chain of keys, ready to put.
struct ChainBlocks {
  explicit ChainBlocks(const std::vector<BlockKey>& chain) {
    for (size_t i = 0; i < chain.size(); ++i) bytes.push_back(testing::TestBlock(i, 4096));
    for (size_t i = 0; i < chain.size(); ++i) {
      blocks.push_back({chain[i], i == 0 ? BlockKey{} : chain[i - 1], bytes[i]});
    }
  }
  std::vector<std::vector<uint8_t>> bytes;
  std::vector<BlockToPut> blocks;
};

class RouterServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string list;
    for (int i = 0; i < 3; ++i) {
      daemons_.push_back(StartDaemon("127.0.0.1:0"));
      ASSERT_FALSE(daemons_.back()->address().empty());
      addresses_.push_back(daemons_.back()->address());
      list += (i ? "," : "") + addresses_.back();
    }
    router_ = std::make_unique<DaemonProcess>(
        std::string(KVTIER_BINARY_DIR) + "/kvtier-router",
        std::vector<std::string>{"--nodes", list, "--listen", "127.0.0.1:0", "--metrics-listen",
                                 "127.0.0.1:0", "--probe-interval-ms", "200",
                                 "--failures-to-eject", "2", "--log-level", "warn"});
    ASSERT_FALSE(router_->address().empty()) << router_->output();
    stub_ = v1::RouteService::NewStub(
        grpc::CreateChannel(router_->address(), grpc::InsecureChannelCredentials()));
  }

  grpc::Status Route(const v1::RouteRequest& req, v1::RouteResponse* res) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    return stub_->Route(&ctx, req, res);
  }

  v1::RouteRequest Prompt(int conversation, int turns) {
    v1::RouteRequest req;
    req.set_tenant("t");
    req.set_model("m");
    for (int t = 0; t < 64; ++t) req.add_tokens(7);  // a shared system prompt
    for (int t = 0; t < 16 * turns + 5; ++t) req.add_tokens(conversation * 10000 + t);
    return req;
  }

  // Waits until Members reports `address` healthy (or not).
  bool WaitHealthy(const std::string& address, bool healthy) {
    for (int i = 0; i < 100; ++i) {
      grpc::ClientContext ctx;
      v1::MembersResponse res;
      if (stub_->Members(&ctx, v1::MembersRequest(), &res).ok()) {
        for (const auto& m : res.members()) {
          if (m.address() == address && m.healthy() == healthy) return true;
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  std::vector<std::unique_ptr<DaemonProcess>> daemons_;
  std::vector<std::string> addresses_;
  std::unique_ptr<DaemonProcess> router_;
  std::unique_ptr<v1::RouteService::Stub> stub_;
};

TEST_F(RouterServiceTest, RoutesEjectsAndReadmits) {
  v1::RouteResponse res;
  ASSERT_TRUE(Route(Prompt(1, 2), &res).ok());
  ASSERT_EQ(res.nodes_size(), 3);
  EXPECT_GE(res.routing_depth(), 1u);
  std::vector<std::string> got(res.nodes().begin(), res.nodes().end());
  std::sort(got.begin(), got.end());
  std::vector<std::string> want = addresses_;
  std::sort(want.begin(), want.end());
  EXPECT_EQ(got, want);
  // The same prompt goes to the same node.
  v1::RouteResponse again;
  ASSERT_TRUE(Route(Prompt(1, 2), &again).ok());
  EXPECT_EQ(again.nodes(0), res.nodes(0));

  // Kill the node that prompt 1 goes to: it is ejected, and nothing is routed to it.
  const std::string victim = res.nodes(0);
  const size_t v = std::find(addresses_.begin(), addresses_.end(), victim) - addresses_.begin();
  kill(daemons_[v]->pid(), SIGKILL);
  ASSERT_TRUE(WaitHealthy(victim, false));
  for (int c = 0; c < 30; ++c) {
    v1::RouteResponse r;
    ASSERT_TRUE(Route(Prompt(c, 1), &r).ok());
    EXPECT_EQ(r.nodes_size(), 2);
    for (const auto& n : r.nodes()) EXPECT_NE(n, victim);
  }
  // Restarted on its address, it is re-admitted and gets its prompts back.
  daemons_[v] = StartDaemon(victim);
  ASSERT_FALSE(daemons_[v]->address().empty());
  ASSERT_TRUE(WaitHealthy(victim, true));
  v1::RouteResponse back;
  ASSERT_TRUE(Route(Prompt(1, 2), &back).ok());
  EXPECT_EQ(back.nodes_size(), 3);

  const std::string metrics = testing::HttpGet(router_->AddressOf("metrics"), "/metrics");
  EXPECT_NE(metrics.find("kvtier_router_decisions_total"), std::string::npos);
  EXPECT_NE(metrics.find("kvtier_router_ejections_total{node=\"" + victim + "\"} 1"),
            std::string::npos)
      << metrics;
}

TEST_F(RouterServiceTest, BadInputAndNoHealthyNode) {
  v1::RouteResponse res;
  v1::RouteRequest no_tenant = Prompt(1, 1);
  no_tenant.clear_tenant();
  EXPECT_EQ(Route(no_tenant, &res).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::RouteRequest empty;
  empty.set_tenant("t");
  EXPECT_EQ(Route(empty, &res).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::RouteRequest both = Prompt(1, 1);
  both.set_packed_keys(std::string(16, 'k'));
  EXPECT_EQ(Route(both, &res).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::RouteRequest ragged;
  ragged.set_tenant("t");
  ragged.set_packed_keys(std::string(17, 'k'));
  EXPECT_EQ(Route(ragged, &res).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // Keys work as well as tokens.
  v1::RouteRequest keys;
  keys.set_tenant("t");
  keys.set_packed_keys(std::string(48, 'k'));
  EXPECT_TRUE(Route(keys, &res).ok());

  for (auto& d : daemons_) kill(d->pid(), SIGKILL);
  for (const auto& a : addresses_) ASSERT_TRUE(WaitHealthy(a, false));
  const grpc::Status st = Route(Prompt(1, 1), &res);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(st.error_message().find("no healthy"), std::string::npos) << st.error_message();
}

// Members' addresses, once `want` of them are listed (or whatever is there after 5 s).
std::vector<std::string> WaitMembers(v1::RouteService::Stub* stub, size_t want) {
  std::vector<std::string> got;
  for (int i = 0; i < 100; ++i) {
    grpc::ClientContext ctx;
    v1::MembersResponse res;
    got.clear();
    if (stub->Members(&ctx, v1::MembersRequest(), &res).ok()) {
      for (const auto& m : res.members()) got.push_back(m.address());
    }
    if (got.size() == want) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::sort(got.begin(), got.end());
  return got;
}

TEST_F(RouterServiceTest, MembershipFromAFileFollowsItsChanges) {
  testing::TempDir dir;
  const std::string file = dir.Sub("nodes");
  auto write = [&](const std::string& text) {
    std::ofstream(file + ".tmp") << text;
    std::rename((file + ".tmp").c_str(), file.c_str());
  };
  write("# two nodes\n" + addresses_[0] + "\n" + addresses_[1] + "=2\n");
  DaemonProcess router(std::string(KVTIER_BINARY_DIR) + "/kvtier-router",
                       {"--nodes-file", file, "--refresh-ms", "50", "--listen", "127.0.0.1:0",
                        "--metrics-listen", "127.0.0.1:0", "--probe-interval-ms", "100",
                        "--log-level", "warn"});
  ASSERT_FALSE(router.address().empty()) << router.output();
  auto stub = v1::RouteService::NewStub(
      grpc::CreateChannel(router.address(), grpc::InsecureChannelCredentials()));
  auto sorted = [](std::vector<std::string> v) {
    std::sort(v.begin(), v.end());
    return v;
  };
  EXPECT_EQ(WaitMembers(stub.get(), 2), sorted({addresses_[0], addresses_[1]}));
  write(addresses_[0] + "\n" + addresses_[1] + "\n" + addresses_[2] + "\n");
  EXPECT_EQ(WaitMembers(stub.get(), 3), sorted(addresses_));
  write(addresses_[0] + "\n" + addresses_[2] + "\n");
  EXPECT_EQ(WaitMembers(stub.get(), 2), sorted({addresses_[0], addresses_[2]}));
  {
    grpc::ClientContext ctx;
    v1::RouteResponse res;
    ASSERT_TRUE(stub->Route(&ctx, Prompt(3, 1), &res).ok());
    EXPECT_EQ(res.nodes_size(), 2);
    for (const auto& n : res.nodes()) EXPECT_NE(n, addresses_[1]);
  }
  // A departed node's series are gone, not left at healthy 0 (which would page someone); the
  // router's own calls are counted, and it says what it is.
  const std::string metrics = testing::HttpGet(router.AddressOf("metrics"), "/metrics");
  const std::string gone = "{node=\"" + addresses_[1] + "\"}";
  EXPECT_EQ(metrics.find(gone), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("kvtier_router_node_healthy{node=\"" + addresses_[0] + "\"} 1"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("kvtier_router_rpc_requests_total{code=\"OK\",rpc=\"Route\"} 1"),
            std::string::npos)
      << metrics;
  EXPECT_NE(
      metrics.find("kvtier_router_rpc_requests_total{code=\"INVALID_ARGUMENT\",rpc=\"Route\"} 0"),
      std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("kvtier_router_load_bound 1.25"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("kvtier_build_info{binary=\"kvtier-router\""), std::string::npos);
  EXPECT_NE(metrics.find("process_resident_memory_bytes"), std::string::npos);
  // A broken file keeps the last good membership.
  write("not an address\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(WaitMembers(stub.get(), 2), sorted({addresses_[0], addresses_[2]}));
}

TEST_F(RouterServiceTest, MembershipFromDns) {
  // localhost resolves here without any server of ours: its IPv4 address must be a member.
  const std::string port = addresses_[0].substr(addresses_[0].rfind(':') + 1);
  DaemonProcess router(std::string(KVTIER_BINARY_DIR) + "/kvtier-router",
                       {"--nodes-dns", "localhost:" + port, "--refresh-ms", "100", "--listen",
                        "127.0.0.1:0", "--metrics-listen", "", "--log-level", "warn"});
  ASSERT_FALSE(router.address().empty()) << router.output();
  auto stub = v1::RouteService::NewStub(
      grpc::CreateChannel(router.address(), grpc::InsecureChannelCredentials()));
  const std::vector<std::string> members = WaitMembers(stub.get(), 1);
  EXPECT_NE(std::find(members.begin(), members.end(), "127.0.0.1:" + port), members.end());
}

// A free TCP port on `ip` (bound, then released: a start that loses the race is retried).
int FreePortOn(const std::string& ip) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
  socklen_t len = sizeof(a);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  close(fd);
  return port;
}

// A headless service's name whose addresses change: the router runs in a mount namespace of its
// own where /etc/hosts is a file this test rewrites (daemons on 127.0.0.2-4, one port).
TEST(RouterDns, MembershipFollowsTheNamesAddresses) {
  if (std::system("unshare -m --propagation private true 2>/dev/null") != 0) {
    GTEST_SKIP() << "no mount namespaces here (unshare -m): cannot give the router its own "
                    "/etc/hosts";
  }
  std::vector<std::unique_ptr<DaemonProcess>> daemons;
  std::string port;
  for (int attempt = 0; attempt < 5 && daemons.size() < 3; ++attempt) {
    daemons.clear();
    port = std::to_string(FreePortOn("127.0.0.2"));
    for (int i = 2; i <= 4; ++i) {
      daemons.push_back(StartDaemon("127.0.0." + std::to_string(i) + ":" + port));
      if (daemons.back()->address().empty()) {
        daemons.clear();
        break;
      }
    }
  }
  ASSERT_EQ(daemons.size(), 3u) << "no port free on 127.0.0.2-4";
  testing::TempDir dir;
  const std::string hosts = dir.Sub("hosts");
  // Rewritten in place: the router's /etc/hosts is a bind mount of this inode.
  auto write = [&](const std::vector<int>& last_octets) {
    std::ofstream out(hosts, std::ios::trunc);
    out << "127.0.0.1 localhost\n";
    for (int o : last_octets) out << "127.0.0." << o << " kvtier-nodes.test\n";
  };
  write({2, 3});
  const std::string command =
      "mount --bind " + hosts + " /etc/hosts && exec " + KVTIER_BINARY_DIR +
      "/kvtier-router --nodes-dns kvtier-nodes.test:" + port +
      " --refresh-ms 100 --probe-interval-ms 100 --listen 127.0.0.1:0 --metrics-listen '' "
      "--log-level warn";
  DaemonProcess router("/usr/bin/unshare", {"-m", "--propagation", "private", "sh", "-c", command});
  ASSERT_FALSE(router.address().empty()) << router.output();
  auto stub = v1::RouteService::NewStub(
      grpc::CreateChannel(router.address(), grpc::InsecureChannelCredentials()));
  auto members_become = [&](std::vector<std::string> want) {
    std::sort(want.begin(), want.end());
    std::vector<std::string> got;
    for (int i = 0; i < 100 && got != want; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      got = WaitMembers(stub.get(), want.size());
    }
    return got == want;
  };
  const auto node = [&](int o) { return "127.0.0." + std::to_string(o) + ":" + port; };
  EXPECT_TRUE(members_become({node(2), node(3)}));
  write({3, 4});  // one address gone, one new: a rolling restart of the service
  EXPECT_TRUE(members_become({node(3), node(4)}));
  write({2, 3, 4});
  EXPECT_TRUE(members_become({node(2), node(3), node(4)}));
  v1::RouteRequest req;
  req.set_tenant("t");
  for (uint32_t t = 0; t < 64; ++t) req.add_tokens(t);
  grpc::ClientContext ctx;
  v1::RouteResponse res;
  ASSERT_TRUE(stub->Route(&ctx, req, &res).ok());
  EXPECT_EQ(res.nodes_size(), 3);
}

TEST_F(RouterServiceTest, CacheAwareModeFollowsTheBlocksDaemonsHold) {
  std::string list;
  for (const auto& a : addresses_) list += (list.empty() ? "" : ",") + a;
  DaemonProcess router(std::string(KVTIER_BINARY_DIR) + "/kvtier-router",
                       {"--nodes", list, "--cache-aware", "--listen", "127.0.0.1:0",
                        "--metrics-listen", "", "--probe-interval-ms", "100", "--log-level",
                        "warn"});
  ASSERT_FALSE(router.address().empty()) << router.output();
  auto stub = v1::RouteService::NewStub(
      grpc::CreateChannel(router.address(), grpc::InsecureChannelCredentials()));
  std::vector<BlockKey> chain;
  for (uint64_t i = 0; i < 4; ++i) chain.push_back(BlockKey{77, i});
  std::string packed(chain.size() * 16, '\0');
  for (size_t i = 0; i < chain.size(); ++i) chain[i].ToBytes(reinterpret_cast<uint8_t*>(packed.data()) + 16 * i);
  v1::RouteRequest req;
  req.set_tenant("t");
  req.set_packed_keys(packed);
  auto route = [&](v1::RouteResponse* res) {
    grpc::ClientContext ctx;
    return stub->Route(&ctx, req, res);
  };
  v1::RouteResponse first;
  ASSERT_TRUE(route(&first).ok());
  EXPECT_EQ(first.expected_cached_blocks(), 0u);
  // Store the chain on a node that is not the ring's choice: the router must notice and send
  // the request there.
  const std::string holder = first.nodes(1);
  auto client = CacheClient::Create({.address = holder, .tenant = "t", .use_ucx = false});
  ASSERT_TRUE(client.ok());
  const ChainBlocks blocks(chain);
  // The router's watchers connect in the background, and a daemon's stream starts from the
  // events after it connected: store the chain again (delete, put) until the router has seen it.
  v1::RouteResponse res;
  for (int attempt = 0; attempt < 20 && res.expected_cached_blocks() != 4; ++attempt) {
    (void)(*client)->Delete(chain);
    ASSERT_TRUE((*client)->Put(blocks.blocks).ok());
    for (int i = 0; i < 10; ++i) {
      ASSERT_TRUE(route(&res).ok());
      if (res.expected_cached_blocks() == 4) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  EXPECT_EQ(res.expected_cached_blocks(), 4u);
  EXPECT_EQ(res.nodes(0), holder);
  // Deleted there, the blocks leave the index too.
  ASSERT_TRUE((*client)->Delete(std::span(chain).subspan(2)).ok());
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(route(&res).ok());
    if (res.expected_cached_blocks() == 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(res.expected_cached_blocks(), 2u);
}

TEST_F(RouterServiceTest, CppClientRoutesRemotelyAndLocally) {
  auto client = RouterClient::Create(router_->address());
  ASSERT_TRUE(client.ok());
  std::vector<BlockKey> chain;
  for (uint64_t i = 0; i < 5; ++i) chain.push_back(BlockKey{55, i});
  EXPECT_EQ((*client)->RouteLocally(chain).status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE((*client)->RefreshMembers().ok());
  // A fresh router here and there, the same membership: the same choice.
  auto local = (*client)->RouteLocally(chain);
  ASSERT_TRUE(local.ok()) << local.status();
  auto remote = (*client)->Route("t", chain);
  ASSERT_TRUE(remote.ok()) << remote.status();
  EXPECT_EQ(local->nodes, remote->nodes);
  EXPECT_EQ(local->routing_depth, remote->routing_depth);
  const std::vector<uint32_t> tokens(100, 3);
  auto by_tokens = (*client)->RouteTokens("t", "m", tokens);
  ASSERT_TRUE(by_tokens.ok());
  EXPECT_EQ(by_tokens->nodes.size(), 3u);
  EXPECT_TRUE((*client)->Report(remote->nodes[0], 7).ok());
  EXPECT_EQ((*client)->Report("127.0.0.1:1", 7).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ((*client)->Route("", chain).status().code(), absl::StatusCode::kInvalidArgument);
}

// Two router replicas behind clients that alternate between them (as a plain Service spreads
// requests) and report each request's prefill to the replica that routed it: each turn of a
// conversation goes to the node that stored the turn before, whichever replica placed it,
// because both index the same daemons' blocks.
TEST_F(RouterServiceTest, ReplicasBehindRoundRobinClientsKeepConversationsTogether) {
  std::string list;
  for (const auto& a : addresses_) list += (list.empty() ? "" : ",") + a;
  std::vector<std::unique_ptr<DaemonProcess>> routers;
  std::vector<std::unique_ptr<v1::RouteService::Stub>> stubs;
  for (int i = 0; i < 2; ++i) {
    routers.push_back(std::make_unique<DaemonProcess>(
        std::string(KVTIER_BINARY_DIR) + "/kvtier-router",
        std::vector<std::string>{"--nodes", list, "--cache-aware", "--listen", "127.0.0.1:0",
                                 "--metrics-listen", "", "--probe-interval-ms", "100",
                                 "--log-level", "warn"}));
    ASSERT_FALSE(routers.back()->address().empty()) << routers.back()->output();
    stubs.push_back(v1::RouteService::NewStub(
        grpc::CreateChannel(routers.back()->address(), grpc::InsecureChannelCredentials())));
  }
  std::map<std::string, std::unique_ptr<CacheClient>> clients;
  for (const auto& a : addresses_) {
    auto c = CacheClient::Create({.address = a, .tenant = "t", .use_ucx = false});
    ASSERT_TRUE(c.ok());
    clients[a] = std::move(*c);
  }
  // Each router's watchers connect in the background, and a daemon's stream starts from the
  // events after it connected: store a block on each daemon again (delete, put) until both
  // routers see it.
  for (size_t d = 0; d < addresses_.size(); ++d) {
    const std::vector<BlockKey> probe = {BlockKey{5, d + 1}};
    const ChainBlocks blocks(probe);
    v1::RouteRequest req;
    req.set_tenant("t");
    req.set_packed_keys(PackKeys(probe));
    bool seen = false;
    for (int attempt = 0; attempt < 40 && !seen; ++attempt) {
      (void)clients[addresses_[d]]->Delete(probe);
      ASSERT_TRUE(clients[addresses_[d]]->Put(blocks.blocks).ok());
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      seen = true;
      for (auto& stub : stubs) {
        v1::RouteResponse res;
        grpc::ClientContext ctx;
        ASSERT_TRUE(stub->Route(&ctx, req, &res).ok());
        seen = seen && res.expected_cached_blocks() == 1;
      }
    }
    ASSERT_TRUE(seen) << "a router never saw " << addresses_[d] << "'s block";
  }
  constexpr int kConversations = 48, kTurns = 3;
  std::vector<std::string> holder(kConversations);
  std::map<std::string, int> placed;
  int next = 0, followed = 0, later_turns = 0;
  for (int turn = 0; turn < kTurns; ++turn) {
    for (int c = 0; c < kConversations; ++c) {
      // A system prompt every request shares, then the conversation's own blocks.
      std::vector<BlockKey> chain = {BlockKey{1, 1}};
      for (int i = 0; i < 3 * (turn + 1); ++i) chain.push_back(BlockKey{100 + uint64_t(c), uint64_t(i)});
      v1::RouteRequest req;
      req.set_tenant("t");
      req.set_packed_keys(PackKeys(chain));
      v1::RouteResponse res;
      grpc::ClientContext ctx;
      v1::RouteService::Stub& replica = *stubs[next++ % 2];
      ASSERT_TRUE(replica.Route(&ctx, req, &res).ok());
      const std::string node = res.nodes(0);
      // The frontend reports what the node prefilled to the replica that routed it.
      v1::ReportRequest report;
      report.set_node(node);
      report.set_prefilled_blocks(chain.size() - res.expected_cached_blocks());
      v1::ReportResponse reported;
      grpc::ClientContext report_ctx;
      ASSERT_TRUE(replica.Report(&report_ctx, report, &reported).ok());
      if (turn > 0) {
        ++later_turns;
        followed += node == holder[c] ? 1 : 0;

      } else {
        ++placed[node];
      }
      const ChainBlocks blocks(chain);
      ASSERT_TRUE(clients[node]->Put(blocks.blocks).ok());
      holder[c] = node;
    }
    // The index follows the daemons' events within milliseconds; a turn comes seconds later.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  EXPECT_GE(followed, later_turns * 9 / 10) << followed << " of " << later_turns;
  EXPECT_EQ(placed.size(), 3u) << "new conversations spread over the nodes";
}

// A series' value on a process's /metrics, or -1 when it is not there.
double MetricOf(const DaemonProcess& process, const std::string& series) {
  const std::string text = testing::HttpGet(process.AddressOf("metrics"), "/metrics");
  const size_t at = text.find(series + " ");
  return at == std::string::npos ? -1.0 : std::stod(text.substr(at + series.size() + 1));
}

// Plain mode (no index): conversations whose turns alternate between two replicas (as a plain
// Service spreads them), each request's prefill reported to the replica that routed it, and a
// long prefill on each of two nodes reported to one replica each. Replicas that sync (--peers-file naming both;
// each skips itself) send each turn where the turn before went as often as one router does;
// replicas that do not sync see different loads, place the same new prefix each by its own, and
// split conversations.
TEST_F(RouterServiceTest, ReplicasThatSyncKeepConversationsTogetherWithoutAnIndex) {
  std::string list;
  for (const auto& a : addresses_) list += (list.empty() ? "" : ",") + a;
  testing::TempDir dir;
  const std::string peers_file = dir.Sub("peers");  // written once both listen
  enum class Setup { kOneRouter, kSynced, kNotSynced };
  // The share of later turns that went to the node of the turn before.
  auto followed = [&](Setup setup) -> double {
    std::vector<std::unique_ptr<DaemonProcess>> routers;
    std::vector<std::unique_ptr<v1::RouteService::Stub>> stubs;
    for (int i = 0; i < (setup == Setup::kOneRouter ? 1 : 2); ++i) {
      std::vector<std::string> args = {"--nodes", list, "--listen", "127.0.0.1:0",
                                        "--metrics-listen", "127.0.0.1:0", "--refresh-ms", "100",
                                        "--log-level", "warn"};
      if (setup == Setup::kSynced) args.insert(args.end(), {"--peers-file", peers_file});
      routers.push_back(std::make_unique<DaemonProcess>(
          std::string(KVTIER_BINARY_DIR) + "/kvtier-router", args));
      EXPECT_FALSE(routers.back()->address().empty()) << routers.back()->output();
      if (routers.back()->address().empty()) return -1;
    }
    for (int i = 0; i < 2; ++i) {
      stubs.push_back(v1::RouteService::NewStub(grpc::CreateChannel(
          routers[i % routers.size()]->address(), grpc::InsecureChannelCredentials())));
    }
    if (setup == Setup::kSynced) {
      std::ofstream(peers_file) << routers[0]->address() << "\n" << routers[1]->address() << "\n";
      for (int i = 0; i < 2; ++i) {
        const std::string other =
            "kvtier_router_peer_synced{peer=\"" + routers[1 - i]->address() + "\"}";
        for (int w = 0; w < 200 && MetricOf(*routers[i], other) != 1; ++w) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        EXPECT_EQ(MetricOf(*routers[i], other), 1) << routers[i]->output();
        // Its own address is recognised and dropped (at the next probe round).
        const std::string self =
            "kvtier_router_peer_synced{peer=\"" + routers[i]->address() + "\"}";
        for (int w = 0; w < 200 && MetricOf(*routers[i], self) != -1; ++w) {
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        EXPECT_EQ(MetricOf(*routers[i], self), -1);
      }
    }
    double routed_by[2] = {0, 0};
    auto route = [&](int r, const std::vector<BlockKey>& chain, size_t prefilled_if_new,
                     const std::string& holder) -> std::string {
      v1::RouteRequest req;
      req.set_tenant("t");
      req.set_packed_keys(PackKeys(chain));
      v1::RouteResponse res;
      grpc::ClientContext ctx;
      EXPECT_TRUE(stubs[r]->Route(&ctx, req, &res).ok());
      if (res.nodes_size() == 0) return "";
      ++routed_by[r];
      v1::ReportRequest report;
      report.set_node(res.nodes(0));
      report.set_prefilled_blocks(res.nodes(0) == holder ? 3 : prefilled_if_new);
      v1::ReportResponse reported;
      grpc::ClientContext report_ctx;
      EXPECT_TRUE(stubs[r]->Report(&report_ctx, report, &reported).ok());
      return res.nodes(0);
    };
    // Each replica has the other's decisions (a turn comes seconds later).
    auto settle = [&] {
      for (int i = 0; setup == Setup::kSynced && i < 2; ++i) {
        const std::string applied = "kvtier_router_peer_decisions_total{outcome=\"applied\"}";
        for (int w = 0; w < 200 && MetricOf(*routers[i], applied) < routed_by[1 - i]; ++w) {
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        EXPECT_EQ(MetricOf(*routers[i], applied), routed_by[1 - i]);
      }
    };
    // Other traffic first: to a router that has seen few requests every key is a large share
    // of them (hot), and the first turns would be routed by their whole chain.
    for (int i = 0; i < 64; ++i) route(i % 2, {BlockKey{2, uint64_t(i)}}, 1, "");
    // A long prefill on the first node, reported to the first replica, and one on the second
    // node, reported to the second.
    for (int r = 0; r < 2; ++r) {
      v1::ReportRequest report;
      report.set_node(addresses_[r]);
      report.set_prefilled_blocks(200);
      v1::ReportResponse reported;
      grpc::ClientContext report_ctx;
      EXPECT_TRUE(stubs[r]->Report(&report_ctx, report, &reported).ok());
    }
    settle();
    constexpr int kConversations = 48, kTurns = 3;
    std::vector<std::string> holder(kConversations);
    int follows = 0, later_turns = 0;
    for (int turn = 0; turn < kTurns; ++turn) {
      for (int c = 0; c < kConversations; ++c) {
        // A system prompt every request shares, then the conversation's own blocks.
        std::vector<BlockKey> chain = {BlockKey{1, 1}};
        for (int i = 0; i < 3 * (turn + 1) + c % 5; ++i) {
          chain.push_back(BlockKey{100 + uint64_t(c), uint64_t(i)});
        }
        // Round robin over the replicas: a conversation's turns alternate between them.
        const std::string node = route((c + turn) % 2, chain, chain.size(), holder[c]);
        if (turn > 0) {
          ++later_turns;
          follows += node == holder[c] ? 1 : 0;
        }
        holder[c] = node;
      }
      settle();
    }
    return static_cast<double>(follows) / later_turns;
  };
  const double one = followed(Setup::kOneRouter);
  const double synced = followed(Setup::kSynced);
  const double not_synced = followed(Setup::kNotSynced);
  std::printf("later turns on the node of the turn before: one router %.2f, two synced %.2f, "
              "two not synced %.2f\n",
              one, synced, not_synced);
  // Each setup has its own ports, so its own ring: a few points apart.
  EXPECT_GE(synced, one - 0.08);
  EXPECT_GE(synced, 0.85);
  EXPECT_LT(not_synced, synced - 0.15) << "replicas that do not sync split conversations";
}

// Daemons that serve TLS and require tokens: a router with their CA and a cluster token keeps
// them healthy and indexes their blocks; one without a token still routes (health needs none)
// but indexes nothing and says so; one without the CA ejects them.
TEST(RouterSecurity, ARouterWithTheCaAndAClusterTokenWatchesSecureDaemons) {
  testing::TempDir dir;
  ASSERT_TRUE(testing::MakeTestCerts(dir.path()));
  std::ofstream(dir.Sub("tokens.yaml")) << "t: tenant-token-0001\n"
                                        << "router: {token: router-token-0001, role: cluster}\n";
  std::ofstream(dir.Sub("router.token")) << "router-token-0001\n";
  std::vector<std::unique_ptr<DaemonProcess>> daemons;
  std::string list;
  for (int i = 0; i < 2; ++i) {
    daemons.push_back(std::make_unique<DaemonProcess>(
        std::string(KVTIER_BINARY_DIR) + "/kvtierd",
        std::vector<std::string>{"--listen", "127.0.0.1:0", "--no-nvme", "--host-mib", "32",
                                 "--ucx-listen", "off", "--metrics-listen", "", "--log-level",
                                 "warn", "--tls-cert", dir.Sub("server.pem"), "--tls-key",
                                 dir.Sub("server.key"), "--auth-tokens", dir.Sub("tokens.yaml")}));
    ASSERT_FALSE(daemons.back()->address().empty());
    list += (i ? "," : "") + daemons.back()->address();
  }
  auto start_router = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"--nodes", list, "--cache-aware", "--listen", "127.0.0.1:0",
                                     "--metrics-listen", "127.0.0.1:0", "--probe-interval-ms",
                                     "100", "--log-level", "error"};
    args.insert(args.end(), extra.begin(), extra.end());
    return std::make_unique<DaemonProcess>(std::string(KVTIER_BINARY_DIR) + "/kvtier-router",
                                           args);
  };
  auto trusted = start_router(
      {"--tls-ca", dir.Sub("ca.pem"), "--token-file", dir.Sub("router.token")});
  auto tokenless = start_router({"--tls-ca", dir.Sub("ca.pem")});
  auto plaintext = start_router({});
  for (auto* r : {trusted.get(), tokenless.get(), plaintext.get()}) {
    ASSERT_FALSE(r->address().empty()) << r->output();
  }
  const std::string first = list.substr(0, list.find(','));
  const std::string healthy = "kvtier_router_node_healthy{node=\"" + first + "\"}";
  const std::string watched = "kvtier_router_node_watched{node=\"" + first + "\"}";
  // Probes every 100 ms, ejection after 2 failures: a second is ten rounds.
  for (int i = 0; i < 100 && MetricOf(*plaintext, healthy) != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(MetricOf(*plaintext, healthy), 0) << "a router without the CA cannot probe them";
  for (int i = 0; i < 100 && MetricOf(*trusted, watched) != 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(MetricOf(*trusted, healthy), 1);
  EXPECT_EQ(MetricOf(*trusted, watched), 1);
  EXPECT_EQ(MetricOf(*tokenless, healthy), 1) << "health needs no token";
  EXPECT_EQ(MetricOf(*tokenless, watched), 0) << "WatchBlocks needs a cluster token";

  // A chain stored on the node the ring does not choose: the trusted router sends it there.
  auto stub = v1::RouteService::NewStub(
      grpc::CreateChannel(trusted->address(), grpc::InsecureChannelCredentials()));
  std::vector<BlockKey> chain;
  for (uint64_t i = 0; i < 4; ++i) chain.push_back(BlockKey{99, i + 1});
  v1::RouteRequest req;
  req.set_tenant("t");
  req.set_packed_keys(PackKeys(chain));
  v1::RouteResponse res;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Route(&ctx, req, &res).ok());
  }
  const std::string holder = res.nodes(1);
  ClientOptions o{.address = holder, .tenant = "t", .use_ucx = false};
  o.bearer_token = "tenant-token-0001";
  o.tls_ca_pem = testing::ReadText(dir.Sub("ca.pem"));
  auto client = CacheClient::Create(o);
  ASSERT_TRUE(client.ok());
  const ChainBlocks blocks(chain);
  ASSERT_TRUE((*client)->Put(blocks.blocks).ok());
  for (int i = 0; i < 100 && res.expected_cached_blocks() != 4; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub->Route(&ctx, req, &res).ok());
  }
  EXPECT_EQ(res.expected_cached_blocks(), 4u);
  EXPECT_EQ(res.nodes(0), holder);
}

TEST(RouterFlags, BadNodeListsAreRefused) {
  for (const char* list : {"", "nohostport", "127.0.0.1:1=0", "a:1,a:1"}) {
    DaemonProcess router(std::string(KVTIER_BINARY_DIR) + "/kvtier-router",
                         {"--nodes", list, "--listen", "127.0.0.1:0", "--metrics-listen", ""},
                         std::chrono::seconds(5));
    EXPECT_TRUE(router.address().empty()) << list;
    EXPECT_EQ(router.Stop(), 2 << 8) << list;  // exit status 2
  }
}

// --check-config: the options and node list as a start reads them, one line, exit 0; an error
// names its flag, exit 2. The name of --nodes-dns is not resolved (it need not exist yet).
TEST(RouterFlags, CheckConfigAcceptsWhatAStartAcceptsAndNamesTheFlagItRefuses) {
  const std::string router = std::string(KVTIER_BINARY_DIR) + "/kvtier-router";
  for (const std::vector<std::string>& nodes :
       {std::vector<std::string>{"--nodes", "10.0.0.1:7700,10.0.0.2:7700=2"},
        std::vector<std::string>{"--nodes-dns", "kvtierd.invalid:7700"}}) {
    std::vector<std::string> args = {
        "--check-config", "--listen",      "0.0.0.0:7800", "--metrics-listen",
        "0.0.0.0:9780",   "--load-factor", "1.5"};
    args.insert(args.end(), nodes.begin(), nodes.end());
    const testing::ProcessRun run = testing::RunToEnd(router, args);
    EXPECT_EQ(run.status, 0) << run.output;
    EXPECT_EQ(run.output, "kvtier-router: configuration OK\n");
  }
  const std::pair<std::vector<std::string>, std::string> bad[] = {
      {{"--nodes", "a:1,a:1"}, "listed twice"},
      {{"--nodes", "a:1", "--load-factor", "0.5"}, "--load-factor"},
      {{"--nodes", "a:1", "--probe-interval-ms", "x"}, "--probe-interval-ms"},
      {{"--nodes", "a:1", "--listen", "nowhere"}, "--listen"},
      {{"--nodes", "a:1", "--metrics-listen", "0.0.0.0:99999"}, "--metrics-listen"},
      {{"--nodes-dns", "kvtierd"}, "--nodes-dns"},
      {{"--nodes-file", "/nonexistent/nodes"}, "/nonexistent/nodes"},
      {{"--nodes", "a:1", "--tls-ca", "/nonexistent/ca.pem"}, "--tls-ca"},
      {{"--nodes", "a:1", "--tls-cert", "/nonexistent/c.pem"}, "--tls-cert"},
      {{"--nodes", "a:1", "--token-file", "/nonexistent/token"}, "--token-file"},
      {{"--nodes", "a:1", "--engine-events-port", "5557"}, "--engine-model"},
      {{"--nodes", "a:1", "--engine-events", "a:1"}, "--engine-events"},
      {{"--nodes", "a:1", "--engine-replay-port", "5558", "--engine-model", "m"},
       "--engine-events-port"},
  };
  for (const auto& [flags, names] : bad) {
    std::vector<std::string> args = {"--check-config"};
    args.insert(args.end(), flags.begin(), flags.end());
    const testing::ProcessRun run = testing::RunToEnd(router, args);
    EXPECT_EQ(run.status, 2 << 8) << names << ": " << run.output;
    EXPECT_NE(run.output.find(names), std::string::npos) << run.output;
  }
}

}  // namespace
}  // namespace kvtier
