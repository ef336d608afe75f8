#include "kvevents/subscriber.h"

#include <algorithm>
#include <cerrno>
#include <iterator>
#include <vector>

#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "absl/strings/str_cat.h"
#include "kvevents/internal/wire.h"
#include "spdlog/spdlog.h"

namespace kvtier::kvevents {

struct KvEventSubscriber::Atomics {
  std::atomic<uint64_t> batches{0}, replayed{0}, gaps{0}, lost{0}, restarts{0}, duplicates{0},
      malformed{0};
};

namespace {

void Add(std::atomic<uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }

using Clock = std::chrono::steady_clock;

}  // namespace

KvEventSubscriber::KvEventSubscriber(SubscriberOptions options, KvEventHandler* handler)
    : options_(std::move(options)), handler_(handler), counts_(std::make_unique<Atomics>()) {}

absl::StatusOr<std::unique_ptr<KvEventSubscriber>> KvEventSubscriber::Start(
    SubscriberOptions options, KvEventHandler* handler) {
  if (options.endpoint.empty()) {
    return absl::InvalidArgumentError("endpoint: empty (the engine's PUB address is needed)");
  }
  std::unique_ptr<KvEventSubscriber> s(new KvEventSubscriber(std::move(options), handler));
  const SubscriberOptions& o = s->options_;
  s->context_ = std::make_unique<zmq::context_t>(1);
  s->sub_ = std::make_unique<zmq::socket_t>(*s->context_, zmq::socket_type::sub);
  s->sub_->set(zmq::sockopt::linger, 0);
  s->sub_->set(zmq::sockopt::subscribe, o.topic);
  try {
    if (o.bind) {
      s->sub_->bind(o.endpoint);
      s->endpoint_ = s->sub_->get(zmq::sockopt::last_endpoint);
    } else {
      s->sub_->connect(o.endpoint);
      s->endpoint_ = o.endpoint;
    }
  } catch (const zmq::error_t& e) {
    const std::string msg = absl::StrCat("endpoint: cannot ", o.bind ? "bind" : "connect to",
                                         " \"", o.endpoint, "\": ", e.what());
    const bool malformed = e.num() == EINVAL || e.num() == EPROTONOSUPPORT;
    return malformed ? absl::InvalidArgumentError(msg) : absl::UnavailableError(msg);
  }
  if (!o.replay_endpoint.empty()) {
    // Checked here so that a typo shows at start rather than at the first gap.
    try {
      zmq::socket_t probe(*s->context_, zmq::socket_type::dealer);
      probe.set(zmq::sockopt::linger, 0);
      probe.connect(o.replay_endpoint);
    } catch (const zmq::error_t& e) {
      return absl::InvalidArgumentError(absl::StrCat(
          "replay_endpoint: cannot connect to \"", o.replay_endpoint, "\": ", e.what()));
    }
  }
  s->thread_ = std::thread([raw = s.get()] { raw->Run(); });
  return s;
}

KvEventSubscriber::~KvEventSubscriber() { Stop(); }

void KvEventSubscriber::Stop() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  replay_.reset();
  sub_.reset();
  context_.reset();
}

KvEventSubscriber::Counters KvEventSubscriber::counters() const {
  const Atomics& a = *counts_;
  auto get = [](const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); };
  return {get(a.batches),  get(a.replayed),   get(a.gaps),     get(a.lost),
          get(a.restarts), get(a.duplicates), get(a.malformed)};
}

void KvEventSubscriber::Run() {
  while (!stop_.load(std::memory_order_relaxed)) {
    zmq::pollitem_t item{sub_->handle(), 0, ZMQ_POLLIN, 0};
    std::vector<zmq::message_t> frames;
    try {
      zmq::poll(&item, 1, options_.poll_interval);
      if ((item.revents & ZMQ_POLLIN) == 0) continue;
      if (!zmq::recv_multipart(*sub_, std::back_inserter(frames), zmq::recv_flags::dontwait)) {
        continue;
      }
    } catch (const zmq::error_t& e) {
      if (e.num() == ETERM) return;
      spdlog::warn("kv events from {}: {}", endpoint_, e.what());
      continue;
    }
    const std::optional<int64_t> seq =
        frames.size() == 3 ? internal::ParseSeq(frames[1].to_string_view()) : std::nullopt;
    if (!seq.has_value() || *seq < 0) {
      Add(counts_->malformed);
      spdlog::debug("kv events from {}: a message of {} frames that is not [topic, seq, payload]",
                    endpoint_, frames.size());
      continue;
    }
    OnMessage(*seq, frames[2].to_string_view());
  }
}

