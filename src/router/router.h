#pragma once
// Router: where a request should be prefilled, so that requests sharing a prefix meet the same
// node's cache while no node takes much more than its share of the work.
//
// Routing key, at an adaptive depth: the shallowest prefix key of the request's chain whose
// recent share of requests is at most the bound's slack over one node's share, epsilon / N
// (load_factor = 1 + epsilon), else the whole chain. A system prompt that many requests share
// is hot, so its requests spread by what follows it; the turns of one conversation share a key
// that only they carry, so they stay together. A key any hotter is a unit of work the bound
// cannot absorb: its node runs up to the bound (at 1/N, one Zipf-popular system prompt's
// sessions were a whole node's share). No per-trace parameter: the threshold is N and the
// bound. The sketch's estimates discount collisions (PrefixPopularity), so long prompts whose
// keys all go in do not make every key look hot.
//
// Node choice: consistent hashing (HashRing) wrapped in bounded loads (Mirrokni, Thorup and
// Zadimoghaddam), with placements remembered:
// - a routing key seen before goes to the node it was last placed on (PlacementMemory), as
//   long as that node is within load_factor x its weighted share of the total work;
// - a new routing key (not in the popularity sketch) costs the same prefill everywhere, so it
//   is where balance is cheap: it goes to the first ring candidate at or under its share
//   (bounded loads with epsilon 0);
// - otherwise (over the bound, or forgotten) the first ring candidate within the bound.
// Every choice is remembered. Balancing new prefixes keeps loads near the mean, so known
// prefixes rarely meet a full node and lose their cache; with equal loads every choice is the
// key's ring home, and a join or leave moves only the prefixes placed on the leaving node.
//
// Not thread-safe (routing updates the popularity sketch and the placements): one router per
// routing thread. Placements are this router's own: clients routing locally agree on ring homes
// but not on where load pushed a prefix; kvtier-router replicas agree by replaying each other's
// counts and placements (last_counted, CountPeerRequest, Remember; router/replica_sync.h).

#include <bit>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "common/block_key.h"
#include "router/placement.h"
#include "router/popularity.h"
#include "router/ring.h"

namespace kvtier::router {

struct RouterOptions {
  double load_factor = 1.25;   // Default: 1.25. Bounded loads' 1 + epsilon.
  int points_per_weight = 160;  // Default: 160. Ring points per unit of node weight.
  size_t popularity_width = size_t{1} << 14;  // Default: 16,384 counters a row (256 KiB).
  uint32_t popularity_window = 4096;  // Default: 4,096 requests between halvings.
  size_t placement_entries = size_t{1} << 20;  // Default: 1,048,576 placements (16 MiB).
};

// The smallest epsilon the routing depth uses (load_factor <= 1 would make every key hot).
inline constexpr double kMinEpsilon = 1.0 / 64;

struct RouteChoice {
  int node = -1;        // index into the node list
  size_t depth = 0;     // blocks in the routing key
  BlockKey routing_key;
  bool placed = false;  // the routing key's placement was made or changed by this choice
};

class Router {
 public:
  Router(std::vector<RingNode> nodes, RouterOptions options = {});
  // New membership (a node joined, left or was ejected); the popularity sketch is kept, and
  // so are the placements on nodes (by name) that remain.
  void SetNodes(std::vector<RingNode> nodes);

