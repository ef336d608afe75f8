#pragma once
// Process-wide malloc settings for programs that move megabyte buffers (kvtierd, and programs
// using the C++ client: ClientOptions::tune_malloc).

namespace kvtier {

// glibc maps every allocation above its mmap threshold (128 KiB, rising to at most 32 MiB) with a
// fresh mmap, so each 1 MiB message buffer costs 256 page faults and an munmap. Keeping buffers
// up to 64 MiB on the heap (and not trimming it below 256 MiB) turns that into reuse.
// Idempotent; call early in main().
void TuneMallocForLargeBuffers();

}  // namespace kvtier
