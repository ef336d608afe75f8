// The UCX data plane end to end: a real kvtierd process, CacheClient reading leased blocks with
// one-sided gets (rkey mode) or reads the daemon serves (served mode). Every test runs in both
// modes, each with UCX's default transports (shared memory / CMA on one host) and with
// UCX_TLS=tcp (what crosses hosts). ServedReads: tenants against each other's blocks.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <ucp/api/ucp.h>

#include <atomic>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "client/cache_client.h"
#include "common/mutex.h"
#include "kvtier/v1/cache.grpc.pb.h"
#include "testing/daemon_process.h"
#include "testing/http_get.h"
#include "testing/test_util.h"
#include "transfer/ucx_common.h"
#include "transfer/ucx_reader.h"

namespace kvtier {
namespace {

using ::kvtier::testing::DaemonProcess;
using ::kvtier::testing::TempDir;

constexpr size_t kBlockBytes = 256 << 10;

// Stores a chain of n blocks (keys {id, i}) and returns their payloads.
std::vector<std::vector<uint8_t>> PutBlocks(CacheClient& c, uint64_t id, size_t n) {
  std::vector<std::vector<uint8_t>> payloads;
  std::vector<BlockToPut> blocks;
  for (size_t i = 0; i < n; ++i) payloads.push_back(testing::TestBlock(id * 1000 + i, kBlockBytes));
  for (size_t i = 0; i < n; ++i) {
    blocks.push_back({BlockKey{id, i}, i == 0 ? BlockKey{} : BlockKey{id, i - 1}, payloads[i]});
  }
  auto put = c.Put(blocks);
  EXPECT_TRUE(put.ok()) << put.status();
  return payloads;
}

// UCX_TLS ("" for UCX's default transports) and the daemon's ucx.mode.
struct Setup {
  const char* tls;
  const char* mode;
};

// The daemon holds no lease of `c`'s (releases are sent without waiting: within 10 s).
void ExpectNoLeasesLeft(CacheClient& c) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  uint64_t active = 0;
  do {
    auto stats = c.Stats();
    ASSERT_TRUE(stats.ok()) << stats.status();
    active = stats->leases_active;
    if (active == 0) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  } while (std::chrono::steady_clock::now() < end);
  EXPECT_EQ(active, 0u) << "leases the client released are still held";
}

class TransferTest : public ::testing::TestWithParam<Setup> {
 protected:
  void SetUp() override {
    // UCX reads its configuration from the environment: the daemon inherits it.
    if (std::string(GetParam().tls).empty()) {
      unsetenv("UCX_TLS");
    } else {
      setenv("UCX_TLS", GetParam().tls, 1);
    }
    StartDaemon();
  }
  void TearDown() override { unsetenv("UCX_TLS"); }

  void StartDaemon() {
    daemon_ = std::make_unique<DaemonProcess>(
        std::string(KVTIER_BINARY_DIR) + "/kvtierd",
        std::vector<std::string>{"--listen", "127.0.0.1:0", "--data", dir_.Sub("data"),
                                 "--host-mib", "64", "--nvme-gib", "1", "--log-level", "warn",
                                 "--metrics-listen", "", "--ucx-mode", GetParam().mode});
    ASSERT_FALSE(daemon_->address().empty()) << daemon_->output();
    ASSERT_FALSE(daemon_->AddressOf("ucx").empty()) << daemon_->output();
  }

  bool tcp() const { return !std::string(GetParam().tls).empty(); }
  bool served() const { return std::string(GetParam().mode) == "served"; }

