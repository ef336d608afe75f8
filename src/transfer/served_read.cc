#include "transfer/served_read.h"

#include "absl/strings/str_cat.h"
#include "common/internal/le_bytes.h"

namespace kvtier::transfer {
namespace {

using internal::LeRead;

// "KVR1": a served read request, version 1.
constexpr uint32_t kRequestTag = 0x3152564b;
constexpr size_t kRequestHead = 32;  // tag, range count, id, lease, staging offset
constexpr size_t kRangeBytes = 16;   // offset, length

void Put(uint8_t* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint64_t Get(const void* data, size_t at, int bytes) {
  return LeRead(static_cast<const char*>(data) + at, bytes);
}

ServedHeaderBytes Encode(uint64_t id, uint32_t middle, uint64_t last) {
  ServedHeaderBytes out{};
  Put(out.data(), id, 8);
  Put(out.data() + 8, middle, 4);
  Put(out.data() + 12, last, 8);
  return out;
}

}  // namespace

std::string EncodeServedReadRequest(uint64_t id, uint64_t lease,
                                    std::span<const RegionRange> ranges, uint64_t staging_offset) {
  std::string out(kRequestHead + kRangeBytes * ranges.size(), '\0');
  auto* p = reinterpret_cast<uint8_t*>(out.data());
  Put(p, kRequestTag, 4);
  Put(p + 4, ranges.size(), 4);
  Put(p + 8, id, 8);
  Put(p + 16, lease, 8);
  Put(p + 24, staging_offset, 8);
  p += kRequestHead;
  for (const RegionRange& r : ranges) {
    Put(p, r.offset, 8);
    Put(p + 8, r.length, 8);
    p += kRangeBytes;
  }
  return out;
}

absl::StatusOr<ServedReadRequest> DecodeServedReadRequest(const void* data, size_t length) {
  if (length < kRequestHead || Get(data, 0, 4) != kRequestTag) {
    return absl::InvalidArgumentError("served read: not a request");
  }
  const uint64_t n = Get(data, 4, 4);
  if (n == 0 || n > kMaxServedRanges || length != kRequestHead + n * kRangeBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("served read: ", n, " ranges in a request of ", length, " bytes"));
  }
  ServedReadRequest r;
  r.id = Get(data, 8, 8);
  r.lease = Get(data, 16, 8);
  r.staging_offset = Get(data, 24, 8);
  r.ranges.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const size_t at = kRequestHead + i * kRangeBytes;
    r.ranges[i] = {.offset = Get(data, at, 8), .length = Get(data, at + 8, 8)};
  }
  return r;
}

ServedHeaderBytes EncodeHeader(const ServedDataHeader& h) {
  return Encode(h.id, h.range, h.offset);
}

ServedHeaderBytes EncodeHeader(const ServedDoneHeader& h) { return Encode(h.id, h.code, h.bytes); }

ServedHeaderBytes EncodeHeader(const ServedStagingHeader& h) { return Encode(h.base, 0, h.bytes); }

bool DecodeHeader(const void* data, size_t length, ServedDataHeader* out) {
  if (length != kServedHeaderBytes) return false;
  *out = {.id = Get(data, 0, 8),
          .range = static_cast<uint32_t>(Get(data, 8, 4)),
          .offset = Get(data, 12, 8)};
  return true;
}

bool DecodeHeader(const void* data, size_t length, ServedStagingHeader* out) {
  if (length != kServedHeaderBytes) return false;
  *out = {.base = Get(data, 0, 8), .bytes = Get(data, 12, 8)};
  return true;
}

bool DecodeHeader(const void* data, size_t length, ServedDoneHeader* out) {
  if (length != kServedHeaderBytes) return false;
  *out = {.id = Get(data, 0, 8),
          .code = static_cast<uint32_t>(Get(data, 8, 4)),
          .bytes = Get(data, 12, 8)};
  return true;
}

}  // namespace kvtier::transfer
