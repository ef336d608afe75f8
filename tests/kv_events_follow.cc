// Follows one engine's KV events with KvEventSubscriber and EngineBlockMapper, and prints what
// they did, a line each, for tests/kv_events/ (an independent Python publisher drives it):
//   batch SEQ | lost SEQ | stored KEY,KEY.. | removed KEY,KEY.. | cleared
// and, when stdin closes, one line of counters: "counters name=value ...".
//   kv_events_follow ENDPOINT REPLAY_ENDPOINT|- MODEL_ID LAYOUT_FINGERPRINT_HEX

#include <cstdio>
#include <iostream>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_join.h"
#include "common/mutex.h"
#include "kvevents/engine_index.h"
#include "kvevents/subscriber.h"

namespace {

using namespace kvtier;
using namespace kvtier::kvevents;

Mutex out_mu;
void Say(const std::string& line) {
  MutexLock l(&out_mu);
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

std::string Hexes(std::span<const BlockKey> keys) {
  return absl::StrJoin(keys, ",", [](std::string* out, const BlockKey& k) { *out += k.Hex(); });
}

struct PrintingSink : BlockKeySink {
  void OnStored(std::span<const BlockKey> keys) override { Say("stored " + Hexes(keys)); }
  void OnRemoved(std::span<const BlockKey> keys) override { Say("removed " + Hexes(keys)); }
  void OnCleared() override { Say("cleared"); }
};

// Prints each batch and loss, then hands it to the mapper.
struct Tee : KvEventHandler {
  EngineBlockMapper* mapper;
  void OnBatch(int64_t seq, const EventBatch& batch) override {
    Say("batch " + std::to_string(seq));
    mapper->OnBatch(seq, batch);
  }
  void OnLost(int64_t seq) override {
    Say("lost " + std::to_string(seq));
    mapper->OnLost(seq);
  }
};

}  // namespace

int main(int argc, char** argv) {
  uint64_t fingerprint = 0;
  if (argc != 5 || !absl::SimpleHexAtoi(argv[4], &fingerprint)) {
    std::fprintf(stderr, "usage: %s ENDPOINT REPLAY_ENDPOINT|- MODEL_ID FINGERPRINT_HEX\n", argv[0]);
    return 2;
  }
  PrintingSink sink;
  auto mapper = EngineBlockMapper::Create(
      {.model_id = argv[3], .layout_fingerprint = fingerprint}, &sink);
  if (!mapper.ok()) {
    std::fprintf(stderr, "%s\n", mapper.status().ToString().c_str());
    return 2;
  }
  Tee tee;
  tee.mapper = mapper->get();
  const std::string replay = argv[2];
  auto sub = KvEventSubscriber::Start(
      {.endpoint = argv[1], .replay_endpoint = replay == "-" ? "" : replay}, &tee);
  if (!sub.ok()) {
    std::fprintf(stderr, "%s\n", sub.status().ToString().c_str());
    return 2;
  }
  Say("ready");
  std::string line;
  while (std::getline(std::cin, line)) {
  }
  (*sub)->Stop();
  const auto s = (*sub)->counters();
  const auto m = (*mapper)->counters();
  Say("counters batches=" + std::to_string(s.batches) + " replayed=" + std::to_string(s.replayed) +
      " gaps=" + std::to_string(s.gaps) + " lost=" + std::to_string(s.lost) +
      " restarts=" + std::to_string(s.restarts) + " duplicates=" + std::to_string(s.duplicates) +
      " malformed=" + std::to_string(s.malformed) +
      " unknown_parent=" + std::to_string(m.unknown_parent));
  return 0;
}
