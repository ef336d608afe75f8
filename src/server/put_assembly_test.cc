#include "server/put_assembly.h"

#include <gtest/gtest.h>

#include <vector>

#include "common/layout_proto.h"

namespace kvtier::server {
namespace {

// Records what the assembly asks for, and refuses what the store would (bytes past the block).
class RecordingSink : public PutSink {
 public:
  absl::Status Tenant(const std::string& tenant) override {
    calls.push_back("tenant " + tenant);
    return tenant.empty() ? absl::InvalidArgumentError("tenant: must be set") : absl::OkStatus();
  }
  absl::Status Begin(const BlockKey& key, const BlockKey&, uint64_t size,
                     const PutOptions& options) override {
    calls.push_back("begin " + key.Hex().substr(30) + " " + std::to_string(size) +
                    (options.layout != nullptr ? " layout" : ""));
    size_ = size;
    return size == 0 ? absl::InvalidArgumentError("size 0") : absl::OkStatus();
  }
  absl::Status Write(uint64_t offset, std::span<const uint8_t> data) override {
    calls.push_back("write " + std::to_string(offset) + "+" + std::to_string(data.size()));
    if (offset + data.size() > size_) return absl::InvalidArgumentError("past the end");
    return absl::OkStatus();
  }
  absl::StatusOr<PutResult> Commit() override {
    calls.push_back("commit");
    return PutResult::kStored;
  }

  std::vector<std::string> calls;

 private:
  uint64_t size_ = 0;
};

BlockKey Key(uint64_t n) { return BlockKey{0, n}; }

v1::PutRequest Header(const std::string& tenant, uint64_t key, uint64_t size,
                      const std::string& data = "") {
  v1::PutRequest m;
  m.set_tenant(tenant);
  m.mutable_header()->set_key(Key(key).ByteString());
  m.mutable_header()->set_size(size);
  m.set_data(data);
  return m;
}

v1::PutRequest Data(const std::string& data) {
  v1::PutRequest m;
  m.set_data(data);
  return m;
}

TEST(PutAssembly, BlocksInChunksAreWrittenInOrderAndCommittedWhenComplete) {
  RecordingSink sink;
  PutAssembly a(&sink);
  ASSERT_TRUE(a.Add(Header("t", 1, 6, "ab")).ok());
  ASSERT_TRUE(a.Add(Data("cd")).ok());
  ASSERT_TRUE(a.Add(Data("ef")).ok());
  ASSERT_TRUE(a.Add(Header("", 2, 3, "xyz")).ok());  // later messages need not repeat the tenant
  EXPECT_TRUE(a.Finish().ok());
  EXPECT_EQ(a.stored(), 2u);
  EXPECT_EQ(sink.calls,
            (std::vector<std::string>{"tenant t", "begin 01 6", "write 0+2", "write 2+2",
                                      "write 4+2", "commit", "begin 02 3", "write 0+3", "commit"}));
}

TEST(PutAssembly, StreamRulesAreErrors) {
  {
    RecordingSink sink;
    PutAssembly a(&sink);
    v1::PutRequest m = Data("x");
    m.set_tenant("t");
    EXPECT_EQ(a.Add(m).message(), "data before any block header");
  }
  {
    RecordingSink sink;
    PutAssembly a(&sink);
    ASSERT_TRUE(a.Add(Header("t", 1, 4, "ab")).ok());
    EXPECT_NE(a.Add(Header("t", 2, 4)).message().find("new header after 2 of 4 bytes"),
              std::string::npos);
  }
  {
    RecordingSink sink;
    PutAssembly a(&sink);
    ASSERT_TRUE(a.Add(Header("t", 1, 4, "ab")).ok());
    EXPECT_EQ(a.Add(Data("cd")).code(), absl::StatusCode::kOk);
    EXPECT_EQ(a.Add(Header("u", 2, 4)).message(), "tenant: changes within one Put stream");
  }
  {
    RecordingSink sink;
    PutAssembly a(&sink);
    ASSERT_TRUE(a.Add(Header("t", 1, 4, "abc")).ok());
    EXPECT_NE(a.Finish().message().find("stream ended after 3 of 4 bytes"), std::string::npos);
  }
  {
    RecordingSink sink;
    PutAssembly a(&sink);
    v1::PutRequest m = Header("t", 1, 4);
    m.mutable_header()->set_key("short");
    EXPECT_NE(a.Add(m).message().find("header.key: block key must be 16 bytes"), std::string::npos);
    m = Header("t", 1, 4);
    m.mutable_header()->set_parent("short");
    EXPECT_NE(a.Add(m).message().find("header.parent"), std::string::npos);
  }
  {
    RecordingSink sink;
    PutAssembly a(&sink);
    ASSERT_TRUE(a.Add(Header("t", 1, 2, "ab")).ok());
    EXPECT_FALSE(a.Add(Data("c")).ok()) << "data after a complete block";
  }
  {
    RecordingSink sink;
    PutAssembly a(&sink);
    EXPECT_FALSE(a.Add(Header("t", 1, 2, "abc")).ok()) << "more data than the header's size";
  }
}

TEST(PutAssembly, TheFirstMessageNamesTenantAndLayout) {
  {
    RecordingSink sink;
    PutAssembly a(&sink);
    EXPECT_EQ(a.Add(Header("", 1, 4)).message(), "tenant: must be set");
    EXPECT_EQ(sink.calls, std::vector<std::string>{"tenant "});
  }
  {
    RecordingSink sink;
    PutAssembly a(&sink);
    v1::PutRequest m = Header("t", 1, 4);
    LayoutToProto(KvLayout::SmallGqa(), m.mutable_layout());
    ASSERT_TRUE(a.Add(m).ok());
    EXPECT_EQ(sink.calls.back(), "begin 01 4 layout");
  }
  {
    RecordingSink sink;
    PutAssembly a(&sink);
    v1::PutRequest m = Header("t", 1, 4);
    m.mutable_layout()->set_kind(v1::LAYOUT_KIND_GQA);
    EXPECT_EQ(a.Add(m).code(), absl::StatusCode::kInvalidArgument) << "a layout that fails";
  }
}

}  // namespace
}  // namespace kvtier::server
