#pragma once
// UnitCache: copies of host buffers (the worker's pool units) kept in another memory, GPU memory
// in practice, so that a prefix read again is not copied again. Once the cache passes its
// capacity, the copies no caller is using go, least recently used first; the copies a caller is
// using (its Mapping) are never dropped under it. A buffer is known by an id and a version: a new
// version (bytes that arrived since) is copied again. Thread-safe.
//
// `Memory` moves the bytes (cuda_attention.cu: cudaMalloc and asynchronous copies; tests: host
// memory):
//   void* Allocate(size_t bytes, std::string* error);   // nullptr on failure
//   void Free(void* p);
//   bool Copy(void* dst, const void* src, size_t bytes, std::string* error);  // may be queued
// Plain C++17 (no Abseil): it is built into the GPU binaries, by nvcc.

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace kvtier::gpu {

template <typename Memory>
class UnitCache {
 public:
  struct Source {
    uint64_t id = 0;       // the buffer
    uint64_t version = 0;  // of its bytes
    const void* host = nullptr;
    size_t bytes = 0;
  };

  struct Stats {
    uint64_t bytes = 0;  // held
    uint64_t units = 0;
    uint64_t copied_bytes = 0;  // all time
    uint64_t reused_bytes = 0;  // all time: mapped without a copy
    uint64_t evictions = 0;
  };

 private:
  struct Entry {
    void* addr = nullptr;
    size_t bytes = 0;
    uint64_t version = 0;
    int users = 0;                       // live Mappings holding it
    uint64_t mapped_by = 0;              // the last Map call that held it
    std::list<uint64_t>::iterator idle;  // its place in idle_ while users is 0
  };

 public:
  // The copies of one Map call, held until it is destroyed.
  class Mapping {
   public:
    ~Mapping() {
      std::lock_guard lock(cache_->mu_);
      for (uint64_t id : ids_) cache_->Unhold(id);
      cache_->MakeRoom(0);
    }
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
    // In the order of the sources.
    const std::vector<const void*>& addresses() const { return addresses_; }
    uint64_t copied_bytes() const { return copied_bytes_; }  // by this Map call

   private:
    friend class UnitCache;
    explicit Mapping(UnitCache* cache) : cache_(cache) {}
    UnitCache* cache_;
    std::vector<uint64_t> ids_;  // one hold per id
    std::vector<const void*> addresses_;
    uint64_t copied_bytes_ = 0;
  };

  UnitCache(Memory memory, uint64_t capacity_bytes)
      : memory_(std::move(memory)), capacity_(capacity_bytes) {}
  ~UnitCache() {
    for (auto& [id, e] : entries_) memory_.Free(e.addr);
  }
  UnitCache(const UnitCache&) = delete;
  UnitCache& operator=(const UnitCache&) = delete;

  // Copies of `sources` (an id may repeat), copying those not held at their version. Others'
  // unused copies make room first; the call's copies may take the cache past its capacity while
  // they are mapped. nullptr with *error set when memory cannot be had (or a copy fails).
  std::unique_ptr<Mapping> Map(const std::vector<Source>& sources, std::string* error) {
    // Declared before the lock: on failure the holds taken so far are given back after it.
    std::unique_ptr<Mapping> m(new Mapping(this));
    std::lock_guard lock(mu_);
    const uint64_t call = ++map_calls_;
    for (const Source& s : sources) {
      auto it = entries_.find(s.id);
      if (it != entries_.end()) {
        const bool held = it->second.mapped_by == call;  // an id repeated in this call
        if (!held) {
          if (it->second.users++ == 0) idle_.erase(it->second.idle);
          it->second.mapped_by = call;
          m->ids_.push_back(s.id);
        }
        if (it->second.bytes != s.bytes || it->second.version != s.version) {
          if (!Refill(it->second, s, error)) return nullptr;
          m->copied_bytes_ += s.bytes;
        } else if (!held) {
          stats_.reused_bytes += s.bytes;
        }
        m->addresses_.push_back(it->second.addr);
        continue;
      }
      Entry e;
      if (!Refill(e, s, error)) {
        if (e.addr != nullptr) {
          memory_.Free(e.addr);
          stats_.bytes -= e.bytes;
        }
        return nullptr;
      }
      e.users = 1;
      e.mapped_by = call;
      m->addresses_.push_back(e.addr);
      m->ids_.push_back(s.id);
      m->copied_bytes_ += s.bytes;
      entries_.emplace(s.id, e);
      ++stats_.units;
    }
    return m;
  }

  Stats stats() const {
    std::lock_guard lock(mu_);
    return stats_;
  }

 private:
  // Makes e hold s's bytes (allocating when the size changed) and copies them.
  bool Refill(Entry& e, const Source& s, std::string* error) {
    if (e.addr == nullptr || e.bytes != s.bytes) {
      if (e.addr != nullptr) {
        memory_.Free(e.addr);
        stats_.bytes -= e.bytes;
        e.addr = nullptr;
      }
      MakeRoom(s.bytes);
      e.addr = memory_.Allocate(s.bytes, error);
      if (e.addr == nullptr) {
        e.bytes = 0;
        return false;
      }
      e.bytes = s.bytes;
      stats_.bytes += s.bytes;
    }
    if (!memory_.Copy(e.addr, s.host, s.bytes, error)) {
      e.version = ~s.version;  // unknown bytes: copied again next time
      return false;
    }
    e.version = s.version;
    stats_.copied_bytes += s.bytes;
    return true;
  }

  // A Mapping lets go of id; with no other holder it becomes the most recently used idle copy.
  void Unhold(uint64_t id) {
    Entry& e = entries_.at(id);
    if (--e.users == 0) {
      idle_.push_front(id);
      e.idle = idle_.begin();
    }
  }

  // Drops idle copies, least recently used first, until `incoming` more bytes fit.
  void MakeRoom(size_t incoming) {
    while (stats_.bytes + incoming > capacity_ && !idle_.empty()) {
      auto it = entries_.find(idle_.back());
      memory_.Free(it->second.addr);
      stats_.bytes -= it->second.bytes;
      --stats_.units;
      ++stats_.evictions;
      entries_.erase(it);
      idle_.pop_back();
    }
  }

  Memory memory_;
  const uint64_t capacity_;
  mutable std::mutex mu_;
  std::unordered_map<uint64_t, Entry> entries_;  // guarded by mu_
  // Copies no Mapping holds, the most recently let go first; guarded by mu_. (Held copies are
  // not in it: making room never walks past them.)
  std::list<uint64_t> idle_;
  Stats stats_;             // guarded by mu_
  uint64_t map_calls_ = 0;  // guarded by mu_
};

}  // namespace kvtier::gpu
