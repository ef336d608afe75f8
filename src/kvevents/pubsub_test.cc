// The C++ publisher and subscriber over loopback TCP. The protocol against an independent
// implementation: tests/kv_events/ (Python).
#include <chrono>
#include <iterator>
#include <thread>

#include <gtest/gtest.h>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "common/mutex.h"
#include "kvevents/internal/wire.h"
#include "kvevents/publisher.h"
#include "kvevents/subscriber.h"

namespace kvtier::kvevents {
namespace {

using std::chrono::milliseconds;

struct Collector : KvEventHandler {
  Mutex mu;
  std::vector<std::pair<int64_t, EventBatch>> batches ABSL_GUARDED_BY(mu);
  int lost ABSL_GUARDED_BY(mu) = 0;
  void OnBatch(int64_t seq, const EventBatch& b) override {
    MutexLock l(&mu);
    batches.emplace_back(seq, b);
  }
  void OnLost(int64_t) override {
    MutexLock l(&mu);
    ++lost;
  }
  size_t Events() {
    MutexLock l(&mu);
    size_t n = 0;
    for (const auto& [seq, b] : batches) n += b.events.size();
    return n;
  }
};

Event Removed(uint64_t h) { return BlockRemoved{.block_hashes = {h}, .medium = "CPU"}; }

TEST(PubSubTest, SubscriberReceivesPublishedBatchesInOrder) {
  auto pub = KvEventPublisher::Start({.endpoint = "tcp://127.0.0.1:0",
                                      .replay_endpoint = "tcp://127.0.0.1:0",
                                      .topic = "kv"});
  ASSERT_TRUE(pub.ok()) << pub.status();
  Collector c;
  auto sub = KvEventSubscriber::Start(
      {.endpoint = (*pub)->endpoint(), .replay_endpoint = (*pub)->replay_endpoint(),
       .topic = "kv"},
      &c);
  ASSERT_TRUE(sub.ok()) << sub.status();
  // A SUB socket sees nothing sent before it connected: publish until the first event arrives.
  for (int i = 0; i < 200 && c.Events() == 0; ++i) {
    (*pub)->Publish(AllBlocksCleared{});
    std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_GT(c.Events(), 0u);
  const size_t before = c.Events();
  for (uint64_t i = 0; i < 1000; ++i) ASSERT_TRUE((*pub)->Publish(Removed(i)));
  for (int i = 0; i < 500 && c.Events() < before + 1000; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_EQ(c.Events(), before + 1000);
  MutexLock l(&c.mu);
  uint64_t next = 0;
  for (size_t i = 0; i < c.batches.size(); ++i) {
    if (i > 0) {
      EXPECT_EQ(c.batches[i].first, c.batches[i - 1].first + 1);
    }
    for (const Event& e : c.batches[i].second.events) {
      if (const auto* r = std::get_if<BlockRemoved>(&e)) {
        EXPECT_EQ(r->block_hashes[0], EngineHash(next++));
      }
    }
  }
  EXPECT_EQ(next, 1000u);
  EXPECT_EQ(c.lost, 0);
  EXPECT_EQ((*sub)->counters().gaps, 0u);
}

TEST(PubSubTest, ReplaySocketAnswersFromTheAskedSequence) {
  auto pub = KvEventPublisher::Start({.endpoint = "tcp://127.0.0.1:0",
                                      .replay_endpoint = "tcp://127.0.0.1:0",
                                      .max_batch_events = 1});
  ASSERT_TRUE(pub.ok()) << pub.status();
  for (uint64_t i = 0; i < 5; ++i) (*pub)->Publish(Removed(i));
  for (int i = 0; i < 200 && (*pub)->batches_sent() < 5; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_EQ((*pub)->batches_sent(), 5u);
  zmq::context_t ctx;
  zmq::socket_t req(ctx, zmq::socket_type::req);
  req.set(zmq::sockopt::linger, 0);
  req.set(zmq::sockopt::rcvtimeo, 2000);
  req.connect((*pub)->replay_endpoint());
  req.send(zmq::buffer(internal::SeqBytes(3)), zmq::send_flags::none);
  std::vector<zmq::message_t> frames;
  ASSERT_TRUE(zmq::recv_multipart(req, std::back_inserter(frames)));
  ASSERT_EQ(frames.size(), 2u);  // [seq, payload]; a REQ socket keeps only the first reply
  EXPECT_EQ(internal::ParseSeq(frames[0].to_string_view()), 3);
  absl::StatusOr<EventBatch> b = Decode(frames[1].to_string_view());
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(std::get<BlockRemoved>(b->events[0]).block_hashes[0], EngineHash(uint64_t{3}));
}

TEST(PubSubTest, BindErrorsNameTheEndpoint) {
  auto first = KvEventPublisher::Start({.endpoint = "tcp://127.0.0.1:0"});
  ASSERT_TRUE(first.ok());
  auto taken = KvEventPublisher::Start({.endpoint = (*first)->endpoint()});
  ASSERT_FALSE(taken.ok());
  EXPECT_EQ(taken.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(taken.status().ToString().find((*first)->endpoint()), std::string::npos);
  auto bad = KvEventPublisher::Start({.endpoint = "nonsense"});
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().ToString().find("nonsense"), std::string::npos);
  EXPECT_FALSE(KvEventPublisher::Start({}).ok());
  Collector c;
  EXPECT_EQ(KvEventSubscriber::Start({.endpoint = "nonsense"}, &c).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PubSubTest, AFullQueueDropsAndCounts) {
  // Nothing flushes for a minute: the queue fills.
  auto pub = KvEventPublisher::Start({.endpoint = "tcp://127.0.0.1:0",
                                      .max_queue_events = 4,
                                      .max_batch_events = 100,
                                      .flush_interval = milliseconds(60'000),
                                      .linger = milliseconds(100)});
  ASSERT_TRUE(pub.ok());
  int accepted = 0;
  for (uint64_t i = 0; i < 10; ++i) accepted += (*pub)->Publish(Removed(i));
  EXPECT_EQ(accepted, 4);
  EXPECT_EQ((*pub)->events_dropped(), 6u);
}

TEST(PubSubTest, StopIsPrompt) {
  Collector c;
  auto sub = KvEventSubscriber::Start({.endpoint = "tcp://127.0.0.1:1"}, &c);  // nobody there
  ASSERT_TRUE(sub.ok());
  const auto start = std::chrono::steady_clock::now();
  (*sub)->Stop();
  EXPECT_LT(std::chrono::steady_clock::now() - start, milliseconds(1000));
}

}  // namespace
}  // namespace kvtier::kvevents
