#pragma once
// Tier <-> kvtier.v1.Tier, for the daemon's answers and the client's reading of them.

#include <optional>

#include "common/tier.h"
#include "kvtier/v1/types.pb.h"

namespace kvtier {

v1::Tier TierToProto(Tier tier);
// nullopt for TIER_UNSPECIFIED and values this build does not know (a newer daemon's).
std::optional<Tier> TierFromProto(int tier);

}  // namespace kvtier
