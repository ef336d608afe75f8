// The C++ client library against a real kvtierd.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "client/cache_client.h"
#include "client/internal.h"
#include "kvtier/v1/cache.grpc.pb.h"
#include "kvtier/v1/cache.pb.h"
#include "testing/daemon_process.h"
#include "testing/test_util.h"

namespace kvtier {
namespace {

using ::kvtier::testing::DaemonProcess;
using ::kvtier::testing::TempDir;

class ClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_ = std::make_unique<DaemonProcess>(
        std::string(KVTIER_BINARY_DIR) + "/kvtierd",
        std::vector<std::string>{"--listen", "127.0.0.1:0", "--data", dir_.Sub("data"),
                                 "--host-mib", "64", "--nvme-gib", "1", "--log-level", "warn",
                                 "--metrics-listen", "127.0.0.1:0"});
    ASSERT_FALSE(daemon_->address().empty());
    auto c = CacheClient::Create({.address = daemon_->address(), .tenant = "frontend-1"});
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
  }
  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<CacheClient> client_;
};

// Gets take one of three paths: the client's GetSession stream; or, as calls of their own,
// alone in the process on the calling thread, among others on gRPC's callback threads. These
// tests run on each; among others, one more Get is counted in flight for the test's duration.
enum class GetPath { kSession, kAlone, kAmongOthers };
const char* PathName(GetPath p) {
  return p == GetPath::kSession ? "Session" : p == GetPath::kAlone ? "Alone" : "AmongOthers";
}
void PrintTo(GetPath p, std::ostream* os) { *os << PathName(p); }

class ClientGetPathTest : public ClientTest, public ::testing::WithParamInterface<GetPath> {
 protected:
  void SetUp() override {
    ClientTest::SetUp();
    // Over gRPC, not the UCX data plane.
    auto c = CacheClient::Create({.address = daemon_->address(),
                                  .tenant = "frontend-1",
                                  .use_ucx = false,
                                  .get_session = GetParam() == GetPath::kSession});
    ASSERT_TRUE(c.ok()) << c.status();
    client_ = std::move(*c);
    if (GetParam() == GetPath::kAmongOthers) client_internal::GetsInFlight().fetch_add(1);
    baseline_ = client_internal::GetsInFlight().load();
  }
  void TearDown() override {
    EXPECT_EQ(client_internal::GetsInFlight().load(), baseline_) << "a Get left itself counted";
    // The path the test meant is the one its Gets took.
    const uint64_t on_session = client_->transfer_stats().session_gets;
    if (GetParam() == GetPath::kSession) {
      EXPECT_GT(on_session, 0u);
    } else {
      EXPECT_EQ(on_session, 0u);
    }
    if (GetParam() == GetPath::kAmongOthers) client_internal::GetsInFlight().fetch_sub(1);
  }
  int baseline_ = 0;
};

INSTANTIATE_TEST_SUITE_P(Paths, ClientGetPathTest,
                         ::testing::Values(GetPath::kSession, GetPath::kAlone,
                                           GetPath::kAmongOthers),
                         [](const auto& info) { return PathName(info.param); });

// The session is renewed before its deadline, and a Get too many for it (a buffer too small)
// closes it without harm: the next Gets go on a new one.
TEST_F(ClientTest, GetSessionsAreRenewedAndSurviveAFailedGet) {
  auto c = CacheClient::Create({.address = daemon_->address(),
                                .tenant = "frontend-1",
                                .deadline_ms = 400,
                                .use_ucx = false});
  ASSERT_TRUE(c.ok()) << c.status();
  const std::vector<uint8_t> a = testing::TestBlock(4, 100'000);
  const BlockKey ka{11, 1};
  const BlockToPut block{ka, BlockKey{}, a};
  ASSERT_TRUE((*c)->Put(std::span(&block, 1)).ok());
  std::vector<uint8_t> buf(a.size()), tiny(10);
  const std::span<uint8_t> dst[] = {buf}, small[] = {tiny};
  // Across three times the deadline: a session kept past its deadline would fail a Get here,
  // which would then be made as a call of its own and not counted as a session's.
  const int n = 12;
  for (int i = 0; i < n; ++i) {
    auto got = (*c)->GetInto(std::span(&ka, 1), dst);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(buf, a);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ((*c)->transfer_stats().session_gets, uint64_t{n});
  EXPECT_EQ((*c)->GetInto(std::span(&ka, 1), small).status().code(), absl::StatusCode::kOutOfRange);
  auto got = (*c)->GetInto(std::span(&ka, 1), dst);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*c)->transfer_stats().session_gets, uint64_t{n + 1});
}

