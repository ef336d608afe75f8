#pragma once
// The framing shared by the publisher and the subscriber: sequence numbers as 8-byte big-endian
// signed integers, and the replay end marker (-1).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kvtier::kvevents::internal {

inline constexpr int64_t kReplayEndSeq = -1;

inline std::string SeqBytes(int64_t seq) {
  std::string out(8, '\0');
  const uint64_t u = static_cast<uint64_t>(seq);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(u >> (56 - 8 * i));
  return out;
}

// None unless exactly 8 bytes.
inline std::optional<int64_t> ParseSeq(std::string_view bytes) {
  if (bytes.size() != 8) return std::nullopt;
  uint64_t u = 0;
  for (char c : bytes) u = u << 8 | static_cast<uint8_t>(c);
  return static_cast<int64_t>(u);
}

}  // namespace kvtier::kvevents::internal
