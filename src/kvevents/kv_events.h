#pragma once
// vLLM's KV-event messages (the "which engine holds which block" protocol that SGLang also emits
// and llm-d's indexer and Dynamo's router consume) as plain C++ values, and their msgpack codec.
//
// On the wire an event batch is the payload frame of a ZMQ PUB message
// [topic, seq (8 bytes, big-endian), payload]. The payload is msgspec's encoding of:
//   EventBatch       [ts, events, data_parallel_rank?]
//   BlockStored      ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size,
//                     lora_id?, medium?, lora_name?, extra_keys?, group_idx?,
//                     kv_cache_spec_kind?, kv_cache_spec_sliding_window?]
//   BlockRemoved     ["BlockRemoved", block_hashes, medium?, group_idx?]
//   AllBlocksCleared ["AllBlocksCleared"]
// (array form: msgspec `array_like` structs, tagged by class name), or the same fields as maps
// keyed by field name with the tag under "type" (map form, newer senders). "?" marks fields that
// older senders leave out or that are left out when they hold their default. Decode accepts both
// forms, missing trailing optional fields, unknown extra fields, and block hashes as 64-bit
// integers or as bytes. Encode writes either form.
//
// Everything here is a plain value; the functions are thread-safe.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"

namespace kvtier::kvevents {

// An engine's block hash as it travels: a 64-bit integer (vLLM's default) or raw bytes (vLLM's
// SHA-256 digests; kvtierd's 16-byte store keys). The two kinds never compare equal.
using EngineHash = std::variant<uint64_t, std::string>;
std::string EngineHashDebugString(const EngineHash& hash);  // decimal, or hex for bytes

// Media names of the protocol (BlockStored.medium, BlockRemoved.medium).
inline constexpr std::string_view kMediumGpu = "GPU";
inline constexpr std::string_view kMediumCpu = "CPU";
inline constexpr std::string_view kMediumDisk = "DISK";

struct BlockStored {
  std::vector<EngineHash> block_hashes;
  std::optional<EngineHash> parent_block_hash;  // none: the first block of a prompt
  std::vector<uint32_t> token_ids;              // block_hashes.size() * block_size tokens
  uint32_t block_size = 0;                      // tokens per block
  std::optional<int64_t> lora_id;
  std::optional<std::string> medium;  // none: GPU (senders older than the field)
  std::optional<std::string> lora_name;
  // One entry per block, each the msgpack encoding of that block's extra hash keys (a tuple of
  // LoRA name, multimodal keys, cache salt, prompt-embedding hashes), or none for a nil entry.
  // Absent as a whole when the sender sent none.
  std::optional<std::vector<std::optional<std::string>>> extra_keys;
  std::optional<int64_t> group_idx;  // KV cache group (hybrid models)
  std::optional<std::string> kv_cache_spec_kind;
  std::optional<int64_t> kv_cache_spec_sliding_window;

  friend bool operator==(const BlockStored&, const BlockStored&) = default;
};

struct BlockRemoved {
  std::vector<EngineHash> block_hashes;
  std::optional<std::string> medium;
  std::optional<int64_t> group_idx;

  friend bool operator==(const BlockRemoved&, const BlockRemoved&) = default;
};

struct AllBlocksCleared {
  friend bool operator==(const AllBlocksCleared&, const AllBlocksCleared&) = default;
};

using Event = std::variant<BlockStored, BlockRemoved, AllBlocksCleared>;

struct EventBatch {
  double ts = 0;  // seconds since the Unix epoch, when the batch was made
  std::vector<Event> events;
  std::optional<int64_t> data_parallel_rank;
  // Decode only: events whose tag this codec does not know (a newer sender's), left out.
  uint32_t unknown_events = 0;

  friend bool operator==(const EventBatch&, const EventBatch&) = default;
};

enum class WireForm : uint8_t {
  kArray,  // array_like structs, class name first (vLLM's original form)
  kMap,    // maps keyed by field name, the class name under "type"
};

// The msgpack payload of `batch`. Optional fields that are unset are left out (trailing ones in
// the array form), as msgspec's omit_defaults does; a BlockStored's lora_id, medium and
// lora_name are always written (nil when unset).
std::string Encode(const EventBatch& batch, WireForm form = WireForm::kArray);

// The batch in `payload`, in either form. INVALID_ARGUMENT, saying what is wrong and where, for
// anything that is not one msgpack value shaped as an EventBatch: wrong types, a missing
// required field, an unknown tag shape, trailing bytes, nesting deeper than 32. Never crashes
// and allocates no more than a small multiple of the payload's size.
absl::StatusOr<EventBatch> Decode(std::string_view payload);

// The strings among one block's extra keys (BlockStored::extra_keys entry), in order, and
// whether anything besides strings is there (multimodal keys, prompt-embedding hashes: what
// makes the block's KV depend on more than its tokens). INVALID_ARGUMENT if `encoded` is not a
// msgpack array.
struct ExtraKeySummary {
  std::vector<std::string> strings;
  bool has_non_strings = false;
};
absl::StatusOr<ExtraKeySummary> SummarizeExtraKeys(std::string_view encoded);

}  // namespace kvtier::kvevents
