// UcxLeaseReader against a fake daemon (client_fakes.h): leases, verification, reconnects, what
// it declines for gRPC, and readers that overlap. tests/transfer_test.cc runs the same paths
// against real daemons over UCX.
#include "client/ucx_lease_reader.h"

#include <gtest/gtest.h>

#include <thread>

#include "client/client_fakes.h"

namespace kvtier {
namespace {

using client_testing::Bytes;
using client_testing::FakeDaemon;
using client_testing::FakeGetStream;
using client_testing::Rendezvous;

constexpr size_t kBlock = 4096;
const CallDeadline kNone = CallDeadline::max();

class UcxLeaseReaderTest : public ::testing::Test {
 protected:
  UcxLeaseReaderTest() {
    for (uint64_t i = 0; i < 8; ++i) {
      keys_.push_back(BlockKey{1, i});
      payloads_.push_back(Bytes(i, kBlock));
      daemon_.Add(keys_.back(), payloads_.back());
      bufs_.emplace_back(kBlock + 10, 0xEE);
    }
    options_.clock = &daemon_.clock;
  }
  UcxLeaseReader& Reader() {
    if (reader_ == nullptr)
      reader_ = std::make_unique<UcxLeaseReader>(&daemon_, &daemon_, options_);
    return *reader_;
  }
  // Reads blocks `first` .. `first + n - 1` into bufs_.
  absl::StatusOr<std::vector<std::optional<size_t>>> ReadBlocks(size_t first, size_t n) {
    std::vector<std::span<uint8_t>> dst;
    for (size_t i = first; i < first + n; ++i) dst.push_back(bufs_[i]);
    return Reader().ReadBlocks(std::span(keys_).subspan(first, n), dst, kNone);
  }
  // Reads all blocks from `n` threads at once, a share each; their answers.
  std::vector<absl::Status> ReadInThreads(size_t n) {
    Reader();
    std::vector<absl::Status> results(n);
    std::vector<std::thread> threads;
    const size_t share = keys_.size() / n;
    for (size_t t = 0; t < n; ++t) {
      threads.emplace_back([&, t] { results[t] = ReadBlocks(t * share, share).status(); });
    }
    for (auto& th : threads) th.join();
    return results;
  }
  bool Arrived(size_t i) const {
    return std::equal(payloads_[i].begin(), payloads_[i].end(), bufs_[i].begin());
  }

  FakeDaemon daemon_;
  UcxLeaseReaderOptions options_;
  std::unique_ptr<UcxLeaseReader> reader_;
  std::vector<BlockKey> keys_;
  std::vector<std::vector<uint8_t>> payloads_;
  std::vector<std::vector<uint8_t>> bufs_;
};

TEST_F(UcxLeaseReaderTest, ReadsWholeBlocksAndRangesUnderOneLeaseEach) {
  auto sizes = ReadBlocks(0, 4);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ((*sizes)[i], kBlock);
    EXPECT_TRUE(Arrived(i)) << i;
    EXPECT_EQ(bufs_[i][kBlock], 0xEE) << "nothing past the block";
  }
  // Ranges of two blocks, one of them twice: one lease of the two.
  std::vector<uint8_t> a(100), b(200), c(1);
  const RangeRead reads[] = {{keys_[5], 10, a}, {keys_[6], 3000, b}, {keys_[5], kBlock - 1, c}};
  ASSERT_TRUE(Reader().ReadRanges(reads, kNone).ok());
  EXPECT_TRUE(std::equal(a.begin(), a.end(), payloads_[5].begin() + 10));
  EXPECT_TRUE(std::equal(b.begin(), b.end(), payloads_[6].begin() + 3000));
  EXPECT_EQ(c[0], payloads_[5][kBlock - 1]);

