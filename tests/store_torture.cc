// Test helper for store_crash_test: drives a BlockStore until the parent kills it with SIGKILL,
// printing each event as one line on stdout (tests/store_torture.h lists them).
//   store_torture campaign NVME_DIR FIRST KEYS THREADS SEED
//       THREADS threads run random durable puts, plain puts, deletes and verified reads of keys
//       FIRST..FIRST+KEYS-1; thread i owns the keys n with (n - FIRST) % THREADS == i (its puts
//       and deletes of a key are sequential), and reads any key.
//   store_torture demote NVME_DIR STALL_AT
//       Plain puts that get demoted, Flush, durable puts, then plain puts that overflow the host
//       tier; after the durable puts, the STALL_AT-th blob append (a demotion's) stalls for 30 s.
//   store_torture compact NVME_DIR STALL_AT
//       Durable puts that fill 5 blob files, then deletes of 3 blocks in 4 of every file; from
//       the last put on, the STALL_AT-th blob append (a compaction's: nothing else writes
//       payloads) stalls for 30 s.
//   store_torture evict NVME_DIR
//       Durable puts of blocks 0 and 1, plain puts until flash evicts both, then deletes of both
//       (the second after a plain re-put); prints DONE and waits for the kill.
// Exit codes: 1 usage or open, 2 an unexpected store error, 3 a wrong byte read, 4 not killed in
// time, 5 the mode's target (the stall, the evictions) never came.
#include "store_torture.h"

#include <rocksdb/env.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "cache/block_store.h"
#include "common/logging.h"
#include "testing/slow_fs.h"
#include "testing/test_util.h"

namespace kvtier::torture {
namespace {

using ::kvtier::testing::TestBlock;
using ::kvtier::testing::TestKey;
using ull = unsigned long long;

// A child that outlives this was not killed by its parent.
constexpr auto kLifetime = std::chrono::seconds(60);
constexpr auto kStall = std::chrono::seconds(30);

// Prints one line with a single write(2): lines of different threads never interleave (a pipe
// write of at most PIPE_BUF bytes is atomic), and none waits in a buffer when the kill comes.
void Say(const char* format, ...) {
  char line[512];
  va_list ap;
  va_start(ap, format);
  int n = std::vsnprintf(line, sizeof(line) - 1, format, ap);
  va_end(ap);
  if (n < 0) return;
  n = std::min<int>(n, sizeof(line) - 2);
  line[n++] = '\n';
  for (const char* p = line; n > 0;) {
    const ssize_t w = write(STDOUT_FILENO, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) _exit(1);
    p += w;
    n -= static_cast<int>(w);
  }
}

[[noreturn]] void Unexpected(const char* what, uint64_t n, const absl::Status& st) {
  Say("ERR %s %llu %s", what, static_cast<ull>(n), st.ToString().c_str());
  _exit(2);
}

// The blocks of keys [first, first + count), computed once.
class Blocks {
 public:
  Blocks(uint64_t first, uint64_t count, size_t size) : first_(first) {
    for (uint64_t n = first; n < first + count; ++n) blocks_.push_back(TestBlock(n, size));
  }
  const std::vector<uint8_t>& operator[](uint64_t n) const { return blocks_[n - first_]; }

 private:
  uint64_t first_;
  std::vector<std::vector<uint8_t>> blocks_;
};

// Reports the store's block events; called under the store's policy lock.
void ReportBlockEvent(const BlockEvent& event) {
  if (event.moved_from.has_value()) return;  // a move between tiers: visible throughout
  const std::optional<uint64_t> n = KeyNumber(event.key);
  if (n.has_value()) Say("%s %llu", event.stored ? "STORED" : "GONE", static_cast<ull>(*n));
}

// Stalls blob appends once armed: the `stall_at`-th and every later one sleeps kStall, and the
// first of them is announced, so that the parent kills the process in that append.
class Staller {
 public:
  explicit Staller(uint64_t stall_at) : stall_at_(stall_at) {}
  void Arm() { armed_.store(true); }
  void operator()(const std::string& path) {
    if (!armed_.load()) return;
    const uint64_t seen = ++seen_;
    if (seen < stall_at_) return;
    if (seen == stall_at_) Say("STALL %s", path.c_str());
    std::this_thread::sleep_for(kStall);
  }

