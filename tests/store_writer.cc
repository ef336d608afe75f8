// Test helper for recovery_test: writes durable blocks to a store and prints "ACK <n>" after each
// put returns OK, until killed or done. Block n's bytes are TestBlock(n, size), its parent n-1.
//   store_writer NVME_DIR FIRST COUNT BLOCK_BYTES
#include <cstdio>
#include <cstdlib>

#include "cache/block_store.h"
#include "common/logging.h"
#include "testing/test_util.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: store_writer NVME_DIR FIRST COUNT BLOCK_BYTES\n");
    return 2;
  }
  (void)kvtier::InitLogging("warn");
  const uint64_t first = std::strtoull(argv[2], nullptr, 10);
  const uint64_t count = std::strtoull(argv[3], nullptr, 10);
  const size_t block = std::strtoull(argv[4], nullptr, 10);
  kvtier::StoreOptions o;
  o.host_bytes = 64 * block;
  o.max_block_bytes = block;
  o.host_hugepages = false;
  o.nvme_path = argv[1];
  o.nvme_admission = kvtier::NvmeAdmission::kAll;
  auto store = kvtier::BlockStore::Open(o);
  if (!store.ok()) {
    std::fprintf(stderr, "open: %s\n", store.status().ToString().c_str());
    return 1;
  }
  for (uint64_t n = first; n < first + count; ++n) {
    const kvtier::BlockKey parent = n == first ? kvtier::BlockKey{} : kvtier::testing::TestKey(n - 1);
    // Every third block is a plain cache put: not acknowledged as durable, may or may not survive.
    const bool durable = n % 3 != 0;
    absl::Status st = (*store)->Put(kvtier::testing::TestKey(n), parent,
                                    kvtier::testing::TestBlock(n, block), {.durable = durable});
    if (!st.ok()) {
      std::fprintf(stderr, "put %llu: %s\n", static_cast<unsigned long long>(n),
                   st.ToString().c_str());
      return 1;
    }
    if (durable) {
      std::printf("ACK %llu\n", static_cast<unsigned long long>(n));
      std::fflush(stdout);
    }
  }
  return 0;
}
