#include "cache/flash_admission.h"

#include <algorithm>

namespace kvtier {

const char* NvmeAdmissionName(NvmeAdmission a) {
  return a == NvmeAdmission::kAll ? "all" : "seen-twice";
}

FlashAdmission::FlashAdmission(NvmeAdmission mode, uint64_t bytes_per_s, const Clock* clock)
    : mode_(mode),
      rate_(static_cast<double>(bytes_per_s)),
      clock_(clock),
      tokens_(rate_),
      tokens_at_us_(clock->NowMicros()) {}

bool FlashAdmission::Admit(uint32_t size, uint8_t hits) {
  if (mode_ == NvmeAdmission::kSeenTwice && hits == 0) {
    ++rejections_;
    return false;
  }
  if (rate_ > 0) {
    const int64_t now = clock_->NowMicros();
    tokens_ = std::min(rate_, tokens_ + rate_ * static_cast<double>(now - tokens_at_us_) / 1e6);
    tokens_at_us_ = now;
    if (tokens_ < size) {
      ++rejections_;
      return false;
    }
    tokens_ -= size;
  }
  return true;
}

}  // namespace kvtier
