#pragma once
// KvEventPublisher: publishes KV events in vLLM's protocol (kv_events.h) on a ZMQ PUB socket,
// as multipart messages [topic, seq (8 bytes, big-endian), payload], and optionally serves the
// last batches again on a ZMQ ROUTER replay socket.
//
// Publish() only queues: a background thread gathers what is queued into batches (every
// `flush_interval`, or `max_batch_events` at a time), numbers them 0, 1, 2, ... and sends them.
// The queue is bounded: an event that finds it full is dropped and counted, never waited for.
// A subscriber that missed batches asks the replay socket for them by sending the first sequence
// number it lacks (8 bytes, big-endian, after an empty delimiter frame as REQ and DEALER sockets
// send); it gets [seq, payload] for each batch still kept from that one on, then [-1, ""].
//
// Thread-safe: Publish and the counters from any thread. The sockets belong to the background
// thread. Destruction sends what is queued (up to `linger`) and closes the sockets.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "kvevents/internal/zmq_fwd.h"
#include "kvevents/kv_events.h"

namespace kvtier::kvevents {

struct PublisherOptions {
  // Required. Where the PUB socket binds: tcp://HOST:PORT (port 0 or * for a free one), or
  // ipc://PATH.
  std::string endpoint;
  // Default: none. Where the ROUTER replay socket binds.
  std::string replay_endpoint;
  std::string topic;                // Default: "". The first frame of every message.
  size_t replay_batches = 10'000;   // Default: 10,000. Batches kept for replay.
  size_t max_queue_events = 100'000;  // Default: 100,000. Events queued before drops.
  size_t max_batch_events = 512;    // Default: 512. A batch holds at most this many events.
  // Default: 5 ms. How long an event may wait to be batched with the ones after it.
  std::chrono::milliseconds flush_interval{5};
  int send_hwm = 100'000;  // Default: 100,000. ZMQ high-water mark of the PUB socket.
  // Default: none. EventBatch.data_parallel_rank of every batch.
  std::optional<int64_t> data_parallel_rank;
  WireForm form = WireForm::kArray;  // Default: array (what every version of vLLM reads).
  // Default: 1 s. How long destruction may spend sending what is still queued.
  std::chrono::milliseconds linger{1000};
};

class KvEventPublisher {
 public:
  // Binds the sockets and starts the thread. INVALID_ARGUMENT naming the option for an empty or
  // malformed endpoint, UNAVAILABLE naming the endpoint when it cannot be bound (in use, no such
  // address).
  static absl::StatusOr<std::unique_ptr<KvEventPublisher>> Start(PublisherOptions options);
  ~KvEventPublisher();
  KvEventPublisher(const KvEventPublisher&) = delete;
  KvEventPublisher& operator=(const KvEventPublisher&) = delete;

  // Queues one event; false (and counted as dropped) when the queue is full.
  bool Publish(Event event);

  // The endpoints as bound (a port 0 resolved), for subscribers to connect to.
  const std::string& endpoint() const { return endpoint_; }
  const std::string& replay_endpoint() const { return replay_endpoint_; }

  uint64_t events_published() const { return published_.load(std::memory_order_relaxed); }
  uint64_t events_dropped() const { return dropped_.load(std::memory_order_relaxed); }
  uint64_t batches_sent() const { return batches_.load(std::memory_order_relaxed); }
  uint64_t replays_served() const { return replays_.load(std::memory_order_relaxed); }

 private:
  explicit KvEventPublisher(PublisherOptions options);
  void Run();
  // Sends what is queued, in batches; returns how many events it sent.
  size_t Flush();
  void ServeReplay();

  const PublisherOptions options_;
  std::string endpoint_;
  std::string replay_endpoint_;
  std::unique_ptr<zmq::context_t> context_;
  std::unique_ptr<zmq::socket_t> pub_;
  std::unique_ptr<zmq::socket_t> replay_;  // null without a replay endpoint

  Mutex mu_;
  CondVar wake_;
  std::deque<Event> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // The background thread's own.
  int64_t next_seq_ = 0;
  std::deque<std::pair<int64_t, std::string>> sent_;  // (seq, payload), for replay

  std::atomic<uint64_t> published_{0};
  std::atomic<uint64_t> dropped_{0};
  std::atomic<uint64_t> batches_{0};
  std::atomic<uint64_t> replays_{0};
  std::thread thread_;
};

}  // namespace kvtier::kvevents