  // With UCX_TLS=tcp, UCX can only emulate one-sided reads; the tests use them anyway (they are
  // what crosses hosts without RDMA) unless `software_rma` is false, the client's default.
  // (Served reads need no such trust, and go over UCX either way.)
  std::unique_ptr<CacheClient> Client(ClientOptions o = {}, bool software_rma = true) {
    o.address = daemon_->address();
    o.tenant = "t";
    o.ucx_software_rma = software_rma;
    auto c = CacheClient::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return std::move(*c);
  }

  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_P(TransferTest, WholeBlocksAndRangesArriveByteForByte) {
  auto c = Client();
  const auto payloads = PutBlocks(*c, 1, 16);
  std::vector<BlockKey> keys;
  std::vector<std::vector<uint8_t>> bufs(16, std::vector<uint8_t>(kBlockBytes + 100, 0xAB));
  std::vector<std::span<uint8_t>> dst;
  for (size_t i = 0; i < 16; ++i) {
    keys.push_back(BlockKey{1, i});
    dst.push_back(bufs[i]);
  }
  auto sizes = c->GetInto(keys, dst);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  for (size_t i = 0; i < 16; ++i) {
    ASSERT_EQ((*sizes)[i], kBlockBytes);
    ASSERT_TRUE(std::equal(payloads[i].begin(), payloads[i].end(), bufs[i].begin())) << i;
    EXPECT_EQ(bufs[i][kBlockBytes], 0xAB);
  }
  TransferStats st = c->transfer_stats();
  EXPECT_EQ(st.ucx_bytes, 16 * kBlockBytes);
  EXPECT_EQ(st.grpc_bytes, 0u);
  EXPECT_EQ(st.ucx_connects, 1u);

  // Ranges: one slice per "layer" (8 layers, 15% of each block in all), as the worker reads the
  // recall heads of a block.
  const size_t layers = 8, layer_bytes = kBlockBytes / layers, slice = layer_bytes * 15 / 100;
  std::vector<std::vector<uint8_t>> got(16 * layers, std::vector<uint8_t>(slice));
  std::vector<RangeRead> reads;
  for (size_t i = 0; i < 16; ++i) {
    for (size_t l = 0; l < layers; ++l) {
      reads.push_back({keys[i], l * layer_bytes + 7 * l, got[i * layers + l]});
    }
  }
  ASSERT_TRUE(c->ReadRanges(reads).ok());
  for (size_t i = 0; i < 16; ++i) {
    for (size_t l = 0; l < layers; ++l) {
      const uint8_t* want = payloads[i].data() + l * layer_bytes + 7 * l;
      ASSERT_TRUE(std::equal(want, want + slice, got[i * layers + l].begin())) << i << "/" << l;
    }
  }
  st = c->transfer_stats();
  EXPECT_EQ(st.ucx_bytes, 16 * kBlockBytes + 16 * layers * slice);
  EXPECT_EQ(st.grpc_bytes, 0u);

  // Bad ranges and missing blocks are errors, never short reads.
  std::vector<uint8_t> two(2);
  const RangeRead past[] = {{keys[0], kBlockBytes - 1, two}};
  EXPECT_EQ(c->ReadRanges(past).code(), absl::StatusCode::kOutOfRange);
  const RangeRead missing[] = {{BlockKey{99, 99}, 0, two}};
  EXPECT_EQ(c->ReadRanges(missing).code(), absl::StatusCode::kNotFound);
}

TEST_P(TransferTest, TheDaemonConfirmsLeasedBlocksStayedPutEvenAfterTheLeaseEnded) {
  auto c = Client();
  PutBlocks(*c, 3, 4);
  std::vector<BlockKey> keys;
  for (uint64_t i = 0; i < 4; ++i) keys.push_back(BlockKey{3, i});
  auto lease = c->Lease(keys, /*ttl_ms=*/20);
  ASSERT_TRUE(lease.ok()) << lease.status();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the lease ends
  auto unchanged = c->ReleaseVerified(*lease);
  ASSERT_TRUE(unchanged.ok()) << unchanged.status();
  EXPECT_TRUE(*unchanged) << "nothing moved: reads made under the lease read the blocks";
  auto deleted = c->Delete(std::span(keys).first(1));
  ASSERT_TRUE(deleted.ok());
  ASSERT_EQ(*deleted, 1u);
  unchanged = c->ReleaseVerified(*lease);
  ASSERT_TRUE(unchanged.ok()) << unchanged.status();
  EXPECT_FALSE(*unchanged) << "block 0 is gone";
  PutBlocks(*c, 3, 1);  // stored again: a new placement, whatever its address
  unchanged = c->ReleaseVerified(*lease);
  ASSERT_TRUE(unchanged.ok());
  EXPECT_FALSE(*unchanged);
}

TEST_P(TransferTest, ReadsUnderLeasesTooShortAreRedone) {
  // A 1 ms lease is over (by the client's safety margin) before a read can start: the client must
  // notice, try again under new leases, and in the end return the right bytes (through gRPC).
  // (A read that starts in time and ends late is discarded by the same check after it lands.)
  auto c = Client({.lease_ttl_ms = 1});
  const auto payloads = PutBlocks(*c, 2, 16);
  std::vector<BlockKey> keys;
  std::vector<std::vector<uint8_t>> bufs(16, std::vector<uint8_t>(kBlockBytes));
  std::vector<std::span<uint8_t>> dst;
  for (size_t i = 0; i < 16; ++i) {
    keys.push_back(BlockKey{2, i});
    dst.push_back(bufs[i]);
  }
  auto sizes = c->GetInto(keys, dst);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  for (size_t i = 0; i < 16; ++i) ASSERT_EQ(bufs[i], payloads[i]) << i;
  const TransferStats st = c->transfer_stats();
  EXPECT_GT(st.lease_retries, 0u);
  EXPECT_EQ(st.grpc_bytes + st.ucx_bytes, 16 * kBlockBytes);
}

TEST_P(TransferTest, SixteenConcurrentReaders) {
  auto writer = Client();
  const auto payloads = PutBlocks(*writer, 5, 64);
  std::atomic<int> errors{0}, wrong{0}, reads{0}, without_ucx{0};
  std::string first_error;
  Mutex mu;
  std::vector<std::thread> threads;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&, t] {
      // Sixteen connections at once on a loaded 2-core machine: give connecting more retries.
      auto c = Client({.max_attempts = 8, .initial_backoff_ms = 100});
      std::mt19937 rng(t);
      std::vector<uint8_t> a(kBlockBytes), b(kBlockBytes);
      // Two reads each at least: on a loaded 2-core machine sixteen connections' set-up can
      // take the whole window, and the second read is the one on a warm connection.
      for (int i = 0; i < 200 && (i < 2 || std::chrono::steady_clock::now() < until); ++i) {
        const size_t x = rng() % 64, y = (x + 1 + rng() % 63) % 64;
        const BlockKey keys[] = {BlockKey{5, x}, BlockKey{5, y}};
        const std::span<uint8_t> dst[] = {a, b};
        auto sizes = c->GetInto(keys, dst);
        ++reads;
        if (!sizes.ok()) {
          MutexLock lock(&mu);
          if (errors++ == 0) first_error = sizes.status().ToString();
        } else if (a != payloads[x] || b != payloads[y]) {
          ++wrong;
        }
      }
      if (c->transfer_stats().ucx_bytes == 0) ++without_ucx;  // every reader used UCX
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0) << first_error;
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(without_ucx.load(), 0);
  EXPECT_GT(reads.load(), 16);
}

// One client shared by threads: each read in progress has a UCX connection of its own (the
// client's pool), every byte arrives, and no more connections are made than the pool allows.
TEST_P(TransferTest, ThreadsOfOneClientReadOverUcxAtOnce) {
  auto c = Client({.ucx_connections = 3});
  const auto payloads = PutBlocks(*c, 10, 32);
  std::atomic<int> errors{0}, wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      std::vector<uint8_t> a(kBlockBytes), b(kBlockBytes);
      for (int i = 0; i < 40; ++i) {
        const size_t x = (t * 5 + i) % 32, y = (x + 1 + t) % 32;
        const BlockKey keys[] = {BlockKey{10, x}, BlockKey{10, y}};
        const std::span<uint8_t> dst[] = {a, b};
        auto sizes = c->GetInto(keys, dst);
        if (!sizes.ok()) {
          ++errors;
        } else if (a != payloads[x] || b != payloads[y]) {
          ++wrong;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(wrong.load(), 0);
  const TransferStats st = c->transfer_stats();
  EXPECT_EQ(st.ucx_bytes + st.grpc_bytes, 6u * 40 * 2 * kBlockBytes);
  EXPECT_GT(st.ucx_bytes, 0u);
  EXPECT_GE(st.ucx_connects, 1u);
  EXPECT_LE(st.ucx_connects, 3u) << "the pool's bound";
  // Every lease went over a LeaseSession stream, and every release written there without
  // waiting reached the daemon.
  EXPECT_EQ(st.session_leases, st.leases);
  ExpectNoLeasesLeft(*c);
}

// With lease_session off, leases and releases are calls of their own; the reads are the same.
TEST_P(TransferTest, LeasesWithoutSessionsAreCallsOfTheirOwn) {
  auto c = Client({.lease_session = false});
  const auto payloads = PutBlocks(*c, 11, 4);
  std::vector<std::vector<uint8_t>> bufs(4, std::vector<uint8_t>(kBlockBytes));
  const std::vector<BlockKey> keys = {BlockKey{11, 0}, BlockKey{11, 1}, BlockKey{11, 2},
                                      BlockKey{11, 3}};
  const std::vector<std::span<uint8_t>> dst(bufs.begin(), bufs.end());
  for (int i = 0; i < 3; ++i) {
    auto sizes = c->GetInto(keys, dst);
    ASSERT_TRUE(sizes.ok()) << sizes.status();
    EXPECT_EQ(bufs, payloads);
  }
  const TransferStats st = c->transfer_stats();
  EXPECT_GT(st.leases, 0u);
  EXPECT_EQ(st.session_leases, 0u);
  ExpectNoLeasesLeft(*c);
}

TEST_P(TransferTest, AnAbandonedLeaseExpiresAndItsCapacityComesBack) {
  auto c = Client();
  PutBlocks(*c, 6, 4);
  std::vector<BlockKey> keys;
  for (size_t i = 0; i < 4; ++i) keys.push_back(BlockKey{6, i});
  auto lease = c->Lease(keys, 300);
  ASSERT_TRUE(lease.ok()) << lease.status();
  auto stats = c->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->leases_active, 1u);
  // Leased blocks cannot be deleted...
  EXPECT_EQ(c->Delete(std::span(keys).first(1)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // ...until the lease runs out, without any further request to the daemon.
  std::this_thread::sleep_for(std::chrono::milliseconds(900));
  stats = c->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->leases_active, 0u);
  auto deleted = c->Delete(keys);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, 4u);
}

TEST_P(TransferTest, DaemonKilledMidTransferGivesErrorsNotWrongBytes) {
  auto writer = Client();
  const auto payloads = PutBlocks(*writer, 7, 64);
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0}, wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      auto c = Client({.deadline_ms = 2000, .max_attempts = 1});
      std::vector<std::vector<uint8_t>> bufs(8, std::vector<uint8_t>(kBlockBytes));
      for (int i = 0; i < 2000 && !stop.load(); ++i) {
        std::vector<BlockKey> keys;
        std::vector<std::span<uint8_t>> dst;
        for (size_t j = 0; j < 8; ++j) {
          keys.push_back(BlockKey{7, (i * 8 + j + t) % 64});
          dst.push_back(bufs[j]);
        }
        auto sizes = c->GetInto(keys, dst);
        if (!sizes.ok()) {
          ++failed;
          continue;
        }
        ++ok;
        for (size_t j = 0; j < 8; ++j) {
          if (!(*sizes)[j].has_value() || bufs[j] != payloads[keys[j].lo]) ++wrong;
        }
      }
    });
  }
  while (ok.load() < 20) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  kill(daemon_->pid(), SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  stop = true;
  for (auto& th : threads) th.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(failed.load(), 0);  // the reads after the kill failed
}