  // The routing depth of `chain` (1..chain.size(); 0 for an empty chain), counting the request
  // in the popularity sketch.
  size_t Depth(std::span<const BlockKey> chain);
  // The first ring candidate of `key` whose load is within the bound: load_factor x its share
  // of the total, plus `slack` (kvtier-router passes about one request's work, so that at low
  // volume a node may run one request ahead instead of losing its prefixes to the next node).
  // `loads[i]` is node i's prefill work (any unit; blocks in kvtier).
  int Pick(const BlockKey& key, std::span<const double> loads, double slack = 0) const;
  // Depth, then the node: remembered, balanced or picked as the header says.
  RouteChoice Route(std::span<const BlockKey> chain, std::span<const double> loads,
                    double slack = 0);
  // The same from a prompt's tokens, hashing only as many blocks as the depth needs (usually a
  // few, whatever the prompt's length). A prompt shorter than one block has no routing key
  // and goes by the hasher's root (depth 0).
  RouteChoice RouteTokens(const ChainHasher& hasher, std::span<const uint32_t> tokens,
                          std::span<const double> loads, double slack = 0);
  // True when `loads[n]` is within node n's bound.
  bool WithinBound(int n, std::span<const double> loads, double slack = 0) const;
  // Records that `key`'s requests now go to node `n` (cache-aware mode moving a prefix to
  // the node that holds more of it).
  void Remember(const BlockKey& key, int n);
  // Cache-aware mode: the node for a request that Route/RouteTokens sent to `choice`, given
  // `cached[n]`, the leading blocks of the request's chain that node n holds by the index
  // (HeldPrefixes computes it from a key -> node bitmask index). The node within the bound
  // holding the longest prefix that includes the routing key (ties: the router's choice, then
  // ring order of the routing key), else the router's choice. Blocks shallower than the routing
  // key are hot (shared by more than epsilon / N of the requests), so every node holds them or
  // soon will; following them would pile requests onto whichever nodes happen to hold them
  // already, and starve a node that holds nothing yet. A move is remembered, so the prefix's next
  // requests go there too, and replicas that read the same index follow the same node.
  // `*expected_cached`, when set, is the chosen node's cached blocks.
  int PreferCached(const RouteChoice& choice, std::span<const size_t> cached,
                   std::span<const double> loads, double slack = 0,
                   size_t* expected_cached = nullptr);
  // Replica sync (kvtier-router --peers): the keys the last Route or RouteTokens counted in the
  // popularity sketch, the routing key last; a peer replays them with CountPeerRequest.
  std::span<const BlockKey> last_counted() const { return counted_; }
  // Counts a request a peer replica routed, with the keys it counted, in the popularity sketch,
  // so that replicas behind a round-robin Service pick the same routing depths.
  void CountPeerRequest(std::span<const BlockKey> keys);
  // A routing key carries at most this share of the recent requests: epsilon / N.
  double HotShare() const;
  // Where `key` would go with equal loads: its remembered node, else its ring home. Changes
  // nothing (for measuring what a membership change moves).
  int Preferred(const BlockKey& key) const;

  const HashRing& ring() const { return ring_; }
  const RouterOptions& options() const { return options_; }
  size_t popularity_bytes() const { return popularity_.memory_bytes(); }
  size_t placements() const { return placements_.size(); }
  size_t placement_bytes() const { return placements_.memory_bytes(); }

 private:
  // Depth over `blocks` keys produced by key_at(d), in order; `fresh`: the routing key was
  // not in the popularity sketch before this request.
  template <typename KeyAt>
  size_t DepthOf(size_t blocks, KeyAt key_at, BlockKey* routing_key, bool* fresh);
  // The node for a routing key (the rules in the header), remembered.
  int Place(const BlockKey& key, bool fresh, std::span<const double> loads, double slack,
            bool* placed);
  // The first ring candidate at or under its weighted share of the total, plus `slack`.
  int PickUnderShare(const BlockKey& key, std::span<const double> loads, double slack) const;
  // Node ids: stable per name across SetNodes, for the placement memory.
  void IndexNodes();
  int NodeOfId(int64_t id) const;

  HashRing ring_;
  RouterOptions options_;
  double total_weight_ = 0;
  PrefixPopularity popularity_;
  PlacementMemory placements_;
  absl::flat_hash_map<std::string, uint32_t> node_ids_;  // every name ever a member
  std::vector<uint32_t> id_of_node_;                      // ring index -> id
  std::vector<int> node_of_id_;                           // id -> ring index, or -1
  mutable std::vector<int> candidates_;
  std::vector<BlockKey> counted_;  // last_counted()
};

// For each node, the leading blocks of `chain` it holds, from an index where `mask_of(key)`
// is the bitmask of nodes holding `key` (bit n: node n; at most 64 nodes). Stops at the first
// block no node holds: a lookup per block of the longest held prefix, plus one.
template <typename MaskOf>
void HeldPrefixes(std::span<const BlockKey> chain, size_t nodes, MaskOf mask_of,
                  std::vector<size_t>* cached) {
  cached->assign(nodes, 0);
  uint64_t holding = nodes >= 64 ? ~uint64_t{0} : (uint64_t{1} << nodes) - 1;
  for (size_t d = 0; d < chain.size() && holding != 0; ++d) {
    const uint64_t next = holding & mask_of(chain[d]);
    for (uint64_t gone = holding & ~next; gone != 0; gone &= gone - 1) {
      (*cached)[std::countr_zero(gone)] = d;
    }
    holding = next;
  }
  for (; holding != 0; holding &= holding - 1) (*cached)[std::countr_zero(holding)] = chain.size();
}

// The ring position of a routing key.
inline uint64_t RingHash(const BlockKey& key) { return key.hi ^ (key.lo * 0x9E3779B97F4A7C15ULL); }

}  // namespace kvtier::router
