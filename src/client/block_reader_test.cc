// The BlockReader seam's small parts: NotServed, the fallback decorator, the gRPC reader (over a
// fake Get stream); and that the client's public header stays free of generated code.
#include "client/cache_client.h"  // first: nothing before it may bring in protobuf or gRPC

#ifdef GOOGLE_PROTOBUF_VERSION
#error "client/cache_client.h must not include generated protobuf code"
#endif
#ifdef GRPCPP_GRPCPP_H
#error "client/cache_client.h must not include gRPC"
#endif

#include <gtest/gtest.h>

#include "client/block_reader.h"
#include "client/client_fakes.h"

namespace kvtier {
namespace {

using client_testing::Bytes;
using client_testing::FakeGetStream;

const CallDeadline kNone = CallDeadline::max();

TEST(ClientNotServedTest, MarksADeclineAndKeepsItsReason) {
  const absl::Status why = absl::NotFoundError("lease: block 1 not found");
  const absl::Status declined = NotServed(why);
  EXPECT_TRUE(IsNotServed(declined));
  EXPECT_EQ(declined.code(), why.code());
  EXPECT_EQ(declined.message(), why.message());
  EXPECT_FALSE(IsNotServed(why));
  EXPECT_FALSE(IsNotServed(absl::OkStatus()));
  EXPECT_EQ(NotServed(absl::OkStatus()).code(), absl::StatusCode::kUnavailable);
}

// Answers every call with `answer`, counting them.
class ScriptedReader final : public BlockReader {
 public:
  absl::Status answer;
  int calls = 0;
  absl::StatusOr<std::vector<std::optional<size_t>>> ReadBlocks(std::span<const BlockKey> keys,
                                                                std::span<const std::span<uint8_t>>,
                                                                CallDeadline) override {
    ++calls;
    if (!answer.ok()) return answer;
    return std::vector<std::optional<size_t>>(keys.size(), 1);
  }
  absl::Status ReadRanges(std::span<const RangeRead>, CallDeadline) override {
    ++calls;
    return answer;
  }
};

TEST(ClientFallbackReaderTest, OnlyADeclinedCallGoesToTheSecondReader) {
  ScriptedReader first, second;
  FallbackReader reader(&first, &second);
  const BlockKey keys[] = {BlockKey{1, 1}};
  std::vector<uint8_t> buf(1);
  std::span<uint8_t> dst[] = {buf};
  bool by_first = false;

  ASSERT_TRUE(reader.ReadBlocks(keys, dst, kNone, &by_first).ok());
  EXPECT_TRUE(by_first);
  EXPECT_EQ(second.calls, 0);

  first.answer = NotServed(absl::UnavailableError("ucx: connection refused"));
  ASSERT_TRUE(reader.ReadRanges({}, kNone, &by_first).ok());
  EXPECT_FALSE(by_first);
  EXPECT_EQ(second.calls, 1);

  // An error of the call itself is its answer: the second reader is not asked.
  first.answer = absl::OutOfRangeError("too small");
  EXPECT_EQ(reader.ReadBlocks(keys, dst, kNone).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(second.calls, 1);

  // Both decline: the second's answer.
  first.answer = NotServed(absl::UnavailableError("a"));
  second.answer = NotServed(absl::UnavailableError("b"));
  absl::Status st = reader.ReadRanges({}, kNone);
  EXPECT_TRUE(IsNotServed(st));
  EXPECT_EQ(st.message(), "b");
}

class ClientGrpcReaderTest : public ::testing::Test {
 protected:
  ClientGrpcReaderTest() : reader_(Stream()) {}
  GrpcBlockReader::GetStreamFn Stream() {
    absl::flat_hash_map<BlockKey, std::vector<uint8_t>> blocks;
    blocks[a_] = Bytes(1, 1000);
    blocks[b_] = Bytes(2, 3000);
    return FakeGetStream(std::move(blocks), &gets_);
  }
  const BlockKey a_{1, 1}, b_{1, 2}, missing_{9, 9};
  std::atomic<int> gets_{0};
  GrpcBlockReader reader_;
};

TEST_F(ClientGrpcReaderTest, BlocksLandInTheirBuffersOrAreNotCached) {
  std::vector<uint8_t> x(2000, 0xEE), y(1), z(3000);
  const BlockKey keys[] = {a_, missing_, b_};
  std::span<uint8_t> dst[] = {x, y, z};
  auto sizes = reader_.ReadBlocks(keys, dst, kNone);
  ASSERT_TRUE(sizes.ok()) << sizes.status();
  EXPECT_EQ(*sizes, (std::vector<std::optional<size_t>>{1000, std::nullopt, 3000}));
  EXPECT_TRUE(std::equal(x.begin(), x.begin() + 1000, Bytes(1, 1000).begin()));
  EXPECT_EQ(x[1000], 0xEE);
  EXPECT_EQ(z, Bytes(2, 3000));
  std::span<uint8_t> small[] = {y};
  EXPECT_EQ(reader_.ReadBlocks(std::span(keys).first(1), small, kNone).status(),
            BlockTooLarge(a_, 1000, 1));
}

TEST_F(ClientGrpcReaderTest, RangesAreCutFromBlocksFetchedOnce) {
  std::vector<uint8_t> p(10), q(20), r(1);
  const RangeRead reads[] = {{b_, 100, p}, {a_, 980, q}, {b_, 2999, r}};
  ASSERT_TRUE(reader_.ReadRanges(reads, kNone).ok());
  EXPECT_EQ(gets_.load(), 1);
  const auto a = Bytes(1, 1000), b = Bytes(2, 3000);
  EXPECT_TRUE(std::equal(p.begin(), p.end(), b.begin() + 100));
  EXPECT_TRUE(std::equal(q.begin(), q.end(), a.begin() + 980));
  EXPECT_EQ(r[0], b[2999]);

  const RangeRead past[] = {{a_, 990, q}};
  EXPECT_EQ(reader_.ReadRanges(past, kNone), RangeOutside(past[0], 1000));
  const RangeRead missing[] = {{a_, 0, p}, {missing_, 0, p}};
  absl::Status st = reader_.ReadRanges(missing, kNone);
  EXPECT_EQ(st.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(st.message().find(missing_.Hex()), std::string::npos) << st;
}

TEST(ClientRangeBlocksTest, EachBlockOnceInOrderOfFirstMention) {
  std::vector<uint8_t> buf(1);
  const BlockKey a{1, 1}, b{1, 2};
  const RangeRead reads[] = {{b, 0, buf}, {a, 0, buf}, {b, 5, buf}};
  const RangeBlocks blocks = BlocksOf(reads);
  EXPECT_EQ(blocks.keys, (std::vector<BlockKey>{b, a}));
  EXPECT_EQ(blocks.block_of, (std::vector<size_t>{0, 1, 0}));
}

}  // namespace
}  // namespace kvtier