TEST_P(TransferTest, AReaderKilledMidReadLeavesTheDaemonServing) {
  // In rkey mode with default client options: over TCP the client then reads through gRPC, as
  // UCX 1.13 would emulate the reads with replies from the daemon, and a reply to a dead reader
  // aborts it. Served reads over TCP are safe, and the reader uses them: the daemon's sends to
  // the dead reader fail and their pins are released. The reader is a child process (forked
  // before this process touches gRPC or UCX).
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto c = Client({}, /*software_rma=*/served());
    const auto payloads = PutBlocks(*c, 8, 32);
    std::vector<std::vector<uint8_t>> bufs(32, std::vector<uint8_t>(kBlockBytes));
    std::vector<BlockKey> keys;
    std::vector<std::span<uint8_t>> dst;
    for (size_t i = 0; i < 32; ++i) {
      keys.push_back(BlockKey{8, i});
      dst.push_back(bufs[i]);
    }
    for (int i = 0; i < 100'000; ++i) (void)c->GetInto(keys, dst);  // until killed
    _exit(0);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  // The daemon still serves (the dead reader's lease runs out on its own).
  auto c = Client({}, false);
  const auto payloads = PutBlocks(*c, 9, 4);
  std::vector<uint8_t> buf(kBlockBytes);
  const BlockKey key{9, 3};
  const std::span<uint8_t> dst[] = {buf};
  auto sizes = c->GetInto(std::span(&key, 1), dst);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  EXPECT_EQ(buf, payloads[3]);
  const bool over_ucx = !tcp();
  EXPECT_EQ(c->transfer_stats().ucx_bytes, over_ucx ? kBlockBytes : 0);
  EXPECT_EQ(c->transfer_stats().grpc_bytes, over_ucx ? 0 : kBlockBytes);
}

INSTANTIATE_TEST_SUITE_P(Transports, TransferTest,
                         ::testing::Values(Setup{"", "rkey"}, Setup{"tcp", "rkey"},
                                           Setup{"", "served"}, Setup{"tcp", "served"}),
                         [](const auto& info) {
                           return std::string(std::string(info.param.tls).empty()
                                                  ? "default"
                                                  : info.param.tls) +
                                  "_" + info.param.mode;
                         });

// ---- Several tenants: served reads -----------------------------------------------------------

// What a UCX peer can do with the stock UCP API and no key of the daemon's: over TCP, a get of
// `got->size()` bytes at `address` in the daemon into *got, or (`put`) a put of as many 0xEE
// bytes there and a flush. UCX emulates both with messages that the daemon's worker answers if
// it has RMA handlers; any key the peer packs itself will do. DEADLINE_EXCEEDED when nothing
// answered in `wait`.
absl::Status RawRma(const std::string& host, int port, uint64_t address, bool put,
                    std::vector<uint8_t>* got, std::chrono::milliseconds wait) {
  ucp_config_t* config = nullptr;
  if (ucp_config_read(nullptr, nullptr, &config) != UCS_OK) return absl::InternalError("config");
  (void)ucp_config_modify(config, "TLS", "tcp");
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_RMA;
  ucp_context_h context = nullptr;
  const ucs_status_t init = ucp_init(&params, config, &context);
  ucp_config_release(config);
  if (init != UCS_OK) return absl::InternalError("ucp_init");
  ucp_worker_params_t wp{};
  ucp_worker_h worker = nullptr;
  (void)ucp_worker_create(context, &wp, &worker);
  socklen_t len = 0;
  auto addr = transfer::ResolveAddress(host, port, false, &len);
  ucp_ep_params_t ep_params{};
  ep_params.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                         UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
  ep_params.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  ep_params.sockaddr.addr = reinterpret_cast<const sockaddr*>(&*addr);
  ep_params.sockaddr.addrlen = len;
  ep_params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ucp_ep_h ep = nullptr;
  absl::Status result = transfer::FromUcs(ucp_ep_create(worker, &ep_params, &ep), "connect");
  const auto until = std::chrono::steady_clock::now() + wait;
  std::vector<void*> abandoned;  // completed (cancelled) by the close below
  // Progresses until `req` completes or `until`; its status (DEADLINE_EXCEEDED if it did not).
  auto finish = [&](ucs_status_ptr_t req) -> absl::Status {
    if (req == nullptr) return absl::OkStatus();
    if (UCS_PTR_IS_ERR(req)) return transfer::FromUcs(UCS_PTR_STATUS(req), "rma");
    while (ucp_request_check_status(req) == UCS_INPROGRESS &&
           std::chrono::steady_clock::now() < until) {
      ucp_worker_progress(worker);
    }
    const ucs_status_t st = ucp_request_check_status(req);
    if (st == UCS_INPROGRESS) {
      abandoned.push_back(req);
      return absl::DeadlineExceededError("no answer");
    }
    ucp_request_free(req);
    return transfer::FromUcs(st, "rma");
  };
  std::vector<uint8_t> local(got->size(), 0xEE);
  ucp_mem_h memh = nullptr;
  ucp_rkey_h rkey = nullptr;
  if (result.ok()) {
    ucp_request_param_t none{};
    result = finish(ucp_ep_flush_nbx(ep, &none));  // connected
  }
  if (result.ok()) {
    ucp_mem_map_params_t mp{};
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mp.address = local.data();
    mp.length = local.size();
    void* packed = nullptr;
    size_t packed_bytes = 0;
    if (ucp_mem_map(context, &mp, &memh) != UCS_OK ||
        ucp_rkey_pack(context, memh, &packed, &packed_bytes) != UCS_OK ||
        ucp_ep_rkey_unpack(ep, packed, &rkey) != UCS_OK) {
      result = absl::InternalError("a key of one's own");
    }
    if (packed != nullptr) ucp_rkey_buffer_release(packed);
  }
  ucp_request_param_t none{};
  if (result.ok() && put) {
    result = finish(ucp_put_nbx(ep, local.data(), local.size(), address, rkey, &none));
    if (result.ok()) result = finish(ucp_ep_flush_nbx(ep, &none));  // the daemon acknowledges
  } else if (result.ok()) {
    result = finish(ucp_get_nbx(ep, got->data(), got->size(), address, rkey, &none));
  }
  if (ep != nullptr) {
    ucp_request_param_t force{};
    force.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    force.flags = UCP_EP_CLOSE_FLAG_FORCE;
    ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &force);
    if (UCS_PTR_IS_PTR(req)) {
      while (ucp_request_check_status(req) == UCS_INPROGRESS) ucp_worker_progress(worker);
      ucp_request_free(req);
    }
  }
  for (void* req : abandoned) ucp_request_free(req);
  if (rkey != nullptr) ucp_rkey_destroy(rkey);
  if (memh != nullptr) ucp_mem_unmap(context, memh);
  ucp_worker_destroy(worker);
  ucp_cleanup(context);
  return result;
}

