#pragma once
// Block checksums: XXH3-64 (seed 0) over the payload bytes. Every read path verifies one.

#include <cstddef>
#include <cstdint>

namespace kvtier {

uint64_t Checksum(const void* data, size_t size);

// Copies `size` bytes from src to dst and returns the checksum of the copied bytes. Works in
// cache-sized chunks so the hash reads data that the copy just brought into cache: verifying a read
// then costs little more than the copy itself.
uint64_t CopyWithChecksum(void* dst, const void* src, size_t size);

}  // namespace kvtier
