#pragma once
// EngineBlockMapper: turns one engine's KV events into kvtier's own block keys.
//
// An engine names its blocks by its own hashes (vLLM: 64-bit ints or SHA-256 bytes, seeded per
// process), which mean nothing to kvtier. A BlockStored carries the blocks' token ids, so the
// mapper computes kvtier's chain keys for them (common/block_key.h): the namespace is the
// configured model id and layout fingerprint, adapter_id = the event's lora_name, block_tokens =
// its block_size, tenant_salt = the request's cache salt where the event carries one (in the
// first block's extra keys); the parent key is the one remembered for the event's
// parent_block_hash, or the namespace's root when there is none. The mapper remembers each
// engine hash's key, so that BlockRemoved can name the keys that went.
//
// These are not tenant keys (common/block_key.h TenantKey): an engine's prefix cache is shared
// by all its users unless they salt their requests.
//
// Skipped and counted, never guessed: a BlockStored whose parent the mapper does not know (an
// event it missed; its children are then unknown too), one whose token count is not
// blocks * block_size, one whose blocks' KV depends on more than tokens (multimodal or
// prompt-embedding extra keys), and events of another KV cache group than `group_idx`.
//
// The map is bounded (`max_blocks`). Past the bound it cannot tell the sink what a later
// removal removes, so it forgets everything and the sink hears OnCleared, as for a loss.
//
// Not thread-safe: one engine's mapper is fed from one thread (its KvEventSubscriber's); the
// sink is called on that thread. The counters may be read from any thread.

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/block_key.h"
#include "kvevents/kv_events.h"
#include "kvevents/subscriber.h"

namespace kvtier::kvevents {

// Where the mapper's output goes (the router's index of which engine holds which prefix).
class BlockKeySink {
 public:
  virtual ~BlockKeySink() = default;
  // Blocks the engine now holds (each newly: a key is reported once until it is removed).
  virtual void OnStored(std::span<const BlockKey> keys) = 0;
  // Blocks the engine no longer holds in any medium.
  virtual void OnRemoved(std::span<const BlockKey> keys) = 0;
  // The engine holds nothing known any more (AllBlocksCleared, lost events, a restart).
  virtual void OnCleared() = 0;
};

struct EngineMapperOptions {
  std::string model_id;             // Required. KeyNamespace::model_id of the engine's model.
  uint64_t layout_fingerprint = 0;  // Default: 0. KeyNamespace::layout_fingerprint.
  HashAlgorithm algorithm = HashAlgorithm::kXxh3_128;  // Default: XXH3-128.
  size_t max_blocks = size_t{1} << 21;  // Default: 2 Mi. Engine hashes remembered.
  int64_t group_idx = 0;  // Default: 0. The KV cache group indexed (events without one are 0).
};

class EngineBlockMapper final : public KvEventHandler {
 public:
  struct Counters {
    uint64_t stored_blocks = 0;      // reported to OnStored
    uint64_t removed_blocks = 0;     // reported to OnRemoved
    uint64_t clears = 0;             // OnCleared calls
    uint64_t unknown_parent = 0;     // BlockStored events skipped: parent not known
    uint64_t unknown_removed = 0;    // removed hashes the mapper did not know
    uint64_t malformed_events = 0;   // token count or block size that does not fit
    uint64_t unsupported_extra_keys = 0;  // BlockStored events whose KV is not named by tokens
    uint64_t other_group = 0;        // events of another KV cache group
    uint64_t overflows = 0;          // times the map reached max_blocks and was forgotten
  };

  // INVALID_ARGUMENT for an empty model id or a zero bound. REQUIRES: `sink` outlives the mapper.
  static absl::StatusOr<std::unique_ptr<EngineBlockMapper>> Create(EngineMapperOptions options,
                                                                  BlockKeySink* sink);
  ~EngineBlockMapper() override;

  void Apply(const Event& event);
  void Apply(const EventBatch& batch);
  // Forgets every block and tells the sink OnCleared.
  void Clear();

  // KvEventHandler: a subscriber feeds the mapper directly; a loss clears it.
  void OnBatch(int64_t /*seq*/, const EventBatch& batch) override { Apply(batch); }
  void OnLost(int64_t /*seq*/) override { Clear(); }

  size_t size() const { return blocks_.size(); }
  Counters counters() const;

 private:
  // Media bits: a block held in several media (GPU and a CPU offload) is removed only when the
  // last one lets it go.
  struct Held {
    BlockKey key;
    uint8_t media = 0;
  };
  // Engine hash -> Held. Int hashes (vLLM's default) have a map of their own, whose entries take
  // 32 bytes instead of the variant's 64: the map outgrows the caches, and each block's lookup
  // is a miss.
  class HeldMap {
   public:
    Held* Find(const EngineHash& hash);
    // The entry of `hash`, inserted as `held` if there was none; true if it was inserted.
    std::pair<Held*, bool> TryEmplace(const EngineHash& hash, const Held& held);
    void Erase(const EngineHash& hash);
    // Starts fetching the memory a lookup of `hash` will read.
    void Prefetch(const EngineHash& hash) const;
    // Keeps room for as many entries as there were: an engine refills what it cleared.
    void Clear();
    size_t size() const { return ints_.size() + bytes_.size(); }

   private:
    absl::flat_hash_map<uint64_t, Held> ints_;
    absl::flat_hash_map<std::string, Held> bytes_;
  };

  EngineBlockMapper(EngineMapperOptions options, BlockKeySink* sink);
  void OnStored(const BlockStored& e);
  void OnRemoved(const BlockRemoved& e);
  // The hasher of (salt, adapter, block size), made once and kept (a few per engine).
  absl::StatusOr<const ChainHasher*> Hasher(const std::string& salt, const std::string& adapter,
                                            uint32_t block_size);

  const EngineMapperOptions options_;
  BlockKeySink* const sink_;
  HeldMap blocks_;
  absl::flat_hash_map<std::string, std::unique_ptr<ChainHasher>> hashers_;
  std::vector<BlockKey> keys_, scratch_;  // reused from event to event

  struct Atomics;
  std::unique_ptr<Atomics> counts_;
};

}  // namespace kvtier::kvevents