  const UcxReadStats st = Reader().stats();
  EXPECT_EQ(st.leases, 2u);
  EXPECT_EQ(st.connects, 1u) << "the second call reused the connection";
  EXPECT_EQ(st.ucx_bytes, 4 * kBlock + 301);
  EXPECT_EQ(st.lease_retries + st.fallbacks + st.verified_reads, 0u);
  EXPECT_EQ(daemon_.data_plane_calls.load(), 1);
  // Each lease released once, with the bytes read under it.
  EXPECT_EQ(daemon_.released(),
            (std::vector<std::pair<uint64_t, uint64_t>>{{1, 4 * kBlock}, {2, 301}}));
}

TEST_F(UcxLeaseReaderTest, AWrongChecksumIsReadAgainUnderANewLease) {
  daemon_.corrupt_reads = 1;
  auto sizes = ReadBlocks(0, 2);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  EXPECT_TRUE(Arrived(0) && Arrived(1));
  EXPECT_EQ(Reader().stats().leases, 2u);
  EXPECT_EQ(Reader().stats().lease_retries, 1u);
  EXPECT_EQ(daemon_.released().size(), 2u) << "the bad read's lease too";

  // Wrong every time: an error, not bytes, and not a fall back (gRPC would not do better).
  daemon_.corrupt_reads = 100;
  auto bad = ReadBlocks(0, 2);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss) << bad.status();
  EXPECT_FALSE(IsNotServed(bad.status()));
  EXPECT_EQ(Reader().stats().leases, 5u) << "three attempts";
}

TEST_F(UcxLeaseReaderTest, ALeaseThatEndsBeforeTheReadBeginsIsRedoneThenDeclined) {
  // Every lease takes its whole TTL to be granted: no read may start under it.
  daemon_.lease_takes_us = 1'000'000;
  auto sizes = ReadBlocks(0, 2);
  EXPECT_TRUE(IsNotServed(sizes.status())) << sizes.status();
  EXPECT_EQ(daemon_.reads.load(), 0) << "no read under an ended lease";
  const UcxReadStats st = Reader().stats();
  EXPECT_EQ(st.leases, 3u);
  EXPECT_EQ(st.lease_retries, 3u);
  EXPECT_EQ(st.fallbacks, 1u);
  EXPECT_EQ(daemon_.released().size(), 3u);
}

TEST_F(UcxLeaseReaderTest, AReadThatOutlivesItsLeaseIsKeptOnlyWhenTheDaemonConfirms) {
  daemon_.read_takes_us = 2'000'000;  // past the 1 s lease
  auto sizes = ReadBlocks(0, 2);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  EXPECT_TRUE(Arrived(0) && Arrived(1));
  EXPECT_EQ(daemon_.verify_calls.load(), 1);
  EXPECT_EQ(Reader().stats().verified_reads, 1u);

  // The daemon says a block moved: the bytes are not kept, and another lease is tried; when
  // every read runs late and every block moves, gRPC is left to serve the call.
  daemon_.blocks_stay_put = false;
  auto moved = ReadBlocks(0, 2);
  EXPECT_TRUE(IsNotServed(moved.status())) << moved.status();
  EXPECT_EQ(daemon_.verify_calls.load(), 4);
  EXPECT_EQ(Reader().stats().lease_retries, 3u);

  // Late once, then in time: kept from the second lease.
  daemon_.read_takes_us = 0;
  std::atomic<int> late{1};
  daemon_.on_read = [&] {
    if (late-- > 0) daemon_.clock.AdvanceSeconds(2);
  };
  ASSERT_TRUE(ReadBlocks(2, 2).ok());
  EXPECT_TRUE(Arrived(2) && Arrived(3));
  EXPECT_EQ(Reader().stats().lease_retries, 4u);
}

TEST_F(UcxLeaseReaderTest, AServedReadWhoseLeaseIsGoneTakesANewLease) {
  daemon_.leases_gone = 1;
  ASSERT_TRUE(ReadBlocks(0, 3).ok());
  EXPECT_TRUE(Arrived(0) && Arrived(2));
  EXPECT_EQ(Reader().stats().lease_retries, 1u);
  EXPECT_EQ(Reader().stats().connects, 1u) << "the connection is still good";
}

