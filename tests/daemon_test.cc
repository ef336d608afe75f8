// kvtierd end to end: a real daemon process on a free loopback port, spoken to over gRPC.
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xxhash.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <thread>

#include "client/cache_client.h"
#include "common/checksum.h"
#include "daemon_rpc.h"
#include "kvtier/v1/cache.grpc.pb.h"
#include "testing/daemon_process.h"
#include "testing/http_get.h"
#include "testing/test_util.h"

namespace kvtier {
namespace {

using ::kvtier::testing::Block;
using ::kvtier::testing::Chain;
using ::kvtier::testing::Connect;
using ::kvtier::testing::DaemonProcess;
using ::kvtier::testing::GetBlocks;
using ::kvtier::testing::kDaemon;
using ::kvtier::testing::KeysOf;
using ::kvtier::testing::OpenPut;
using ::kvtier::testing::PutBlocks;
using ::kvtier::testing::PutMessage;
using ::kvtier::testing::RawPut;
using ::kvtier::testing::Sample;
using ::kvtier::testing::StartDaemon;
using ::kvtier::testing::TempDir;
using ::kvtier::testing::TestKey;

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_ = StartDaemon(dir_.Sub("data"));
    ASSERT_FALSE(daemon_->address().empty());
    stub_ = Connect(*daemon_);
  }
  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<v1::CacheService::Stub> stub_;
};

TEST_F(DaemonTest, PutGetLookupRoundTrip) {
  const auto chain = Chain(0, 3, 3 << 20);  // 3 MiB blocks, sent in 1 MiB chunks
  v1::PutResponse put;
  ASSERT_TRUE(PutBlocks(*stub_, "tenant-a", chain, 1 << 20, false, &put).ok());
  EXPECT_EQ(put.stored(), 3u);
  grpc::Status st;
  std::vector<BlockKey> keys = KeysOf(chain);
  keys.push_back(TestKey(99));
  auto got = GetBlocks(*stub_, "tenant-a", keys, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(got.size(), 4u);
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(got[i].has_value()) << i;
    EXPECT_EQ(*got[i], chain[i].data) << i;
  }
  EXPECT_FALSE(got[3].has_value());

  grpc::ClientContext ctx;
  v1::LookupRequest lreq;
  lreq.set_tenant("tenant-a");
  for (const BlockKey& k : keys) lreq.add_keys(k.ByteString());
  v1::LookupResponse lres;
  ASSERT_TRUE(stub_->Lookup(&ctx, lreq, &lres).ok());
  EXPECT_EQ(lres.matched(), 3u);
  ASSERT_EQ(lres.tiers_size(), 3);
  EXPECT_EQ(lres.tiers(0), v1::TIER_HOST);

  // A repeated put is a no-op.
  ASSERT_TRUE(PutBlocks(*stub_, "tenant-a", chain, 1 << 20, false, &put).ok());
  EXPECT_EQ(put.stored(), 0u);
  EXPECT_EQ(put.present(), 3u);
}

