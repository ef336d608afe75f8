#include "kvevents/engine_index.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvtier::kvevents {

struct EngineBlockMapper::Atomics {
  std::atomic<uint64_t> stored_blocks{0}, removed_blocks{0}, clears{0}, unknown_parent{0},
      unknown_removed{0}, malformed_events{0}, unsupported_extra_keys{0}, other_group{0},
      overflows{0};
};

namespace {

void Add(std::atomic<uint64_t>& c, uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }

// Senders older than the medium field mean the GPU.
uint8_t MediumBit(const std::optional<std::string>& medium) {
  if (!medium.has_value() || *medium == kMediumGpu) return 1;
  if (*medium == kMediumCpu) return 2;
  if (*medium == kMediumDisk) return 4;
  return 8;
}

// Hashers are few per engine (one per salt, adapter and block size); salted requests could make
// many, so the cache is dropped whole past this.
constexpr size_t kMaxHashers = 1024;

}  // namespace

EngineBlockMapper::Held* EngineBlockMapper::HeldMap::Find(const EngineHash& hash) {
  if (const uint64_t* v = std::get_if<uint64_t>(&hash)) {
    auto it = ints_.find(*v);
    return it == ints_.end() ? nullptr : &it->second;
  }
  auto it = bytes_.find(std::get<std::string>(hash));
  return it == bytes_.end() ? nullptr : &it->second;
}

std::pair<EngineBlockMapper::Held*, bool> EngineBlockMapper::HeldMap::TryEmplace(
    const EngineHash& hash, const Held& held) {
  if (const uint64_t* v = std::get_if<uint64_t>(&hash)) {
    auto [it, inserted] = ints_.try_emplace(*v, held);
    return {&it->second, inserted};
  }
  auto [it, inserted] = bytes_.try_emplace(std::get<std::string>(hash), held);
  return {&it->second, inserted};
}

void EngineBlockMapper::HeldMap::Erase(const EngineHash& hash) {
  if (const uint64_t* v = std::get_if<uint64_t>(&hash)) {
    ints_.erase(*v);
  } else {
    bytes_.erase(std::get<std::string>(hash));
  }
}

void EngineBlockMapper::HeldMap::Prefetch(const EngineHash& hash) const {
  if (const uint64_t* v = std::get_if<uint64_t>(&hash)) {
    ints_.prefetch(*v);
  } else {
    bytes_.prefetch(std::get<std::string>(hash));
  }
}

void EngineBlockMapper::HeldMap::Clear() {
  // absl's clear() frees a large table; growing it back rehashes it again and again.
  const size_t ints = ints_.size(), bytes = bytes_.size();
  ints_.clear();
  bytes_.clear();
  ints_.reserve(ints);
  bytes_.reserve(bytes);
}

EngineBlockMapper::EngineBlockMapper(EngineMapperOptions options, BlockKeySink* sink)
    : options_(std::move(options)), sink_(sink), counts_(std::make_unique<Atomics>()) {}

EngineBlockMapper::~EngineBlockMapper() = default;

absl::StatusOr<std::unique_ptr<EngineBlockMapper>> EngineBlockMapper::Create(
    EngineMapperOptions options, BlockKeySink* sink) {
  if (options.model_id.empty()) return absl::InvalidArgumentError("model_id: empty");
  if (options.max_blocks == 0) return absl::InvalidArgumentError("max_blocks: 0");
  return std::unique_ptr<EngineBlockMapper>(new EngineBlockMapper(std::move(options), sink));
}

EngineBlockMapper::Counters EngineBlockMapper::counters() const {
  const Atomics& a = *counts_;
  auto get = [](const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); };
  return {get(a.stored_blocks),   get(a.removed_blocks),         get(a.clears),
          get(a.unknown_parent),  get(a.unknown_removed),        get(a.malformed_events),
          get(a.unsupported_extra_keys), get(a.other_group), get(a.overflows)};
}

void EngineBlockMapper::Apply(const EventBatch& batch) {
  for (const Event& e : batch.events) Apply(e);
}

void EngineBlockMapper::Apply(const Event& event) {
  if (const auto* s = std::get_if<BlockStored>(&event)) {
    OnStored(*s);
  } else if (const auto* r = std::get_if<BlockRemoved>(&event)) {
    OnRemoved(*r);
  } else {
    Clear();
  }
}

void EngineBlockMapper::Clear() {
  blocks_.Clear();
  Add(counts_->clears);
  sink_->OnCleared();
}

absl::StatusOr<const ChainHasher*> EngineBlockMapper::Hasher(const std::string& salt,
                                                             const std::string& adapter,
                                                             uint32_t block_size) {
  const KeyNamespace ns{.tenant_salt = salt,
                        .model_id = options_.model_id,
                        .layout_fingerprint = options_.layout_fingerprint,
                        .adapter_id = adapter};
  std::string id = ChainHasher::EncodeNamespace(ns, block_size, options_.algorithm);
  auto it = hashers_.find(id);
  if (it != hashers_.end()) return it->second.get();
  KVTIER_ASSIGN_OR_RETURN(ChainHasher h, ChainHasher::Create(ns, block_size, options_.algorithm));
  if (hashers_.size() >= kMaxHashers) hashers_.clear();
  auto [at, _] = hashers_.emplace(std::move(id), std::make_unique<ChainHasher>(std::move(h)));
  return at->second.get();
}

