#include "client/block_reader.h"

#include "absl/container/flat_hash_map.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/status_macros.h"

namespace kvtier {

namespace {

// The payload that marks a status as a reader's NotServed.
constexpr char kNotServedPayload[] = "type.kvtier.dev/kvtier.client.NotServed";

}  // namespace

absl::Status NotServed(const absl::Status& why) {
  absl::Status st = why.ok() ? absl::UnavailableError("not served") : why;
  st.SetPayload(kNotServedPayload, absl::Cord());
  return st;
}

bool IsNotServed(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kNotServedPayload).has_value();
}

absl::Status BlockTooLarge(const BlockKey& key, uint64_t size, size_t buffer) {
  return absl::OutOfRangeError(
      absl::StrCat("get: block ", key.Hex(), " is ", size, " bytes, its buffer ", buffer));
}

absl::Status RangeOutside(const RangeRead& read, uint64_t block_size) {
  return absl::OutOfRangeError(absl::StrCat("read: ", read.dst.size(), " bytes at ", read.offset,
                                            " of block ", read.key.Hex(), " (", block_size,
                                            " bytes)"));
}

RangeBlocks BlocksOf(std::span<const RangeRead> reads) {
  RangeBlocks out;
  out.block_of.resize(reads.size());
  absl::flat_hash_map<BlockKey, size_t> index;
  for (size_t i = 0; i < reads.size(); ++i) {
    auto [it, added] = index.try_emplace(reads[i].key, out.keys.size());
    if (added) out.keys.push_back(reads[i].key);
    out.block_of[i] = it->second;
  }
  return out;
}

absl::StatusOr<std::vector<std::optional<size_t>>> FallbackReader::ReadBlocks(
    std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dst, CallDeadline deadline,
    bool* by_first) {
  auto got = first_->ReadBlocks(keys, dst, deadline);
  const bool declined = IsNotServed(got.status());
  if (by_first != nullptr) *by_first = !declined;
  return declined ? second_->ReadBlocks(keys, dst, deadline) : got;
}

absl::Status FallbackReader::ReadRanges(std::span<const RangeRead> reads, CallDeadline deadline,
                                        bool* by_first) {
  absl::Status st = first_->ReadRanges(reads, deadline);
  const bool declined = IsNotServed(st);
  if (by_first != nullptr) *by_first = !declined;
  return declined ? second_->ReadRanges(reads, deadline) : st;
}

absl::StatusOr<std::vector<std::optional<size_t>>> GrpcBlockReader::ReadBlocks(
    std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dst,
    CallDeadline deadline) {
  std::vector<std::optional<size_t>> sizes(keys.size());
  KVTIER_RETURN_IF_ERROR(get_stream_(
      keys,
      [&](size_t i, std::optional<size_t> size) -> absl::StatusOr<std::span<uint8_t>> {
        sizes[i] = size;
        if (!size.has_value()) return std::span<uint8_t>();
        if (*size > dst[i].size()) return BlockTooLarge(keys[i], *size, dst[i].size());
        return dst[i].first(*size);
      },
      deadline));
  return sizes;
}

absl::Status GrpcBlockReader::ReadRanges(std::span<const RangeRead> reads, CallDeadline deadline) {
  const RangeBlocks blocks = BlocksOf(reads);
  std::vector<std::optional<std::vector<uint8_t>>> whole(blocks.keys.size());
  KVTIER_RETURN_IF_ERROR(get_stream_(
      blocks.keys,
      [&](size_t i, std::optional<size_t> size) -> absl::StatusOr<std::span<uint8_t>> {
        whole[i].reset();
        if (!size.has_value()) return std::span<uint8_t>();
        return std::span(whole[i].emplace(*size));
      },
      deadline));
  for (size_t i = 0; i < reads.size(); ++i) {
    const auto& b = whole[blocks.block_of[i]];
    if (!b.has_value()) {
      return absl::NotFoundError(absl::StrCat("read: block ", reads[i].key.Hex(), " not found"));
    }
    if (!Inside(reads[i], b->size())) return RangeOutside(reads[i], b->size());
    CopyBytes(reads[i].dst.data(), b->data() + reads[i].offset, reads[i].dst.size());
  }
  return absl::OkStatus();
}

}  // namespace kvtier