// GetSession answers each request on the stream in turn, as Get would, and ends the stream
// with the status Get would have returned.
// LeaseSession: leases and releases answered in turn on one stream, each error in its answer
// and the stream going on.
TEST_F(DaemonTest, ALeaseSessionAnswersEachRequestInTurn) {
  const auto chain = Chain(800, 2, 64 << 10);
  ASSERT_TRUE(PutBlocks(*stub_, "tenant-a", chain).ok());
  grpc::ClientContext ctx;
  auto stream = stub_->LeaseSession(&ctx);
  auto ask = [&](const v1::LeaseSessionRequest& req) {
    v1::LeaseSessionResponse res;
    EXPECT_TRUE(stream->Write(req));
    EXPECT_TRUE(stream->Read(&res));
    return res;
  };
  v1::LeaseSessionRequest lease;
  lease.mutable_lease()->set_tenant("tenant-a");
  lease.mutable_lease()->add_keys(chain[0].key.ByteString());
  lease.mutable_lease()->add_keys(chain[1].key.ByteString());
  v1::LeaseSessionResponse got = ask(lease);
  ASSERT_EQ(got.code(), 0) << got.message();
  ASSERT_TRUE(got.has_lease());
  ASSERT_EQ(got.lease().blocks_size(), 2);
  EXPECT_EQ(got.lease().blocks(1).size(), chain[1].data.size());
  const uint64_t id = got.lease().lease_id();

  // A miss is NOT_FOUND in its answer; the stream goes on.
  v1::LeaseSessionRequest missing = lease;
  missing.mutable_lease()->set_keys(1, TestKey(899).ByteString());
  got = ask(missing);
  EXPECT_EQ(got.code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_FALSE(got.has_lease());

  // Another tenant cannot release the lease; its own tenant can, once.
  v1::LeaseSessionRequest release;
  release.mutable_release()->set_tenant("tenant-b");
  release.mutable_release()->set_lease_id(id);
  EXPECT_EQ(ask(release).code(), grpc::StatusCode::NOT_FOUND);
  release.mutable_release()->set_tenant("tenant-a");
  got = ask(release);
  EXPECT_EQ(got.code(), 0) << got.message();
  EXPECT_TRUE(got.release().lease_active());
  EXPECT_EQ(ask(release).code(), grpc::StatusCode::NOT_FOUND);

  // A request that is neither is INVALID_ARGUMENT; the stream still answers the next.
  EXPECT_EQ(ask(v1::LeaseSessionRequest()).code(), grpc::StatusCode::INVALID_ARGUMENT);
  got = ask(lease);
  EXPECT_EQ(got.code(), 0) << got.message();
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

TEST_F(DaemonTest, AGetSessionAnswersEachRequestInTurn) {
  const auto chain = Chain(500, 2, 300'000);
  ASSERT_TRUE(PutBlocks(*stub_, "tenant-a", chain).ok());
  grpc::ClientContext ctx;
  auto stream = stub_->GetSession(&ctx);
  // Reads one request's answers: one per key, each a header and the block's data (one message
  // a block at this size).
  auto answers = [&](size_t keys) {
    std::vector<std::optional<std::string>> out;
    v1::GetResponse msg;
    while (out.size() < keys && stream->Read(&msg)) {
      EXPECT_TRUE(msg.has_header());
      out.push_back(msg.found() ? std::optional<std::string>(msg.data()) : std::nullopt);
    }
    return out;
  };
  auto as_string = [](const std::vector<uint8_t>& v) { return std::string(v.begin(), v.end()); };
  v1::GetRequest req;
  req.set_tenant("tenant-a");
  req.add_keys(chain[1].key.ByteString());
  req.add_keys(TestKey(599).ByteString());
  ASSERT_TRUE(stream->Write(req));
  auto got = answers(2);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], as_string(chain[1].data));
  EXPECT_FALSE(got[1].has_value());
  req.clear_keys();
  req.add_keys(chain[0].key.ByteString());
  ASSERT_TRUE(stream->Write(req));
  got = answers(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], as_string(chain[0].data));
  // Another tenant's view of the same key, on the same stream: not found.
  req.set_tenant("tenant-b");
  ASSERT_TRUE(stream->Write(req));
  got = answers(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_FALSE(got[0].has_value());
  // A malformed key ends the stream with Get's error.
  req.clear_keys();
  req.add_keys("short");
  ASSERT_TRUE(stream->Write(req));
  EXPECT_TRUE(answers(1).empty());
  EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(DaemonTest, TenantsCannotReachEachOthersBlocks) {
  const auto chain = Chain(10, 2, 4096);
  ASSERT_TRUE(PutBlocks(*stub_, "alice", chain).ok());
  grpc::Status st;
  auto got = GetBlocks(*stub_, "mallory", KeysOf(chain), &st);
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(got.size(), 2u);
  EXPECT_FALSE(got[0].has_value());
  EXPECT_FALSE(got[1].has_value());
  {
    grpc::ClientContext ctx;
    v1::LookupRequest req;
    req.set_tenant("mallory");
    req.add_keys(chain[0].key.ByteString());
    v1::LookupResponse res;
    ASSERT_TRUE(stub_->Lookup(&ctx, req, &res).ok());
    EXPECT_EQ(res.matched(), 0u);
  }
  {
    grpc::ClientContext ctx;
    v1::DeleteRequest req;
    req.set_tenant("mallory");
    req.add_keys(chain[0].key.ByteString());
    v1::DeleteResponse res;
    ASSERT_TRUE(stub_->Delete(&ctx, req, &res).ok());
    EXPECT_EQ(res.deleted(), 0u);
  }
  uint64_t lease_id = 0;
  {
    grpc::ClientContext ctx;
    v1::LeaseRequest req;
    req.set_tenant("mallory");
    req.add_keys(chain[0].key.ByteString());
    v1::LeaseResponse res;
    EXPECT_EQ(stub_->Lease(&ctx, req, &res).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    v1::LeaseRequest req;
    req.set_tenant("alice");
    req.add_keys(chain[0].key.ByteString());
    v1::LeaseResponse res;
    ASSERT_TRUE(stub_->Lease(&ctx, req, &res).ok());
    lease_id = res.lease_id();
    ASSERT_EQ(res.blocks_size(), 1);
    EXPECT_EQ(res.blocks(0).size(), 4096u);
  }
  for (const char* tenant : {"mallory", "alice"}) {
    grpc::ClientContext ctx;
    v1::ReleaseRequest req;
    req.set_tenant(tenant);
    req.set_lease_id(lease_id);
    v1::ReleaseResponse res;
    grpc::Status rs = stub_->Release(&ctx, req, &res);
    if (std::string(tenant) == "mallory") {
      EXPECT_EQ(rs.error_code(), grpc::StatusCode::NOT_FOUND) << "another tenant's lease";
    } else {
      EXPECT_TRUE(rs.ok()) << rs.error_message();
    }
  }
  got = GetBlocks(*stub_, "alice", KeysOf(chain), &st);
  ASSERT_TRUE(st.ok());
  ASSERT_TRUE(got[0].has_value());
  EXPECT_EQ(*got[0], chain[0].data);
}

// A message that does not parse, or a tenant that is not UTF-8, ended a Put stream as if the
// client had closed it: OK, with the blocks after it never stored.
TEST_F(DaemonTest, AMalformedMessageInAPutStreamIsAnErrorNotTheEnd) {
  const auto chain = Chain(40, 2, 4096);
  std::string garbage(1000, '\0');
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<char>(i * 131 + 7);
  grpc::Status st =
      RawPut(daemon_->address(), {PutMessage("t", chain[0]), garbage, PutMessage("t", chain[1])});
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  st = RawPut(daemon_->address(), {PutMessage("t", chain[0]), PutMessage("t\xff\xfe", chain[1])});
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  auto got = GetBlocks(*stub_, "t", KeysOf(chain), &st);
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(got.size(), 2u);
  ASSERT_TRUE(got[0].has_value()) << "the block before the bad message was committed";
  EXPECT_EQ(*got[0], chain[0].data);
  EXPECT_FALSE(got[1].has_value());
  // A well-formed raw stream is still a Put.
  EXPECT_TRUE(RawPut(daemon_->address(), {PutMessage("t", chain[1])}).ok());
}

TEST_F(DaemonTest, BadInputOverTheWire) {
  auto expect_code = [](grpc::Status st, grpc::StatusCode code, const std::string& what) {
    EXPECT_EQ(st.error_code(), code) << what << ": " << st.error_message();
  };
  {  // malformed key
    grpc::ClientContext ctx;
    v1::GetRequest req;
    req.set_tenant("t");
    req.add_keys("short");
    auto reader = stub_->Get(&ctx, req);
    v1::GetResponse msg;
    while (reader->Read(&msg)) {
    }
    expect_code(reader->Finish(), grpc::StatusCode::INVALID_ARGUMENT, "15-byte key");
  }
  {  // no tenant
    grpc::ClientContext ctx;
    v1::LookupRequest req;
    req.add_keys(TestKey(1).ByteString());
    v1::LookupResponse res;
    expect_code(stub_->Lookup(&ctx, req, &res), grpc::StatusCode::INVALID_ARGUMENT, "no tenant");
  }
  {  // data before a header
    grpc::ClientContext ctx;
    v1::PutResponse res;
    auto w = stub_->Put(&ctx, &res);
    v1::PutRequest req;
    req.set_tenant("t");
    req.set_data("xyz");
    w->Write(req);
    w->WritesDone();
    expect_code(w->Finish(), grpc::StatusCode::INVALID_ARGUMENT, "data before header");
  }
  {  // a size that does not match the declared layout
    grpc::ClientContext ctx;
    v1::PutResponse res;
    auto w = stub_->Put(&ctx, &res);
    v1::PutRequest req;
    req.set_tenant("t");
    v1::KvLayout* l = req.mutable_layout();
    l->set_kind(v1::LAYOUT_KIND_GQA);
    l->set_dtype(v1::DTYPE_FP16);
    l->set_layers(2);
    l->set_kv_heads(2);
    l->set_head_dim(16);
    l->set_block_tokens(16);
    req.mutable_header()->set_key(TestKey(5).ByteString());
    req.mutable_header()->set_size(1000);
    w->Write(req);
    w->WritesDone();
    expect_code(w->Finish(), grpc::StatusCode::INVALID_ARGUMENT, "size vs layout");
  }
  // A truncated stream and a client that goes away mid-put leave nothing visible.
  const auto block = Chain(20, 1, 1 << 20);
  {
    OpenPut put(*stub_, block[0]);
    put.writer->WritesDone();
    expect_code(put.writer->Finish(), grpc::StatusCode::INVALID_ARGUMENT, "truncated put");
  }
  {
    OpenPut put(*stub_, block[0]);
    put.ctx.TryCancel();  // the client disconnects
    (void)put.writer->Finish();
  }
  grpc::Status st;
  auto got = GetBlocks(*stub_, "t", KeysOf(block), &st);
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(got.size(), 1u);
  EXPECT_FALSE(got[0].has_value()) << "no partial block is ever visible";
  // A wrong checksum is refused.
  {
    grpc::ClientContext ctx;
    v1::PutResponse res;
    auto w = stub_->Put(&ctx, &res);
    v1::PutRequest req;
    req.set_tenant("t");
    req.mutable_header()->set_key(TestKey(21).ByteString());
    req.mutable_header()->set_size(4);
    req.mutable_header()->set_checksum(1);
    req.set_data("abcd");
    w->Write(req);
    w->WritesDone();
    expect_code(w->Finish(), grpc::StatusCode::DATA_LOSS, "wrong checksum");
  }
}

// One Get is bounded (a million missing keys held a handler for 80 s): the daemon answers at most
// 65,536 keys a request, and the client asks for longer Gets in pieces.
TEST_F(DaemonTest, GetOfOneHundredThousandKeys) {
  const auto chain = Chain(100, 10, 4096);
  ASSERT_TRUE(PutBlocks(*stub_, "t", chain).ok());
  std::vector<BlockKey> keys = KeysOf(chain);
  for (uint64_t i = 0; keys.size() < 65'536; ++i) keys.push_back(TestKey(1'000'000 + i));
  grpc::Status st;
  auto got = GetBlocks(*stub_, "t", keys, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(got.size(), 65'536u);
  keys.push_back(TestKey(2'000'000));
  GetBlocks(*stub_, "t", keys, &st);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << "65,537 keys in one Get";

  while (keys.size() < 100'000) keys.push_back(TestKey(3'000'000 + keys.size()));
  keys.push_back(chain[9].key);  // found at the end of the last piece too
  auto client = CacheClient::Create(
      {.address = daemon_->address(), .tenant = "t", .deadline_ms = 30'000, .use_ucx = false});
  ASSERT_TRUE(client.ok());
  auto all = (*client)->Get(keys);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 100'001u);
  size_t found = 0;
  for (const auto& g : *all) found += g.has_value();
  EXPECT_EQ(found, 11u);
  EXPECT_EQ(*(*all)[9], chain[9].data);
  EXPECT_EQ(*all->back(), chain[9].data);
}

TEST_F(DaemonTest, MetricsFollowTheWork) {
  const std::string metrics = daemon_->AddressOf("kvtierd metrics");
  ASSERT_FALSE(metrics.empty()) << daemon_->output();
  const auto chain = Chain(300, 3, 8192);
  ASSERT_TRUE(PutBlocks(*stub_, "t", chain).ok());
  grpc::Status st;
  std::vector<BlockKey> keys = KeysOf(chain);
  keys.push_back(TestKey(999));
  (void)GetBlocks(*stub_, "t", keys, &st);
  ASSERT_TRUE(st.ok());
  // A Lookup of the chain and one block past it, and a Lease of two blocks.
  {
    v1::LookupRequest req;
    req.set_tenant("t");
    for (const BlockKey& k : keys) req.add_keys(k.ByteString());
    v1::LookupResponse res;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->Lookup(&ctx, req, &res).ok());
    ASSERT_EQ(res.matched(), 3u);
  }
  {
    v1::LeaseRequest req;
    req.set_tenant("t");
    req.add_keys(chain[0].key.ByteString());
    req.add_keys(chain[1].key.ByteString());
    v1::LeaseResponse res;
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->Lease(&ctx, req, &res).ok());
  }
  const std::string text = testing::HttpGet(metrics, "/metrics");
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(Sample(text, "kvtier_puts_total"), 3);
  EXPECT_EQ(Sample(text, "kvtier_tier_blocks{tier=\"host\"}"), 3);
  // Hits and misses of every kind of read: the Get's miss too (it was answered by the service
  // before the store saw it, and went uncounted).
  EXPECT_EQ(Sample(text, "kvtier_block_hits_total{op=\"get\",tier=\"host\"}"), 3);
  EXPECT_EQ(Sample(text, "kvtier_block_misses_total{op=\"get\"}"), 1);
  EXPECT_EQ(Sample(text, "kvtier_block_hits_total{op=\"lookup\",tier=\"host\"}"), 3);
  EXPECT_EQ(Sample(text, "kvtier_block_misses_total{op=\"lookup\"}"), 1);
  EXPECT_EQ(Sample(text, "kvtier_block_hits_total{op=\"lease\",tier=\"host\"}"), 2);
  EXPECT_EQ(Sample(text, "kvtier_block_hits_total{op=\"get\",tier=\"nvme\"}"), 0);
  EXPECT_EQ(Sample(text, "kvtier_served_bytes_total{path=\"grpc\",tier=\"host\"}"), 3 * 8192);
  EXPECT_EQ(Sample(text, "kvtier_tier_capacity_bytes{tier=\"host\"}"), 64 << 20);
  EXPECT_EQ(Sample(text, "kvtier_tier_capacity_bytes{tier=\"hbm\"}"), 0);
  EXPECT_EQ(Sample(text, "kvtier_rpc_requests_total{code=\"OK\",rpc=\"Put\"}"), 1);
  EXPECT_EQ(Sample(text, "kvtier_rpc_duration_seconds_count{rpc=\"Get\"}"), 1);
  // Series that exist before anything happens to them, so that rates and ratios have data.
  EXPECT_EQ(Sample(text, "kvtier_rpc_requests_total{code=\"DATA_LOSS\",rpc=\"Get\"}"), 0);
  EXPECT_EQ(Sample(text, "kvtier_evictions_total{tier=\"host\"}"), 0);
  EXPECT_EQ(Sample(text, "kvtier_tier_moves_total{from=\"host\",to=\"nvme\"}"), 0);
  EXPECT_EQ(Sample(text, "kvtier_tier_moved_bytes_total{from=\"nvme\",to=\"host\"}"), 0);
  EXPECT_GT(Sample(text, "kvtier_leased_bytes_limit"), 0);
  EXPECT_GT(Sample(text, "kvtier_inflight_bytes_limit"), 0);
  // What the daemon is and where clients reach it; the process itself.
  EXPECT_EQ(Sample(text, "kvtier_daemon_info{address=\"" + daemon_->address() + "\"}"), 1);
  EXPECT_NE(text.find("kvtier_build_info{binary=\"kvtierd\""), std::string::npos);
  EXPECT_GT(Sample(text, "process_resident_memory_bytes"), 1 << 20);
  EXPECT_GT(Sample(text, "process_open_fds"), 3);
  EXPECT_GT(Sample(text, "process_threads"), 1);
  EXPECT_GT(Sample(text, "process_start_time_seconds"), 1.7e9);
  EXPECT_GE(Sample(text, "process_cpu_seconds_total"), 0);
  for (const char* name :
       {"kvtier_nvme_admission_rejections_total", "kvtier_checksum_failures_total",
        "kvtier_leases_active", "kvtier_index_bytes", "kvtier_sync_evictions_total",
        "kvtier_nvme_disk_full_rejections_total", "kvtier_nvme_lost_blocks_total",
        "kvtier_nvme_recovered_with_loss", "process_max_fds", "process_virtual_memory_bytes"}) {
    EXPECT_GE(Sample(text, name), 0) << name << " missing";
  }
}

// The attack on lease ids that were a tenant mask over a counter: from its own ids, a tenant
// steps to a neighbour's and ends that lease. Handles are random and bound to their tenant.
TEST_F(DaemonTest, ATenantCannotReachAnotherTenantsLeaseFromItsOwnHandles) {
  const auto alice_chain = Chain(11, 1, 4096);
  const auto mallory_chain = Chain(12, 1, 4096);
  ASSERT_TRUE(PutBlocks(*stub_, "alice", alice_chain).ok());
  ASSERT_TRUE(PutBlocks(*stub_, "mallory", mallory_chain).ok());
  auto lease = [&](const std::string& tenant, const BlockKey& key) {
    grpc::ClientContext ctx;
    v1::LeaseRequest req;
    req.set_tenant(tenant);
    req.add_keys(key.ByteString());
    v1::LeaseResponse res;
    EXPECT_TRUE(stub_->Lease(&ctx, req, &res).ok());
    return res.lease_id();
  };
  // Each Release claims far more bytes read than any lease holds.
  auto release = [&](const std::string& tenant, uint64_t id) {
    grpc::ClientContext ctx;
    v1::ReleaseRequest req;
    req.set_tenant(tenant);
    req.set_lease_id(id);
    req.set_bytes_read(uint64_t{1} << 60);
    v1::ReleaseResponse res;
    return stub_->Release(&ctx, req, &res).error_code();
  };
  const std::string metrics = daemon_->AddressOf("kvtierd metrics");
  auto bytes_read = [&] {
    return Sample(testing::HttpGet(metrics, "/metrics"),
                  "kvtier_served_bytes_total{path=\"ucx\",tier=\"host\"}");
  };
  const double read_before = bytes_read();
  const uint64_t m1 = lease("mallory", mallory_chain[0].key);
  const uint64_t a = lease("alice", alice_chain[0].key);
  const uint64_t m2 = lease("mallory", mallory_chain[0].key);
  ASSERT_NE(m1, m2);
  // The outside tester's guess: unmask its own id with the public mask, step to the next
  // (alice's, taken in between), mask it again.
  const uint64_t mask = XXH3_64bits_withSeed("mallory", 7, kXxh3Seed) | 1;
  for (uint64_t guess : {((m1 ^ mask) + 1) ^ mask, ((m2 ^ mask) - 1) ^ mask, m1 + 1, m1 - 1, m2 + 1,
                         m2 - 1, m1 ^ m2, m1 ^ 1, m2 ^ 1}) {
    if (guess == a || guess == m1 || guess == m2) continue;
    EXPECT_EQ(release("mallory", guess), grpc::StatusCode::NOT_FOUND) << guess;
  }
  EXPECT_EQ(release("mallory", a), grpc::StatusCode::NOT_FOUND) << "alice's handle, as mallory";
  EXPECT_EQ(release("alice", a), grpc::StatusCode::OK) << "alice's lease survived";
  EXPECT_EQ(release("mallory", m1), grpc::StatusCode::OK);
  EXPECT_EQ(release("mallory", m2), grpc::StatusCode::OK);
  EXPECT_EQ(bytes_read() - read_before, 3 * 4096)
      << "bytes read count only under a tenant's own lease, at most the lease's bytes";
}

// gRPC's SO_REUSEPORT let a second daemon listen on a port in use and take part of its
// connections (and so split the cache). A port in use is now an error.
TEST_F(DaemonTest, APortInUseIsAnErrorNotASharedPort) {
  TempDir dir;
  DaemonProcess second(
      kDaemon, {"--listen", daemon_->address(), "--data", dir.Sub("data"), "--host-mib", "16",
                "--metrics-listen", "", "--ucx-listen", "off"});
  EXPECT_TRUE(second.address().empty()) << "a second kvtierd listened on " << daemon_->address();
  const int status = second.Stop();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << "status " << status;
}

// Connections that send half an HTTP request held both of the exposer's threads, and every
// scrape waited until they closed.
TEST_F(DaemonTest, HalfOpenMetricsConnectionsDoNotStarveScrapes) {
  const std::string metrics = daemon_->AddressOf("kvtierd metrics");
  ASSERT_FALSE(metrics.empty());
  const size_t colon = metrics.rfind(':');
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(std::stoi(metrics.substr(colon + 1))));
  ASSERT_EQ(inet_pton(AF_INET, metrics.substr(0, colon).c_str(), &addr.sin_addr), 1);
  std::vector<int> idle;
  for (int i = 0; i < 4; ++i) {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    const std::string half = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
    ASSERT_EQ(write(fd, half.data(), half.size()), static_cast<ssize_t>(half.size()));
    idle.push_back(fd);
  }
  const auto start = std::chrono::steady_clock::now();
  const std::string text = testing::HttpGet(metrics, "/metrics");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (int fd : idle) close(fd);
  EXPECT_NE(text.find("kvtier_puts_total"), std::string::npos) << "the scrape got nothing";
  EXPECT_LT(seconds, 2.0);
}

// SIGTERM while a Put is in flight and a Get session and a lease session sit idle: the Put
// finishes, the sessions are ended, and the daemon exits at once. It waited out a 10 s deadline
// for the idle session.
TEST(DaemonStop, AnIdleGetSessionDoesNotHoldUpAStop) {
  TempDir dir;
  auto d = StartDaemon(dir.Sub("data"));
  ASSERT_FALSE(d->address().empty());
  auto stub = Connect(*d);
  const auto chain = Chain(700, 2, 64 << 10);
  ASSERT_TRUE(PutBlocks(*stub, "t", {chain[0]}).ok());
  grpc::ClientContext session_ctx;
  auto session = stub->GetSession(&session_ctx);
  v1::GetRequest get;
  get.set_tenant("t");
  get.add_keys(chain[0].key.ByteString());
  ASSERT_TRUE(session->Write(get));
  v1::GetResponse answer;
  ASSERT_TRUE(session->Read(&answer));
  ASSERT_TRUE(answer.found());
  grpc::ClientContext lease_ctx;  // and an idle LeaseSession
  auto leases = stub->LeaseSession(&lease_ctx);
  v1::LeaseSessionRequest lease;
  lease.mutable_lease()->set_tenant("t");
  lease.mutable_lease()->add_keys(chain[0].key.ByteString());
  ASSERT_TRUE(leases->Write(lease));
  v1::LeaseSessionResponse leased;
  ASSERT_TRUE(leases->Read(&leased));
  ASSERT_EQ(leased.code(), 0) << leased.message();

  grpc::ClientContext put_ctx;
  v1::PutResponse put_response;
  auto put = stub->Put(&put_ctx, &put_response);
  v1::PutRequest first;
  first.set_tenant("t");
  first.mutable_header()->set_key(chain[1].key.ByteString());
  first.mutable_header()->set_size(chain[1].data.size());
  first.set_data(chain[1].data.data(), 1024);
  ASSERT_TRUE(put->Write(first));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the Put is in flight

  const auto start = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(d->pid(), SIGTERM), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  v1::PutRequest rest;
  rest.set_data(chain[1].data.data() + 1024, chain[1].data.size() - 1024);
  EXPECT_TRUE(put->Write(rest));
  put->WritesDone();
  EXPECT_TRUE(put->Finish().ok()) << "a Put in flight at the signal finishes";
  EXPECT_EQ(put_response.stored(), 1u);
  const int status = d->Stop();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  EXPECT_LT(seconds, 5.0);
  session_ctx.TryCancel();
  lease_ctx.TryCancel();
}

// A host tier larger than memory (with UCX on, it lives in /dev/shm) is refused at start, before
// anything is allocated. 10 TiB is more than any test machine has.
TEST(DaemonLimits, AHostTierLargerThanMemoryIsRefusedAtStart) {
  TempDir dir;
  for (const char* ucx : {"auto", "off"}) {
    DaemonProcess d(kDaemon, {"--listen", "127.0.0.1:0", "--no-nvme", "--host-mib", "10485760",
                              "--metrics-listen", "", "--ucx-listen", ucx});
    EXPECT_TRUE(d.address().empty()) << "ucx-listen " << ucx;
    const int status = d.Stop();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2) << "status " << status;
  }
}

// UCX's posix shared-memory segments, by name.
std::set<std::string> UcxSegments() {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec)) {
    if (e.path().filename().string().rfind("ucx_shm_posix_", 0) == 0) out.insert(e.path());
  }
  return out;
}

// Where UCX names its segments in /dev/shm (UCX_POSIX_USE_PROC_LINK=n), a daemon killed with
// SIGKILL left them there, its arena with them, until the machine restarted. The next daemon
// removes the segments that no process uses.
TEST(DaemonStart, SegmentsADeadDaemonLeftInDevShmAreRemoved) {
  const std::set<std::string> before = UcxSegments();
  setenv("UCX_POSIX_USE_PROC_LINK", "n", 1);
  TempDir dir;
  auto killed = StartDaemon(dir.Sub("data"), {"--no-nvme", "--metrics-listen", ""});
  std::set<std::string> left;
  for (const std::string& s : UcxSegments()) {
    if (!before.contains(s)) left.insert(s);
  }
  ASSERT_FALSE(left.empty()) << "UCX named no segment in /dev/shm";
  ASSERT_EQ(kill(killed->pid(), SIGKILL), 0);
  killed->Stop();
  for (const std::string& s : left) EXPECT_TRUE(std::filesystem::exists(s)) << s;
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));  // older than a new segment

  auto next = StartDaemon(dir.Sub("data"), {"--no-nvme", "--metrics-listen", ""});
  unsetenv("UCX_POSIX_USE_PROC_LINK");
  ASSERT_FALSE(next->address().empty());
  for (const std::string& s : left) EXPECT_FALSE(std::filesystem::exists(s)) << s << " stayed";
  std::set<std::string> in_use;
  for (const std::string& s : UcxSegments()) {
    if (!before.contains(s)) in_use.insert(s);
  }
  EXPECT_FALSE(in_use.empty()) << "the new daemon's own segments";
  next->Stop();
  for (const std::string& s : in_use) std::filesystem::remove(s);  // what this test made
}

// At start the daemon logs what it runs with; a client's errors are logged (rate-limited) with
// the RPC, tenant and peer. They were never logged, even at debug.
TEST(DaemonStart, LogsItsConfigurationAndClientErrors) {
  TempDir dir;
  const std::string log = dir.Sub("stderr.log");
  DaemonProcess d("/bin/sh", {"-c", "exec " + kDaemon +
                                        " --listen 127.0.0.1:0 --no-nvme --host-mib 32"
                                        " --metrics-listen '' --ucx-listen off 2> " + log});
  ASSERT_FALSE(d.address().empty());
  auto stub = Connect(d);
  for (int i = 0; i < 100; ++i) {
    grpc::ClientContext ctx;
    v1::LookupRequest req;  // no tenant
    req.add_keys(TestKey(1).ByteString());
    v1::LookupResponse res;
    ASSERT_EQ(stub->Lookup(&ctx, req, &res).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  d.Stop();
  std::ifstream in(log);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  EXPECT_NE(text.find("with host tier 32 MiB"), std::string::npos) << text;
  EXPECT_NE(text.find("auth off; TLS off"), std::string::npos) << text;
  EXPECT_NE(text.find("idle streams cancelled after 30 s"), std::string::npos) << text;
  size_t lines = 0;
  for (size_t at = 0; (at = text.find("client error: Lookup tenant '' peer ipv", at)) !=
                      std::string::npos;
       ++at) {
    ++lines;
  }
  EXPECT_GE(lines, 1u) << text;
  EXPECT_LE(lines, 30u) << "at most 10 lines a second";
}

std::unique_ptr<v1::CacheService::Stub> OwnConnection(const DaemonProcess& d) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own
  return v1::CacheService::NewStub(
      grpc::CreateCustomChannel(d.address(), grpc::InsecureChannelCredentials(), args));
}

TEST(DaemonLimits, OversizedMessagesAndBlocksAreRefused) {
  TempDir dir;
  auto d = StartDaemon(dir.Sub("data"), {"--max-message-mib", "1", "--max-block-mib", "2"});
  ASSERT_FALSE(d->address().empty());
  auto stub = Connect(*d);
  const auto big = Chain(500, 1, 1536 * 1024);  // one 1.5 MiB message: over the 1 MiB limit
  EXPECT_EQ(PutBlocks(*stub, "t", big, 2 << 20).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(PutBlocks(*stub, "t", big, 512 * 1024).ok()) << "the same block in 512 KiB chunks";
  grpc::Status st;
  auto got = GetBlocks(*stub, "t", KeysOf(big), &st);  // comes back in chunks under the limit
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_TRUE(got[0].has_value());
  EXPECT_EQ(*got[0], big[0].data);
  const auto huge = Chain(510, 1, 3 << 20);  // over --max-block-mib
  EXPECT_EQ(PutBlocks(*stub, "t", huge, 512 * 1024).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(DaemonLimits, InflightBytesAreCappedPerConnectionAndInTotal) {
  TempDir dir;
  auto d = StartDaemon(dir.Sub("data"),
                       {"--max-inflight-mib-per-connection", "3", "--max-inflight-mib", "5"});
  ASSERT_FALSE(d->address().empty());
  const std::string metrics = d->AddressOf("kvtierd metrics");
  auto inflight = [&] {
    return Sample(testing::HttpGet(metrics, "/metrics"), "kvtier_inflight_bytes");
  };
  auto one = OwnConnection(*d);
  const auto a = Chain(400, 1, 2 << 20)[0];
  OpenPut put_a(*one, a);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (inflight() != (2 << 20) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(inflight(), 2 << 20) << "the first put holds its 2 MiB";
  // Same connection: 2 + 2 MiB passes its 3 MiB.
  const auto b = Chain(410, 1, 2 << 20);
  EXPECT_EQ(PutBlocks(*one, "t", b).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  // Another connection: 2 + 2 MiB fits the 5 MiB total...
  auto two = OwnConnection(*d);
  EXPECT_TRUE(PutBlocks(*two, "t", b).ok());
  // ...and 2 + 4 MiB does not.
  auto three = OwnConnection(*d);
  EXPECT_EQ(PutBlocks(*three, "t", Chain(420, 1, 4 << 20)).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(put_a.Finish(a).ok());
  EXPECT_EQ(inflight(), 0);
}

// Nine Put streams of one tenant that each declared 8 MiB and sent one byte held a 64 MiB host
// tier, and every other tenant's puts failed. Each tenant may now hold a quarter of the host tier
// in flight (and as much under leases), and a stream that stops sending is cancelled.
TEST(DaemonLimits, OneTenantCannotLockOutAnother) {
  TempDir dir;
  auto d = StartDaemon(dir.Sub("data"), {"--stream-idle-timeout-s", "1"});
  ASSERT_FALSE(d->address().empty());
  auto usage = [&](const std::string& tenant) {
    v1::StatsRequest req;
    req.set_tenant(tenant);
    v1::StatsResponse res;
    grpc::ClientContext ctx;
    EXPECT_TRUE(Connect(*d)->Stats(&ctx, req, &res).ok());
    return res.tenant_usage();
  };
  std::vector<std::unique_ptr<v1::CacheService::Stub>> connections;
  std::vector<std::unique_ptr<OpenPut>> stalled;
  const auto greedy = Chain(800, 9, 8 << 20);
  for (const Block& b : greedy) {
    connections.push_back(OwnConnection(*d));
    stalled.push_back(std::make_unique<OpenPut>(*connections.back(), b, "greedy", 1));
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (usage("greedy").inflight_bytes() != (16 << 20) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(usage("greedy").inflight_bytes(), 16u << 20) << "two of the nine hold their 8 MiB";
  auto other = Connect(*d);
  EXPECT_TRUE(PutBlocks(*other, "other", Chain(900, 1, 8 << 20)).ok());
  EXPECT_TRUE(PutBlocks(*other, "other", Chain(901, 1, 8 << 20), 1 << 20, /*durable=*/true).ok());

  // The stalled streams are cancelled about a second after their last message.
  while (usage("greedy").inflight_bytes() != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(usage("greedy").inflight_bytes(), 0u);
  int refused = 0;
  for (auto& p : stalled) {
    p->writer->WritesDone();
    const grpc::Status st = p->writer->Finish();
    EXPECT_FALSE(st.ok());
    refused += st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ? 1 : 0;
  }
  EXPECT_EQ(refused, 7);
  EXPECT_EQ(Sample(testing::HttpGet(d->AddressOf("kvtierd metrics"), "/metrics"),
                   "kvtier_stream_idle_cancels_total"),
            2);

  // Leases: 3 blocks of 7 MiB are more than greedy's 16 MiB share; two are not.
  auto stub = Connect(*d);
  const auto leased = Chain(820, 3, 7 << 20);
  ASSERT_TRUE(PutBlocks(*stub, "greedy", leased).ok());
  auto lease = [&](const std::string& tenant, const std::vector<Block>& blocks) {
    v1::LeaseRequest req;
    req.set_tenant(tenant);
    for (const Block& b : blocks) req.add_keys(b.key.ByteString());
    v1::LeaseResponse res;
    grpc::ClientContext ctx;
    return stub->Lease(&ctx, req, &res).error_code();
  };
  EXPECT_EQ(lease("greedy", leased), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(lease("greedy", {leased[0], leased[1]}), grpc::StatusCode::OK);
  EXPECT_EQ(lease("greedy", {leased[2]}), grpc::StatusCode::RESOURCE_EXHAUSTED);
  // A block already leased pins nothing more, however often it is leased again.
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(lease("greedy", {leased[i % 2]}), grpc::StatusCode::OK) << i;
  }
  EXPECT_EQ(usage("greedy").leased_bytes(), 14u << 20);
  EXPECT_EQ(lease("other", Chain(900, 1, 8 << 20)), grpc::StatusCode::OK);
  const v1::TenantUsage u = usage("greedy");
  EXPECT_EQ(u.resident_blocks(), 3u);
  EXPECT_EQ(u.resident_bytes(), 21u << 20);
  EXPECT_EQ(u.leased_limit_bytes(), 16u << 20);
}

// A tenant's blocks fill no more than its share of a memory tier: past it, its own oldest go,
// and another tenant's blocks stay.
TEST(DaemonLimits, ATenantsBlocksStayWithinItsShareOfTheHostTier) {
  TempDir dir;
  auto d = StartDaemon(dir.Sub("data"), {"--max-resident-mib-per-tenant", "16"});
  ASSERT_FALSE(d->address().empty());
  auto stub = Connect(*d);
  const auto theirs = Chain(700, 2, 4 << 20);
  ASSERT_TRUE(PutBlocks(*stub, "other", theirs).ok());
  // Ten prompts of one block each, so that recency alone picks the victims (within a chain the
  // store evicts tails first).
  std::vector<Block> mine;
  for (uint64_t i = 0; i < 10; ++i) mine.push_back(Chain(710 + i, 1, 4 << 20)[0]);
  for (const Block& b : mine) ASSERT_TRUE(PutBlocks(*stub, "greedy", {b}).ok());
  const std::string metrics = testing::HttpGet(d->AddressOf("kvtierd metrics"), "/metrics");
  EXPECT_EQ(Sample(metrics, "kvtier_tenant_quota_evictions_total"), 6);
  grpc::Status st;
  auto got = GetBlocks(*stub, "other", KeysOf(theirs), &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  for (size_t i = 0; i < theirs.size(); ++i) {
    ASSERT_TRUE(got[i].has_value()) << i;
    EXPECT_EQ(*got[i], theirs[i].data);
  }
  const std::vector<Block> newest(mine.end() - 4, mine.end());
  got = GetBlocks(*stub, "greedy", KeysOf(newest), &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  for (size_t i = 0; i < newest.size(); ++i) EXPECT_TRUE(got[i].has_value()) << i;
}

TEST_F(DaemonTest, RestartKeepsDurableBlocks) {
  const auto chain = Chain(200, 4, 64 * 1024);
  ASSERT_TRUE(PutBlocks(*stub_, "t", chain, 1 << 20, /*durable=*/true).ok());
  const int status = daemon_->Stop();
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "SIGTERM exit status " << status;
  daemon_ = StartDaemon(dir_.Sub("data"));
  ASSERT_FALSE(daemon_->address().empty());
  stub_ = Connect(*daemon_);
  grpc::Status st;
  auto got = GetBlocks(*stub_, "t", KeysOf(chain), &st);
  ASSERT_TRUE(st.ok());
  ASSERT_EQ(got.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(got[i].has_value()) << i;
    EXPECT_EQ(*got[i], chain[i].data);
  }
}

// --check-config reads what a start reads before it opens anything (the configuration, the token
// file, the TLS files), answers in one line and exits; it opens no store and no port, and leaves
// the machine's limits (memory, /dev/shm) to the start.
TEST(DaemonCheckConfig, ChecksWhatAStartChecksAndTouchesNothing) {
  TempDir dir;
  const int held = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(held, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(held, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(held, 1), 0);
  ASSERT_EQ(getsockname(held, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string taken = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  std::ofstream(dir.Sub("tokens.yaml"))
      << "alice: alice-token-0123456789\n"
      << "router: {token: router-token-0123456789, role: cluster}\n";
  std::ofstream(dir.Sub("not.pem")) << "not a certificate\n";
  const std::string example = std::string(KVTIER_SOURCE_DIR) + "/docs/kvtierd.example.yaml";
  const std::vector<std::string> good = {"--check-config",
                                         "--config",
                                         example,
                                         "--listen",
                                         taken,
                                         "--metrics-listen",
                                         taken,
                                         "--data",
                                         dir.Sub("nvme"),
                                         "--host-mib",
                                         "10485760",
                                         "--auth-tokens",
                                         dir.Sub("tokens.yaml")};
  const testing::ProcessRun ok = testing::RunToEnd(kDaemon, good);
  EXPECT_EQ(ok.status, 0) << ok.output;
  EXPECT_EQ(ok.output, "kvtierd: configuration OK\n");
  EXPECT_FALSE(std::filesystem::exists(dir.Sub("nvme"))) << "the store was opened";

  const std::pair<std::vector<std::string>, std::string> bad[] = {
      {{"--host-mib", "0"}, "--host-mib: must be > 0"},
      {{"--ucx-mode", "shared"}, "--ucx-mode"},
      {{"--auth-tokens", dir.Sub("missing.yaml")}, "auth.tokens_file"},
      {{"--tls-cert", dir.Sub("not.pem"), "--tls-key", dir.Sub("not.pem")}, "tls.cert"},
      {{"--config", dir.Sub("tokens.yaml")}, "alice: unknown setting"},
  };
  for (const auto& [args, names] : bad) {
    std::vector<std::string> argv = good;
    argv.insert(argv.end(), args.begin(), args.end());
    const testing::ProcessRun run = testing::RunToEnd(kDaemon, argv);
    EXPECT_TRUE(WIFEXITED(run.status) && WEXITSTATUS(run.status) == 2)
        << names << ": status " << run.status;
    EXPECT_NE(run.output.find(names), std::string::npos) << run.output;
    EXPECT_EQ(run.output.find("configuration OK"), std::string::npos) << run.output;
  }
  close(held);
}

}  // namespace
}  // namespace kvtier