// Where the daemon's heap starts (from /proc): an address in it that is surely mapped.
// An address of process `pid`'s heap: [heap], or (under AddressSanitizer, whose allocator maps
// its own) its first writable anonymous mapping. 0 if neither is found.
uint64_t HeapOf(pid_t pid) {
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  uint64_t anonymous = 0;
  for (std::string line; std::getline(maps, line);) {
    if (line.find("[heap]") != std::string::npos) return std::stoull(line, nullptr, 16);
    std::istringstream fields(line);
    std::string range, perms, offset, device, inode, path;
    fields >> range >> perms >> offset >> device >> inode >> path;
    if (anonymous == 0 && perms == "rw-p" && inode == "0" && path.empty()) {
      anonymous = std::stoull(range, nullptr, 16);
    }
  }
  return anonymous;
}

constexpr char kAliceToken[] = "alice-secret-token-0001";
constexpr char kBobToken[] = "bob-secret-token-00000002";

// Two tenants, auth on, ucx.mode auto (served). Alice holds valid leases of her own and tries to
// read Bob's block through every handle she was given. Runs with UCX's default transports and
// with UCX_TLS=tcp.
class ServedReads : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    if (std::string(GetParam()).empty()) {
      unsetenv("UCX_TLS");
    } else {
      setenv("UCX_TLS", GetParam(), 1);
    }
    std::ofstream(dir_.Sub("tokens.yaml"))
        << "alice: " << kAliceToken << "\nbob: " << kBobToken << "\n";
    daemon_ = Start("auto");
    ASSERT_FALSE(daemon_->AddressOf("ucx").empty()) << daemon_->output();
    alice_ = Client("alice", kAliceToken);
    bob_ = Client("bob", kBobToken);
    alice_blocks_ = PutBlocks(*alice_, 1, 2);
    bob_blocks_ = PutBlocks(*bob_, 2, 1);
  }
  void TearDown() override { unsetenv("UCX_TLS"); }

  std::unique_ptr<DaemonProcess> Start(const char* mode) {
    auto d = std::make_unique<DaemonProcess>(
        std::string(KVTIER_BINARY_DIR) + "/kvtierd",
        std::vector<std::string>{"--listen", "127.0.0.1:0", "--no-nvme", "--host-mib", "32",
                                 "--log-level", "error", "--metrics-listen", "127.0.0.1:0",
                                 "--auth-tokens", dir_.Sub("tokens.yaml"), "--ucx-mode", mode});
    EXPECT_FALSE(d->address().empty()) << d->output();
    return d;
  }
  std::unique_ptr<CacheClient> Client(const std::string& tenant, const std::string& token,
                                      const DaemonProcess* d = nullptr) {
    ClientOptions o{.address = (d != nullptr ? d : daemon_.get())->address(), .tenant = tenant};
    o.bearer_token = token;
    o.ucx_software_rma = true;  // served reads over TCP too (UCX_TLS=tcp)
    auto c = CacheClient::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return std::move(*c);
  }
  // The DataPlane answer for `tenant`, asked as a client that does (or does not) read served.
  v1::DataPlaneResponse DataPlane(const DaemonProcess& d, const std::string& tenant,
                                  const std::string& token, bool accepts_served) {
    auto stub = v1::CacheService::NewStub(
        grpc::CreateChannel(d.address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + token);
    v1::DataPlaneRequest req;
    req.set_tenant(tenant);
    req.set_accepts_served(accepts_served);
    v1::DataPlaneResponse res;
    EXPECT_TRUE(stub->DataPlane(&ctx, req, &res).ok());
    return res;
  }
  // A reader of the served data plane as any UCX peer can make one: it needs no key.
  std::unique_ptr<transfer::UcxReader> RawReader() {
    const auto res = DataPlane(*daemon_, "alice", kAliceToken, true);
    auto r =
        transfer::UcxReader::Connect({.host = "127.0.0.1",
                                      .port = static_cast<int>(res.ucx_port()),
                                      .served = true,
                                      .bytes = res.arena_bytes()},
                                     std::chrono::steady_clock::now() + std::chrono::seconds(10));
    EXPECT_TRUE(r.ok()) << r.status();
    return std::move(*r);
  }
  static absl::Status ReadInto(transfer::UcxReader& r, uint64_t lease,
                               std::vector<std::pair<uint64_t, std::span<uint8_t>>> ranges) {
    std::vector<transfer::ReadOp> ops;
    for (auto& [offset, dst] : ranges) {
      ops.push_back({.offset = offset, .length = dst.size(), .dst = dst.data()});
    }
    return r.Read(ops, std::chrono::steady_clock::now() + std::chrono::seconds(10), lease);
  }

  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
  std::unique_ptr<CacheClient> alice_, bob_;
  std::vector<std::vector<uint8_t>> alice_blocks_, bob_blocks_;
};

