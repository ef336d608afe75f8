#include "kvevents/publisher.h"

#include <cerrno>
#include <iterator>
#include <vector>

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvevents/internal/wire.h"
#include "spdlog/spdlog.h"

namespace kvtier::kvevents {
namespace {

// An endpoint that ZMQ refuses as written (rather than as a place it cannot bind right now).
bool IsMalformed(int err) {
  return err == EINVAL || err == EPROTONOSUPPORT || err == ENOCOMPATPROTO;
}

absl::Status Bind(zmq::socket_t& socket, const std::string& endpoint, const std::string& option,
                  std::string* bound) {
  try {
    socket.bind(endpoint);
    *bound = socket.get(zmq::sockopt::last_endpoint);
  } catch (const zmq::error_t& e) {
    const std::string msg =
        absl::StrCat(option, ": cannot bind \"", endpoint, "\": ", e.what());
    return IsMalformed(e.num()) ? absl::InvalidArgumentError(msg) : absl::UnavailableError(msg);
  }
  return absl::OkStatus();
}

double UnixSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

KvEventPublisher::KvEventPublisher(PublisherOptions options) : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<KvEventPublisher>> KvEventPublisher::Start(
    PublisherOptions options) {
  if (options.endpoint.empty()) {
    return absl::InvalidArgumentError("endpoint: empty (the PUB socket needs an address)");
  }
  if (options.replay_batches == 0 && !options.replay_endpoint.empty()) {
    return absl::InvalidArgumentError("replay_batches: 0 with a replay endpoint");
  }
  if (options.max_batch_events == 0 || options.max_queue_events == 0) {
    return absl::InvalidArgumentError("max_batch_events and max_queue_events must be positive");
  }
  std::unique_ptr<KvEventPublisher> p(new KvEventPublisher(std::move(options)));
  const PublisherOptions& o = p->options_;
  p->context_ = std::make_unique<zmq::context_t>(1);
  p->pub_ = std::make_unique<zmq::socket_t>(*p->context_, zmq::socket_type::pub);
  p->pub_->set(zmq::sockopt::sndhwm, o.send_hwm);
  p->pub_->set(zmq::sockopt::linger, static_cast<int>(o.linger.count()));
  KVTIER_RETURN_IF_ERROR(Bind(*p->pub_, o.endpoint, "endpoint", &p->endpoint_));
  if (!o.replay_endpoint.empty()) {
    p->replay_ = std::make_unique<zmq::socket_t>(*p->context_, zmq::socket_type::router);
    p->replay_->set(zmq::sockopt::linger, 0);
    KVTIER_RETURN_IF_ERROR(
        Bind(*p->replay_, o.replay_endpoint, "replay_endpoint", &p->replay_endpoint_));
  }
  p->thread_ = std::thread([raw = p.get()] { raw->Run(); });
  return p;
}

KvEventPublisher::~KvEventPublisher() {
  {
    MutexLock l(&mu_);
    stopping_ = true;
  }
  wake_.Signal();
  if (thread_.joinable()) thread_.join();
  replay_.reset();
  pub_.reset();
  context_.reset();
}

bool KvEventPublisher::Publish(Event event) {
  bool full_batch = false;
  {
    MutexLock l(&mu_);
    if (queue_.size() >= options_.max_queue_events) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    queue_.push_back(std::move(event));
    full_batch = queue_.size() >= options_.max_batch_events;
  }
  if (full_batch) wake_.Signal();
  return true;
}

void KvEventPublisher::Run() {
  const auto interval = options_.flush_interval;
  for (;;) {
    bool stopping = false;
    if (replay_ != nullptr) {
      // The replay socket is polled between flushes; a full batch waits at most one interval.
      zmq::pollitem_t item{replay_->handle(), 0, ZMQ_POLLIN, 0};
      try {
        zmq::poll(&item, 1, interval);
      } catch (const zmq::error_t& e) {
        spdlog::warn("kv events: polling the replay socket: {}", e.what());
      }
      // At most a few requests per round, so that a flood of them cannot hold up publishing.
      for (int i = 0; i < 16 && (item.revents & ZMQ_POLLIN); ++i) {
        ServeReplay();
        item.revents = 0;
        zmq::poll(&item, 1, std::chrono::milliseconds(0));
      }
      MutexLock l(&mu_);
      stopping = stopping_;
    } else {
      MutexLock l(&mu_);
      if (!stopping_ && queue_.size() < options_.max_batch_events) {
        wake_.WaitFor(&mu_, std::chrono::duration_cast<std::chrono::microseconds>(interval).count());
      }
      stopping = stopping_;
    }
    Flush();
    if (stopping) break;
  }
  // What is still queued goes out, for up to `linger`.
  const auto deadline = std::chrono::steady_clock::now() + options_.linger;
  while (Flush() > 0 && std::chrono::steady_clock::now() < deadline) {
  }
}

size_t KvEventPublisher::Flush() {
  size_t sent = 0;
  for (;;) {
    EventBatch batch;
    {
      MutexLock l(&mu_);
      const size_t n = std::min(queue_.size(), options_.max_batch_events);
      if (n == 0) return sent;
      batch.events.reserve(n);
      for (size_t i = 0; i < n; ++i) {
        batch.events.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    batch.ts = UnixSeconds();
    batch.data_parallel_rank = options_.data_parallel_rank;
    std::string payload = Encode(batch, options_.form);
    const int64_t seq = next_seq_++;
    const std::string seq_bytes = internal::SeqBytes(seq);
    try {
      // A PUB socket never blocks: past its high-water mark a slow subscriber's copy is dropped
      // (the subscriber sees the gap and asks the replay socket).
      pub_->send(zmq::buffer(options_.topic), zmq::send_flags::sndmore);
      pub_->send(zmq::buffer(seq_bytes), zmq::send_flags::sndmore);
      pub_->send(zmq::buffer(payload), zmq::send_flags::none);
    } catch (const zmq::error_t& e) {
      spdlog::warn("kv events: sending batch {}: {}", seq, e.what());
    }
    batches_.fetch_add(1, std::memory_order_relaxed);
    published_.fetch_add(batch.events.size(), std::memory_order_relaxed);
    sent += batch.events.size();
    if (replay_ != nullptr) {
      sent_.emplace_back(seq, std::move(payload));
      while (sent_.size() > options_.replay_batches) sent_.pop_front();
    }
  }
}

void KvEventPublisher::ServeReplay() {
  std::vector<zmq::message_t> frames;
  try {
    if (!zmq::recv_multipart(*replay_, std::back_inserter(frames), zmq::recv_flags::dontwait)) {
      return;
    }
  } catch (const zmq::error_t& e) {
    spdlog::warn("kv events: replay request: {}", e.what());
    return;
  }
  // [identity, "", seq] from REQ and DEALER-with-delimiter clients, [identity, seq] from bare
  // DEALERs; the replies are framed the same way.
  if (frames.size() < 2 || frames.size() > 3) return;
  const bool delimited = frames.size() == 3;
  if (delimited && frames[1].size() != 0) return;
  const std::optional<int64_t> start = internal::ParseSeq(frames.back().to_string_view());
  replays_.fetch_add(1, std::memory_order_relaxed);
  const std::string identity = frames[0].to_string();
  auto reply = [&](std::string_view seq, std::string_view payload) {
    // ROUTER drops what it cannot deliver (a peer gone, or past its high-water mark); it never
    // blocks.
    replay_->send(zmq::buffer(identity), zmq::send_flags::sndmore);
    if (delimited) replay_->send(zmq::message_t(), zmq::send_flags::sndmore);
    replay_->send(zmq::buffer(seq), zmq::send_flags::sndmore);
    replay_->send(zmq::buffer(payload), zmq::send_flags::none);
  };
  try {
    if (start.has_value()) {
      for (const auto& [seq, payload] : sent_) {
        if (seq >= *start) reply(internal::SeqBytes(seq), payload);
      }
    }
    reply(internal::SeqBytes(internal::kReplayEndSeq), "");
  } catch (const zmq::error_t& e) {
    spdlog::warn("kv events: replay reply: {}", e.what());
  }
}

}  // namespace kvtier::kvevents
