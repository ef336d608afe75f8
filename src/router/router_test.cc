#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "router/placement.h"
#include "router/popularity.h"
#include "router/router.h"
#include "router/simulator.h"
#include "router/trace_gen.h"

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
  const KeysMoved m = MeasureKeysMoved(Router(SimNodes(8)), keys);  // nothing placed yet
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
  std::vector<int> home(200, -1);  // each conversation well under epsilon / N of the requests
  size_t deep = 0;
  for (int turn = 0; turn < 6; ++turn) {
    for (int c = 0; c < 200; ++c) {
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
  EXPECT_GT(deep, 1000u);
  // And the conversations spread over the nodes rather than all going to the system prompt's.
  std::vector<int> per(8);
  for (int h : home) ++per[h];
  EXPECT_LT(*std::max_element(per.begin(), per.end()), 50);
}

TEST(Router, APrefixTheBoundCannotAbsorbIsRoutedDeeper) {
  // At 8 nodes and load factor 1.25, a system prompt with 10% of the requests is under one
  // node's share (12.5%) but over the bound's slack (epsilon / N = 3.1%): routed by it whole,
  // its sessions would be 0.8 of a node's work on one node. Its sessions are routed one deeper.
  Router r(SimNodes(8), {.load_factor = 1.25});
  EXPECT_DOUBLE_EQ(r.HotShare(), 0.25 / 8);
  const std::vector<double> idle(8, 0);
  const BlockKey system = Key(1'000'000);
  size_t deep = 0, with_system = 0;
  for (uint64_t i = 0; i < 4000; ++i) {
    std::vector<BlockKey> chain;
    if (i % 10 == 0) chain.push_back(system);
    chain.push_back(Key(i));  // a session of its own
    const RouteChoice c = r.Route(chain, idle);
    if (i % 10 == 0 && i >= 1000) {
      ++with_system;
      deep += c.depth == 2;
    }
  }
  EXPECT_EQ(deep, with_system);
  // load_factor 1 would make every key hot: epsilon has a floor.
  EXPECT_DOUBLE_EQ(Router(SimNodes(8), {.load_factor = 1.0}).HotShare(), kMinEpsilon / 8);
}

TEST(PrefixPopularity, LongPromptsDoNotMakeEveryKeyLookHot) {
  // 64 requests whose 8,192 keys all go in (as when every key looked hot): a plain count-min
  // estimate of a key never added would be about 0.5 of the requests; count-mean-min discounts
  // the collisions.
  PrefixPopularity p(1 << 14, 4096);
  for (uint64_t r = 0; r < 64; ++r) {
    p.AddRequest();
    for (uint64_t d = 0; d < 8192; ++d) p.Add(Key(r * 100'000 + d));
  }
  double max_share = 0, sum = 0;
  for (uint64_t k = 0; k < 1000; ++k) {
    const double share = p.Share(Key(1ull << 40 | k));
    max_share = std::max(max_share, share);
    sum += share;
  }
  EXPECT_LT(sum / 1000, 0.01);   // count-min alone: about 0.4
  EXPECT_LT(max_share, 1.0 / 8);
  // A key in every request still reads as in every request.
  PrefixPopularity q(1 << 14, 4096);
  for (uint64_t r = 0; r < 64; ++r) {
    q.AddRequest();
    bool seen = false;
    EXPECT_NEAR(q.AddAndShare(Key(7), &seen), 1.0, 0.01);
    EXPECT_EQ(seen, r > 0);
  }
}

TEST(Router, LongPromptsStayShallow) {
  // 128K-token prompts of their own (8,192 blocks): after the first requests (a key of the only
  // request is in all of them) the routing depth is 1, and the sketch stays usable.
  Router r(SimNodes(8));
  const std::vector<double> idle(8, 0);
  std::vector<BlockKey> chain(8192);
  size_t late_depth = 0;
  for (uint64_t i = 0; i < 300; ++i) {
    for (uint64_t d = 0; d < chain.size(); ++d) chain[d] = Key(i << 20 | d);
    const RouteChoice c = r.Route(chain, idle);
    if (i >= 100) late_depth += c.depth;
  }
  EXPECT_EQ(late_depth, 200u);
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

TEST(PlacementMemory, RemembersWithinItsBoundAndForgetsTheLeastRecentlyUsed) {
  PlacementMemory m(64);
  EXPECT_EQ(m.memory_bytes(), 64u * 16);
  EXPECT_EQ(m.Find(Key(1)), -1);
  m.Remember(Key(1), 3);
  m.Remember(Key(1), 5);  // moved: one entry, the new node
  EXPECT_EQ(m.Find(Key(1)), 5);
  EXPECT_EQ(m.size(), 1u);
  const BlockKey kept = Key(999'999);
  m.Remember(kept, 7);
  for (uint64_t i = 0; i < 5000; ++i) {
    m.Remember(Key(i * 0x9E3779B97F4A7C15ULL + 11), static_cast<uint32_t>(i % 9));
    ASSERT_EQ(m.Find(kept), 7) << "a key in use is never the one forgotten, " << i;
  }
  EXPECT_EQ(m.size(), 64u);  // full, never over
  EXPECT_EQ(m.Peek(Key(4999 * 0x9E3779B97F4A7C15ULL + 11)), 4999 % 9);
}

TEST(Router, NewPrefixesGoWhereWorkIsBelowShareKnownOnesStayPut) {
  Router r(SimNodes(4), {.load_factor = 1.25});
  std::vector<double> loads = {100, 100, 100, 100};
  // A key whose ring home is over its share (but within the bound) and never seen: placed on
  // the first ring candidate at or under the mean, and remembered there.
  uint64_t i = 0;
  BlockKey key;
  int home = -1;
  do {
    key = Key(++i);
    home = r.ring().Home(RingHash(key));
  } while (home != 0);
  loads[0] = 120;  // mean 105, bound 131
  const RouteChoice first = r.Route(std::vector<BlockKey>{key}, loads);
  EXPECT_NE(first.node, 0);
  EXPECT_LE(loads[first.node], 105.0);
  EXPECT_EQ(r.Preferred(key), first.node);
  // Its next turn goes back there although that node is now the busiest, as long as it is
  // within the bound; with equal loads too (it is no longer the ring home that decides).
  loads = {100, 100, 100, 100};
  loads[first.node] = 125;  // mean 106.25, bound 132.8
  EXPECT_EQ(r.Route(std::vector<BlockKey>{key}, loads).node, first.node);
  EXPECT_EQ(r.Route(std::vector<BlockKey>{key}, std::vector<double>(4, 0)).node, first.node);
  // Over the bound: it spills within the bound, and stays at its new node afterwards.
  loads = {100, 100, 100, 100};
  loads[first.node] = 200;  // mean 125, bound 156
  const int spilled = r.Route(std::vector<BlockKey>{key}, loads).node;
  EXPECT_NE(spilled, first.node);
  EXPECT_TRUE(r.WithinBound(spilled, loads));
  EXPECT_EQ(r.Route(std::vector<BlockKey>{key}, std::vector<double>(4, 0)).node, spilled);
}

TEST(Router, MembershipChangesMoveOnlyTheLeavingNodesPrefixes) {
  Router r(SimNodes(5));
  std::vector<double> loads(5, 0);
  std::vector<BlockKey> keys;
  for (uint64_t i = 0; i < 3000; ++i) {
    keys.push_back(Key(i * 0x9E3779B97F4A7C15ULL + 5));
    const RouteChoice c = r.Route(std::vector<BlockKey>{keys.back()}, loads);
    loads[c.node] += 1 + i % 13;  // uneven work: many keys are placed off their ring home
  }
  std::vector<int> before;
  for (const BlockKey& k : keys) before.push_back(r.Preferred(k));
  const KeysMoved m = MeasureKeysMoved(r, keys);
  EXPECT_EQ(m.join, 0.0);  // placed prefixes stay where their blocks are
  const double on_last =
      static_cast<double>(std::count(before.begin(), before.end(), 4)) / keys.size();
  EXPECT_DOUBLE_EQ(m.leave, on_last);  // exactly the leaving node's
  EXPECT_NEAR(on_last, 0.2, 0.05);
  // Ejected and re-admitted (by name, at another index): its placements are its own again.
  std::vector<RingNode> reordered = {{"node-4", 1.0}, {"node-0", 1.0}, {"node-1", 1.0},
                                     {"node-2", 1.0}, {"node-3", 1.0}};
  r.SetNodes({{"node-0", 1.0}, {"node-1", 1.0}, {"node-2", 1.0}, {"node-3", 1.0}});
  r.SetNodes(reordered);
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_EQ(reordered[r.Preferred(keys[i])].name, absl::StrCat("node-", before[i])) << i;
  }
}

// Decisions of this router on a scripted workload (hot system prompt, conversations, uneven
// weights and loads, a node leaving), in tests/data/router_golden.json: other implementations
// of the routing (the Python client's route_locally) must make the same ones.
// KVTIER_UPDATE_GOLDEN=1 rewrites the file.
TEST(Router, GoldenDecisions) {
  std::mt19937_64 rng(20261128);
  const auto random_key = [&] {
    const uint64_t hi = rng();
    return BlockKey{hi, rng()};
  };
  std::vector<RingNode> nodes = {{"10.0.0.1:7700", 1.0}, {"10.0.0.2:7700", 1.0},
                                 {"10.0.0.3:7700", 2.0}, {"10.0.0.4:7700", 1.0},
                                 {"10.0.0.5:7700", 0.5}};
  Router r(nodes);
  const std::vector<BlockKey> system = {random_key(), random_key(), random_key()};
  std::vector<std::vector<BlockKey>> conversations(30);
  std::vector<double> loads(nodes.size(), 0);
  nlohmann::json events = nlohmann::json::array();
  const auto nodes_json = [](const std::vector<RingNode>& ns) {
    nlohmann::json j = nlohmann::json::array();
    for (const RingNode& n : ns) j.push_back({{"name", n.name}, {"weight", n.weight}});
    return j;
  };
  events.push_back({{"nodes", nodes_json(nodes)}});
  for (int i = 0; i < 200; ++i) {
    if (i == 120) {  // 10.0.0.2 leaves; the rest keep their loads
      nodes.erase(nodes.begin() + 1);
      loads.erase(loads.begin() + 1);
      r.SetNodes(nodes);
      events.push_back({{"nodes", nodes_json(nodes)}});
    }
    std::vector<BlockKey>& conversation = conversations[rng() % conversations.size()];
    for (int added = 1 + rng() % 3; added > 0; --added) conversation.push_back(random_key());
    std::vector<BlockKey> chain;
    if (rng() % 10 < 7) chain = system;
    chain.insert(chain.end(), conversation.begin(), conversation.end());
    const RouteChoice c = r.Route(chain, loads, /*slack=*/2.0);
    nlohmann::json keys = nlohmann::json::array();
    for (const BlockKey& k : chain) keys.push_back(k.Hex());
    events.push_back({{"chain", keys}, {"loads", loads}, {"node", c.node}, {"depth", c.depth}});
    loads[c.node] += static_cast<double>(chain.size());
    if (i % 10 == 9) {
      for (double& l : loads) l *= 0.9;
    }
  }
  const nlohmann::json golden = {{"slack", 2.0}, {"events", events}};
  const std::string path = std::string(KVTIER_SOURCE_DIR) + "/tests/data/router_golden.json";
  if (std::getenv("KVTIER_UPDATE_GOLDEN") != nullptr) {
    std::ofstream out(path);  // one event a line
    out << "{\"slack\": 2.0, \"events\": [\n";
    for (size_t i = 0; i < events.size(); ++i) {
      out << events[i].dump() << (i + 1 < events.size() ? ",\n" : "\n");
    }
    out << "]}\n";
  }
  std::ifstream in(path);
  ASSERT_TRUE(in.good()) << path << " is missing (KVTIER_UPDATE_GOLDEN=1 writes it)";
  const nlohmann::json stored = nlohmann::json::parse(in);
  ASSERT_EQ(stored.size(), golden.size());
  ASSERT_EQ(stored["events"].size(), golden["events"].size());
  for (size_t i = 0; i < golden["events"].size(); ++i) {
    ASSERT_EQ(stored["events"][i], golden["events"][i]) << "event " << i;
  }
}

TEST(HeldPrefixes, LeadingBlocksPerNodeFromABitmaskIndex) {
  absl::flat_hash_map<BlockKey, uint64_t> index = {
      {Key(1), 0b1011}, {Key(2), 0b0011}, {Key(3), 0b0110}, {Key(4), 0b0001}};
  const auto mask_of = [&](const BlockKey& k) {
    auto it = index.find(k);
    return it == index.end() ? uint64_t{0} : it->second;
  };
  std::vector<size_t> cached;
  HeldPrefixes(std::vector<BlockKey>{Key(1), Key(2), Key(3), Key(4)}, 4, mask_of, &cached);
  EXPECT_EQ(cached, (std::vector<size_t>{2, 3, 0, 1}));  // node 0 lacks 3; node 2 lacks 1
  HeldPrefixes(std::vector<BlockKey>{Key(1), Key(2)}, 4, mask_of, &cached);
  EXPECT_EQ(cached, (std::vector<size_t>{2, 2, 0, 1}));  // the whole chain
  HeldPrefixes(std::vector<BlockKey>{}, 3, mask_of, &cached);
  EXPECT_EQ(cached, (std::vector<size_t>{0, 0, 0}));
}

TEST(Router, CacheAwareFollowsTheRoutingKeyNotHotBlocks) {
  Router r(SimNodes(4), {.load_factor = 1.25});
  std::vector<double> loads = {100, 100, 100, 100};
  RouteChoice c;
  c.node = 2;
  c.depth = 3;  // blocks 0-1 are hot, block 2 is the routing key
  c.routing_key = Key(42);
  size_t expected = 99;
  // Others hold only hot blocks: the router's choice stands, though it holds nothing.
  EXPECT_EQ(r.PreferCached(c, std::vector<size_t>{2, 2, 0, 1}, loads, 0, &expected), 2);
  EXPECT_EQ(expected, 0u);
  EXPECT_EQ(r.Preferred(Key(42)), r.ring().Home(RingHash(Key(42))));  // nothing remembered
  // A node holding the routing key and more wins, and the prefix is remembered there.
  EXPECT_EQ(r.PreferCached(c, std::vector<size_t>{2, 5, 3, 1}, loads, 0, &expected), 1);
  EXPECT_EQ(expected, 5u);
  EXPECT_EQ(r.Preferred(Key(42)), 1);
  // Ties keep the router's choice; a node over the bound is passed over.
  EXPECT_EQ(r.PreferCached(c, std::vector<size_t>{4, 4, 4, 0}, loads), 2);
  loads[1] = 200;  // mean 125, bound 156
  EXPECT_EQ(r.PreferCached(c, std::vector<size_t>{0, 9, 3, 5}, loads, 0, &expected), 3);
  EXPECT_EQ(expected, 5u);
}

TEST(Simulator, CacheAwareWithASharedFirstBlockNeitherPilesNorStarves) {
  // Every request shares its first block, so every busy node holds it. Following that block
  // sent new conversations to the nodes that had requests already, and a node that never had
  // one never got one (hit rate 0.76-0.93x the global LRU at max/mean 1.22-1.26 on the shared
  // trace with a shared first block).
  // Many system prompts of even popularity: no routing key is a large unit of work.
  SessionTraceOptions g{.seed = 7, .sessions = 1200, .duration_s = 300, .system_prompts = 1000,
                        .zipf_s = 0};
  std::vector<TraceRequest> trace = GenerateSessions(g);
  AddSharedFirstBlock(&trace);
  const SimOptions o{.nodes = 16, .capacity = 2000};
  const double global = GlobalLruHitRate(trace, o.nodes * o.capacity);
  const PolicyResult r = Simulate(trace, Policy::kCacheAware, o);
  EXPECT_GE(r.hit_rate, 0.97 * global);
  EXPECT_LE(r.max_mean_load, 1.15);
  for (size_t n = 0; n < o.nodes; ++n) EXPECT_GT(r.prefilled[n], 0u) << n;
}

TEST(Simulator, ReplicasAgreeThroughTheIndexOrBySyncing) {
  // Three replicas, requests round robin: each places new prefixes by its own loads, but the
  // turns of a conversation follow the node the shared index shows holding it.
  std::vector<TraceRequest> trace =
      GenerateSessions({.seed = 3, .sessions = 1200, .duration_s = 300, .system_prompts = 1000,
                        .zipf_s = 0});
  SimOptions o{.nodes = 8, .capacity = 2000};
  const PolicyResult one = Simulate(trace, Policy::kCacheAware, o);
  o.routers = 3;
  const PolicyResult three = Simulate(trace, Policy::kCacheAware, o);
  EXPECT_GE(three.hit_rate, 0.97 * one.hit_rate);
  EXPECT_LE(three.max_mean_load, 1.15);
  // Without the index, replicas that sync (each other's counts, placements and work, 50 ms
  // late) keep one router's hit rate; replicas that do not disagree wherever load pushed a
  // prefix off its ring home.
  o.routers = 1;
  const PolicyResult kvtier_one = Simulate(trace, Policy::kKvtier, o);
  o.routers = 3;
  const PolicyResult kvtier_synced = Simulate(trace, Policy::kKvtier, o);
  EXPECT_GE(kvtier_synced.hit_rate, 0.97 * kvtier_one.hit_rate);
  EXPECT_LE(kvtier_synced.max_mean_load, 1.15);
  o.sync_lag_s = -1;
  const PolicyResult kvtier_alone = Simulate(trace, Policy::kKvtier, o);
  EXPECT_LT(kvtier_alone.hit_rate, 0.95 * kvtier_one.hit_rate);
}

TEST(Router, AReplicaReplayingAPeersCountsAndPlacementsDecidesAlike) {
  Router a(SimNodes(4)), b(SimNodes(4));
  std::vector<BlockKey> chain = {Key(1), Key(2), Key(3)};
  // Loads only `a` knows push the prefix off its ring home.
  std::vector<double> loads = {100, 100, 100, 100};
  loads[a.ring().Home(RingHash(chain[0]))] = 200;
  const RouteChoice placed = a.Route(chain, loads);
  EXPECT_TRUE(placed.placed);
  EXPECT_NE(placed.node, a.ring().Home(RingHash(chain[0])));
  ASSERT_EQ(a.last_counted().size(), placed.depth);
  EXPECT_EQ(a.last_counted().back(), placed.routing_key);
  b.CountPeerRequest(a.last_counted());
  b.Remember(placed.routing_key, placed.node);
  // `b`, with even loads, sends the prefix where `a` placed it; neither places it again.
  const std::vector<double> even(4, 100);
  const RouteChoice followed = b.Route(chain, even);
  EXPECT_EQ(followed.node, placed.node);
  EXPECT_FALSE(followed.placed);
  EXPECT_FALSE(a.Route(chain, even).placed);
}

TEST(TraceGen, DeterministicAndWellFormed) {
  const SessionTraceOptions g{.seed = 5, .sessions = 200, .duration_s = 100};
  const std::vector<TraceRequest> a = GenerateSessions(g), b = GenerateSessions(g);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_GT(a.size(), 200u);
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].chain, b[i].chain) << i;
    ASSERT_EQ(a[i].arrival_s, b[i].arrival_s) << i;
    if (i > 0) {
      ASSERT_LE(a[i - 1].arrival_s, a[i].arrival_s) << i;
    }
    ASSERT_LE(a[i].chain.size(), g.max_blocks);
  }
  EXPECT_NE(GenerateSessions({.seed = 6, .sessions = 200}).front().chain, a.front().chain);
  // A session's turns extend its previous prompt: most requests share a prefix with another.
  EXPECT_GT(GlobalLruHitRate(a, 1 << 20), 0.5);

  std::vector<TraceRequest> t = a;
  AddSharedFirstBlock(&t);
  for (size_t i = 0; i < t.size(); ++i) {
    ASSERT_EQ(t[i].chain.front(), t[0].chain.front());
    ASSERT_EQ(std::vector<BlockKey>(t[i].chain.begin() + 1, t[i].chain.end()), a[i].chain);
  }
  EXPECT_EQ(std::count(a[0].chain.begin(), a[0].chain.end(), t[0].chain.front()), 0);
  AddBurst(&t, 10);
  ScaleTime(&t, 0.5);
  EXPECT_LT(t.back().arrival_s, a.back().arrival_s * 0.5);
  for (size_t i = 1; i < t.size(); ++i) ASSERT_LE(t[i - 1].arrival_s, t[i].arrival_s) << i;

  // Written as Mooncake JSONL and read back: the same chains, times to the millisecond.
  const std::string path = testing::TempDir() + "/trace_gen_test.jsonl";
  ASSERT_TRUE(WriteMooncakeTrace(path, t).ok());
  auto loaded = LoadMooncakeTrace(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  ASSERT_EQ(loaded->size(), t.size());
  for (size_t i = 0; i < t.size(); ++i) {
    ASSERT_EQ((*loaded)[i].chain, t[i].chain) << i;
    ASSERT_NEAR((*loaded)[i].arrival_s, t[i].arrival_s, 0.0006) << i;
  }
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
