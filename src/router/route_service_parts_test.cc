// RouteServiceImpl's parts, each alone: LoadTracker on a manual clock, DecisionLog, CacheIndex,
// NodeHealth, HealthProber against fake health and cache services, MembershipRefresher over a
// fake source.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <thread>

#include "router/cache_index.h"
#include "router/health_prober.h"
#include "router/load_tracker.h"
#include "router/membership.h"
#include "router/node_channel.h"
#include "router/replica_sync.h"
#include "testing/test_util.h"

namespace kvtier::router {
namespace {

using testing::TestKey;

TEST(LoadTracker, RoutedBlocksCountUntilTheFirstReportThenReportsOnly) {
  ManualClock clock;
  LoadTracker t(&clock);
  t.Routed("a", 10);
  t.Routed("a", 10);
  t.Routed("b", 4);
  EXPECT_DOUBLE_EQ(t.Load("a"), 20);
  t.Reported("a", 3);
  EXPECT_DOUBLE_EQ(t.Load("a"), 3) << "reports replace the routed estimate";
  t.Routed("a", 10);
  EXPECT_DOUBLE_EQ(t.Load("a"), 3) << "once reported, routing adds nothing";
  const std::string names[] = {"a", "b", "never"};
  EXPECT_EQ(t.Loads(names), (std::vector<double>{3, 4, 0}));
  t.Remove("b");
  EXPECT_DOUBLE_EQ(t.Load("b"), 0);
}

TEST(LoadTracker, APeersWorkCountsAsItsOwnButNotInTheMeanRequest) {
  ManualClock clock;
  LoadTracker t(&clock);
  t.Routed("a", 8);
  t.PeerWork("a", 100, 0);
  t.PeerWork("b", 5, 0);
  EXPECT_DOUBLE_EQ(t.Load("a"), 108);
  EXPECT_DOUBLE_EQ(t.Load("b"), 5);
  EXPECT_DOUBLE_EQ(t.mean_request_blocks(), 8);
  t.PeerWork("a", 10, 3);  // a report, at the peer: reports only from now on
  EXPECT_DOUBLE_EQ(t.Load("a"), 3);
  t.Routed("a", 8);
  t.PeerWork("a", 4, 0);
  EXPECT_DOUBLE_EQ(t.Load("a"), 3);
}

TEST(DecisionLog, AReaderGetsDecisionsInOrderChangedTotalsAndWhatItLost) {
  DecisionLog log(/*capacity=*/4);
  uint64_t cursor = log.end(), seen = 0;
  const std::vector<BlockKey> counted = {TestKey(1), TestKey(2)};
  log.Decided(counted, TestKey(2), "n1:1");
  log.Worked("n1:1", 2, 0);
  log.Decided(counted, TestKey(2), "");
  log.Worked("n2:1", 2, 5);
  v1::SyncBatch batch;
  log.Read(&cursor, &seen, 100, &batch);
  ASSERT_EQ(batch.decisions_size(), 2);
  EXPECT_EQ(batch.decisions(0).counted_keys(), PackKeys(counted));
  EXPECT_EQ(batch.decisions(0).placed_key(), PackKeys(std::vector<BlockKey>{TestKey(2)}));
  EXPECT_EQ(batch.decisions(0).placed_node(), "n1:1");
  EXPECT_TRUE(batch.decisions(1).placed_key().empty());
  EXPECT_EQ(batch.work_size(), 2) << "the first read: every node's totals";
  EXPECT_EQ(batch.decisions_lost(), 0u);
  // Only what changed since.
  log.Worked("n2:1", 1, 0);
  batch.Clear();
  log.Read(&cursor, &seen, 100, &batch);
  EXPECT_EQ(batch.decisions_size(), 0);
  ASSERT_EQ(batch.work_size(), 1);
  EXPECT_EQ(batch.work(0).node(), "n2:1");
  EXPECT_DOUBLE_EQ(batch.work(0).routed_blocks(), 3);
  EXPECT_DOUBLE_EQ(batch.work(0).reported_blocks(), 5);
  // A reader that falls behind the log's capacity is told how many decisions it lost.
  for (int i = 0; i < 6; ++i) log.Decided(counted, TestKey(2), "");
  batch.Clear();
  log.Read(&cursor, &seen, 3, &batch);
  EXPECT_EQ(batch.decisions_lost(), 2u);
  EXPECT_EQ(batch.decisions_size(), 3);
  batch.Clear();
  log.Read(&cursor, &seen, 3, &batch);
  EXPECT_EQ(batch.decisions_size(), 1);
  EXPECT_EQ(cursor, log.end());
}

TEST(LoadTracker, LoadsHalveEveryHalfLifeOnTheClock) {
  ManualClock clock;
  LoadTracker t(&clock, /*half_life_s=*/60);
  t.Routed("a", 64);
  t.Routed("b", 16);
  clock.AdvanceSeconds(60);
  EXPECT_NEAR(t.Load("a"), 32, 1e-9);
  clock.AdvanceSeconds(120);
  EXPECT_NEAR(t.Load("a"), 8, 1e-9);
  EXPECT_NEAR(t.Load("b"), 2, 1e-9);
  const std::string names[] = {"a", "b"};
  EXPECT_NEAR(t.Imbalance(names), 8.0 * 2 / 10, 1e-9);
  EXPECT_DOUBLE_EQ(t.Imbalance(std::span<const std::string>()), 0);
}

TEST(LoadTracker, TheMeanRequestFollowsRecentSizes) {
  ManualClock clock;
  LoadTracker t(&clock);
  t.Routed("a", 8);
  EXPECT_DOUBLE_EQ(t.mean_request_blocks(), 8);
  for (int i = 0; i < 500; ++i) t.Routed("a", 40);
  EXPECT_NEAR(t.mean_request_blocks(), 40, 0.01);
}

// The prefix each node holds, with keys i -> TestKey(base + i).
std::vector<std::pair<uint32_t, size_t>> Prefixes(const CacheIndex& index, size_t n,
                                                  size_t* asked = nullptr) {
  std::vector<std::pair<uint32_t, size_t>> out;
  size_t count = 0;
  index.Prefixes(
      n,
      [&](size_t i) {
        ++count;
        return TestKey(i);
      },
      &out);
  if (asked != nullptr) *asked = count;
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<BlockKey> Keys(size_t from, size_t to) {
  std::vector<BlockKey> keys;
  for (size_t i = from; i < to; ++i) keys.push_back(TestKey(i));
  return keys;
}

TEST(CacheIndex, EachNodesLongestPrefixAskingOnlyAsDeepAsSomeNodeHoldsIt) {
  CacheIndex index;
  const uint32_t a = index.AddNode(), b = index.AddNode(), c = index.AddNode();
  index.Stored(a, Keys(0, 3));
  index.Stored(b, Keys(0, 6));
  index.Stored(c, Keys(1, 6));  // not the first block: holds no prefix
  size_t asked = 0;
  EXPECT_EQ(Prefixes(index, 1000, &asked),
            (std::vector<std::pair<uint32_t, size_t>>{{a, 3}, {b, 6}}));
  EXPECT_LE(asked, 2 * 6 + 1u) << "keys past twice the deepest prefix held are never computed";
  index.Removed(b, Keys(2, 6));  // evicted tail first
  EXPECT_EQ(Prefixes(index, 1000), (std::vector<std::pair<uint32_t, size_t>>{{a, 3}, {b, 2}}));
  EXPECT_EQ(Prefixes(index, 2), (std::vector<std::pair<uint32_t, size_t>>{{a, 2}, {b, 2}}));
  index.Forget(a);
  EXPECT_EQ(Prefixes(index, 1000), (std::vector<std::pair<uint32_t, size_t>>{{b, 2}}));
  index.Removed(b, Keys(0, 1));
  EXPECT_TRUE(Prefixes(index, 1000, &asked).empty());
  EXPECT_EQ(asked, 1u);
}

TEST(CacheIndex, LongPrefixesTakeALookupPerDoublingNotPerBlock) {
  CacheIndex index;
  std::vector<uint32_t> ids;
  for (size_t len : {500, 499, 1, 37, 1000}) {
    ids.push_back(index.AddNode());
    index.Stored(ids.back(), Keys(0, len));
  }
  size_t asked = 0;
  EXPECT_EQ(Prefixes(index, 1000, &asked),
            (std::vector<std::pair<uint32_t, size_t>>{
                {ids[0], 500}, {ids[1], 499}, {ids[2], 1}, {ids[3], 37}, {ids[4], 1000}}));
  EXPECT_LT(asked, 60u) << "a lookup per block would be 1,000";
  EXPECT_EQ(Prefixes(index, 300),
            (std::vector<std::pair<uint32_t, size_t>>{
                {ids[0], 300}, {ids[1], 300}, {ids[2], 1}, {ids[3], 37}, {ids[4], 300}}));
}

// Against the definition, on random prefix-closed holdings: every node's length, exactly.
TEST(CacheIndex, GallopingFindsWhatALookupPerBlockFinds) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    CacheIndex index;
    const size_t n = 1 + rng() % 300;
    std::vector<std::pair<uint32_t, size_t>> want;
    for (int node = 0, nodes = 1 + static_cast<int>(rng() % 10); node < nodes; ++node) {
      const uint32_t id = index.AddNode();
      const size_t len = rng() % 3 == 0 ? n + rng() % 5 : rng() % (n + 1);
      index.Stored(id, Keys(0, len));
      if (len > 0) want.emplace_back(id, std::min(len, n));
    }
    ASSERT_EQ(Prefixes(index, n), want) << "trial " << trial << ", n " << n;
  }
}

TEST(CacheIndex, NodesBeyondSixtyFourAreIndexedAndIdsAreReused) {
  CacheIndex index;
  std::vector<uint32_t> ids;
  for (int i = 0; i < 100; ++i) ids.push_back(index.AddNode());
  for (int i = 0; i < 100; ++i) index.Stored(ids[i], Keys(0, 1 + i % 5));
  auto got = Prefixes(index, 10);
  ASSERT_EQ(got.size(), 100u);
  EXPECT_EQ(got[99], (std::pair<uint32_t, size_t>{99, 5}));
  index.RemoveNode(ids[70]);
  EXPECT_EQ(Prefixes(index, 10).size(), 99u);
  EXPECT_EQ(index.AddNode(), 70u) << "a departed node's id is the next one given";
  EXPECT_EQ(Prefixes(index, 10).size(), 99u) << "and it holds nothing yet";
}

TEST(CacheIndex, KeysBeyondTheCapAreDroppedAndCounted) {
  CacheIndex index(/*max_keys=*/4);
  const uint32_t a = index.AddNode(), b = index.AddNode();
  index.Stored(a, Keys(0, 6));
  EXPECT_EQ(index.keys(), 4u);
  EXPECT_EQ(index.dropped(), 2u);
  index.Stored(b, Keys(0, 2));  // known keys take another holder without room
  EXPECT_EQ(index.dropped(), 2u);
  EXPECT_EQ(Prefixes(index, 6), (std::vector<std::pair<uint32_t, size_t>>{{a, 4}, {b, 2}}));
}

TEST(NodeHealth, EjectedAfterFailuresInARowReadmittedAtTheFirstGoodProbe) {
  NodeHealth h;
  using C = NodeHealth::Change;
  EXPECT_TRUE(h.healthy());
  EXPECT_EQ(h.Observe(false, 2), C::kNone);
  EXPECT_EQ(h.Observe(true, 2), C::kNone) << "a good probe resets the count";
  EXPECT_EQ(h.Observe(false, 2), C::kNone);
  EXPECT_EQ(h.Observe(false, 2), C::kEjected);
  EXPECT_FALSE(h.healthy());
  EXPECT_EQ(h.Observe(false, 2), C::kNone);
  EXPECT_EQ(h.failures(), 3);
  EXPECT_EQ(h.Observe(true, 2), C::kReadmitted);
  EXPECT_TRUE(h.healthy());
}

// A health service that answers after `delay` with `serving`.
class FakeHealth final : public grpc::health::v1::Health::Service {
 public:
  FakeHealth(bool serving, std::chrono::milliseconds delay) : serving_(serving), delay_(delay) {}
  grpc::Status Check(grpc::ServerContext* ctx, const grpc::health::v1::HealthCheckRequest*,
                     grpc::health::v1::HealthCheckResponse* res) override {
    const auto until = std::chrono::steady_clock::now() + delay_;
    while (std::chrono::steady_clock::now() < until && !ctx->IsCancelled()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    res->set_status(serving_ ? grpc::health::v1::HealthCheckResponse::SERVING
                             : grpc::health::v1::HealthCheckResponse::NOT_SERVING);
    return grpc::Status::OK;
  }

 private:
  const bool serving_;
  const std::chrono::milliseconds delay_;
};

// Stats for callers with the token `secret` only.
class FakeCache final : public v1::CacheService::Service {
 public:
  grpc::Status Stats(grpc::ServerContext* ctx, const v1::StatsRequest*,
                     v1::StatsResponse* res) override {
    auto it = ctx->client_metadata().find("authorization");
    if (it == ctx->client_metadata().end() || it->second != "Bearer secret") {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "no token");
    }
    res->set_lookup_blocks_hit(7);
    return grpc::Status::OK;
  }
};

struct FakeNode {
  FakeNode(bool serving, std::chrono::milliseconds delay) : health(serving, delay) {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(&health);
    b.RegisterService(&cache);
    server = b.BuildAndStart();
    address = "127.0.0.1:" + std::to_string(port);
  }
  ~FakeNode() { server->Shutdown(std::chrono::system_clock::now()); }
  FakeHealth health;
  FakeCache cache;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
  std::string address;
};

TEST(HealthProber, ProbesEveryNodeAtOnceAndAsksStatsWithTheToken) {
  using std::chrono::milliseconds;
  FakeNode good(true, milliseconds(0)), not_serving(false, milliseconds(0));
  std::vector<std::unique_ptr<FakeNode>> slow;
  for (int i = 0; i < 4; ++i) slow.push_back(std::make_unique<FakeNode>(true, milliseconds(3000)));
  const std::string unused = "127.0.0.1:1";  // nothing listens: refused
  NodeCredentials creds{.bearer_token = "secret"};
  std::vector<std::string> addresses = {good.address, not_serving.address, unused};
  for (auto& s : slow) addresses.push_back(s->address);
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<grpc::health::v1::Health::Stub>> health;
  std::vector<std::unique_ptr<v1::CacheService::Stub>> cache;
  std::vector<ProbeTarget> targets;
  for (const std::string& a : addresses) {
    channels.push_back(NodeChannel(a, creds, 1000));
    health.push_back(grpc::health::v1::Health::NewStub(channels.back()));
    cache.push_back(v1::CacheService::NewStub(channels.back()));
    targets.push_back({health.back().get(), cache.back().get()});
  }
  HealthProber prober({.probe_timeout_ms = 400}, creds);
  const auto start = std::chrono::steady_clock::now();
  const std::vector<ProbeResult> r = prober.ProbeAll(targets);
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ASSERT_EQ(r.size(), addresses.size());
  EXPECT_TRUE(r[0].serving);
  EXPECT_TRUE(r[0].stats_ok);
  EXPECT_EQ(r[0].stats.lookup_blocks_hit(), 7u);
  EXPECT_FALSE(r[1].serving);
  EXPECT_EQ(r[1].error, "not serving");
  EXPECT_FALSE(r[2].serving);
  EXPECT_FALSE(r[2].error.empty());
  for (size_t i = 3; i < r.size(); ++i) EXPECT_FALSE(r[i].serving) << "timed out";
  // Four nodes that never answer in time cost one timeout, not four.
  EXPECT_LT(took, 1.5);

  HealthProber tokenless({.probe_timeout_ms = 400}, NodeCredentials{});
  const ProbeTarget one[] = {targets[0]};
  const std::vector<ProbeResult> r2 = tokenless.ProbeAll(one);
  EXPECT_TRUE(r2[0].serving);
  EXPECT_FALSE(r2[0].stats_ok) << "Stats refused without the token";
}

TEST(NodeCredentials, RefusesACertificateWithoutACaAndAHalfPair) {
  auto valid = [](std::string ca, std::string cert, std::string key) {
    return NodeCredentials{.tls_ca_pem = ca, .tls_cert_pem = cert, .tls_key_pem = key}
        .Validate()
        .ok();
  };
  EXPECT_TRUE(valid("", "", ""));
  EXPECT_FALSE(valid("", "c", "k"));
  EXPECT_FALSE(valid("ca", "c", ""));
  EXPECT_TRUE(valid("ca", "c", "k"));
}

// A source whose answer a test sets.
class FakeSource final : public MembershipSource {
 public:
  absl::StatusOr<std::vector<RingNode>> Fetch() override {
    std::lock_guard lock(mu_);
    ++fetches_;
    return next_;
  }
  bool changes() const override { return true; }
  void Set(absl::StatusOr<std::vector<RingNode>> next) {
    std::lock_guard lock(mu_);
    next_ = std::move(next);
  }
  int fetches() {
    std::lock_guard lock(mu_);
    return fetches_;
  }

