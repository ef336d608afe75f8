// Feeds CacheService.Put's stream reassembly (server/put_assembly.h) the bytes of a Put stream,
// as kvtierd receives them: each frame (fuzz_util.h: 2-byte length, bytes) is one gRPC message,
// parsed as a v1::PutRequest as the service parses it (a frame that does not parse ends the
// stream with an error). The sink does what kvtierd's does (tenant name check, in-flight byte
// limits, BeginPut / Write / Commit under tenant keys) on a real host-only BlockStore, and checks
// the assembly's contract: one tenant first; a block begins only once the previous one is
// committed; bytes arrive in order from offset 0; a commit only when all of a block's bytes have
// arrived; the stream is complete exactly when no block is open. After each input the stored
// blocks are deleted and the store must be empty and consistent again (no space leaked by
// aborted puts).

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cache/block_store.h"
#include "fuzz/fuzz_util.h"
#include "kvtier/v1/cache.pb.h"
#include "server/inflight.h"
#include "server/put_assembly.h"
#include "server/request_keys.h"

namespace kvtier::fuzz {
namespace {

using server::PutAssembly;
using server::PutSink;

// The one tenant's number in the in-flight accounting (the daemon's registry gives 1 to the first).
constexpr uint16_t kTenantNumber = 1;

BlockStore& Store() {
  static BlockStore* store = [] {
    StoreOptions o;
    o.host_bytes = 2 << 20;
    o.max_block_bytes = 64 << 10;
    o.host_hugepages = false;
    o.host_lock = false;
    o.index_shards = 8;
    o.mover_threads = 1;
    auto s = BlockStore::Open(o);
    if (!s.ok()) Fail(std::string(s.status().message()));
    return s->release();  // lives for the whole run
  }();
  return *store;
}

class CheckingSink final : public PutSink {
 public:
  explicit CheckingSink(server::InflightBytes* inflight) : inflight_(inflight) {}

  absl::Status Tenant(const std::string& tenant) override {
    KVTIER_FUZZ_CHECK(!tenant_.has_value(), "the tenant is named once");
    KVTIER_FUZZ_CHECK(!block_.has_value(), "the tenant comes first");
    if (absl::Status st = server::CheckTenantName(tenant, 256); !st.ok()) return st;
    tenant_ = tenant;
    return absl::OkStatus();
  }
  absl::Status Begin(const BlockKey& key, const BlockKey& parent, uint64_t size,
                     const PutOptions& options) override {
    KVTIER_FUZZ_CHECK(tenant_.has_value(), "a block begins after the tenant");
    KVTIER_FUZZ_CHECK(!block_.has_value(), "a block begins once the previous one is committed");
    if (absl::Status st = inflight_->Acquire("peer", kTenantNumber, size); !st.ok()) return st;
    held_ = server::InflightBytes::Hold(inflight_, "peer", kTenantNumber, size);
    auto h = Store().BeginPut(TenantKey(*tenant_, key), TenantKey(*tenant_, parent), size, options);
    if (!h.ok()) {
      held_.Reset();
      return h.status();
    }
    KVTIER_FUZZ_CHECK(h->size() == size, "the reservation has the header's size");
    block_ = std::move(*h);
    key_ = TenantKey(*tenant_, key);
    written_ = 0;
    return absl::OkStatus();
  }
  absl::Status Write(uint64_t offset, std::span<const uint8_t> data) override {
    KVTIER_FUZZ_CHECK(block_.has_value(), "bytes are written into a block");
    KVTIER_FUZZ_CHECK(offset == written_, absl::StrCat("offset ", offset, " after ", written_));
    KVTIER_FUZZ_CHECK(!data.empty(), "no empty writes");
    absl::Status st = block_->Write(offset, data);
    if (st.ok()) written_ += data.size();
    return st;
  }
  absl::StatusOr<PutResult> Commit() override {
    KVTIER_FUZZ_CHECK(block_.has_value(), "a commit of a block");
    KVTIER_FUZZ_CHECK(written_ == block_->size(),
                      absl::StrCat("commit after ", written_, " of ", block_->size(), " bytes"));
    absl::StatusOr<PutResult> put = block_->Commit();
    block_.reset();
    held_.Reset();
    if (put.ok()) {
      ++committed_;
      stored_keys_.push_back(key_);
    }
    return put;
  }

  bool open() const { return block_.has_value(); }
  uint32_t committed() const { return committed_; }
  const std::vector<BlockKey>& stored_keys() const { return stored_keys_; }

 private:
  server::InflightBytes* inflight_;
  std::optional<std::string> tenant_;
  std::optional<BlockStore::PutHandle> block_;
  server::InflightBytes::Hold held_;
  BlockKey key_;
  uint64_t written_ = 0;
  uint32_t committed_ = 0;
  std::vector<BlockKey> stored_keys_;
};

}  // namespace
}  // namespace kvtier::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier;
  using namespace kvtier::fuzz;
  // Limits as kvtierd's, scaled to the fuzzer's inputs: two blocks' bytes per connection, and
  // as much per tenant.
  server::InflightBytes inflight(uint64_t{256} << 10, uint64_t{128} << 10, uint64_t{128} << 10);
  {
    CheckingSink sink(&inflight);
    PutAssembly assembly(&sink);
    absl::Status st;
    bool parsed = true;
    for (std::string_view frame : Frames(data, size)) {
      v1::PutRequest msg;
      if (!msg.ParseFromArray(frame.data(), static_cast<int>(frame.size()))) {
        parsed = false;
        break;
      }
      st = assembly.Add(msg);
      if (!st.ok()) break;
    }
    KVTIER_FUZZ_CHECK(assembly.stored() + assembly.present() == sink.committed(),
                      "every commit is counted once");
    if (st.ok() && parsed) {
      KVTIER_FUZZ_CHECK(assembly.Finish().ok() == !sink.open(),
                        "a stream is complete exactly when no block is open");
    }
    for (const BlockKey& k : sink.stored_keys()) {
      absl::Status del = Store().Delete(k);
      KVTIER_FUZZ_CHECK(del.ok() || del.code() == absl::StatusCode::kNotFound,
                        std::string(del.message()));
    }
  }  // the sink's open block, if any, is aborted here
  KVTIER_FUZZ_CHECK(inflight.total() == 0, "in-flight bytes are all given back");
  const StoreStats stats = Store().Stats();
  KVTIER_FUZZ_CHECK(stats.tiers[static_cast<int>(Tier::kHost)].used_bytes == 0,
                    absl::StrCat(stats.tiers[static_cast<int>(Tier::kHost)].used_bytes,
                                 " host bytes still used"));
  absl::Status consistent = Store().CheckConsistency();
  KVTIER_FUZZ_CHECK(consistent.ok(), std::string(consistent.message()));
  return 0;
}
