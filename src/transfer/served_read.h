#pragma once
// Served reads (the data plane's `served` mode): the messages between UcxReader and UcxServer.
//
// The daemon never hands out a remote key of its arena. A reader asks with one active message
// (kServedReadRequestAm, eager, with a reply endpoint) that names a lease handle and the arena
// ranges to read; the daemon checks every range against that lease, then delivers the bytes
// one of two ways, and ends with kServedReadDoneAm: a status, and the bytes it delivered. A
// refused request gets its kServedReadDoneAm and no byte.
// - Staged (the request names a staging offset): the daemon copies the ranges, back to back, to
//   that offset of the connection's staging area, memory of its own that only this connection
//   was given a key of (kServedStagingAm asks for it, kServedStagingReplyAm answers with its
//   base, size and packed key). A reader on the daemon's host maps it and copies out.
// - Sent: the daemon sends the bytes as eager active messages (kServedReadDataAm, at most a
//   chunk each), which the reader copies into its buffers as they arrive. Works anywhere.
// Every integer is little-endian.

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvtier::transfer {

inline constexpr unsigned kServedReadRequestAm = 1;
inline constexpr unsigned kServedReadDataAm = 2;
inline constexpr unsigned kServedReadDoneAm = 3;
inline constexpr unsigned kServedStagingAm = 4;
inline constexpr unsigned kServedStagingReplyAm = 5;

// Ranges in one request, at most (its message is then 1 MiB), and bytes asked for in all; a
// reader splits larger batches. A daemon refuses more (INVALID_ARGUMENT).
inline constexpr size_t kMaxServedRanges = 65536;
inline constexpr uint64_t kMaxServedReadBytes = uint64_t{64} << 20;

// `length` bytes at `offset` in the daemon's exported region.
struct RegionRange {
  uint64_t offset = 0;
  uint64_t length = 0;
};

// A request's staging_offset when the bytes are to be sent (kServedReadDataAm).
inline constexpr uint64_t kNotStaged = ~uint64_t{0};

struct ServedReadRequest {
  uint64_t id = 0;                       // the reader's; every reply names it
  uint64_t lease = 0;                    // a lease handle (CacheService.Lease's lease_id)
  uint64_t staging_offset = kNotStaged;  // where in the staging area the ranges go
  std::vector<RegionRange> ranges;
};

std::string EncodeServedReadRequest(uint64_t id, uint64_t lease,
                                    std::span<const RegionRange> ranges,
                                    uint64_t staging_offset = kNotStaged);
// INVALID_ARGUMENT for bytes that are not one request: a wrong tag, a range count that does not
// match the length, no range or more than kMaxServedRanges. Ranges themselves are not checked.
absl::StatusOr<ServedReadRequest> DecodeServedReadRequest(const void* data, size_t length);

// The header of a kServedReadDataAm: its data are the bytes at `offset` in range `range` of
// request `id`.
struct ServedDataHeader {
  uint64_t id = 0;
  uint32_t range = 0;
  uint64_t offset = 0;
};
// The header of a kServedReadDoneAm; its data are the status message (empty for OK).
struct ServedDoneHeader {
  uint64_t id = 0;
  uint32_t code = 0;   // absl::StatusCode
  uint64_t bytes = 0;  // sent for this request in kServedReadDataAm messages
};

// The header of a kServedStagingReplyAm; its data are the area's packed remote key (empty: no
// staging area, use sent reads).
struct ServedStagingHeader {
  uint64_t base = 0;   // the area's address in the daemon
  uint64_t bytes = 0;  // its size
};

inline constexpr size_t kServedHeaderBytes = 20;
using ServedHeaderBytes = std::array<uint8_t, kServedHeaderBytes>;

ServedHeaderBytes EncodeHeader(const ServedDataHeader& h);
ServedHeaderBytes EncodeHeader(const ServedDoneHeader& h);
ServedHeaderBytes EncodeHeader(const ServedStagingHeader& h);
// False when `length` is not kServedHeaderBytes.
bool DecodeHeader(const void* data, size_t length, ServedDataHeader* out);
bool DecodeHeader(const void* data, size_t length, ServedDoneHeader* out);
bool DecodeHeader(const void* data, size_t length, ServedStagingHeader* out);

}  // namespace kvtier::transfer
