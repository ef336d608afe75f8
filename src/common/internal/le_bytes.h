#pragma once
// Little-endian bytes: the writer of the canonical encodings in docs/block-keys.md and of the
// flash tier's metadata records, and the reader of the latter.

#include <cstdint>
#include <string>
#include <string_view>

namespace kvtier::internal {

class LeWriter {
 public:
  void Raw(std::string_view s) { buf_.append(s.data(), s.size()); }
  void U8(uint8_t v) { buf_.push_back(static_cast<char>(v)); }
  void U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) buf_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) buf_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  // u32le length, then the bytes.
  void Bytes(std::string_view s) {
    U32(static_cast<uint32_t>(s.size()));
    Raw(s);
  }
  const char* data() const { return buf_.data(); }
  size_t size() const { return buf_.size(); }
  const std::string& str() const { return buf_; }

 private:
  std::string buf_;
};

// The unsigned integer of `bytes` (at most 8) little-endian bytes at `in`.
inline uint64_t LeRead(const char* in, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}

}  // namespace kvtier::internal
