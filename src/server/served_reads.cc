#include "server/served_reads.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace kvtier::server {
namespace {

struct ByTier {
  bool operator()(const BlockInfo& b, Tier t) const { return b.tier < t; }
  bool operator()(Tier t, const BlockInfo& b) const { return t < b.tier; }
};

// The pins of one served read.
class PinnedBlocks final : public transfer::ReadGrant {
 public:
  explicit PinnedBlocks(BlockStore* store) : store_(store) {}
  ~PinnedBlocks() override {
    for (const BlockStore::PinnedBlock& p : pins_) store_->UnpinHostBlock(p);
  }
  void Add(const BlockStore::PinnedBlock& p) { pins_.push_back(p); }

 private:
  BlockStore* store_;
  std::vector<BlockStore::PinnedBlock> pins_;
};

}  // namespace

std::vector<BlockInfo> SortedByPlace(std::span<const BlockInfo> blocks) {
  std::vector<BlockInfo> out(blocks.begin(), blocks.end());
  std::sort(out.begin(), out.end(), [](const BlockInfo& a, const BlockInfo& b) {
    return std::pair(a.tier, a.location) < std::pair(b.tier, b.location);
  });
  return out;
}

absl::StatusOr<std::unique_ptr<transfer::ReadGrant>> AuthorizeServedRead(
    const LeaseHandles& handles, BlockStore* store, int64_t now_us, uint64_t handle,
    std::span<const transfer::RegionRange> ranges) {
  const std::optional<LeaseHandles::Lease> lease = handles.Find(handle, now_us);
  if (!lease.has_value()) {
    return absl::NotFoundError("served read: no live lease has this id");
  }
  // The lease's host-tier blocks, by location.
  const auto [first, last] = std::equal_range(lease->blocks.begin(), lease->blocks.end(),
                                              Tier::kHost, ByTier{});
  const std::span<const BlockInfo> blocks(first, last);
  std::vector<size_t> touched;
  touched.reserve(ranges.size());
  for (const transfer::RegionRange& r : ranges) {
    if (r.length == 0 || r.offset + r.length < r.offset) {
      return absl::InvalidArgumentError(
          absl::StrCat("served read: ", r.length, " bytes at ", r.offset, " is not a range"));
    }
    // The last block that starts at or before the range: the only one that can hold it.
    auto it = std::upper_bound(blocks.begin(), blocks.end(), r.offset,
                               [](uint64_t off, const BlockInfo& b) { return off < b.location; });
    bool inside = false;
    if (it != blocks.begin()) {
      --it;
      const uint64_t within = r.offset - it->location;
      inside = within < it->size && r.length <= it->size - within;
    }
    if (!inside) {
      return absl::PermissionDeniedError(absl::StrCat(
          "served read: ", r.length, " bytes at ", r.offset, " are not inside one leased block"));
    }
    touched.push_back(static_cast<size_t>(it - blocks.begin()));
  }
  std::sort(touched.begin(), touched.end());
  touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
  auto grant = std::make_unique<PinnedBlocks>(store);
  for (size_t i : touched) {
    auto pinned = store->PinHostPlacement(blocks[i]);
    if (!pinned.ok()) {
      // Gone or moved since the lease (which has ended meanwhile): a new lease will find it.
      return absl::NotFoundError(absl::StrCat("served read: ", pinned.status().message()));
    }
    grant->Add(*pinned);
  }
  return grant;
}

}  // namespace kvtier::server
