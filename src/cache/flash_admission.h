#pragma once
// FlashAdmission: which blocks demoted from host RAM are written to flash (to spare its write
// endurance), as its own policy: `seen-twice` admits only blocks read at least once since their
// put, and an optional byte budget per second caps what demotions write. Durable puts are not
// asked. Not thread-safe: the store calls it under its policy lock.

#include <cstdint>

#include "common/clock.h"

namespace kvtier {

enum class NvmeAdmission : uint8_t {
  kAll = 0,        // every block demoted from host is written to flash
  kSeenTwice = 1,  // only blocks read at least once after their put (or put durable)
};
const char* NvmeAdmissionName(NvmeAdmission a);

class FlashAdmission {
 public:
  // bytes_per_s 0: no budget.
  FlashAdmission(NvmeAdmission mode, uint64_t bytes_per_s, const Clock* clock);

  // Whether a block of `size` bytes, read `hits` times since its put, goes to flash; an admitted
  // block's bytes are taken from the budget.
  bool Admit(uint32_t size, uint8_t hits);
  uint64_t rejections() const { return rejections_; }

 private:
  const NvmeAdmission mode_;
  const double rate_;
  const Clock* clock_;
  double tokens_;
  int64_t tokens_at_us_;
  uint64_t rejections_ = 0;
};

}  // namespace kvtier
