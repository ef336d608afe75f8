#include <gtest/gtest.h>

#include "router/router.h"
#include "router/simulator.h"

namespace kvtier::router {
namespace {

BlockKey Key(uint64_t i) { return BlockKey{0x1234, i}; }

TEST(HashRing, CandidatesAreDistinctAndStable) {
  const HashRing ring(SimNodes(5));
  std::vector<int> c;
  ring.Candidates(RingHash(Key(7)), 10, &c);
  ASSERT_EQ(c.size(), 5u);
  EXPECT_EQ(c.front(), ring.Home(RingHash(Key(7))));
  std::vector<int> sorted = c;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, (std::vector<int>{0, 1, 2, 3, 4}));
  // Golden: the same names give the same homes in any process.
  const HashRing again(SimNodes(5));
  for (uint64_t i = 0; i < 100; ++i) EXPECT_EQ(ring.Home(RingHash(Key(i))), again.Home(RingHash(Key(i))));
  EXPECT_EQ(HashRing({}).Home(1), -1);
}

TEST(HashRing, SharesFollowWeights) {
  HashRing ring({{"a", 1.0}, {"b", 1.0}, {"c", 2.0}});
  std::vector<int> count(3);
  for (uint64_t i = 0; i < 40000; ++i) ++count[ring.Home(RingHash(Key(i * 2654435761u)))];
  EXPECT_NEAR(count[2] / 40000.0, 0.5, 0.05);
  EXPECT_NEAR(count[0] / 40000.0, 0.25, 0.05);
}

TEST(HashRing, AJoinOrLeaveMovesAboutOneNthOfTheKeys) {
  std::vector<BlockKey> keys;
  for (uint64_t i = 0; i < 20000; ++i) keys.push_back(Key(i * 11400714819323198485ull));
  const KeysMoved m = MeasureKeysMoved(keys, 8, RouterOptions{});
  EXPECT_LT(m.join, 1.2 / 8);
  EXPECT_GT(m.join, 0.5 / 8);
  EXPECT_LT(m.leave, 1.2 / 8);
  EXPECT_GT(m.leave, 0.5 / 8);
}

TEST(Router, BoundedLoadsNeverPlaceOnANodeOverItsBound) {
  Router r(SimNodes(4), {.load_factor = 1.25});
  std::vector<double> loads(4, 0);
  // Every key's home is busy except by the bound's rule; the pick must be within it.
  for (uint64_t i = 0; i < 5000; ++i) {
    const int n = r.Pick(Key(i % 3), loads);  // three hot keys
    ASSERT_TRUE(r.WithinBound(n, loads)) << i;
    loads[n] += 1 + (i % 7);
    for (double& l : loads) l *= 0.999;  // work drains
  }
  double total = 0, max = 0;
  for (double l : loads) {
    total += l;
    max = std::max(max, l);
  }
  EXPECT_LE(max, 1.25 * total / 4 + 7 + 1e-9);  // at most one request over the bound
}

TEST(Router, AllIdleGoesHome) {
  Router r(SimNodes(6));
  const std::vector<double> idle(6, 0);
  for (uint64_t i = 0; i < 100; ++i) EXPECT_EQ(r.Pick(Key(i), idle), r.ring().Home(RingHash(Key(i))));
}

TEST(Router, HotPrefixesAreRoutedDeeperConversationsStayTogether) {
  Router r(SimNodes(8));
  const std::vector<double> idle(8, 0);
  // Every request starts with the same system-prompt block; conversation c continues with its
  // own blocks, one more per turn.
  const BlockKey system = Key(1'000'000);
  std::vector<int> home(50, -1);
  size_t deep = 0;
  for (int turn = 0; turn < 6; ++turn) {
    for (int c = 0; c < 50; ++c) {
      std::vector<BlockKey> chain = {system};
      for (int t = 0; t <= turn; ++t) chain.push_back(Key(c * 100 + t));
      const RouteChoice choice = r.Route(chain, idle);
      if (turn >= 1) {
        EXPECT_EQ(choice.depth, 2u) << "conversation " << c << " turn " << turn;
        if (home[c] >= 0) {
          EXPECT_EQ(choice.node, home[c]) << "conversation " << c;
        }
        home[c] = choice.node;
      }
      deep += choice.depth > 1;
    }
  }
  EXPECT_GT(deep, 250u);
  // And the conversations spread over the nodes rather than all going to the system prompt's.
  std::vector<int> per(8);
  for (int h : home) ++per[h];
  EXPECT_LT(*std::max_element(per.begin(), per.end()), 20);
}

TEST(Router, RoutingTokensHashesOnlyWhatItNeedsAndAgreesWithKeys) {
  auto hasher = ChainHasher::Create({.tenant_salt = "t", .model_id = "m"}, 16);
  ASSERT_TRUE(hasher.ok());
  Router by_keys(SimNodes(8)), by_tokens(SimNodes(8));
  const std::vector<double> idle(8, 0);
  std::vector<uint32_t> system(64, 7);  // a shared 4-block system prompt
  for (int i = 0; i < 300; ++i) {
    std::vector<uint32_t> prompt = system;
    for (int t = 0; t < 16 * (1 + i % 5) + 3; ++t) prompt.push_back(i * 1000 + t);
    const RouteChoice a = by_keys.Route(hasher->Keys(prompt), idle);
    const RouteChoice b = by_tokens.RouteTokens(*hasher, prompt, idle);
    ASSERT_EQ(a.depth, b.depth) << i;
    ASSERT_EQ(a.routing_key, b.routing_key) << i;
    ASSERT_EQ(a.node, b.node) << i;
  }
  // Shorter than a block: routed by the namespace root, never refused.
  const std::vector<uint32_t> short_prompt(5, 1);
  const RouteChoice c = by_tokens.RouteTokens(*hasher, short_prompt, idle);
  EXPECT_EQ(c.depth, 0u);
  EXPECT_EQ(c.routing_key, hasher->root());
  EXPECT_GE(c.node, 0);
}

TEST(Router, EmptyChainHasNoRoute) {
  Router r(SimNodes(3));
  const std::vector<double> idle(3, 0);
  EXPECT_EQ(r.Route({}, idle).node, -1);
}

TEST(Simulator, PoliciesOnATinyTrace) {
  // Two prefixes alternating, capacity for both on any node: hash routing hits after the first
  // request of each; round robin over 2 nodes also does here; load is measured in misses.
  std::vector<TraceRequest> trace;
  for (int i = 0; i < 20; ++i) {
    TraceRequest r;
    r.arrival_s = i;
    for (int b = 0; b < 4; ++b) r.chain.push_back(Key((i % 2) * 10 + b));
    trace.push_back(r);
  }
  SimOptions o{.nodes = 2, .capacity = 100, .prefill_rate = 100};
  const PolicyResult h = Simulate(trace, Policy::kHashDepth1, o);
  EXPECT_DOUBLE_EQ(h.hit_rate, 72.0 / 80.0);  // 2 cold requests of 4 blocks
  EXPECT_NEAR(GlobalLruHitRate(trace, 200), 72.0 / 80.0, 1e-12);
  const PolicyResult k = Simulate(trace, Policy::kKvtier, o);
  EXPECT_GE(k.hit_rate, 0.8);
  EXPECT_GT(k.ttft_p90_s, 0.0);
}

}  // namespace
}  // namespace kvtier::router
