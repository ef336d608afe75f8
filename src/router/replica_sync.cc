#include "router/replica_sync.h"

#include <chrono>

#include "common/rpc_metrics.h"
#include "router/node_channel.h"
#include "spdlog/spdlog.h"

namespace kvtier::router {

DecisionLog::DecisionLog(size_t capacity) : capacity_(std::max<size_t>(capacity, 1)) {}

void DecisionLog::Decided(std::span<const BlockKey> counted, const BlockKey& placed_key,
                          const std::string& placed_node) {
  if (entries_.size() == capacity_) {
    entries_.pop_front();
    ++first_;
  }
  entries_.push_back({{counted.begin(), counted.end()}, placed_key, placed_node});
  ++version_;
}

void DecisionLog::Worked(const std::string& node, double routed, double reported) {
  Work& w = work_[node];
  w.routed += routed;
  w.reported += reported;
  w.version = ++version_;
}

void DecisionLog::Read(uint64_t* cursor, uint64_t* seen, size_t max,
                       v1::SyncBatch* batch) const {
  if (*cursor < first_) {
    batch->set_decisions_lost(first_ - *cursor);
    *cursor = first_;
  }
  for (; *cursor < end() && max > 0; ++*cursor, --max) {
    const Entry& e = entries_[*cursor - first_];
    v1::SyncedDecision* d = batch->add_decisions();
    d->set_counted_keys(PackKeys(e.counted));
    if (!e.placed_node.empty()) {
      d->set_placed_key(PackKeys({&e.placed_key, 1}));
      d->set_placed_node(e.placed_node);
    }
  }
  for (const auto& [node, work] : work_) {
    if (*seen != 0 && work.version <= *seen) continue;
    v1::NodeWork* w = batch->add_work();
    w->set_node(node);
    w->set_routed_blocks(work.routed);
    w->set_reported_blocks(work.reported);
  }
  // A reader that was sent a capped batch has not seen the decisions left in the log; their
  // work is in the totals already sent.
  *seen = version_;
}

PeerSync::PeerSync(std::string address, uint64_t replica_id, Apply apply, int retry_ms)
    : address_(std::move(address)),
      replica_id_(replica_id),
      apply_(std::move(apply)),
      retry_ms_(retry_ms),
      thread_([this] { Loop(); }) {}

PeerSync::~PeerSync() {
  stop_ = true;
  {
    std::lock_guard lock(ctx_mu_);
    if (ctx_ != nullptr) ctx_->TryCancel();
  }
  thread_.join();
}

void PeerSync::Loop() {
  // The router's own listener is plaintext: so are its peers' channels.
  auto stub = v1::RouteService::NewStub(NodeChannel(address_, NodeCredentials{}, retry_ms_));
  bool failing = false;
  while (!stop_) {
    grpc::ClientContext ctx;
    {
      std::lock_guard lock(ctx_mu_);
      ctx_ = &ctx;
    }
    if (stop_) ctx.TryCancel();
    v1::SyncRequest request;
    request.set_replica_id(replica_id_);
    auto reader = stub->Sync(&ctx, request);
    v1::SyncBatch batch;
    while (reader->Read(&batch)) {
      if (!synced_.exchange(true)) {
        spdlog::info("kvtier-router: syncing with replica {}", address_);
        failing = false;
      }
      apply_(batch);
    }
    const grpc::Status st = reader->Finish();
    {
      std::lock_guard lock(ctx_mu_);
      ctx_ = nullptr;
    }
    synced_ = false;
    if (stop_) break;
    if (st.error_code() == grpc::StatusCode::FAILED_PRECONDITION &&
        st.error_message() == kSyncSelf) {
      is_self_ = true;
      spdlog::debug("kvtier-router: peer {} is this replica", address_);
      break;
    }
    if (!failing) {
      failing = true;
      spdlog::warn(
          "kvtier-router: syncing with replica {} failed ({}: {}); its decisions are unknown "
          "here until a stream opens (retried every {} ms)",
          address_, StatusCodeName(st.error_code()), st.error_message(), retry_ms_);
    }
    for (int w = 0; w < retry_ms_ && !stop_; w += 10) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
}

}  // namespace kvtier::router