// (1) No remote key leaves the daemon, and a UCX peer's own gets and puts reach nothing (the
// daemon's UCX has no RMA handlers). In rkey mode the same get reads Bob's block: what served
// mode exists for.
TEST_P(ServedReads, NoKeyIsHandedOutAndRawGetsAndPutsReachNothing) {
  const auto res = DataPlane(*daemon_, "alice", kAliceToken, true);
  EXPECT_TRUE(res.available());
  EXPECT_EQ(res.mode(), v1::DATA_PLANE_MODE_SERVED);
  EXPECT_TRUE(res.rkey().empty());
  EXPECT_EQ(res.arena_base(), 0u);
  EXPECT_FALSE(DataPlane(*daemon_, "alice", kAliceToken, false).available())
      << "a client that can only read one-sided is sent to Get";

  const uint64_t heap = HeapOf(daemon_->pid());
  ASSERT_NE(heap, 0u);
  std::vector<uint8_t> got(64, 0);
  const int port = static_cast<int>(res.ucx_port());
  EXPECT_EQ(RawRma("127.0.0.1", port, heap, false, &got, std::chrono::seconds(1)).code(),
            absl::StatusCode::kDeadlineExceeded)
      << "a raw get of the daemon's memory was answered";
  EXPECT_EQ(got, std::vector<uint8_t>(64, 0));
  EXPECT_EQ(RawRma("127.0.0.1", port, heap, true, &got, std::chrono::seconds(1)).code(),
            absl::StatusCode::kDeadlineExceeded)
      << "a raw put into the daemon's memory was acknowledged";
  // The daemon is unharmed and serves Alice.
  std::vector<uint8_t> buf(kBlockBytes);
  const BlockKey key{1, 0};
  const std::span<uint8_t> dst[] = {buf};
  ASSERT_TRUE(alice_->GetInto(std::span(&key, 1), dst).ok());
  EXPECT_EQ(buf, alice_blocks_[0]);
  EXPECT_EQ(alice_->transfer_stats().ucx_bytes, kBlockBytes) << "over UCX, served";

  // The same attack on a daemon in rkey mode, where UCX answers it.
  auto rkey_daemon = Start("rkey");
  auto bob = Client("bob", kBobToken, rkey_daemon.get());
  const auto bobs = PutBlocks(*bob, 3, 1);
  const BlockKey bob_key{3, 0};
  auto lease = bob->Lease(std::span(&bob_key, 1));
  ASSERT_TRUE(lease.ok()) << lease.status();
  const auto rkey_res = DataPlane(*rkey_daemon, "alice", kAliceToken, true);
  EXPECT_EQ(rkey_res.mode(), v1::DATA_PLANE_MODE_RKEY);
  EXPECT_FALSE(rkey_res.rkey().empty());
  std::vector<uint8_t> stolen(64);
  ASSERT_TRUE(RawRma("127.0.0.1", static_cast<int>(rkey_res.ucx_port()),
                     rkey_res.arena_base() + lease->blocks[0].offset, /*put=*/false, &stolen,
                     std::chrono::seconds(5))
                  .ok());
  EXPECT_TRUE(std::equal(stolen.begin(), stolen.end(), bobs[0].begin()))
      << "rkey mode: any UCX peer reads any tenant's block";
}

