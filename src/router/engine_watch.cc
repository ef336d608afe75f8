#include "router/engine_watch.h"

#include "kvevents/engine_index.h"
#include "kvevents/subscriber.h"

namespace kvtier::router {

class EngineWatch::Sink final : public kvevents::BlockKeySink {
 public:
  Sink(uint32_t id, CacheIndex* index) : id_(id), index_(index) {}
  void OnStored(std::span<const BlockKey> keys) override { index_->Stored(id_, keys); }
  void OnRemoved(std::span<const BlockKey> keys) override { index_->Removed(id_, keys); }
  void OnCleared() override { index_->Forget(id_); }

 private:
  const uint32_t id_;
  CacheIndex* const index_;
};

absl::StatusOr<std::unique_ptr<EngineWatch>> EngineWatch::Start(const std::string& endpoint,
                                                                const std::string& replay_endpoint,
                                                                const EngineEventsOptions& options,
                                                                uint32_t id, CacheIndex* index) {
  std::unique_ptr<EngineWatch> w(new EngineWatch());
  w->sink_ = std::make_unique<Sink>(id, index);
  auto mapper = kvevents::EngineBlockMapper::Create(
      {.model_id = options.model_id, .layout_fingerprint = options.layout_fingerprint},
      w->sink_.get());
  if (!mapper.ok()) return mapper.status();
  w->mapper_ = std::move(*mapper);
  auto subscriber = kvevents::KvEventSubscriber::Start(
      {.endpoint = endpoint, .replay_endpoint = replay_endpoint}, w->mapper_.get());
  if (!subscriber.ok()) return subscriber.status();
  w->subscriber_ = std::move(*subscriber);
  return w;
}

EngineWatch::~EngineWatch() {
  if (subscriber_ != nullptr) subscriber_->Stop();
}

EngineWatch::Counters EngineWatch::counters() const {
  const auto s = subscriber_->counters();
  const auto m = mapper_->counters();
  return {.batches = s.batches,
          .lost = s.lost,
          .malformed = s.malformed,
          .stored_blocks = m.stored_blocks,
          .unknown_parent = m.unknown_parent};
}

}  // namespace kvtier::router