 private:
  const uint64_t stall_at_;
  std::atomic<bool> armed_{false};
  std::atomic<uint64_t> seen_{0};
};

// The child's store, its blob appends passed through a Staller when one is given. Members in
// this order: the store goes before the file system it writes through.
struct ChildStore {
  std::unique_ptr<rocksdb::Env> env;
  std::unique_ptr<BlockStore> store;
};

// Opens the store for `mode` or exits; then says READY.
ChildStore OpenOrExit(Mode mode, const std::string& dir, Staller* staller = nullptr) {
  ChildStore c;
  StoreOptions o = ChildOptions(mode, dir);
  if (staller != nullptr) {
    c.env = rocksdb::NewCompositeEnv(std::make_shared<testing::SlowFlashFs>(
        std::chrono::microseconds(0), [staller](const std::string& p) { (*staller)(p); }));
    o.nvme_env = c.env.get();
  }
  o.on_block_event = ReportBlockEvent;
  auto store = BlockStore::Open(o);
  if (!store.ok()) {
    std::fprintf(stderr, "open: %s\n", store.status().ToString().c_str());
    std::exit(1);
  }
  c.store = std::move(*store);
  Say("READY");
  return c;
}

void PrintStats(const BlockStore& store) {
  const StoreStats s = store.Stats();
  Say("STATS demotions=%llu evictions=%llu compactions=%llu checksum_failures=%llu "
      "nvme_blocks=%llu",
      static_cast<ull>(s.demotions), static_cast<ull>(s.evictions),
      static_cast<ull>(s.nvme_compactions), static_cast<ull>(s.checksum_failures),
      static_cast<ull>(s.tiers[static_cast<int>(Tier::kNvme)].blocks));
}

// A put that prints its start and outcome; room refusals are reported, other errors end the run.
void LoggedPut(BlockStore& store, uint64_t n, const std::vector<uint8_t>& block, bool durable) {
  Say("%s %llu", durable ? "PUT" : "PLAIN", static_cast<ull>(n));
  const absl::Status st = store.Put(TestKey(n), ParentOf(n), block, {.durable = durable});
  if (st.ok()) {
    Say("%s %llu", durable ? "ACK" : "PLAINOK", static_cast<ull>(n));
  } else if (st.code() == absl::StatusCode::kResourceExhausted ||
             st.code() == absl::StatusCode::kUnavailable) {
    Say("PUTFULL %llu %s", static_cast<ull>(n), absl::StatusCodeToString(st.code()).c_str());
  } else {
    Unexpected(durable ? "put" : "plain-put", n, st);
  }
}

void LoggedDelete(BlockStore& store, uint64_t n) {
  Say("DELETING %llu", static_cast<ull>(n));
  const absl::Status st = store.Delete(TestKey(n));
  if (!st.ok() && st.code() != absl::StatusCode::kNotFound) Unexpected("delete", n, st);
  Say("DEL %llu %s", static_cast<ull>(n), st.ok() ? "OK" : "NOT_FOUND");
}

// Reads block n, if present, and checks every byte.
void CheckedRead(BlockStore& store, uint64_t n, const std::vector<uint8_t>& want,
                 std::vector<uint8_t>& buf) {
  absl::StatusOr<size_t> got = store.Get(TestKey(n), buf);
  if (got.status().code() == absl::StatusCode::kNotFound) return;
  if (!got.ok()) Unexpected("get", n, got.status());
  if (*got != want.size() || std::memcmp(buf.data(), want.data(), want.size()) != 0) {
    Say("BAD %llu", static_cast<ull>(n));
    _exit(3);
  }
}

int Campaign(const std::string& dir, uint64_t first, uint64_t keys, int threads, uint64_t seed) {
  const Blocks blocks(first, keys, kCampaignBlock);
  ChildStore child = OpenOrExit(Mode::kCampaign, dir);
  BlockStore& s = *child.store;
  std::vector<std::thread> workers;
  for (int id = 0; id < threads; ++id) {
    workers.emplace_back([&, id] {
      std::mt19937_64 rng(seed * 1'000'003 + id);
      std::vector<uint8_t> buf(kCampaignBlock);
      const uint64_t owned = (keys - id + threads - 1) / threads;
      for (;;) {
        const uint64_t n = first + id + threads * (rng() % owned);
        const uint64_t dice = rng() % 100;
        if (dice < 25) {
          LoggedPut(s, n, blocks[n], /*durable=*/true);
        } else if (dice < 45) {
          LoggedPut(s, n, blocks[n], /*durable=*/false);
        } else if (dice < 57) {
          LoggedDelete(s, n);
        } else {
          const uint64_t m = first + rng() % keys;  // any thread's key
          CheckedRead(s, m, blocks[m], buf);
        }
      }
    });
  }
  const auto deadline = std::chrono::steady_clock::now() + kLifetime;
  while (std::chrono::steady_clock::now() < deadline) {
    PrintStats(s);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  _exit(4);
}

int Demote(const std::string& dir, uint64_t stall_at) {
  Staller staller(stall_at);
  ChildStore child = OpenOrExit(Mode::kDemote, dir, &staller);
  BlockStore& s = *child.store;
  // Blocks 100..163 plain, demoted and flushed; 0..15 durable; 200..327 plain, overflowing the
  // host tier of 32 blocks while demotions stall.
  for (uint64_t n = 100; n < 164; ++n) LoggedPut(s, n, TestBlock(n, kDemoteBlock), false);
  s.WaitForMover();
  // Blocks whose demotion committed before the Flush survive the kill.
  std::vector<uint64_t> demoted;
  for (uint64_t n = 100; n < 164; ++n) {
    absl::StatusOr<BlockInfo> info = s.Stat(TestKey(n));
    if (info.ok() && info->tier == Tier::kNvme) demoted.push_back(n);
  }
  if (absl::Status st = s.Flush(); !st.ok()) Unexpected("flush", 0, st);
  for (uint64_t n : demoted) Say("FLUSHED %llu", static_cast<ull>(n));
  for (uint64_t n = 0; n < 16; ++n) LoggedPut(s, n, TestBlock(n, kDemoteBlock), true);
  PrintStats(s);
  staller.Arm();
  for (uint64_t n = 200; n < 328; ++n) LoggedPut(s, n, TestBlock(n, kDemoteBlock), false);
  s.WaitForMover();
  PrintStats(s);
  Say("NOSTALL");
  _exit(5);
}

int Compact(const std::string& dir, uint64_t stall_at) {
  Staller staller(stall_at);
  ChildStore child = OpenOrExit(Mode::kCompact, dir, &staller);
  BlockStore& s = *child.store;
  // Blob files of 16 blocks: file f holds blocks 16f..16f+15.
  for (uint64_t n = 0; n < kCompactBlocks; ++n) LoggedPut(s, n, TestBlock(n, kCompactBlock), true);
  PrintStats(s);
  // Nothing writes a payload from here on but a compaction.
  staller.Arm();
  // Keeps the blocks n % 4 == 0; deletes the others a block of every file at a time, so that no
  // file is half dead (a compaction candidate) before most deletes are done.
  constexpr uint64_t kFiles = kCompactBlocks / 16;
  for (uint64_t i = 0; i < 16; ++i) {
    if (i % 4 == 0) continue;
    for (uint64_t f = 0; f < kFiles; ++f) LoggedDelete(s, f * 16 + i);
  }
  Say("DELETED");
  uint64_t compactions = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    const uint64_t now = s.Stats().nvme_compactions;
    if (now != compactions) Say("COMPACTIONS %llu", static_cast<ull>(now));
    compactions = now;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  PrintStats(s);
  Say("NOSTALL");
  _exit(5);
}

// Blocks 0 and 1 durable; plain puts until flash evicts both; then Delete(0) (NOT_FOUND), a plain
// re-put of 1 and Delete(1) (OK); DONE, then waits for the kill. Both must stay deleted.
int EvictThenDelete(const std::string& dir) {
  ChildStore child = OpenOrExit(Mode::kCampaign, dir);
  BlockStore& s = *child.store;
  for (uint64_t n = 0; n < 2; ++n) LoggedPut(s, n, TestBlock(n, kCampaignBlock), true);
  auto present = [&](uint64_t n) { return s.Stat(TestKey(n)).ok(); };
  for (uint64_t n = 2; n < 1000 && (present(0) || present(1)); ++n) {
    LoggedPut(s, n, TestBlock(n, kCampaignBlock), false);
  }
  s.WaitForMover();
  if (present(0) || present(1)) {
    Say("NOEVICT");
    _exit(5);
  }
  LoggedDelete(s, 0);
  LoggedPut(s, 1, TestBlock(1, kCampaignBlock), false);
  LoggedDelete(s, 1);
  s.WaitForMover();
  PrintStats(s);
  Say("DONE");
  std::this_thread::sleep_for(kLifetime);
  _exit(4);
}

}  // namespace
}  // namespace kvtier::torture

int main(int argc, char** argv) {
  using namespace kvtier::torture;
  (void)kvtier::InitLogging("warn");
  const std::string mode = argc > 1 ? argv[1] : "";
  auto num = [&](int i) { return std::strtoull(argv[i], nullptr, 10); };
  if (mode == "campaign" && argc == 7 && num(4) > 0 && num(5) > 0 && num(5) <= num(4)) {
    return Campaign(argv[2], num(3), num(4), static_cast<int>(num(5)), num(6));
  }
  if (mode == "demote" && argc == 4 && num(3) > 0) return Demote(argv[2], num(3));
  if (mode == "compact" && argc == 4 && num(3) > 0) return Compact(argv[2], num(3));
  if (mode == "evict" && argc == 3) return EvictThenDelete(argv[2]);
  std::fprintf(stderr,
               "usage: store_torture campaign NVME_DIR FIRST KEYS THREADS SEED\n"
               "       store_torture {demote|compact} NVME_DIR STALL_AT\n"
               "       store_torture evict NVME_DIR\n");
  return 1;
}
