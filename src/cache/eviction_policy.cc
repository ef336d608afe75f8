#include "cache/eviction_policy.h"

#include "absl/strings/str_cat.h"

namespace kvtier::cache_internal {
namespace {

// a later than b on the store's access clock, which wraps.
bool Newer(uint32_t a, uint32_t b) { return static_cast<int32_t>(a - b) > 0; }

}  // namespace

uint8_t PrefixAwarePolicy::ClassOf(const Entry& e) const {
  if (!e.parent.IsZero() && e.parent_ref == kNoEntry) return kOrphan;
  return e.kids_here == 0 ? kLeaf : kInterior;
}

void PrefixAwarePolicy::Unlist(uint32_t h, Tier listed_in) {
  Entry& e = E(h);
  if (e.cls == kUnlisted) return;
  List& l = ListOf(listed_in, e.cls);
  if (e.lru_prev != kNoEntry)
    E(e.lru_prev).lru_next = e.lru_next;
  else
    l.head = e.lru_next;
  if (e.lru_next != kNoEntry)
    E(e.lru_next).lru_prev = e.lru_prev;
  else
    l.tail = e.lru_prev;
  e.lru_prev = e.lru_next = kNoEntry;
  --l.size;
  if (e.cls == kOrphan) --orphans_;
  e.cls = kUnlisted;
}

// Lists `h` in its tier and class, placed by its recency (walking from the least recent end,
// a bounded number of steps: exact for the usual case of an old block changing class).
void PrefixAwarePolicy::ListByRecency(uint32_t h) {
  Entry& e = E(h);
  e.listed_access = e.last_access.load(std::memory_order_relaxed);
  e.cls = ClassOf(e);
  if (e.cls == kOrphan) ++orphans_;
  List& l = ListOf(e.tier, e.cls);
  ++l.size;
  if (l.head == kNoEntry || !Newer(E(l.head).listed_access, e.listed_access)) {  // the most recent
    e.lru_prev = kNoEntry;
    e.lru_next = l.head;
    if (l.head != kNoEntry)
      E(l.head).lru_prev = h;
    else
      l.tail = h;
    l.head = h;
    return;
  }
  // From the least recent end, find the first node at least as recent as e and insert e just
  // behind it. Gives up after 64 steps (e then sits a little too close to the tail).
  uint32_t newer = l.tail;
  for (int steps = 0; Newer(e.listed_access, E(newer).listed_access) && steps < 64; ++steps) {
    newer = E(newer).lru_prev;
  }
  e.lru_prev = newer;
  e.lru_next = E(newer).lru_next;
  if (e.lru_next != kNoEntry)
    E(e.lru_next).lru_prev = h;
  else
    l.tail = h;
  E(newer).lru_next = h;
}

void PrefixAwarePolicy::Relist(uint32_t h) {
  Unlist(h);
  ListByRecency(h);
}

void PrefixAwarePolicy::Show(uint32_t h) {
  if (E(h).cls == kUnlisted) ListByRecency(h);
}

void PrefixAwarePolicy::RecordAccess(uint32_t h) {
  if (E(h).cls != kUnlisted) Relist(h);  // the newest: becomes the head at once
}

// Adds `delta` to a parent's count of children at its tier or above, relisting it when it
// turns from chain tail to interior or back.
void PrefixAwarePolicy::AdjustKidsHere(uint32_t parent, int delta) {
  Entry& p = E(parent);
  const bool was_leaf = p.kids_here == 0;
  p.kids_here += delta;
  if (was_leaf != (p.kids_here == 0) && p.cls != kUnlisted) Relist(parent);
}

void PrefixAwarePolicy::AddChild(uint32_t parent, uint32_t child) {
  Entry& p = E(parent);
  Entry& c = E(child);
  c.parent_ref = parent;
  c.prev_sibling = kNoEntry;
  c.next_sibling = p.first_child;
  if (p.first_child != kNoEntry) E(p.first_child).prev_sibling = child;
  p.first_child = child;
  if (c.tier <= p.tier) AdjustKidsHere(parent, +1);
}

// Keeps chain-tail classes right after `h` moved from tier `from` to its current tier.
void PrefixAwarePolicy::RecountKidsHere(uint32_t h, Tier from) {
  Entry& e = E(h);
  if (e.parent_ref != kNoEntry) {
    const Tier pt = E(e.parent_ref).tier;
    const int delta = int{e.tier <= pt} - int{from <= pt};
    if (delta != 0) AdjustKidsHere(e.parent_ref, delta);
  }
  e.kids_here = 0;
  for (uint32_t c = e.first_child; c != kNoEntry; c = E(c).next_sibling) {
    if (E(c).tier <= e.tier) ++e.kids_here;
  }
}

void PrefixAwarePolicy::TierChanged(uint32_t h, Tier from) {
  const bool was_listed = listed(h);
  Unlist(h, from);
  RecountKidsHere(h, from);
  if (was_listed) ListByRecency(h);
}

// Links a newly visible block into the chain structure: to its parent if present, else to the
// wait list of its parent's key; adopts blocks that were waiting for it; then lists it.
void PrefixAwarePolicy::Add(uint32_t h) {
  Entry& e = E(h);
  e.parent_ref = e.first_child = e.next_sibling = e.prev_sibling = kNoEntry;
  e.kids_here = 0;
  if (!e.parent.IsZero()) {
    const uint32_t p = index_->Find(e.parent);
    if (p != kNoEntry && p != h) {
      AddChild(p, h);
    } else {
      auto [it, inserted] = waiting_.try_emplace(e.parent, h);
      e.next_sibling = inserted ? kNoEntry : it->second;
      if (!inserted) {
        E(it->second).prev_sibling = h;
        it->second = h;
      }
    }
  }
  if (auto it = waiting_.find(e.key); it != waiting_.end()) {
    uint32_t c = it->second;
    waiting_.erase(it);
    while (c != kNoEntry) {
      const uint32_t next = E(c).next_sibling;
      AddChild(h, c);
      if (listed(c)) Relist(c);  // no longer an orphan
      c = next;
    }
  }
  ListByRecency(h);
}

// Unlinks a departing block: from its parent (which may become a tail) or its wait list, and
// turns its children into orphans waiting for its key.
void PrefixAwarePolicy::Remove(uint32_t h) {
  Unlist(h);
  Entry& e = E(h);
  if (e.prev_sibling != kNoEntry) E(e.prev_sibling).next_sibling = e.next_sibling;
  if (e.next_sibling != kNoEntry) E(e.next_sibling).prev_sibling = e.prev_sibling;
  if (e.parent_ref != kNoEntry && e.tier <= E(e.parent_ref).tier) {
    AdjustKidsHere(e.parent_ref, -1);
  }
  if (e.prev_sibling == kNoEntry) {
    if (e.parent_ref != kNoEntry) {
      E(e.parent_ref).first_child = e.next_sibling;
    } else if (!e.parent.IsZero()) {
      auto it = waiting_.find(e.parent);
      if (it != waiting_.end() && it->second == h) {
        if (e.next_sibling == kNoEntry)
          waiting_.erase(it);
        else
          it->second = e.next_sibling;
      }
    }
  }
  e.parent_ref = e.prev_sibling = e.next_sibling = kNoEntry;
  uint32_t c = e.first_child;
  e.first_child = kNoEntry;
  e.kids_here = 0;
  if (c == kNoEntry) return;
  waiting_[e.key] = c;
  for (; c != kNoEntry; c = E(c).next_sibling) {
    E(c).parent_ref = kNoEntry;
    if (listed(c)) Relist(c);
  }
}

uint32_t PrefixAwarePolicy::PickVictim(Tier tier, absl::FunctionRef<bool(uint32_t)> usable) {
  return Pick(tier, SIZE_MAX, [](const Entry&) { return true; }, usable);
}

uint32_t PrefixAwarePolicy::PickTenantVictim(Tier tier, uint16_t tenant, size_t max_steps,
                                             absl::FunctionRef<bool(uint32_t)> usable) {
  return Pick(tier, max_steps, [tenant](const Entry& e) { return e.tenant == tenant; }, usable);
}

uint32_t PrefixAwarePolicy::Pick(Tier tier, size_t max_steps,
                                 absl::FunctionRef<bool(const Entry&)> wanted,
                                 absl::FunctionRef<bool(uint32_t)> usable) {
  size_t steps = 0;
  for (uint8_t cls = 0; cls < kNumClasses; ++cls) {
    for (uint32_t h = ListOf(tier, cls).tail; h != kNoEntry;) {
      if (steps++ == max_steps) return kNoEntry;
      Entry& e = E(h);
      const uint32_t prev = e.lru_prev;
      if (!wanted(e)) {
        // someone else's: left where it is
      } else if (Newer(e.last_access.load(std::memory_order_relaxed), e.listed_access)) {
        Relist(h);  // read since it was listed, by a reader that did not wait for the lock
      } else if (usable(h)) {
        return h;
      } else {
        Unlist(h);
      }
      h = prev;
    }
  }
  return kNoEntry;
}

uint64_t PrefixAwarePolicy::listed_blocks() const {
  uint64_t n = 0;
  for (const auto& tier : lists_) {
    for (const List& l : tier) n += l.size;
  }
  return n;
}

uint64_t PrefixAwarePolicy::MemoryBytes() const {
  return waiting_.capacity() * (sizeof(BlockKey) + sizeof(uint32_t) + 1);
}

absl::Status PrefixAwarePolicy::Check() const {
  auto fail = [](const std::string& what) { return absl::InternalError("consistency: " + what); };
  uint64_t orphans = 0;
  for (int t = 0; t < kNumTiers; ++t) {
    for (uint8_t c = 0; c < kNumClasses; ++c) {
      const List& list = lists_[t][c];
      uint64_t n = 0;
      uint32_t prev = kNoEntry;
      for (uint32_t h = list.head; h != kNoEntry; prev = h, h = E(h).lru_next) {
        const Entry& e = E(h);
        if (++n > list.size) return fail("list longer than its size");
        if (e.lru_prev != prev) return fail("broken back link");
        if (static_cast<int>(e.tier) != t) {
          return fail(absl::StrCat("block ", e.key.Hex(), " of tier ", TierName(e.tier),
                                   " listed in tier ", TierName(static_cast<Tier>(t))));
        }
        if (e.cls != c || ClassOf(e) != c) {
          return fail(
              absl::StrCat("block ", e.key.Hex(), " listed in class ", c, ", is ", ClassOf(e)));
        }
        if (e.state != EntryState::kCommitted) return fail("listed block not committed");
        if (e.leases != 0) return fail("leased block listed");
        if (e.parent_ref != kNoEntry && E(e.parent_ref).key != e.parent) {
          return fail("parent link names another block");
        }
        uint32_t kids_here = 0;
        for (uint32_t k = e.first_child; k != kNoEntry; k = E(k).next_sibling) {
          if (E(k).parent_ref != h) return fail("child does not point back to its parent");
          if (E(k).tier <= e.tier) ++kids_here;
        }
        if (kids_here != e.kids_here) {
          return fail(absl::StrCat("block ", e.key.Hex(), " counts ", e.kids_here,
                                   " children in its tier, has ", kids_here));
        }
        if (c == kOrphan) ++orphans;
      }
      if (n != list.size || list.tail != prev) return fail("list size or tail wrong");
    }
  }
  if (orphans != orphans_) return fail("orphan count");
  for (const auto& [key, head] : waiting_) {
    for (uint32_t h = head; h != kNoEntry; h = E(h).next_sibling) {
      if (E(h).parent != key || E(h).parent_ref != kNoEntry) return fail("wait list member");
    }
  }
  return absl::OkStatus();
}

}  // namespace kvtier::cache_internal
