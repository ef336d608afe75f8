#include "server/request_keys.h"

#include <gtest/gtest.h>

#include "kvtier/v1/cache.pb.h"

namespace kvtier::server {
namespace {

TEST(RequestKeys, BothFormsGiveTheSameTenantKeys) {
  const std::vector<BlockKey> keys = {{1, 2}, {0, 0}, {~uint64_t{0}, 7}};
  v1::GetRequest listed;
  for (const BlockKey& k : keys) listed.add_keys(k.ByteString());
  v1::GetRequest packed;
  packed.set_packed_keys(PackKeys(keys));
  auto a = StoreKeysOf("t", listed.keys(), listed.packed_keys(), 3);
  auto b = StoreKeysOf("t", packed.keys(), packed.packed_keys(), 3);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(*a, *b);
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ((*a)[i], TenantKey("t", keys[i]));
    EXPECT_EQ(KeyBytes(listed, i), keys[i].ByteString());
    EXPECT_EQ(KeyBytes(packed, i), keys[i].ByteString());
  }
  EXPECT_TRUE((*a)[1].IsZero()) << "the zero key (no parent) maps to itself";
}

TEST(RequestKeys, MalformedListsAreInvalidArgument) {
  v1::LeaseRequest r;
  r.add_keys(BlockKey{1, 1}.ByteString());
  r.set_packed_keys(BlockKey{1, 1}.ByteString());
  EXPECT_EQ(KeyCount(r.keys(), r.packed_keys(), 10).status().message(),
            "give keys or packed_keys, not both");
  r.clear_keys();
  r.set_packed_keys(std::string(17, 'k'));
  EXPECT_EQ(KeyCount(r.keys(), r.packed_keys(), 10).status().message(),
            "packed_keys: 17 bytes is not a multiple of 16");
  r.set_packed_keys(std::string(48, 'k'));
  EXPECT_EQ(KeyCount(r.keys(), r.packed_keys(), 2).status().message(),
            "3 keys exceed the limit of 2 per request");
  r.clear_packed_keys();
  r.add_keys(BlockKey{1, 1}.ByteString());
  r.add_keys("short");
  EXPECT_EQ(StoreKeysOf("t", r.keys(), r.packed_keys(), 10).status().message(),
            "keys[1]: block key must be 16 bytes, got 5");
  EXPECT_EQ(*KeyCount(r.keys(), "", 10), 2u) << "the count does not check each key's form";
}

TEST(RequestKeys, TenantNames) {
  EXPECT_EQ(CheckTenantName("", 8).message(), "tenant: must be set");
  EXPECT_EQ(CheckTenantName("123456789", 8).message(), "tenant: longer than 8 bytes");
  EXPECT_TRUE(CheckTenantName("12345678", 8).ok());
}

}  // namespace
}  // namespace kvtier::server