 private:
  std::mutex mu_;
  absl::StatusOr<std::vector<RingNode>> next_;
  int fetches_ = 0;
};

TEST(MembershipRefresher, HandsOnChangesOnlyAndKeepsTheLastGoodMembership) {
  FakeSource source;
  const std::vector<RingNode> one = {{"a:1", 1}}, two = {{"a:1", 1}, {"b:1", 2}};
  source.Set(one);
  std::mutex mu;
  std::vector<std::vector<RingNode>> seen;
  MembershipRefresher refresher(&source, one, 10, [&](const std::vector<RingNode>& next) {
    std::lock_guard lock(mu);
    seen.push_back(next);
  });
  auto wait_fetches = [&](int n) {
    const int target = source.fetches() + n;
    for (int i = 0; i < 500 && source.fetches() < target; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  };
  wait_fetches(3);
  source.Set(absl::UnavailableError("no DNS"));
  wait_fetches(3);
  source.Set(two);
  wait_fetches(3);
  source.Set(absl::UnavailableError("no DNS"));
  wait_fetches(3);
  std::lock_guard lock(mu);
  ASSERT_EQ(seen.size(), 1u) << "the same list and failed fetches change nothing";
  ASSERT_EQ(seen[0].size(), 2u);
  EXPECT_EQ(seen[0][1].name, "b:1");
  EXPECT_EQ(seen[0][1].weight, 2);
}

TEST(Membership, ListsFilesAndBadEntries) {
  EXPECT_FALSE(ListMembership("a")->Fetch().ok());
  EXPECT_FALSE(ListMembership("a:1,a:1")->Fetch().ok());
  EXPECT_FALSE(ListMembership("a:1=0")->Fetch().ok());
  auto nodes = ListMembership("a:1, b:2=3")->Fetch();
  ASSERT_TRUE(nodes.ok());
  EXPECT_EQ((*nodes)[1].weight, 3);
  EXPECT_FALSE(ListMembership("a:1")->changes());
  EXPECT_EQ(FileMembership("/nonexistent/nodes")->Fetch().status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvtier::router
