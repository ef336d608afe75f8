#include "router/daemon_watch.h"

#include <chrono>
#include <vector>

#include "common/rpc_metrics.h"
#include "spdlog/spdlog.h"

namespace kvtier::router {

DaemonWatch::DaemonWatch(std::string node, uint32_t id, v1::CacheService::Stub* cache,
                         CacheIndex* index, const NodeCredentials& credentials, int retry_ms)
    : node_(std::move(node)),
      id_(id),
      cache_(cache),
      index_(index),
      credentials_(credentials),
      retry_ms_(retry_ms),
      thread_([this] { Loop(); }) {}

DaemonWatch::~DaemonWatch() {
  stop_ = true;
  {
    std::lock_guard lock(ctx_mu_);
    if (ctx_ != nullptr) ctx_->TryCancel();
  }
  thread_.join();
}

void DaemonWatch::Loop() {
  bool failing = false;
  std::vector<BlockKey> stored, removed;
  while (!stop_) {
    grpc::ClientContext ctx;
    credentials_.Authorize(&ctx);
    {
      std::lock_guard lock(ctx_mu_);
      ctx_ = &ctx;
    }
    if (stop_) ctx.TryCancel();
    auto reader = cache_->WatchBlocks(&ctx, v1::WatchBlocksRequest());
    v1::BlockEventBatch batch;
    while (reader->Read(&batch)) {
      if (!watching_.exchange(true) && failing) {
        spdlog::info("kvtier-router: watching {}'s blocks again", node_);
        failing = false;
      }
      if (batch.reset()) index_->Forget(id_);
      const std::string& ev = batch.events();
      stored.clear();
      removed.clear();
      for (size_t i = 0; i + BlockKey::kBytes + 1 <= ev.size(); i += BlockKey::kBytes + 1) {
        const BlockKey key = BlockKey::FromBytes(reinterpret_cast<const uint8_t*>(ev.data()) + i);
        // In order: a key stored then removed in one batch must end removed.
        if (ev[i + BlockKey::kBytes] != 0) {
          if (!removed.empty()) {
            index_->Removed(id_, removed);
            removed.clear();
          }
          stored.push_back(key);
        } else {
          if (!stored.empty()) {
            index_->Stored(id_, stored);
            stored.clear();
          }
          removed.push_back(key);
        }
      }
      index_->Stored(id_, stored);
      index_->Removed(id_, removed);
    }
    const grpc::Status st = reader->Finish();
    {
      std::lock_guard lock(ctx_mu_);
      ctx_ = nullptr;
    }
    watching_ = false;
    index_->Forget(id_);  // what it holds is unknown until the next stream says
    if (stop_) break;
    if (!failing) {
      failing = true;
      spdlog::warn(
          "kvtier-router: watching {}'s blocks failed ({}: {}); cache-aware routing "
          "knows nothing of it until a stream opens (retried every {} ms)",
          node_, StatusCodeName(st.error_code()), st.error_message(), retry_ms_);
    }
    for (int w = 0; w < retry_ms_ && !stop_; w += 10) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
}

}  // namespace kvtier::router
