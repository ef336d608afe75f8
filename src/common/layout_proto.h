#pragma once
// KvLayout <-> kvtier.v1.KvLayout, for every process that takes a layout over gRPC.

#include "absl/status/statusor.h"
#include "common/kv_layout.h"
#include "kvtier/v1/types.pb.h"

namespace kvtier {

// INVALID_ARGUMENT naming the field for an unknown kind or dtype, or a layout that fails
// KvLayout::Validate.
absl::StatusOr<KvLayout> LayoutFromProto(const v1::KvLayout& p);
void LayoutToProto(const KvLayout& l, v1::KvLayout* p);

}  // namespace kvtier
