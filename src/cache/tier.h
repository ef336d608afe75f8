#pragma once
// The store's tiers, fastest first, and their one set of names (metrics, logs, the RPCs).

#include <cstdint>

namespace kvtier {

enum class Tier : uint8_t { kHbm = 0, kHost = 1, kNvme = 2 };
inline constexpr int kNumTiers = 3;
// "hbm", "host", "nvme".
const char* TierName(Tier tier);

}  // namespace kvtier
