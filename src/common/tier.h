#pragma once
// The cache's tiers, fastest first, and their one set of names. Every component that speaks of a
// tier (the store, the daemon's metrics and RPCs, the client, the tools) uses this enum; strings
// appear only where a tier is printed (TierName), and the wire keeps kvtier.v1.Tier
// (common/tier_proto.h converts).

#include <cstdint>

namespace kvtier {

enum class Tier : uint8_t { kHbm = 0, kHost = 1, kNvme = 2 };
inline constexpr int kNumTiers = 3;

// "hbm", "host", "nvme": the names of metrics labels, logs, the CLI's output and the Python
// client.
constexpr const char* TierName(Tier tier) {
  switch (tier) {
    case Tier::kHbm:
      return "hbm";
    case Tier::kHost:
      return "host";
    case Tier::kNvme:
      return "nvme";
  }
  return "invalid";
}

}  // namespace kvtier
