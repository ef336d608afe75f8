#pragma once
// Process-wide settings for programs that move megabyte buffers over many gRPC calls (kvtierd,
// kvtier-router, kvtier-worker, the kvtier CLI, the benchmarks; programs embedding the C++ client
// call it themselves or set ClientOptions::tune_process, off by default).

namespace kvtier {

// Idempotent; call early in main(), before the first gRPC call.
//
// - malloc: glibc maps every allocation above its mmap threshold (128 KiB, rising to at most
//   32 MiB) with a fresh mmap, so each 1 MiB message buffer costs 256 page faults and an munmap.
//   Buffers of up to 64 MiB stay on the heap (which is not trimmed below 256 MiB): reuse.
// - Abseil's lock-order checking: Debian builds Abseil without NDEBUG, so every absl::Mutex lock
//   (gRPC's own locks among them) records itself in a global lock-order graph to detect potential
//   deadlocks. That was 9% of the CPU of 4 KiB gets and 2-3% of 1 MiB ones. It is turned off:
//   lock-order cycles are no longer reported; an actual deadlock still hangs as it would.
void TuneProcessForThroughput();

}  // namespace kvtier
