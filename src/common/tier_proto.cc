#include "common/tier_proto.h"

namespace kvtier {

v1::Tier TierToProto(Tier tier) {
  switch (tier) {
    case Tier::kHbm:
      return v1::TIER_HBM;
    case Tier::kHost:
      return v1::TIER_HOST;
    case Tier::kNvme:
      return v1::TIER_NVME;
  }
  return v1::TIER_UNSPECIFIED;
}

std::optional<Tier> TierFromProto(int tier) {
  switch (tier) {
    case v1::TIER_HBM:
      return Tier::kHbm;
    case v1::TIER_HOST:
      return Tier::kHost;
    case v1::TIER_NVME:
      return Tier::kNvme;
    default:
      return std::nullopt;
  }
}

}  // namespace kvtier
