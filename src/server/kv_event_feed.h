#pragma once
// The store's block events (StoreOptions::on_block_event) as vLLM KV events (src/kvevents):
// what kvtierd publishes on --kv-events-endpoint for KV-aware routers (llm-d, Dynamo,
// kvtier-router).

#include <string_view>

#include "absl/container/inlined_vector.h"
#include "cache/store_options.h"
#include "kvevents/kv_events.h"

namespace kvtier::server {

// The protocol's medium of a tier: GPU (HBM), CPU (host RAM), DISK (NVMe).
std::string_view KvEventMedium(Tier tier);

// What one store event becomes: a store is a BlockStored, a removal a BlockRemoved, a move
// between tiers a BlockRemoved from the old medium followed by a BlockStored in the new. Block
// hashes are the 16-byte store keys (tenant keys, common/block_key.h TenantKey) as bytes, the
// parent the parent's store key (none for a first block); token_ids are empty and block_size 0,
// since the daemon does not know a block's tokens.
absl::InlinedVector<kvevents::Event, 2> KvEventsOf(const BlockEvent& event);

}  // namespace kvtier::server