// A Get on the session may wait until the session's deadline: a client whose calls must end
// sooner (total_deadline_ms) makes each Get as a call of its own, bounded by the call's deadline.
TEST_F(ClientTest, GetsSkipTheSessionWhenTheCallMustEndBeforeIt) {
  const std::vector<uint8_t> a = testing::TestBlock(5, 50'000);
  const BlockKey ka{12, 1};
  const BlockToPut block{ka, BlockKey{}, a};
  ASSERT_TRUE(client_->Put(std::span(&block, 1)).ok());
  for (int64_t total : {int64_t{0}, int64_t{60'000}, int64_t{5'000}}) {
    auto c = CacheClient::Create({.address = daemon_->address(),
                                  .tenant = "frontend-1",
                                  .deadline_ms = 30'000,
                                  .total_deadline_ms = total,
                                  .use_ucx = false});
    ASSERT_TRUE(c.ok()) << c.status();
    for (int i = 0; i < 3; ++i) {
      auto got = (*c)->Get(std::span(&ka, 1));
      ASSERT_TRUE(got.ok()) << got.status();
      EXPECT_EQ((*got)[0], a);
    }
    EXPECT_EQ((*c)->transfer_stats().session_gets, total == 5'000 ? 0u : 3u) << total;
  }
}

TEST_F(ClientTest, KeysFromTokensPutLookupGetDelete) {
  const KvLayout layout = KvLayout::SmallGqa();
  auto hasher = ChainHasher::Create(
      {.tenant_salt = "s", .model_id = "m", .layout_fingerprint = layout.Fingerprint()},
      layout.block_tokens);
  ASSERT_TRUE(hasher.ok());
  std::vector<uint32_t> prompt(16 * 5 + 7);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<uint32_t>(i * 7919);
  const std::vector<BlockKey> keys = hasher->Keys(prompt);
  ASSERT_EQ(keys.size(), 5u);
  std::vector<std::vector<uint8_t>> payloads;
  std::vector<BlockToPut> blocks;
  for (size_t i = 0; i < keys.size(); ++i) {
    payloads.push_back(testing::TestBlock(i, layout.BytesPerBlock()));
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    blocks.push_back({keys[i], i == 0 ? BlockKey{} : keys[i - 1], payloads[i]});
  }
  // Only the first three are "prefilled" at first.
  auto put = client_->Put(std::span(blocks).first(3), false, &layout);
  ASSERT_TRUE(put.ok()) << put.status();
  EXPECT_EQ(put->stored, 3u);
  auto found = client_->Lookup(keys);
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(found->matched, 3u);
  EXPECT_EQ(found->tiers, (std::vector<Tier>{Tier::kHost, Tier::kHost, Tier::kHost}));
  put = client_->Put(blocks, false, &layout);
  ASSERT_TRUE(put.ok());
  EXPECT_EQ(put->stored, 2u);
  EXPECT_EQ(put->present, 3u);
  auto got = client_->Get(keys);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    ASSERT_TRUE((*got)[i].has_value());
    EXPECT_EQ(*(*got)[i], payloads[i]);
  }
  auto deleted = client_->Delete(std::span(keys).subspan(4));
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(*deleted, 1u);
  found = client_->Lookup(keys);
  ASSERT_TRUE(found.ok());
  EXPECT_EQ(found->matched, 4u);
  auto stats = client_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_GE(stats->puts, 5u);
  // A wrong size for the declared layout is refused by the daemon.
  std::vector<uint8_t> small(100);
  BlockToPut bad{BlockKey{1, 2}, BlockKey{}, small};
  EXPECT_EQ(client_->Put(std::span(&bad, 1), false, &layout).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_P(ClientGetPathTest, GetIntoCallerBuffers) {
  const std::vector<uint8_t> a = testing::TestBlock(1, 300'000), b = testing::TestBlock(2, 4096);
  const BlockKey ka{7, 1}, kb{7, 2}, missing{7, 3};
  const BlockToPut blocks[] = {{ka, BlockKey{}, a}, {kb, ka, b}};
  ASSERT_TRUE(client_->Put(blocks).ok());
  std::vector<uint8_t> buf_a(a.size()), buf_b(8192, 0xEE), buf_m(16);
  const BlockKey keys[] = {ka, missing, kb};
  const std::span<uint8_t> dst[] = {buf_a, buf_m, buf_b};
  auto sizes = client_->GetInto(keys, dst);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  EXPECT_EQ(*sizes, (std::vector<std::optional<size_t>>{a.size(), std::nullopt, b.size()}));
  EXPECT_EQ(buf_a, a);
  EXPECT_TRUE(std::equal(b.begin(), b.end(), buf_b.begin()));
  EXPECT_EQ(buf_b[b.size()], 0xEE);  // nothing written past the block
  // A buffer too small for its block, and a count that does not match.
  std::vector<uint8_t> tiny(100);
  const std::span<uint8_t> small[] = {tiny};
  auto st = client_->GetInto(std::span(&ka, 1), small).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kOutOfRange) << st;
  EXPECT_NE(st.message().find(ka.Hex()), std::string::npos) << st;
  EXPECT_EQ(client_->GetInto(keys, small).status().code(), absl::StatusCode::kInvalidArgument);
  // The connection is still good after an abandoned stream.
  auto again = client_->GetInto(keys, dst);
  ASSERT_TRUE(again.ok()) << again.status();
}

// A chain long enough that the daemon keys and looks it up in two halves at once: the answer
// is the same as one walk's, whichever half the first missing block is in, with each tenant's
// keys apart, and each Lookup counted once.
TEST_F(ClientTest, ALongLookupStopsAtTheFirstMissingBlockInEitherHalf) {
  const size_t n = 5000;  // the daemon splits Lookups of 2,048 keys or more
  std::vector<BlockKey> chain;
  for (size_t i = 0; i < n; ++i) chain.push_back(testing::TestKey(70'000 + i));
  const std::vector<uint8_t> payload = testing::TestBlock(3, 64);
  std::vector<BlockToPut> blocks;
  for (size_t i = 0; i < n; ++i)
    blocks.push_back({chain[i], i ? chain[i - 1] : BlockKey{}, payload});
  ASSERT_TRUE(client_->Put(blocks).ok());
  auto before = client_->Stats();
  ASSERT_TRUE(before.ok());
  auto found = client_->Lookup(chain);
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->matched, n);
  ASSERT_EQ(found->tiers.size(), n);
  EXPECT_EQ(found->tiers.front(), Tier::kHost);
  EXPECT_EQ(found->tiers.back(), Tier::kHost);
  // Another tenant sees none of it.
  auto other = CacheClient::Create({.address = daemon_->address(), .tenant = "frontend-2"});
  ASSERT_TRUE(other.ok());
  auto none = (*other)->Lookup(chain);
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->matched, 0u);
  // The first missing block in the second half, then in the first.
  for (size_t gone : {size_t{3700}, size_t{1200}}) {
    ASSERT_TRUE(client_->Delete(std::span(chain).subspan(gone, 1)).ok());
    found = client_->Lookup(chain);
    ASSERT_TRUE(found.ok());
    EXPECT_EQ(found->matched, gone);
    EXPECT_EQ(found->tiers.size(), gone);
  }
  auto after = client_->Stats();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->lookups - before->lookups, 4u);
}

// A host-tier block damaged in the daemon's memory (a byte flipped through /proc/PID/mem) is
// never returned: the client, which tells the daemon it checks every block itself, finds it
// damaged and asks again; the daemon then checks it, drops it and counts it.
TEST_P(ClientGetPathTest, ADamagedBlockIsDroppedAndReportedNeverReturned) {
  CacheClient& c = *client_;
  const std::vector<uint8_t> good = testing::TestBlock(1, 1 << 20),
                             bad = testing::TestBlock(2, 1 << 20);
  const BlockKey kg{8, 1}, kb{8, 2};
  const BlockToPut blocks[] = {{kg, BlockKey{}, good}, {kb, kg, bad}};
  ASSERT_TRUE(c.Put(blocks).ok());

  // Where the block lies in the daemon's address space: its arena's base and its offset there.
  auto stub = v1::CacheService::NewStub(
      grpc::CreateChannel(daemon_->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::DataPlaneRequest req;
  req.set_tenant("frontend-1");
  v1::DataPlaneResponse plane;
  ASSERT_TRUE(stub->DataPlane(&ctx, req, &plane).ok());
  ASSERT_TRUE(plane.available()) << "the daemon exports no host arena";
  auto lease = c.Lease(std::span(&kb, 1));
  ASSERT_TRUE(lease.ok()) << lease.status();
  ASSERT_EQ(lease->blocks[0].tier, Tier::kHost);
  const uint64_t at = plane.arena_base() + lease->blocks[0].offset + 12345;
  ASSERT_TRUE(c.Release(lease->id).ok());
  const int mem = open(("/proc/" + std::to_string(daemon_->pid()) + "/mem").c_str(), O_RDWR);
  ASSERT_GE(mem, 0) << "cannot open the daemon's memory";
  const uint8_t flipped = bad[12345] ^ 0x40;
  ASSERT_EQ(pwrite(mem, &flipped, 1, static_cast<off_t>(at)), 1);
  close(mem);

  const BlockKey both[] = {kg, kb};
  auto got = c.Get(both);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDataLoss) << got.status();
  EXPECT_NE(got.status().message().find(kb.Hex()), std::string::npos) << got.status();
  auto stats = c.Stats();
  ASSERT_TRUE(stats.ok()) << stats.status();
  EXPECT_EQ(stats->checksum_failures, 1u);
  // Gone from the daemon; the undamaged block is still served.
  got = c.Get(both);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)[0], good);
  EXPECT_FALSE((*got)[1].has_value());
}

// A daemon whose messages are smaller than its blocks sends each block in several chunks.
TEST(ClientChunks, BlocksLargerThanOneMessage) {
  TempDir dir;
  DaemonProcess daemon(std::string(KVTIER_BINARY_DIR) + "/kvtierd",
                       {"--listen", "127.0.0.1:0", "--no-nvme", "--host-mib", "64",
                        "--max-message-mib", "1", "--log-level", "warn", "--metrics-listen", ""});
  ASSERT_FALSE(daemon.address().empty());
  auto c =
      CacheClient::Create({.address = daemon.address(), .tenant = "t", .chunk_bytes = 256 << 10});
  ASSERT_TRUE(c.ok()) << c.status();
  const std::vector<uint8_t> big = testing::TestBlock(9, (3 << 20) + 12345);
  const BlockToPut block{BlockKey{9, 9}, BlockKey{}, big};
  ASSERT_TRUE((*c)->Put(std::span(&block, 1)).ok());
  const BlockKey keys[] = {block.key, block.key};
  auto got = (*c)->Get(keys);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)[0], big);
  EXPECT_EQ((*got)[1], big);
  // The same among other Gets, on gRPC's callback threads.
  client_internal::GetsInFlight().fetch_add(1);
  got = (*c)->Get(keys);
  client_internal::GetsInFlight().fetch_sub(1);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ((*got)[0], big);
  EXPECT_EQ((*got)[1], big);
}

