#pragma once
// Shared-memory segments that UCX left behind. Where UCX cannot hand a segment to its readers
// through /proc (UCX_POSIX_USE_PROC_LINK=n, some containers), its posix segments are named files
// in /dev/shm that live until unlinked, and a process killed with SIGKILL leaves them there:
// for kvtierd, its whole host arena, held until the machine restarts. A segment that no process
// maps or holds open is of no use to anyone (UCX attaches to a segment only through a live
// owner's remote key), so it can be removed.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

namespace kvtier::transfer {

struct ShmSweep {
  uint64_t removed = 0;  // segments unlinked
  uint64_t bytes = 0;    // their size
};

// Unlinks the files in `dir` named `prefix`* that belong to this user, are older than `min_age`
// (a segment being created is not yet mapped) and that no process maps or holds open (by
// /proc/*/maps and /proc/*/fd). Best effort: what cannot be read or removed is left alone.
ShmSweep RemoveOrphanShmSegments(const std::string& dir = "/dev/shm",
                                 const std::string& prefix = "ucx_shm_posix_",
                                 std::chrono::seconds min_age = std::chrono::seconds(2));

// Bytes free in the shared-memory file system `dir`; nullopt when it cannot be read. A segment that
// outgrows it is not refused when created: its process gets SIGBUS when it first touches a page
// that has no room, so room is checked before a segment is made.
std::optional<uint64_t> SharedMemoryFreeBytes(const std::string& dir = "/dev/shm");

}  // namespace kvtier::transfer
