#pragma once
// PutAssembly: the rules of a CacheService.Put stream, apart from gRPC and the store, so that
// they can be tested and fuzzed alone. A Put stream is a sequence of PutRequest messages: the
// first names the tenant (and may give a layout every block must match); a message with a header
// starts a block, once the previous one is complete; data carries the block's next bytes; a block
// is committed when its header's size has arrived. PutAssembly checks each message against these
// rules and tells a PutSink what to do: begin a block, write bytes at an offset, commit it. The
// sink does the store's part (and the tenant's authorization).
//
// Not thread-safe: one per stream. The sink is not owned and outlives the assembly.

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cache/block_store.h"
#include "common/block_key.h"
#include "common/kv_layout.h"
#include "kvtier/v1/cache.pb.h"

namespace kvtier::server {

class PutSink {
 public:
  virtual ~PutSink() = default;
  // The tenant named by the stream's first message: OK to go on with it.
  virtual absl::Status Tenant(const std::string& tenant) = 0;
  // A block of `size` bytes starts (the client's key and parent, the zero key for none). The
  // sink's previous block, if any, was committed.
  virtual absl::Status Begin(const BlockKey& key, const BlockKey& parent, uint64_t size,
                             const PutOptions& options) = 0;
  // The next bytes of the block, at `offset` (the bytes written so far). The sink refuses bytes
  // past the block's size.
  virtual absl::Status Write(uint64_t offset, std::span<const uint8_t> data) = 0;
  // All `size` bytes have arrived: make the block visible.
  virtual absl::StatusOr<PutResult> Commit() = 0;
};

class PutAssembly {
 public:
  explicit PutAssembly(PutSink* sink) : sink_(sink) {}

  // The next message of the stream. An error ends the stream (what was committed stays).
  absl::Status Add(const v1::PutRequest& msg);
  // The stream has ended: INVALID_ARGUMENT if it ended inside a block (which is then dropped
  // by the sink, never visible).
  absl::Status Finish() const;

  uint32_t stored() const { return stored_; }    // blocks newly stored
  uint32_t present() const { return present_; }  // blocks that were already there

 private:
  PutSink* sink_;
  bool first_ = true;
  std::string tenant_;
  std::optional<KvLayout> layout_;
  bool in_block_ = false;   // a block has begun and is not committed yet
  uint64_t size_ = 0;       // its size
  uint64_t received_ = 0;   // its bytes so far
  std::string block_name_;  // its key in hex, for errors
  uint32_t stored_ = 0;
  uint32_t present_ = 0;
};

}  // namespace kvtier::server
