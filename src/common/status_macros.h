#pragma once
// Return-if-error and assign-or-return for absl::Status / absl::StatusOr (the pinned Abseil has
// none of its own).

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define KVTIER_RETURN_IF_ERROR(expr)              \
  do {                                            \
    ::absl::Status kvtier_status_ = (expr);       \
    if (!kvtier_status_.ok()) return kvtier_status_; \
  } while (0)

#define KVTIER_CONCAT_INNER(a, b) a##b
#define KVTIER_CONCAT(a, b) KVTIER_CONCAT_INNER(a, b)

#define KVTIER_ASSIGN_OR_RETURN(lhs, rexpr) \
  KVTIER_ASSIGN_OR_RETURN_IMPL(KVTIER_CONCAT(kvtier_statusor_, __LINE__), lhs, rexpr)

#define KVTIER_ASSIGN_OR_RETURN_IMPL(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                                 \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = std::move(tmp).value()