void KvEventSubscriber::OnMessage(int64_t seq, std::string_view payload) {
  if (!last_seq_.has_value() || seq == *last_seq_ + 1) {
    Deliver(seq, payload, /*replayed=*/false);
    return;
  }
  const int64_t last = *last_seq_;
  if (seq > last) {
    Add(counts_->gaps);
    spdlog::info("kv events from {}: batches {}..{} missed; asking for a replay", endpoint_,
                 last + 1, seq - 1);
    if (!Replay(last + 1, seq)) {
      Add(counts_->lost);
      spdlog::warn("kv events from {}: batches up to {} lost; what the engine holds is unknown "
                   "until its next events",
                   endpoint_, seq - 1);
      handler_->OnLost(seq - 1);
    }
    Deliver(seq, payload, /*replayed=*/false);
    return;
  }
  if ((seq == 0 && last > 0) || last - seq > options_.restart_gap) {
    Add(counts_->restarts);
    Add(counts_->lost);
    spdlog::info("kv events from {}: sequence went from {} to {}: the engine restarted",
                 endpoint_, last, seq);
    handler_->OnLost(seq - 1);
    Deliver(seq, payload, /*replayed=*/false);
    return;
  }
  Add(counts_->duplicates);
}

bool KvEventSubscriber::Replay(int64_t from, int64_t until) {
  if (options_.replay_endpoint.empty()) return false;
  // A fresh socket per replay: a late answer to an earlier request dies with the old one.
  replay_ = std::make_unique<zmq::socket_t>(*context_, zmq::socket_type::dealer);
  replay_->set(zmq::sockopt::linger, 0);
  int64_t expected = from;
  const auto deadline = Clock::now() + options_.replay_timeout;
  try {
    replay_->connect(options_.replay_endpoint);
    // The empty delimiter makes the request look as a REQ socket's does.
    replay_->send(zmq::message_t(), zmq::send_flags::sndmore);
    replay_->send(zmq::buffer(internal::SeqBytes(from)), zmq::send_flags::none);
    while (expected < until && !stop_.load(std::memory_order_relaxed)) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline -
                                                                              Clock::now());
      if (left.count() <= 0) break;
      zmq::pollitem_t item{replay_->handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, std::min(left, options_.poll_interval));
      if ((item.revents & ZMQ_POLLIN) == 0) continue;
      std::vector<zmq::message_t> frames;
      if (!zmq::recv_multipart(*replay_, std::back_inserter(frames), zmq::recv_flags::dontwait)) {
        continue;
      }
      // [""] [topic] seq payload: the delimiter as a REQ client's reply has it, the topic as
      // newer publishers send it.
      size_t at = (!frames.empty() && frames[0].size() == 0) ? 1 : 0;
      if (frames.size() - at == 3) ++at;
      const std::optional<int64_t> seq =
          frames.size() - at == 2 ? internal::ParseSeq(frames[at].to_string_view())
                                  : std::nullopt;
      if (!seq.has_value()) {
        Add(counts_->malformed);
        continue;
      }
      if (*seq == internal::kReplayEndSeq) break;
      if (*seq < expected) continue;
      if (*seq >= until) break;  // live batches from here on come from the SUB socket
      if (*seq > expected) {
        // The publisher no longer keeps [expected, seq): those are lost.
        Add(counts_->lost);
        handler_->OnLost(*seq - 1);
      }
      Deliver(*seq, frames[at + 1].to_string_view(), /*replayed=*/true);
      expected = *seq + 1;
    }
  } catch (const zmq::error_t& e) {
    spdlog::warn("kv events: replay from {}: {}", options_.replay_endpoint, e.what());
  }
  replay_.reset();
  return expected >= until;
}

bool KvEventSubscriber::Deliver(int64_t seq, std::string_view payload, bool replayed) {
  last_seq_ = seq;
  absl::StatusOr<EventBatch> batch = Decode(payload);
  if (!batch.ok()) {
    Add(counts_->malformed);
    spdlog::warn("kv events from {}: batch {} skipped: {}", endpoint_, seq,
                 batch.status().ToString());
    return false;
  }
  Add(counts_->batches);
  if (replayed) Add(counts_->replayed);
  handler_->OnBatch(seq, *batch);
  return true;
}

}  // namespace kvtier::kvevents
