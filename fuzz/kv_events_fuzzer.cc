// Feeds the KV-event decoder (kvevents/kv_events.h, what kvtier-router reads from engines) a
// payload, and what it accepts to EngineBlockMapper. Whatever Decode accepts must encode, in
// either form, to bytes that decode to the same batch (compared by encoding again); whatever it
// refuses must be INVALID_ARGUMENT.

#include <string>

#include "fuzz/fuzz_util.h"
#include "kvevents/engine_index.h"
#include "kvevents/kv_events.h"

namespace {

struct NullSink : kvtier::kvevents::BlockKeySink {
  void OnStored(std::span<const kvtier::BlockKey>) override {}
  void OnRemoved(std::span<const kvtier::BlockKey>) override {}
  void OnCleared() override {}
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvtier::kvevents;
  const std::string_view payload(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<EventBatch> batch = Decode(payload);
  if (!batch.ok()) {
    KVTIER_FUZZ_CHECK(batch.status().code() == absl::StatusCode::kInvalidArgument,
                      batch.status().ToString());
    return 0;
  }
  for (WireForm form : {WireForm::kArray, WireForm::kMap}) {
    const std::string encoded = Encode(*batch, form);
    absl::StatusOr<EventBatch> again = Decode(encoded);
    KVTIER_FUZZ_CHECK(again.ok(), again.status().ToString());
    KVTIER_FUZZ_CHECK(Encode(*again, form) == encoded, "a re-encoded batch differs");
  }
  static NullSink sink;
  static auto mapper =
      EngineBlockMapper::Create({.model_id = "fuzz", .max_blocks = 4096}, &sink).value();
  mapper->Apply(*batch);
  return 0;
}