TEST_F(UcxLeaseReaderTest, ABrokenConnectionDeclinesAndTheNextCallReconnects) {
  ASSERT_TRUE(ReadBlocks(0, 1).ok());
  daemon_.broken_reads = 1;
  auto broken = ReadBlocks(1, 1);
  EXPECT_TRUE(IsNotServed(broken.status())) << broken.status();
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(Reader().stats().fallbacks, 1u);
  EXPECT_EQ(daemon_.released().back().second, 0u) << "released, nothing read";
  // No pause after a broken connection: the next call connects again at once.
  ASSERT_TRUE(ReadBlocks(1, 1).ok());
  EXPECT_TRUE(Arrived(1));
  EXPECT_EQ(Reader().stats().connects, 2u);
  EXPECT_EQ(daemon_.data_plane_calls.load(), 2) << "each connection asks for the data plane";
}

TEST_F(UcxLeaseReaderTest, AFailedConnectPausesConnectsForASecond) {
  daemon_.connect_failures = 1;
  EXPECT_TRUE(IsNotServed(ReadBlocks(0, 1).status()));
  EXPECT_EQ(Reader().stats().fallbacks, 1u);
  daemon_.clock.AdvanceMicros(900'000);
  EXPECT_TRUE(IsNotServed(ReadBlocks(0, 1).status()));
  EXPECT_EQ(daemon_.connect_calls.load(), 1) << "not tried again within the second";
  EXPECT_EQ(daemon_.lease_calls.load(), 0) << "nothing leased without a connection";
  daemon_.clock.AdvanceMicros(100'000);
  ASSERT_TRUE(ReadBlocks(0, 1).ok());
  EXPECT_EQ(daemon_.connect_calls.load(), 2);
  EXPECT_EQ(Reader().stats().connects, 1u);
}

TEST_F(UcxLeaseReaderTest, ADaemonWithoutADataPlaneIsNotAskedAgain) {
  daemon_.offers_data_plane = false;
  EXPECT_TRUE(IsNotServed(ReadBlocks(0, 1).status()));
  EXPECT_TRUE(IsNotServed(ReadBlocks(0, 1).status()));
  EXPECT_EQ(daemon_.data_plane_calls.load(), 1);
  EXPECT_EQ(Reader().stats().fallbacks, 0u) << "nothing failed: there is no UCX to use";
}

TEST_F(UcxLeaseReaderTest, TheDataPlaneCallsErrorsAreTheCallsOwn) {
  // As before the seam: the daemon refused (or could not answer) the call gRPC would make too.
  daemon_.data_plane_error = absl::PermissionDeniedError("wrong tenant");
  auto got = ReadBlocks(0, 1);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_FALSE(IsNotServed(got.status()));
  daemon_.data_plane_error.reset();
  ASSERT_TRUE(ReadBlocks(0, 1).ok()) << "asked again on the next call";
}

TEST_F(UcxLeaseReaderTest, TcpOnlyConnectionsAreDeclinedUnlessSoftwareRmaIsOn) {
  daemon_.fast = false;
  EXPECT_TRUE(IsNotServed(ReadBlocks(0, 1).status()));
  EXPECT_TRUE(IsNotServed(ReadBlocks(0, 1).status()));
  EXPECT_EQ(daemon_.connect_calls.load(), 1) << "not tried again";

  options_.software_rma = true;
  UcxLeaseReader trusting(&daemon_, &daemon_, options_);
  std::span<uint8_t> dst[] = {bufs_[0]};
  ASSERT_TRUE(trusting.ReadBlocks(std::span(keys_).first(1), dst, kNone).ok());
  EXPECT_TRUE(Arrived(0));
}

// A daemon with no staging area left gives a further connection only TCP: the client keeps to
// the connections it has instead of leaving UCX.
TEST_F(UcxLeaseReaderTest, ASlowerLaterConnectionCapsThePoolInsteadOfEndingUcx) {
  Rendezvous in_read(2), go_on(2);
  std::atomic<bool> first{true};
  daemon_.on_read = [&] {
    if (first.exchange(false)) in_read.Arrive() && go_on.Arrive();
  };
  Reader();
  std::thread holder([&] { EXPECT_TRUE(ReadBlocks(0, 2).ok()); });
  ASSERT_TRUE(in_read.Arrive()) << "the first reader holds its connection";
  daemon_.fast = false;
  auto declined = ReadBlocks(2, 2);
  EXPECT_TRUE(IsNotServed(declined.status())) << declined.status();
  EXPECT_TRUE(go_on.Arrive());
  holder.join();
  // Still over UCX, on the one good connection; no more are made.
  ASSERT_TRUE(ReadBlocks(2, 2).ok());
  EXPECT_TRUE(Arrived(2) && Arrived(3));
  for (const absl::Status& st : ReadInThreads(4)) EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(daemon_.connect_calls.load(), 2);
  EXPECT_EQ(Reader().stats().connects, 1u);
}

TEST_F(UcxLeaseReaderTest, BlocksNotInHostRamMissingOrRepeatedAreDeclined) {
  daemon_.Add(BlockKey{2, 0}, Bytes(20, kBlock), Tier::kHbm);
  std::vector<uint8_t> buf(kBlock);
  std::span<uint8_t> one[] = {buf};
  const BlockKey hbm[] = {BlockKey{2, 0}};
  auto got = Reader().ReadBlocks(hbm, one, kNone);
  EXPECT_TRUE(IsNotServed(got.status())) << got.status();
  ASSERT_EQ(daemon_.released().size(), 1u) << "its lease released";

  const BlockKey missing[] = {BlockKey{9, 9}};
  got = Reader().ReadBlocks(missing, one, kNone);
  EXPECT_TRUE(IsNotServed(got.status()));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound) << "the reason is kept";

  const BlockKey twice[] = {keys_[0], keys_[0]};
  std::span<uint8_t> two[] = {bufs_[0], bufs_[1]};
  const int leases = daemon_.lease_calls.load();
  EXPECT_TRUE(IsNotServed(Reader().ReadBlocks(twice, two, kNone).status()));
  EXPECT_EQ(daemon_.lease_calls.load(), leases) << "a lease names each block once";
  EXPECT_TRUE(IsNotServed(Reader().ReadBlocks({}, {}, kNone).status()));
  EXPECT_EQ(Reader().stats().fallbacks, 0u);
}

TEST_F(UcxLeaseReaderTest, ABufferTooSmallOrARangePastTheEndIsAnErrorAndItsLeaseIsReleased) {
  std::vector<uint8_t> small(kBlock - 1);
  std::span<uint8_t> dst[] = {small};
  auto got = Reader().ReadBlocks(std::span(keys_).first(1), dst, kNone);
  EXPECT_EQ(got.status(), BlockTooLarge(keys_[0], kBlock, kBlock - 1));
  std::vector<uint8_t> two(2);
  const RangeRead past[] = {{keys_[1], kBlock - 1, two}};
  EXPECT_EQ(Reader().ReadRanges(past, kNone), RangeOutside(past[0], kBlock));
  EXPECT_EQ(daemon_.released().size(), 2u);
  EXPECT_EQ(daemon_.reads.load(), 0);
}

TEST_F(UcxLeaseReaderTest, BuffersAreRegisteredWithEveryConnection) {
  std::vector<uint8_t> a(100), b(100);
  Reader().RegisterBuffer(a);
  ASSERT_TRUE(ReadBlocks(0, 1).ok());
  Reader().RegisterBuffer(b);
  ASSERT_TRUE(ReadBlocks(0, 1).ok());
  daemon_.broken_reads = 1;
  (void)ReadBlocks(0, 1);
  ASSERT_TRUE(ReadBlocks(0, 1).ok());  // a new connection
  const auto registered = daemon_.registered();
  ASSERT_EQ(registered.size(), 2u);
  for (const auto& r : registered) {
    ASSERT_EQ(r.size(), 2u);
    EXPECT_EQ(r[0].data(), a.data());
    EXPECT_EQ(r[1].data(), b.data());
  }
}

// Two readers of one client are inside their leases and their reads at the same time: each
// waits there for the other. A reader that held a lock across them would keep the other out,
// and both would give up after 10 s.
TEST_F(UcxLeaseReaderTest, ConcurrentReadersOverlapInLeasesAndReads) {
  Rendezvous leasing(2), reading(2);
  std::atomic<int> apart{0};
  daemon_.on_lease = [&] { apart += leasing.Arrive() ? 0 : 1; };
  daemon_.on_read = [&] { apart += reading.Arrive() ? 0 : 1; };
  for (const absl::Status& st : ReadInThreads(2)) EXPECT_TRUE(st.ok()) << st;
  EXPECT_EQ(apart.load(), 0) << "the readers did not overlap";
  for (size_t i = 0; i < 8; ++i) EXPECT_TRUE(Arrived(i)) << i;
  EXPECT_EQ(daemon_.most_reads_in_flight.load(), 2);
  EXPECT_EQ(Reader().stats().connects, 2u) << "a connection each";
}

TEST_F(UcxLeaseReaderTest, ReadersBeyondMaxConnectionsWaitForOne) {
  options_.max_connections = 1;
  for (const absl::Status& st : ReadInThreads(4)) EXPECT_TRUE(st.ok()) << st;
  for (size_t i = 0; i < 8; ++i) EXPECT_TRUE(Arrived(i)) << i;
  EXPECT_EQ(daemon_.most_reads_in_flight.load(), 1);
  EXPECT_EQ(Reader().stats().connects, 1u);
}

// The fallback as CacheClient builds it: UCX leases, else gRPC, per call, with the same answers.
class UcxFallbackTest : public UcxLeaseReaderTest {
 protected:
  UcxFallbackTest() : grpc_(Stream()), reader_or_grpc_(&Reader(), &grpc_) {}
  GrpcBlockReader::GetStreamFn Stream() {
    absl::flat_hash_map<BlockKey, std::vector<uint8_t>> blocks;
    for (size_t i = 0; i < keys_.size(); ++i) blocks[keys_[i]] = payloads_[i];
    return FakeGetStream(std::move(blocks), &gets_);
  }
  std::atomic<int> gets_{0};
  GrpcBlockReader grpc_;
  FallbackReader reader_or_grpc_;
};

TEST_F(UcxFallbackTest, GrpcServesWhatUcxCannotWithTheSameAnswers) {
  std::vector<std::span<uint8_t>> dst = {bufs_[0], bufs_[1]};
  bool by_ucx = false;
  // UCX unreachable: gRPC serves the call.
  daemon_.connect_failures = 1;
  auto sizes = reader_or_grpc_.ReadBlocks(std::span(keys_).first(2), dst, kNone, &by_ucx);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  EXPECT_FALSE(by_ucx);
  EXPECT_TRUE(Arrived(0) && Arrived(1));
  EXPECT_EQ(gets_.load(), 1);
  // Reachable again after the pause: UCX serves it.
  daemon_.clock.AdvanceSeconds(1);
  bufs_[0].assign(bufs_[0].size(), 0);
  ASSERT_TRUE(reader_or_grpc_.ReadBlocks(std::span(keys_).first(2), dst, kNone, &by_ucx).ok());
  EXPECT_TRUE(by_ucx);
  EXPECT_TRUE(Arrived(0));
  EXPECT_EQ(gets_.load(), 1);

  // A block not cached: nullopt by gRPC, as a Get answers.
  const BlockKey some[] = {keys_[0], BlockKey{9, 9}};
  sizes = reader_or_grpc_.ReadBlocks(some, dst, kNone, &by_ucx);
  ASSERT_TRUE(sizes.ok());
  EXPECT_FALSE(by_ucx);
  EXPECT_EQ((*sizes)[0], kBlock);
  EXPECT_FALSE((*sizes)[1].has_value());
  std::vector<uint8_t> two(2);
  const RangeRead missing[] = {{BlockKey{9, 9}, 0, two}};
  EXPECT_EQ(reader_or_grpc_.ReadRanges(missing, kNone).code(), absl::StatusCode::kNotFound);

  // A buffer too small: the same error from either path.
  std::vector<uint8_t> small(10);
  std::span<uint8_t> tiny[] = {small};
  auto over_ucx = reader_or_grpc_.ReadBlocks(std::span(keys_).first(1), tiny, kNone, &by_ucx);
  EXPECT_TRUE(by_ucx);
  auto over_grpc = grpc_.ReadBlocks(std::span(keys_).first(1), tiny, kNone);
  EXPECT_EQ(over_ucx.status(), over_grpc.status());
  EXPECT_EQ(over_ucx.status().code(), absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace kvtier
