#include "router/popularity.h"

#include <algorithm>
#include <bit>

namespace kvtier::router {

PrefixPopularity::PrefixPopularity(size_t width, uint32_t window)
    : mask_(std::bit_ceil(std::max<size_t>(width, 64)) - 1),
      inverse_width_(1.0 / static_cast<double>(mask_ + 1)),
      window_(std::max<uint32_t>(window, 16)),
      counters_(4 * (mask_ + 1), 0) {}

size_t PrefixPopularity::Slot(int row, const BlockKey& key) const {
  // Keys are uniform hashes already: each row takes a different mix of the two words.
  const uint64_t h = key.lo * (0x9E3779B97F4A7C15ULL + 2 * row) ^ (key.hi >> (row * 7));
  return row * (mask_ + 1) + ((h ^ (h >> 29)) & mask_);
}

void PrefixPopularity::AddRequest() {
  requests_ += 1;
  if (++since_decay_ < window_) return;
  since_decay_ = 0;
  requests_ /= 2;
  adds_ /= 2;
  for (uint32_t& c : counters_) c >>= 1;
}

void PrefixPopularity::Add(const BlockKey& key) {
  adds_ += 1;
  for (int r = 0; r < 4; ++r) {
    uint32_t& c = counters_[Slot(r, key)];
    if (c != UINT32_MAX) ++c;
  }
}

uint32_t PrefixPopularity::Estimate(const BlockKey& key) const {
  uint32_t m = UINT32_MAX;
  for (int r = 0; r < 4; ++r) m = std::min(m, counters_[Slot(r, key)]);
  return m;
}

double PrefixPopularity::ShareOf(uint32_t estimate) const {
  if (requests_ <= 0) return 0.0;
  // Other keys put adds_ / width in each counter on average: count-mean-min.
  const double noise = adds_ * inverse_width_;
  return std::max(0.0, static_cast<double>(estimate) - noise) / requests_;
}

double PrefixPopularity::Share(const BlockKey& key) const { return ShareOf(Estimate(key)); }

uint32_t PrefixPopularity::AddAndEstimate(const BlockKey& key) {
  adds_ += 1;
  uint32_t m = UINT32_MAX;
  for (int r = 0; r < 4; ++r) {
    uint32_t& c = counters_[Slot(r, key)];
    if (c != UINT32_MAX) ++c;
    m = std::min(m, c);
  }
  return m;
}

double PrefixPopularity::AddAndShare(const BlockKey& key, bool* seen) {
  const uint32_t m = AddAndEstimate(key);
  *seen = m > 1;
  return ShareOf(m);
}

bool PrefixPopularity::AddAndOver(const BlockKey& key, double share, bool* seen) {
  const uint32_t m = AddAndEstimate(key);
  *seen = m > 1;
  if (requests_ <= 0) return false;
  // ShareOf(m) > share, multiplied out.
  const double noise = adds_ * inverse_width_;
  return static_cast<double>(m) - noise > share * requests_;
}

}  // namespace kvtier::router
