#include "server/kv_event_feed.h"

namespace kvtier::server {

std::string_view KvEventMedium(Tier tier) {
  switch (tier) {
    case Tier::kHbm: return kvevents::kMediumGpu;
    case Tier::kHost: return kvevents::kMediumCpu;
    case Tier::kNvme: return kvevents::kMediumDisk;
  }
  return kvevents::kMediumCpu;
}

absl::InlinedVector<kvevents::Event, 2> KvEventsOf(const BlockEvent& event) {
  absl::InlinedVector<kvevents::Event, 2> out;
  const std::string key = event.key.ByteString();
  auto removed = [&](Tier tier) {
    out.push_back(kvevents::BlockRemoved{.block_hashes = {key},
                                         .medium = std::string(KvEventMedium(tier))});
  };
  if (!event.stored) {
    removed(event.tier);
    return out;
  }
  if (event.moved_from.has_value()) removed(*event.moved_from);
  kvevents::BlockStored s;
  s.block_hashes = {key};
  if (!event.parent.IsZero()) s.parent_block_hash = event.parent.ByteString();
  s.medium = std::string(KvEventMedium(event.tier));
  out.push_back(std::move(s));
  return out;
}

}  // namespace kvtier::server
