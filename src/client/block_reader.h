#pragma once
// BlockReader: reads cached blocks, or byte ranges of them, into caller memory. The seam between
// CacheClient and the paths bytes take to it, each tested alone against fakes
// (block_reader_test.cc, ucx_lease_reader_test.cc):
// - GrpcBlockReader (below): whole blocks streamed by CacheService.Get; serves every call.
// - UcxLeaseReader (ucx_lease_reader.h): leases the blocks and reads them over the daemon's UCX
//   data plane; declines what it cannot serve.
// - FallbackReader (below): one reader, and a second for each call the first declined.
//
// A reader that cannot serve a call declines it: it returns NotServed(why), and nothing it wrote
// into the caller's memory counts; another reader may serve the call. Every other error is the
// call's answer, and every reader gives the same ones: NOT_FOUND, OUT_OF_RANGE (below), the
// daemon's errors, DATA_LOSS for bytes that would not verify.
//
// Readers are thread-safe: calls may run at once from many threads.

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/block_key.h"

namespace kvtier {

// Part of a block to read: `dst.size()` bytes from `offset` in block `key`.
struct RangeRead {
  BlockKey key;
  uint64_t offset = 0;
  std::span<uint8_t> dst;
};

// When a call must be over, on the steady clock.
using CallDeadline = std::chrono::steady_clock::time_point;

class BlockReader {
 public:
  virtual ~BlockReader() = default;

  // Reads block keys[i] into the start of dst[i]. One entry per key: the block's size, or
  // nullopt when it is not cached. OUT_OF_RANGE (BlockTooLarge) when a block is larger than its
  // buffer. REQUIRES: keys.size() == dst.size().
  virtual absl::StatusOr<std::vector<std::optional<size_t>>> ReadBlocks(
      std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dst,
      CallDeadline deadline) = 0;

  // Reads parts of blocks (for example one layer's or one head's slice). NOT_FOUND names the
  // first block not cached; OUT_OF_RANGE (RangeOutside) for a range past the end of its block.
  virtual absl::Status ReadRanges(std::span<const RangeRead> reads, CallDeadline deadline) = 0;
};

// A reader declining a call, for `why` (whose code and message it keeps; UNAVAILABLE if `why`
// is OK).
absl::Status NotServed(const absl::Status& why);
// Whether `status` is a reader declining a call (NotServed), rather than the call's answer.
bool IsNotServed(const absl::Status& status);

// The errors every reader gives for a buffer too small and a range outside its block.
absl::Status BlockTooLarge(const BlockKey& key, uint64_t size, size_t buffer);
absl::Status RangeOutside(const RangeRead& read, uint64_t block_size);
inline bool Inside(const RangeRead& read, uint64_t block_size) {
  return read.offset <= block_size && read.dst.size() <= block_size - read.offset;
}

// The distinct blocks of some range reads, in order of first mention, and for each read the
// index of its block there.
struct RangeBlocks {
  std::vector<BlockKey> keys;
  std::vector<size_t> block_of;
};
RangeBlocks BlocksOf(std::span<const RangeRead> reads);

// Reads with `first`; a call `first` declines goes to `second`, whose answer is the call's.
// Neither is owned; both must outlive this.
class FallbackReader final : public BlockReader {
 public:
  FallbackReader(BlockReader* first, BlockReader* second) : first_(first), second_(second) {}

  absl::StatusOr<std::vector<std::optional<size_t>>> ReadBlocks(
      std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dst,
      CallDeadline deadline) override {
    return ReadBlocks(keys, dst, deadline, nullptr);
  }
  absl::Status ReadRanges(std::span<const RangeRead> reads, CallDeadline deadline) override {
    return ReadRanges(reads, deadline, nullptr);
  }
  // As above; `by_first`, when given, says whether `first` served the call.
  absl::StatusOr<std::vector<std::optional<size_t>>> ReadBlocks(
      std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dst,
      CallDeadline deadline, bool* by_first);
  absl::Status ReadRanges(std::span<const RangeRead> reads, CallDeadline deadline, bool* by_first);

 private:
  BlockReader* first_;
  BlockReader* second_;
};

// Where a stream of blocks puts block i, once its size is known (nullopt: not cached; return
// an empty span). An error stops the stream and is its answer.
using BlockPlaceFn =
    absl::FunctionRef<absl::StatusOr<std::span<uint8_t>>(size_t i, std::optional<size_t> size)>;

// Reads through a stream of whole blocks: CacheService.Get, as CacheClient::GetStream makes it
// (which verifies every block against its checksum). Ranges are cut from whole blocks fetched
// into memory of its own. Never declines.
class GrpcBlockReader final : public BlockReader {
 public:
  // Streams the blocks of `keys`, each into the place `place` picks, verified.
  using GetStreamFn = std::function<absl::Status(std::span<const BlockKey> keys,
                                                 const BlockPlaceFn& place, CallDeadline deadline)>;
  explicit GrpcBlockReader(GetStreamFn get_stream) : get_stream_(std::move(get_stream)) {}

  absl::StatusOr<std::vector<std::optional<size_t>>> ReadBlocks(
      std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dst,
      CallDeadline deadline) override;
  absl::Status ReadRanges(std::span<const RangeRead> reads, CallDeadline deadline) override;

 private:
  GetStreamFn get_stream_;
};

}  // namespace kvtier