// (2)-(4): through the served data plane, with a valid lease of her own, Alice reads her own
// blocks and nothing of Bob's, whatever handle and ranges she sends; every refusal writes nothing.
TEST_P(ServedReads, ATenantReadsItsOwnLeasedRangesAndNothingElse) {
  const BlockKey mine[] = {BlockKey{1, 0}, BlockKey{1, 1}};
  const BlockKey theirs{2, 0};
  auto a = alice_->Lease(mine);
  auto b = bob_->Lease(std::span(&theirs, 1));
  ASSERT_TRUE(a.ok() && b.ok());
  const uint64_t at0 = a->blocks[0].offset, at1 = a->blocks[1].offset;
  const uint64_t bobs = b->blocks[0].offset;
  auto reader = RawReader();
  ASSERT_NE(reader, nullptr);
  // One host: through the connection's staging area; UCX_TLS=tcp: bytes sent as messages.
  EXPECT_EQ(reader->staged(), std::string(GetParam()).empty());

  std::vector<uint8_t> own(kBlockBytes, 0xEE), buf(kBlockBytes, 0xEE);
  const std::vector<uint8_t> untouched(kBlockBytes, 0xEE);
  // Her own block, whole and in part: the bytes of it.
  ASSERT_TRUE(ReadInto(*reader, a->id, {{at1, own}}).ok());
  EXPECT_EQ(own, alice_blocks_[1]);
  ASSERT_TRUE(ReadInto(*reader, a->id, {{at0 + 100, std::span(own).first(1000)}}).ok());
  EXPECT_TRUE(std::equal(own.begin(), own.begin() + 1000, alice_blocks_[0].begin() + 100));

  auto refused = [&](uint64_t lease, std::vector<std::pair<uint64_t, std::span<uint8_t>>> ranges,
                     absl::StatusCode code, const char* what) {
    std::fill(own.begin(), own.end(), 0xEE);
    std::fill(buf.begin(), buf.end(), 0xEE);
    const absl::Status st = ReadInto(*reader, lease, std::move(ranges));
    EXPECT_EQ(st.code(), code) << what << ": " << st;
    EXPECT_EQ(buf, untouched) << what;
    EXPECT_EQ(own, untouched) << what << ": a refused read writes nothing";
    EXPECT_FALSE(reader->broken()) << what;
  };
  // (2) Her handle, Bob's block: whole, in part, and beside a range of her own.
  refused(a->id, {{bobs, buf}}, absl::StatusCode::kPermissionDenied, "bob's block");
  refused(a->id, {{bobs + 4096, std::span(buf).first(100)}}, absl::StatusCode::kPermissionDenied,
          "inside bob's block");
  refused(a->id, {{at0, own}, {bobs, buf}}, absl::StatusCode::kPermissionDenied,
          "her block and bob's");
  // (3) Handles she did not get: guessed ones, Bob's (which gRPC does not let her touch), her
  // own once released, and one that lapsed.
  std::mt19937_64 rng(GetParam()[0]);
  for (int i = 0; i < 8; ++i) {
    refused(rng(), {{bobs, buf}}, absl::StatusCode::kNotFound, "a guessed handle");
  }
  refused(a->id ^ 1, {{at0, buf}}, absl::StatusCode::kNotFound, "a neighbour of her handle");
  ClientOptions as_alice_on_bob{.address = daemon_->address(), .tenant = "alice"};
  as_alice_on_bob.bearer_token = kAliceToken;
  EXPECT_EQ(CacheClient::Create(as_alice_on_bob).value()->Release(b->id).code(),
            absl::StatusCode::kNotFound)
      << "bob's handle is nothing to alice over gRPC";
  auto released = alice_->Lease(std::span(mine).first(1));
  ASSERT_TRUE(released.ok());
  ASSERT_TRUE(alice_->Release(released->id).ok());
  refused(released->id, {{at0, buf}}, absl::StatusCode::kNotFound, "a released handle");
  auto lapsed = alice_->Lease(std::span(mine).first(1), /*ttl_ms=*/30);
  ASSERT_TRUE(lapsed.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  refused(lapsed->id, {{at0, buf}}, absl::StatusCode::kNotFound, "a lapsed handle");
  // (4) Ranges that are not inside one of her blocks: partly outside, across her two blocks,
  // empty, wrapping, past the arena.
  refused(a->id, {{at0 + kBlockBytes - 10, std::span(buf).first(20)}},
          absl::StatusCode::kPermissionDenied, "partly outside her block");
  if (at1 == at0 + kBlockBytes || at0 == at1 + kBlockBytes) {
    const uint64_t first = std::min(at0, at1);
    refused(a->id, {{first + kBlockBytes - 10, std::span(buf).first(20)}},
            absl::StatusCode::kPermissionDenied, "across her two blocks");
  }
  refused(a->id, {{at0, std::span(buf).first(0)}}, absl::StatusCode::kInvalidArgument, "empty");
  refused(a->id, {{~uint64_t{0} - 15, std::span(buf).first(32)}},
          absl::StatusCode::kInvalidArgument, "wrapping");
  refused(a->id, {{uint64_t{1} << 40, std::span(buf).first(32)}},
          absl::StatusCode::kPermissionDenied, "past the arena");
  // After all that the reader still works, and Bob's lease and block are his.
  ASSERT_TRUE(ReadInto(*reader, a->id, {{at0, own}}).ok());
  EXPECT_EQ(own, alice_blocks_[0]);
  ASSERT_TRUE(bob_->Release(b->id).ok()) << "bob's lease survived";
  ASSERT_TRUE(alice_->Release(a->id).ok());
  auto got = bob_->Get(std::span(&theirs, 1));
  ASSERT_TRUE(got.ok() && (*got)[0].has_value());
  EXPECT_EQ(*(*got)[0], bob_blocks_[0]);
  // Operators see both: reads served, and reads refused (at least the 14 asked above that reached
  // the daemon; the empty and wrapping ranges the reader may refuse itself).
  const std::string metrics =
      testing::HttpGet(daemon_->AddressOf("kvtierd metrics"), "/metrics");
  EXPECT_GE(testing::Sample(metrics, "kvtier_ucx_served_reads_total"), 3);
  EXPECT_GE(testing::Sample(metrics, "kvtier_ucx_served_read_refusals_total"), 14);
}

INSTANTIATE_TEST_SUITE_P(Transports, ServedReads, ::testing::Values("", "tcp"),
                         [](const auto& info) {
                           return std::string(info.param).empty() ? "default" : "tcp";
                         });

}  // namespace
}  // namespace kvtier
