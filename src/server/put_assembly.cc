#include "server/put_assembly.h"

#include "absl/strings/str_cat.h"
#include "common/layout_proto.h"
#include "common/status_macros.h"

namespace kvtier::server {
namespace {

absl::StatusOr<BlockKey> ParseKey(const std::string& bytes, const char* what) {
  auto key = BlockKey::FromByteString(bytes);
  if (!key.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": ", key.status().message()));
  }
  return key;
}

}  // namespace

absl::Status PutAssembly::Add(const v1::PutRequest& msg) {
  if (first_) {
    tenant_ = msg.tenant();
    KVTIER_RETURN_IF_ERROR(sink_->Tenant(tenant_));
    if (msg.has_layout()) {
      KVTIER_ASSIGN_OR_RETURN(layout_, LayoutFromProto(msg.layout()));
    }
    first_ = false;
  } else if (!msg.tenant().empty() && msg.tenant() != tenant_) {
    return absl::InvalidArgumentError("tenant: changes within one Put stream");
  }
  if (msg.has_header()) {
    // A complete block is committed as its last byte arrives, so one still open is incomplete.
    if (in_block_) {
      return absl::InvalidArgumentError(absl::StrCat("block ", block_name_, ": new header after ",
                                                     received_, " of ", size_, " bytes"));
    }
    const v1::BlockHeader& h = msg.header();
    KVTIER_ASSIGN_OR_RETURN(const BlockKey key, ParseKey(h.key(), "header.key"));
    BlockKey parent;
    if (!h.parent().empty()) {
      KVTIER_ASSIGN_OR_RETURN(parent, ParseKey(h.parent(), "header.parent"));
    }
    PutOptions opts;
    opts.layout = layout_.has_value() ? &*layout_ : nullptr;
    opts.durable = h.durable();
    if (h.has_checksum()) opts.expected_checksum = h.checksum();
    KVTIER_RETURN_IF_ERROR(sink_->Begin(key, parent, h.size(), opts));
    in_block_ = true;
    size_ = h.size();
    received_ = 0;
    block_name_ = key.Hex();
  }
  if (!msg.data().empty()) {
    if (!in_block_) return absl::InvalidArgumentError("data before any block header");
    KVTIER_RETURN_IF_ERROR(sink_->Write(
        received_,
        std::span(reinterpret_cast<const uint8_t*>(msg.data().data()), msg.data().size())));
    received_ += msg.data().size();
  }
  if (in_block_ && received_ == size_) {
    KVTIER_ASSIGN_OR_RETURN(const PutResult put, sink_->Commit());
    ++(put == PutResult::kStored ? stored_ : present_);
    in_block_ = false;
  }
  return absl::OkStatus();
}

absl::Status PutAssembly::Finish() const {
  if (!in_block_) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("block ", block_name_, ": stream ended after ",
                                                 received_, " of ", size_, " bytes"));
}

}  // namespace kvtier::server