// A daemon on a Unix socket: it says so, the client reaches it there, and its UCX data plane
// (auto) listens on loopback.
TEST(ClientUnixSocket, PutAndGetOverAUnixSocketWithUcxOnLoopback) {
  TempDir dir;
  const std::string listen = "unix:" + dir.Sub("kvtierd.sock");
  DaemonProcess daemon(std::string(KVTIER_BINARY_DIR) + "/kvtierd",
                       {"--listen", listen, "--no-nvme", "--host-mib", "64", "--log-level", "warn",
                        "--metrics-listen", ""});
  ASSERT_EQ(daemon.address(), listen) << daemon.output();
  EXPECT_NE(daemon.output().find("kvtierd ucx on 127.0.0.1:"), std::string::npos)
      << daemon.output();
  auto c = CacheClient::Create({.address = daemon.address(), .tenant = "t"});
  ASSERT_TRUE(c.ok()) << c.status();
  const std::vector<uint8_t> data = testing::TestBlock(11, 1 << 20);
  const BlockToPut block{BlockKey{11, 1}, BlockKey{}, data};
  ASSERT_TRUE((*c)->Put(std::span(&block, 1)).ok());
  std::vector<uint8_t> buf(data.size());
  const std::span<uint8_t> dst[] = {buf};
  auto sizes = (*c)->GetInto(std::span(&block.key, 1), dst);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  EXPECT_EQ(buf, data);
  EXPECT_EQ((*c)->transfer_stats().ucx_bytes, data.size());
  auto got = CacheClient::Create({.address = daemon.address(), .tenant = "t", .use_ucx = false});
  ASSERT_TRUE(got.ok()) << got.status();
  auto blocks = (*got)->Get(std::span(&block.key, 1));
  ASSERT_TRUE(blocks.ok()) << blocks.status();
  EXPECT_EQ((*blocks)[0], data);
}