void EngineBlockMapper::OnStored(const BlockStored& e) {
  if (e.group_idx.value_or(0) != options_.group_idx) {
    Add(counts_->other_group);
    return;
  }
  const size_t n = e.block_hashes.size();
  if (e.block_size == 0 || e.token_ids.size() != n * e.block_size) {
    Add(counts_->malformed_events);
    return;
  }
  // The cache salt sits in the first block's extra keys, after the LoRA name (vLLM orders them
  // LoRA name, multimodal keys, cache salt, prompt-embedding hash); only a prompt's first block
  // has it, and the chain carries it on.
  std::string salt;
  if (e.extra_keys.has_value()) {
    for (size_t i = 0; i < e.extra_keys->size(); ++i) {
      const std::optional<std::string>& raw = (*e.extra_keys)[i];
      if (!raw.has_value()) continue;
      absl::StatusOr<ExtraKeySummary> keys = SummarizeExtraKeys(*raw);
      if (!keys.ok()) {
        Add(counts_->malformed_events);
        return;
      }
      if (keys->has_non_strings) {
        Add(counts_->unsupported_extra_keys);
        return;
      }
      if (i != 0 || e.parent_block_hash.has_value()) continue;
      bool skipped_lora = !e.lora_name.has_value();
      for (const std::string& s : keys->strings) {
        if (!skipped_lora && s == *e.lora_name) {
          skipped_lora = true;
          continue;
        }
        salt = s;
        break;
      }
    }
  }
  std::string adapter;
  if (e.lora_name.has_value()) {
    adapter = *e.lora_name;
  } else if (e.lora_id.has_value()) {
    adapter = absl::StrCat("lora_id:", *e.lora_id);
  }
  absl::StatusOr<const ChainHasher*> hasher = Hasher(salt, adapter, e.block_size);
  if (!hasher.ok()) {
    Add(counts_->malformed_events);
    return;
  }
  BlockKey parent = (*hasher)->root();
  if (e.parent_block_hash.has_value()) {
    const Held* held = blocks_.Find(*e.parent_block_hash);
    if (held == nullptr) {
      Add(counts_->unknown_parent);
      return;
    }
    parent = held->key;
  }
  if (blocks_.size() + n > options_.max_blocks) {
    Add(counts_->overflows);
    Clear();
    if (e.parent_block_hash.has_value()) return;  // its parent is forgotten too
  }
  // The blocks' entries are fetched while their keys are hashed, rather than each lookup
  // waiting on memory in turn.
  for (const EngineHash& h : e.block_hashes) blocks_.Prefetch(h);
  keys_.clear();
  const std::span<const uint32_t> tokens(e.token_ids);
  for (size_t i = 0; i < n; ++i) {
    parent = (*hasher)->Next(parent, tokens.subspan(i * e.block_size, e.block_size));
    keys_.push_back(parent);
  }
  const uint8_t bit = MediumBit(e.medium);
  scratch_.clear();
  std::vector<BlockKey> replaced;
  for (size_t i = 0; i < n; ++i) {
    const BlockKey& key = keys_[i];
    auto [held, inserted] = blocks_.TryEmplace(e.block_hashes[i], Held{key, 0});
    if (!inserted && held->key != key) {
      // The engine reused a hash for other content (another namespace): the old key went.
      replaced.push_back(held->key);
      *held = Held{key, 0};
    }
    if (held->media == 0) scratch_.push_back(key);
    held->media |= bit;
  }
  if (!replaced.empty()) {
    Add(counts_->removed_blocks, replaced.size());
    sink_->OnRemoved(replaced);
  }
  if (!scratch_.empty()) {
    Add(counts_->stored_blocks, scratch_.size());
    sink_->OnStored(scratch_);
  }
}

void EngineBlockMapper::OnRemoved(const BlockRemoved& e) {
  if (e.group_idx.value_or(0) != options_.group_idx) {
    Add(counts_->other_group);
    return;
  }
  const uint8_t bit = MediumBit(e.medium);
  scratch_.clear();
  for (const EngineHash& h : e.block_hashes) blocks_.Prefetch(h);
  for (const EngineHash& h : e.block_hashes) {
    Held* held = blocks_.Find(h);
    if (held == nullptr) {
      Add(counts_->unknown_removed);
      continue;
    }
    held->media &= ~bit;
    if (held->media != 0) continue;  // still held in another medium
    scratch_.push_back(held->key);
    blocks_.Erase(h);
  }
  if (!scratch_.empty()) {
    Add(counts_->removed_blocks, scratch_.size());
    sink_->OnRemoved(scratch_);
  }
}

}  // namespace kvtier::kvevents
