// Feeds the parsers and checks of block keys and KV layouts (common/block_key.h, kv_layout.h,
// layout_proto.h) what clients send. The first byte picks what the rest is:
//   0  a key as bytes (BlockKey::FromByteString): it must round-trip through bytes and hex
//   1  a key as hex (BlockKey::FromHex): accepted exactly when 32 hex digits, round-trips
//   2  a serialized v1::KvLayout (LayoutFromProto, as Put and the worker take it)
//   3  a KvLayout's fields raw, any enum values (KvLayout::Validate)
//   4  a hash algorithm or dtype name (ParseHashAlgorithm, ParseDType)
//   5  a key namespace, block size and tokens (ChainHasher), and a tenant (TenantKeyer)
// Every layout that validates must describe a block of 1 byte to kMaxBlockBytes whose layer and
// head slices lie inside it, one after another.

#include <fuzzer/FuzzedDataProvider.h>

#include <cctype>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/block_key.h"
#include "common/kv_layout.h"
#include "common/layout_proto.h"
#include "fuzz/fuzz_util.h"
#include "kvtier/v1/types.pb.h"

namespace kvtier::fuzz {
namespace {

void CheckKey(const BlockKey& k) {
  KVTIER_FUZZ_CHECK(
      BlockKey::FromBytes(reinterpret_cast<const uint8_t*>(k.ByteString().data())) == k,
      "bytes round-trip");
  auto h = BlockKey::FromHex(k.Hex());
  KVTIER_FUZZ_CHECK(h.ok() && *h == k, "hex round-trip");
  KVTIER_FUZZ_CHECK(TenantKey("t", k).IsZero() == k.IsZero(), "only the zero key maps to zero");
  TenantKeyer keyer("t");
  const std::string bytes = k.ByteString();
  KVTIER_FUZZ_CHECK(
      keyer.FromBytes(reinterpret_cast<const uint8_t*>(bytes.data())) == TenantKey("t", k),
      "TenantKeyer::FromBytes is TenantKey");
}

// A range inside a block of `block` bytes.
void CheckInside(const ByteRange& r, uint64_t block, const std::string& what) {
  KVTIER_FUZZ_CHECK(r.length > 0 && r.offset <= block && r.length <= block - r.offset,
                    absl::StrCat(what, " [", r.offset, ", +", r.length, ") of ", block));
}

void CheckLayout(const KvLayout& l) {
  if (!l.Validate().ok()) return;
  const uint64_t block = l.BytesPerBlock();
  KVTIER_FUZZ_CHECK(block > 0 && block <= KvLayout::kMaxBlockBytes,
                    absl::StrCat(l.DebugString(), ": ", block, " bytes a block"));
  // The first and the last layer (and head): slices lie inside the block, the last one ends it.
  for (uint32_t layer : {0u, l.layers - 1}) {
    auto s = l.LayerSlice(layer);
    KVTIER_FUZZ_CHECK(s.ok(), l.DebugString());
    CheckInside(*s, block, absl::StrCat(l.DebugString(), " layer ", layer));
    if (layer == l.layers - 1) KVTIER_FUZZ_CHECK(s->offset + s->length == block, "last layer");
    if (l.kind != LayoutKind::kGqa) continue;
    for (uint32_t head : {0u, l.kv_heads - 1}) {
      for (KvPart part : {KvPart::kKey, KvPart::kValue}) {
        auto h = l.HeadSlice(layer, part, head);
        KVTIER_FUZZ_CHECK(h.ok(), l.DebugString());
        CheckInside(*h, block, absl::StrCat(l.DebugString(), " head ", head));
        KVTIER_FUZZ_CHECK(h->offset >= s->offset && h->offset + h->length <= s->offset + s->length,
                          "a head's slice lies in its layer's");
      }
    }
    KVTIER_FUZZ_CHECK(!l.HeadSlice(layer, KvPart::kKey, l.kv_heads).ok(), "head out of range");
  }
  KVTIER_FUZZ_CHECK(!l.LayerSlice(l.layers).ok(), "layer out of range");
  KvLayout other = l;
  (l.kind == LayoutKind::kGqa ? other.latent_rank : other.kv_heads) += 1;
  KVTIER_FUZZ_CHECK(other.Fingerprint() == l.Fingerprint(), "unused fields do not count");
  v1::KvLayout p;
  LayoutToProto(l, &p);
  auto back = LayoutFromProto(p);
  KVTIER_FUZZ_CHECK(back.ok(), std::string(back.status().message()));
  KVTIER_FUZZ_CHECK(back->Fingerprint() == l.Fingerprint(), "proto round-trip");
}

}  // namespace
}  // namespace kvtier::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier;
  using namespace kvtier::fuzz;
  if (size == 0) return 0;
  const uint8_t mode = data[0] % 6;
  ++data;
  --size;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  switch (mode) {
    case 0: {
      auto k = BlockKey::FromByteString(bytes);
      KVTIER_FUZZ_CHECK(k.ok() == (size == BlockKey::kBytes), "16 bytes, and only 16");
      if (k.ok()) {
        KVTIER_FUZZ_CHECK(k->ByteString() == bytes, "bytes round-trip");
        CheckKey(*k);
      }
      break;
    }
    case 1: {
      auto k = BlockKey::FromHex(bytes);
      bool hex = size == 2 * BlockKey::kBytes;
      for (char c : bytes) hex = hex && std::isxdigit(static_cast<unsigned char>(c));
      KVTIER_FUZZ_CHECK(k.ok() == hex, std::string(bytes));
      if (k.ok()) {
        std::string lower(bytes);
        for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        KVTIER_FUZZ_CHECK(k->Hex() == lower, "hex round-trip");
        CheckKey(*k);
      }
      break;
    }
    case 2: {
      v1::KvLayout p;
      if (!p.ParseFromArray(data, static_cast<int>(size))) break;
      auto l = LayoutFromProto(p);
      if (l.ok()) {
        KVTIER_FUZZ_CHECK(l->Validate().ok(), "LayoutFromProto validates");
        CheckLayout(*l);
      }
      break;
    }
    case 3: {
      FuzzedDataProvider in(data, size);
      KvLayout l;
      l.kind = static_cast<LayoutKind>(in.ConsumeIntegral<uint8_t>());
      l.dtype = static_cast<DType>(in.ConsumeIntegral<uint8_t>());
      l.layers = in.ConsumeIntegral<uint32_t>();
      l.kv_heads = in.ConsumeIntegral<uint32_t>();
      l.head_dim = in.ConsumeIntegral<uint32_t>();
      l.block_tokens = in.ConsumeIntegral<uint32_t>();
      l.latent_rank = in.ConsumeIntegral<uint32_t>();
      l.rope_dim = in.ConsumeIntegral<uint32_t>();
      (void)l.DebugString();
      CheckLayout(l);
      break;
    }
    case 4: {
      const std::string name(bytes);
      auto a = ParseHashAlgorithm(name);
      if (a.ok()) KVTIER_FUZZ_CHECK(ParseHashAlgorithm(HashAlgorithmName(*a)).ok(), name);
      auto d = ParseDType(name);
      if (d.ok()) {
        KVTIER_FUZZ_CHECK(DTypeBytes(*d) > 0, name);
        KVTIER_FUZZ_CHECK(ParseDType(DTypeName(*d)).ok() && *ParseDType(DTypeName(*d)) == *d, name);
      }
      break;
    }
    case 5: {
      FuzzedDataProvider in(data, size);
      KeyNamespace ns;
      ns.tenant_salt = in.ConsumeRandomLengthString(64);
      ns.model_id = in.ConsumeRandomLengthString(64);
      ns.adapter_id = in.ConsumeRandomLengthString(64);
      ns.layout_fingerprint = in.ConsumeIntegral<uint64_t>();
      // Up to 300 tokens a block: past the 256 that Next keeps on its stack.
      const uint32_t block_tokens = in.ConsumeIntegralInRange<uint32_t>(0, 300);
      const auto algorithm = static_cast<HashAlgorithm>(in.ConsumeIntegral<uint8_t>() % 4);
      std::vector<uint32_t> tokens;
      while (in.remaining_bytes() >= 4 && tokens.size() < 1024) {
        tokens.push_back(in.ConsumeIntegral<uint32_t>());
      }
      auto hasher = ChainHasher::Create(ns, block_tokens, algorithm);
      const bool valid = block_tokens > 0 && (algorithm == HashAlgorithm::kXxh3_128 ||
                                              algorithm == HashAlgorithm::kSha256_128);
      KVTIER_FUZZ_CHECK(hasher.ok() == valid, std::string(hasher.status().message()));
      if (!hasher.ok()) break;
      const std::vector<BlockKey> keys = hasher->Keys(tokens);
      KVTIER_FUZZ_CHECK(keys.size() == tokens.size() / block_tokens, "a key per full block");
      BlockKey parent = hasher->root();
      for (size_t i = 0; i < keys.size(); ++i) {
        parent = hasher->Next(parent, std::span(tokens).subspan(i * block_tokens, block_tokens));
        KVTIER_FUZZ_CHECK(parent == keys[i], "Keys is Next chained");
      }
      if (!keys.empty()) {
        const std::string packed = PackKeys(keys);
        KVTIER_FUZZ_CHECK(packed.size() == 16 * keys.size(), "16 bytes a key");
        CheckKey(keys.back());
      }
      break;
    }
  }
  return 0;
}