TEST(ClientErrors, BadOptionsAndAnAbsentDaemon) {
  EXPECT_EQ(CacheClient::Create({.tenant = "t"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CacheClient::Create({.address = "127.0.0.1:1"}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Port 1 on loopback: nothing listens there. UNAVAILABLE after bounded retries.
  auto c = CacheClient::Create({.address = "127.0.0.1:1",
                                .tenant = "t",
                                .deadline_ms = 500,
                                .max_attempts = 3,
                                .initial_backoff_ms = 10});
  ASSERT_TRUE(c.ok());
  const auto t0 = std::chrono::steady_clock::now();
  const BlockKey key{1, 1};
  auto r = (*c)->Lookup(std::span(&key, 1));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));

  // However many attempts are allowed, the call's own deadline ends it.
  auto bounded = CacheClient::Create({.address = "127.0.0.1:1",
                                      .tenant = "t",
                                      .max_attempts = 1'000'000,
                                      .initial_backoff_ms = 20,
                                      .total_deadline_ms = 300});
  ASSERT_TRUE(bounded.ok());
  const auto t1 = std::chrono::steady_clock::now();
  r = (*bounded)->Lookup(std::span(&key, 1));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_LT(std::chrono::steady_clock::now() - t1, std::chrono::seconds(3));
  EXPECT_EQ(CacheClient::Create({.address = "127.0.0.1:1", .tenant = "t", .total_deadline_ms = -1})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier
