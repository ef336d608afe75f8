#pragma once
// Helpers shared by the block store's tests: small stores with exact capacities, and puts and
// checks of the deterministic blocks of testing/test_util.h.

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "cache/block_store.h"
#include "testing/test_util.h"

namespace kvtier::testing {

inline constexpr size_t kBlock = 4096;
inline const BlockKey kNoParent{};

// A host tier of `host_blocks` blocks of `block` bytes, without hugepages and without a reserve:
// every put evicts what it needs itself.
inline StoreOptions SmallOptions(size_t host_blocks, size_t block = kBlock) {
  StoreOptions o;
  o.host_bytes = host_blocks * block;
  o.max_block_bytes = block;
  o.host_hugepages = false;
  o.index_shards = 8;
  o.host_reserve_bytes = 0;
  return o;
}

// `o` with an NVMe tier of `bytes` in `path`.
inline StoreOptions WithNvme(StoreOptions o, const std::string& path, uint64_t bytes = 1 << 20,
                             NvmeAdmission admission = NvmeAdmission::kAll) {
  o.nvme_path = path;
  o.nvme_bytes = bytes;
  o.nvme_admission = admission;
  o.nvme_write_buffer_bytes = 1 << 20;
  return o;
}

inline std::unique_ptr<BlockStore> OpenOrDie(const StoreOptions& o) {
  auto s = BlockStore::Open(o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? std::move(*s) : nullptr;
}

// Puts block `n` (kBlock bytes) of a chain whose previous block is `parent` (or none).
inline absl::Status PutN(BlockStore& s, uint64_t n, std::optional<uint64_t> parent = std::nullopt,
                         PutOptions opts = {}) {
  return s.Put(TestKey(n), parent ? TestKey(*parent) : kNoParent, TestBlock(n, kBlock), opts);
}

inline bool Has(BlockStore& s, uint64_t n) { return s.Stat(TestKey(n)).ok(); }

// Block `n` reads back as TestBlock(n, size).
inline void ExpectBlock(BlockStore& s, uint64_t n, size_t size = kBlock) {
  auto got = s.Get(TestKey(n));
  ASSERT_TRUE(got.ok()) << "block " << n << ": " << got.status();
  EXPECT_EQ(*got, TestBlock(n, size)) << "block " << n;
}

}  // namespace kvtier::testing
