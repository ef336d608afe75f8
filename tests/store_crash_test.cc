// Crash tests of the block store with a real child process (tests/store_torture.cc) killed with
// SIGKILL: a random campaign of several runs over one directory, and kills in the middle of a
// demotion and of a blob-file compaction. After each kill the parent opens the store and checks
// it against what the child's lines say happened: every durable block acknowledged (and neither
// deleted nor evicted since) is there with its bytes, every deleted block is gone, and whatever
// else is there is whole and correct.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cache/block_store.h"
#include "store_torture.h"
#include "testing/test_util.h"

extern char** environ;

namespace kvtier {
namespace {

using ::kvtier::testing::TempDir;
using ::kvtier::testing::TestBlock;
using ::kvtier::testing::TestKey;
using ::kvtier::torture::Mode;
using Clock = std::chrono::steady_clock;
using ull = unsigned long long;

const std::string kTorture = std::string(KVTIER_BINARY_DIR) + "/tests/store_torture";

// A child process whose stdout is read line by line, each read with a deadline.
class Child {
 public:
  explicit Child(std::vector<std::string> args) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, args[0].c_str(), &actions, nullptr, argv.data(), environ) != 0) {
      pid_ = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
    close(fds[1]);
    fd_ = fds[0];
  }
  ~Child() {
    if (pid_ > 0 && !reaped_) {
      Kill();
      (void)Wait();
    }
    if (fd_ >= 0) close(fd_);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  bool started() const { return pid_ > 0; }
  bool eof() const { return eof_; }
  void Kill() { kill(pid_, SIGKILL); }

  // The next line, without its newline; nullopt at the deadline or at the end of the output.
  std::optional<std::string> ReadLine(Clock::time_point deadline) {
    for (;;) {
      if (const size_t nl = buffer_.find('\n'); nl != std::string::npos) {
        std::string line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      if (eof_) return std::nullopt;
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return std::nullopt;
      pollfd p{.fd = fd_, .events = POLLIN, .revents = 0};
      const int ready = poll(&p, 1, static_cast<int>(left));
      if (ready < 0 && errno == EINTR) continue;
      if (ready <= 0) return std::nullopt;
      char chunk[4096];
      const ssize_t n = read(fd_, chunk, sizeof(chunk));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        eof_ = true;
        continue;
      }
      buffer_.append(chunk, n);
    }
  }

  // Reaps the child and returns its wait status; one that has not exited 10 s after its output
  // ended is killed first.
  int Wait() {
    int status = 0;
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (Clock::now() > deadline) {
        Kill();
        waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    reaped_ = true;
    return status;
  }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  std::string buffer_;
  bool eof_ = false;
  bool reaped_ = false;
};

std::string DescribeStatus(int status) {
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  if (WIFEXITED(status)) return "exited with " + std::to_string(WEXITSTATUS(status));
  return "wait status " + std::to_string(status);
}

// What the child's lines say about each block in [first, first + count), and so what a store
// opened after the kill must hold.
class Expectations {
 public:
  enum class Must { kEither, kPresent, kAbsent };

  Expectations(uint64_t first, uint64_t count) : first_(first), keys_(count) {}

  uint64_t first() const { return first_; }
  uint64_t count() const { return keys_.size(); }
  Must must(uint64_t n) const { return keys_[n - first_].must; }
  // What a check found, the start of the next run's history.
  void Set(uint64_t n, Must m) {
    Key& k = keys_[n - first_];
    k.must = m;
    k.history.clear();
    k.history.push_back(m == Must::kPresent ? "(present)" : "(absent)");
  }

  // Applies one line of the child's (store_torture.h lists them).
  void Apply(const std::string& line) {
    tail_.push_back(line);
    if (tail_.size() > 40) tail_.pop_front();
    char word[16] = {0};
    ull n = 0;
    const int fields = std::sscanf(line.c_str(), "%15s %llu", word, &n);
    const std::string w = word;
    if (w == "STATS") return ApplyStats(line);
    if (w == "STALL") {
      stall_path_ = line.substr(6);
      return;
    }
    if (w == "COMPACTIONS") {
      compactions = n;
      return;
    }
    if (w == "BAD" || w == "ERR") {
      failures_.push_back(line);
      return;
    }
    if (fields != 2 || n < first_ || n - first_ >= keys_.size()) return;
    Key& k = keys_[n - first_];
    k.history.push_back(line);
    if (k.history.size() > 12) k.history.pop_front();
    if (w == "PUT") {
      k.since_put = Key::kNone;
      if (k.must == Must::kAbsent) k.must = Must::kEither;
    } else if (w == "STORED") {
      k.since_put = Key::kStored;
    } else if (w == "GONE") {
      // Evicted (or being deleted): a durable record evicted may come back after a crash, or not.
      k.since_put = Key::kGone;
      if (k.must == Must::kPresent) k.must = Must::kEither;
    } else if (w == "ACK") {
      // Unless the block was evicted after its commit (a GONE since the PUT that no STORED
      // followed), the acknowledged block must survive.
      k.must = k.since_put == Key::kGone ? Must::kEither : Must::kPresent;
      ++acks;
    } else if (w == "PLAIN") {
      // Over a durable block of the same bytes, a plain put keeps it durable: no change.
      if (k.must == Must::kAbsent) k.must = Must::kEither;
    } else if (w == "PLAINOK") {
      ++plain_puts;
    } else if (w == "PUTFULL") {
      ++full_puts;
    } else if (w == "DELETING") {
      k.must = Must::kEither;
    } else if (w == "DEL") {
      k.must = Must::kAbsent;
      ++deletes;
    } else if (w == "FLUSHED") {
      k.must = Must::kPresent;
      ++flushed;
    }
  }

  // Lines that reported a failure (BAD, ERR, a checksum failure in STATS).
  const std::vector<std::string>& failures() const { return failures_; }
  const std::string& stall_path() const { return stall_path_; }
  // The child's last lines about block n, for a report.
  std::string History(uint64_t n) const {
    std::string out;
    for (const auto& l : keys_[n - first_].history) out += (out.empty() ? "" : ", ") + l;
    return out;
  }
  std::string Tail() const {
    std::string out;
    for (const auto& l : tail_) out += "  " + l + "\n";
    return out;
  }
  void ClearTail() { tail_.clear(); }

  uint64_t acks = 0, plain_puts = 0, full_puts = 0, deletes = 0, flushed = 0;
  // The child's last STATS (compactions: or COMPACTIONS).
  uint64_t demotions = 0, evictions = 0, compactions = 0;

 private:
  struct Key {
    Must must = Must::kAbsent;
    // The last of the store's events for the key since its last durable put started.
    enum { kNone, kStored, kGone } since_put = kNone;
    std::deque<std::string> history;
  };

  void ApplyStats(const std::string& line) {
    ull d = 0, e = 0, c = 0, bad = 0, blocks = 0;
    if (std::sscanf(line.c_str(),
                    "STATS demotions=%llu evictions=%llu compactions=%llu checksum_failures=%llu "
                    "nvme_blocks=%llu",
                    &d, &e, &c, &bad, &blocks) != 5) {
      return;
    }
    demotions = d;
    evictions = e;
    compactions = c;
    if (bad != 0) failures_.push_back(line);
  }

  uint64_t first_;
  std::vector<Key> keys_;
  std::deque<std::string> tail_;
  std::vector<std::string> failures_;
  std::string stall_path_;
};

using Must = Expectations::Must;

struct CheckCounts {
  uint64_t must_present = 0, must_absent = 0, present = 0;
};

// Reads every block of `ex` from `store` and checks it against what must be. Returns what it saw
// per block (present or not); reports each mismatch (the first 10) as a test failure.
std::vector<bool> CheckBlocks(BlockStore& store, const Expectations& ex, size_t block_bytes,
                              CheckCounts* counts) {
  std::vector<bool> seen(ex.count());
  std::vector<uint8_t> buf(block_bytes);
  int reported = 0;
  auto report = [&](const std::string& what) {
    if (++reported <= 10) ADD_FAILURE() << what;
  };
  for (uint64_t n = ex.first(); n < ex.first() + ex.count(); ++n) {
    const Must must = ex.must(n);
    if (must == Must::kPresent) ++counts->must_present;
    if (must == Must::kAbsent) ++counts->must_absent;
    absl::StatusOr<size_t> got = store.Get(TestKey(n), buf);
    if (got.ok()) {
      seen[n - ex.first()] = true;
      ++counts->present;
      if (*got != block_bytes || buf != TestBlock(n, block_bytes)) {
        report("block " + std::to_string(n) + ": wrong bytes served; " + ex.History(n));
      } else if (must == Must::kAbsent) {
        report("block " + std::to_string(n) + " was deleted, yet it is present; " + ex.History(n));
      }
    } else if (got.status().code() != absl::StatusCode::kNotFound) {
      report("block " + std::to_string(n) + ": " + got.status().ToString() + "; " + ex.History(n));
    } else if (must == Must::kPresent) {
      report("block " + std::to_string(n) + " must have survived (acknowledged durable or " +
             "flushed), yet it is missing; " + ex.History(n));
    }
  }
  const StoreStats stats = store.Stats();
  EXPECT_EQ(stats.checksum_failures, 0u);
  EXPECT_EQ(stats.evictions, 0u) << "the check's store evicted: what it read may be incomplete";
  const absl::Status consistent = store.CheckConsistency();
  EXPECT_TRUE(consistent.ok()) << consistent;
  return seen;
}

// Opens the store a killed child left in `nvme` and checks every block of `ex`.
std::vector<bool> OpenAndCheck(Mode mode, const std::string& nvme, const Expectations& ex,
                               CheckCounts* counts) {
  auto store = BlockStore::Open(torture::CheckOptions(mode, nvme));
  if (!store.ok()) {
    ADD_FAILURE() << "reopen: " << store.status();
    return {};
  }
  return CheckBlocks(**store, ex, torture::BlockBytes(mode), counts);
}

// Reads the child's lines until `stop` says so, its output ends, or `deadline`. Returns whether
// `stop` did.
template <typename Stop>
bool ReadUntil(Child& child, Expectations& ex, Clock::time_point deadline, Stop stop) {
  while (std::optional<std::string> line = child.ReadLine(deadline)) {
    ex.Apply(*line);
    if (stop(*line)) return true;
  }
  return false;
}

// Kills the child, reads what it wrote before it died, and checks that the kill is what ended it.
void KillAndDrain(Child& child, Expectations& ex) {
  child.Kill();
  ReadUntil(child, ex, Clock::now() + std::chrono::seconds(10),
            [](const std::string&) { return false; });
  EXPECT_TRUE(child.eof()) << "the child's output did not end after SIGKILL";
  const int status = child.Wait();
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "the child was " << DescribeStatus(status) << ", not by our SIGKILL; its last lines:\n"
      << ex.Tail();
  EXPECT_TRUE(ex.failures().empty()) << "the child reported: " << ex.failures().front();
}

uint64_t CampaignSeed() {
  if (const char* s = std::getenv("KVTIER_CRASH_SEED"); s != nullptr) {
    return std::strtoull(s, nullptr, 10);
  }
  return std::random_device{}();
}

// Eight or more runs over one directory, each killed after 100-700 ms of random puts, plain puts,
// deletes and reads by 3 threads over 240 keys (15 MiB, twice the flash). Each run recovers what
// the last one and the check left; the check's findings carry over as what must be. Runs go on
// past the eighth (up to 24) until the campaign has crossed a demotion, a flash eviction and a
// compaction: short runs on a loaded host may not reach a compaction in eight.
TEST(StoreCrash, RandomCampaignKeepsAcknowledgedAndDeletedBlocks) {
  constexpr uint64_t kKeys = 240;
  constexpr int kMinCycles = 8;
  constexpr int kMaxCycles = 24;
  const uint64_t seed = CampaignSeed();
  std::printf("seed %llu (rerun with KVTIER_CRASH_SEED=%llu)\n", static_cast<ull>(seed),
              static_cast<ull>(seed));
  TempDir dir;
  const std::string nvme = dir.Sub("nvme");
  Expectations ex(0, kKeys);
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> run_ms(100, 700);
  uint64_t demotions = 0, evictions = 0, compactions = 0, must_present = 0, must_absent = 0;
  const auto test_deadline = Clock::now() + std::chrono::seconds(50);
  const auto more_deadline = Clock::now() + std::chrono::seconds(35);
  for (int cycle = 0; cycle < kMaxCycles; ++cycle) {
    const bool covered = demotions > 0 && evictions > 0 && compactions > 0;
    if (cycle >= kMinCycles && (covered || Clock::now() > more_deadline)) break;
    SCOPED_TRACE("cycle " + std::to_string(cycle) + ", seed " + std::to_string(seed));
    ASSERT_LT(Clock::now(), test_deadline) << "out of time after " << cycle << " cycles";
    const uint64_t acks = ex.acks, deletes = ex.deletes;
    ex.ClearTail();
    const int ms = run_ms(rng);
    Child child({kTorture, "campaign", nvme, "0", std::to_string(kKeys), "3",
                 std::to_string(seed + cycle)});
    ASSERT_TRUE(child.started()) << kTorture;
    const bool ready = ReadUntil(child, ex, Clock::now() + std::chrono::seconds(15),
                                 [](const std::string& l) { return l == "READY"; });
    ASSERT_TRUE(ready) << "no READY; the child's last lines:\n" << ex.Tail();
    ReadUntil(child, ex, Clock::now() + std::chrono::milliseconds(ms),
              [](const std::string&) { return false; });
    KillAndDrain(child, ex);
    ASSERT_FALSE(::testing::Test::HasFailure());
    demotions += ex.demotions;
    evictions += ex.evictions;
    compactions += ex.compactions;

    CheckCounts counts;
    const std::vector<bool> seen = OpenAndCheck(Mode::kCampaign, nvme, ex, &counts);
    ASSERT_FALSE(::testing::Test::HasFailure()) << "the child's last lines:\n" << ex.Tail();
    std::printf(
        "cycle %d: %d ms, %llu acks, %llu deletes; child stats: %llu demotions, %llu evictions, "
        "%llu compactions; check: %llu of %llu must be present, %llu must be absent, %llu "
        "present\n",
        cycle, ms, static_cast<ull>(ex.acks - acks), static_cast<ull>(ex.deletes - deletes),
        static_cast<ull>(ex.demotions), static_cast<ull>(ex.evictions),
        static_cast<ull>(ex.compactions), static_cast<ull>(counts.must_present),
        static_cast<ull>(kKeys), static_cast<ull>(counts.must_absent),
        static_cast<ull>(counts.present));
    must_present += counts.must_present;
    must_absent += counts.must_absent;
    // What the check saw is what the next run starts from: it closed the store cleanly.
    for (uint64_t n = 0; n < kKeys; ++n) ex.Set(n, seen[n] ? Must::kPresent : Must::kAbsent);
  }
  std::fflush(stdout);
  // The runs did what they are for: durable puts and deletes to check, demotions, flash
  // evictions and compactions to survive.
  EXPECT_GT(ex.acks, 0u);
  EXPECT_GT(ex.deletes, 0u);
  EXPECT_GT(must_present, 0u);
  EXPECT_GT(must_absent, 0u);
  EXPECT_GT(demotions, 0u);
  EXPECT_GT(evictions, 0u);
  EXPECT_GT(compactions, 0u);
}

// Runs store_torture in a stall mode until it announces the stall, kills it there, and checks
// the store it left. Returns the expectations its lines gave.
Expectations KillAtStall(Mode mode, const std::string& nvme, uint64_t stall_at, uint64_t keys) {
  Expectations ex(0, keys);
  Child child(
      {kTorture, mode == Mode::kDemote ? "demote" : "compact", nvme, std::to_string(stall_at)});
  if (!child.started()) {
    ADD_FAILURE() << kTorture;
    return ex;
  }
  const bool stalled = ReadUntil(child, ex, Clock::now() + std::chrono::seconds(25),
                                 [](const std::string& l) { return l.starts_with("STALL "); });
  EXPECT_TRUE(stalled) << "the child never stalled where it should; its last lines:\n" << ex.Tail();
  if (!stalled) return ex;
  std::printf("stalled in %s (blob append %llu)\n", ex.stall_path().c_str(),
              static_cast<ull>(stall_at));
  KillAndDrain(child, ex);
  EXPECT_TRUE(ex.stall_path().ends_with(".blob")) << ex.stall_path();
  int blob_files = 0;
  for (const auto& f : std::filesystem::directory_iterator(nvme + "/blobs")) {
    blob_files += f.path().extension() == ".blob";
  }
  std::printf("killed with %d blob files, after %llu compactions\n", blob_files,
              static_cast<ull>(ex.compactions));
  return ex;
}

// SIGKILL while demotions stall in their blob append (the first after the durable puts, and the
// ninth): the durable blocks and the demoted blocks that a Flush saw are all there.
TEST(StoreCrash, KillInDemotionKeepsDurableBlocks) {
  for (uint64_t stall_at : {1, 9}) {
    SCOPED_TRACE("stall at append " + std::to_string(stall_at));
    TempDir dir;
    const std::string nvme = dir.Sub("nvme");
    const Expectations ex = KillAtStall(Mode::kDemote, nvme, stall_at, 328);
    ASSERT_FALSE(::testing::Test::HasFailure());
    EXPECT_EQ(ex.acks, 16u);
    EXPECT_GT(ex.flushed, 0u) << "no demotion was flushed before the stall";
    EXPECT_GT(ex.demotions, 0u);
    CheckCounts counts;
    OpenAndCheck(Mode::kDemote, nvme, ex, &counts);
    EXPECT_EQ(counts.must_present, 16 + ex.flushed);
    std::printf("%llu blocks must be present, %llu are\n", static_cast<ull>(counts.must_present),
                static_cast<ull>(counts.present));
  }
}

// SIGKILL in a blob-file compaction (in its first append, and in its sixth: in the second file's
// when the first file kept its 4 live blocks, which then moved and the file went): the kept
// durable blocks are all there, the deleted ones stay gone, and the store reopened compacts.
TEST(StoreCrash, KillInCompactionKeepsDurableBlocks) {
  constexpr uint64_t kBlocks = torture::kCompactBlocks;
  for (uint64_t stall_at : {1, 6}) {
    SCOPED_TRACE("stall at append " + std::to_string(stall_at));
    TempDir dir;
    const std::string nvme = dir.Sub("nvme");
    const Expectations ex = KillAtStall(Mode::kCompact, nvme, stall_at, kBlocks);
    ASSERT_FALSE(::testing::Test::HasFailure());
    EXPECT_EQ(ex.acks, kBlocks);
    // The deletes go a block of every file at a time: no file is half dead before 36 of them.
    EXPECT_GE(ex.deletes, 35u);
    for (uint64_t n = 0; n < kBlocks; n += 4) EXPECT_EQ(ex.must(n), Must::kPresent) << n;

    auto store = BlockStore::Open(torture::CheckOptions(Mode::kCompact, nvme));
    ASSERT_TRUE(store.ok()) << store.status();
    CheckCounts counts;
    CheckBlocks(**store, ex, torture::kCompactBlock, &counts);
    EXPECT_EQ((*store)->Stats().nvme_lost_blocks, 0u);
    std::printf("%llu blocks must be present, %llu must be absent, %llu are present\n",
                static_cast<ull>(counts.must_present), static_cast<ull>(counts.must_absent),
                static_cast<ull>(counts.present));
    // The files the killed compaction left are still mostly dead: the mover compacts them now.
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while ((*store)->Stats().nvme_compactions == 0 && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_GT((*store)->Stats().nvme_compactions, 0u);
    (*store)->WaitForMover();
    CheckCounts after;
    CheckBlocks(**store, ex, torture::kCompactBlock, &after);
    store->reset();
    CheckCounts reopened;
    OpenAndCheck(Mode::kCompact, nvme, ex, &reopened);
    ASSERT_FALSE(::testing::Test::HasFailure());
  }
}

// A durable block that flash evicted and that is then deleted stays deleted after a kill, whether
// the delete found it gone (NOT_FOUND) or found a plain re-put of it (OK).
TEST(StoreCrash, DeleteOfEvictedDurableBlockStaysDeleted) {
  TempDir dir;
  const std::string nvme = dir.Sub("nvme");
  Expectations ex(0, 1000);
  Child child({kTorture, "evict", nvme});
  ASSERT_TRUE(child.started()) << kTorture;
  const bool done = ReadUntil(child, ex, Clock::now() + std::chrono::seconds(20),
                              [](const std::string& l) { return l == "DONE"; });
  ASSERT_TRUE(done) << "the child did not get its blocks evicted; its last lines:\n" << ex.Tail();
  KillAndDrain(child, ex);
  ASSERT_FALSE(::testing::Test::HasFailure());
  EXPECT_EQ(ex.acks, 2u);
  EXPECT_EQ(ex.deletes, 2u);
  auto store = BlockStore::Open(torture::CheckOptions(Mode::kCampaign, nvme));
  ASSERT_TRUE(store.ok()) << store.status();
  for (uint64_t n : {0, 1}) {
    EXPECT_EQ((*store)->Stat(TestKey(n)).status().code(), absl::StatusCode::kNotFound)
        << "block " << n << " came back after its delete; " << ex.History(n);
  }
}

}  // namespace
}  // namespace kvtier
