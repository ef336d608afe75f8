#pragma once
// KvEventSubscriber: follows one engine's KV events (vLLM's protocol, kv_events.h) and hands
// each batch, in sequence order, to a KvEventHandler.
//
// A thread receives [topic, seq, payload] messages from a SUB socket. Sequence numbers must rise
// by one. On a gap it asks the engine's replay socket (when configured) for the missing batches
// and waits at most `replay_timeout` for them; what replay cannot fill is reported as lost
// (KvEventHandler::OnLost: whatever the engine was known to hold is unknown now). A number at or
// below the last one is a duplicate and dropped, unless it is 0 or far below (more than
// `restart_gap`): then the engine restarted, which is also reported as lost. A payload that does
// not decode is skipped and counted; it never stops the subscriber.
//
// Thread-safe: the counters from any thread. The handler runs on the subscriber's thread only.
// Stop (or destruction) returns within about `poll_interval` plus `replay_timeout`.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "kvevents/internal/zmq_fwd.h"
#include "kvevents/kv_events.h"

namespace kvtier::kvevents {

// What a subscriber delivers. Called on the subscriber's thread, one call at a time.
class KvEventHandler {
 public:
  virtual ~KvEventHandler() = default;
  // One batch, in sequence order (received live, or replayed after a gap).
  virtual void OnBatch(int64_t seq, const EventBatch& batch) = 0;
  // Batches were lost and could not be replayed, or the engine restarted: forget what this
  // engine was known to hold (as for AllBlocksCleared). Batches after `seq` follow.
  virtual void OnLost(int64_t seq) = 0;
};

struct SubscriberOptions {
  // Required. The engine's PUB endpoint (tcp://HOST:PORT, ipc://PATH).
  std::string endpoint;
  // Default: none. The engine's ROUTER replay endpoint; without it every gap is a loss.
  std::string replay_endpoint;
  std::string topic;  // Default: "" (every topic). The prefix subscribed to.
  // Default: false: connect to `endpoint`. True: bind it, for engines whose publisher connects
  // (vLLM connects when its endpoint is a plain tcp://HOST:PORT).
  bool bind = false;
  // Default: 500 ms. The longest wait for a replay's answer, from request to end marker.
  std::chrono::milliseconds replay_timeout{500};
  // Default: 100 ms. How often the thread looks at whether to stop.
  std::chrono::milliseconds poll_interval{100};
  // Default: 100,000. A sequence number this far below the last one means a restarted engine.
  int64_t restart_gap = 100'000;
};

class KvEventSubscriber {
 public:
  struct Counters {
    uint64_t batches = 0;     // handed to the handler (live and replayed)
    uint64_t replayed = 0;    // of those, from the replay socket
    uint64_t gaps = 0;        // sequence gaps seen
    uint64_t lost = 0;        // OnLost calls (gaps replay could not fill, restarts)
    uint64_t restarts = 0;    // of those, restarts
    uint64_t duplicates = 0;  // out-of-order or repeated batches dropped
    uint64_t malformed = 0;   // messages or payloads that did not decode, skipped
  };

  // Connects (or binds) and starts the thread. INVALID_ARGUMENT for an empty or malformed
  // endpoint, UNAVAILABLE naming the endpoint for one that cannot be bound.
  // REQUIRES: `handler` outlives the subscriber.
  static absl::StatusOr<std::unique_ptr<KvEventSubscriber>> Start(SubscriberOptions options,
                                                                  KvEventHandler* handler);
  ~KvEventSubscriber();
  KvEventSubscriber(const KvEventSubscriber&) = delete;
  KvEventSubscriber& operator=(const KvEventSubscriber&) = delete;

  // Stops the thread and closes the sockets; the handler is not called after it returns.
  void Stop();

  // The SUB endpoint as connected or bound (a bound port 0 resolved).
  const std::string& endpoint() const { return endpoint_; }
  Counters counters() const;

 private:
  struct Atomics;
  KvEventSubscriber(SubscriberOptions options, KvEventHandler* handler);
  void Run();
  void OnMessage(int64_t seq, std::string_view payload);
  // Asks for batches from `from` on and delivers those before `until`; true when all came.
  bool Replay(int64_t from, int64_t until);
  bool Deliver(int64_t seq, std::string_view payload, bool replayed);

  const SubscriberOptions options_;
  KvEventHandler* const handler_;
  std::string endpoint_;
  std::unique_ptr<zmq::context_t> context_;
  std::unique_ptr<zmq::socket_t> sub_;
  std::unique_ptr<zmq::socket_t> replay_;  // made afresh for each replay

  std::optional<int64_t> last_seq_;  // the thread's own
  std::unique_ptr<Atomics> counts_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace kvtier::kvevents
