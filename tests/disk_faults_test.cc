// The flash tier's faults against a real kvtierd and the C++ client: a full disk, deletes that
// free a small disk, a missing blob file, damaged metadata. Each was found by an outside tester.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "client/cache_client.h"
#include "testing/daemon_process.h"
#include "testing/http_get.h"
#include "testing/small_disk.h"
#include "testing/test_util.h"

namespace kvtier {
namespace {

namespace fs = std::filesystem;
using ::kvtier::testing::DaemonProcess;
using ::kvtier::testing::TempDir;
using ::kvtier::testing::TestBlock;
using ::kvtier::testing::TestKey;
using ::kvtier::testing::TmpfsMount;
using Clock = std::chrono::steady_clock;

constexpr size_t kBlock = size_t{1} << 20;
// A small disk: its blob files are 4 MiB (capacity / 16, clamped), 4 blocks each.
constexpr size_t kSmallDisk = size_t{64} << 20;
const std::string kDaemon = std::string(KVTIER_BINARY_DIR) + "/kvtierd";

// kvtierd with its NVMe tier in `nvme_dir`, a 4 MiB host tier and its log (stderr) appended to
// `log`: started through sh, which execs it (same pid, so Stop() gives kvtierd's own exit status).
std::unique_ptr<DaemonProcess> StartDaemon(const std::string& nvme_dir, const std::string& log) {
  std::vector<std::string> args = {"-c", "log=$1; shift; exec \"$@\" 2>>\"$log\"", "sh", log,
                                   kDaemon};
  for (const char* a :
       {"--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--ucx-listen", "off",
        "--host-mib", "4", "--max-block-mib", "1", "--nvme-gib", "1", "--hugepages", "false",
        "--mlock", "false", "--log-level", "info", "--data"}) {
    args.push_back(a);
  }
  args.push_back(nvme_dir);
  return std::make_unique<DaemonProcess>("/bin/sh", args);
}

// Gets as calls of their own: a Get session still open at SIGTERM can hold the daemon's
// shutdown for its whole 10 s grace.
std::unique_ptr<CacheClient> Connect(const DaemonProcess& d) {
  auto c = CacheClient::Create({.address = d.address(),
                                .tenant = "faults",
                                .deadline_ms = 10'000,
                                .use_ucx = false,
                                .get_session = false});
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? std::move(*c) : nullptr;
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// How a process ended, from DaemonProcess::Stop().
std::string Ending(int status) {
  if (status == -1) return "still running 20 s after SIGTERM (killed)";
  if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by signal ") + strsignal(WTERMSIG(status));
  return "wait status " + std::to_string(status);
}
bool ExitedZero(int status) {
  return status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// A counter or gauge without labels from the daemon's /metrics, or -1.
double Metric(const DaemonProcess& d, const std::string& name) {
  const std::string body = ::kvtier::testing::HttpGet(d.AddressOf("kvtierd metrics"), "/metrics");
  const size_t at = body.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::strtod(body.c_str() + at + name.size() + 2, nullptr);
}

absl::Status PutDurable(CacheClient& c, uint64_t n) {
  const std::vector<uint8_t> data = TestBlock(n, kBlock);
  const BlockToPut b{TestKey(n), BlockKey{}, data};
  return c.Put(std::span(&b, 1), /*durable=*/true).status();
}

// Block n as the daemon serves it: "ok" (its bytes), "missing" (not found), or what went wrong.
std::string Served(CacheClient& c, uint64_t n) {
  const BlockKey key = TestKey(n);
  auto got = c.Get(std::span(&key, 1));
  if (!got.ok()) return "Get failed: " + got.status().ToString();
  if (got->size() != 1) return "Get answered " + std::to_string(got->size()) + " entries";
  if (!(*got)[0].has_value()) return "missing";
  return *(*got)[0] == TestBlock(n, kBlock) ? "ok" : "WRONG BYTES";
}

// Block n's Lookup: "nvme"/"host"/... where it is, or "missing".
std::string LookedUp(CacheClient& c, uint64_t n) {
  const BlockKey key = TestKey(n);
  auto r = c.Lookup(std::span(&key, 1));
  if (!r.ok()) return "Lookup failed: " + r.status().ToString();
  return r->matched == 0 ? "missing" : TierName(r->tiers[0]);
}

// The blocks of `ns` that the daemon holds (by Lookup), once two looks 200 ms apart agree: the
// movers may still be dropping blocks to bring flash under a full disk's capacity. At most 3 s.
std::vector<uint64_t> Settled(CacheClient& c, const std::vector<uint64_t>& ns) {
  auto look = [&] {
    std::vector<uint64_t> held;
    for (uint64_t n : ns) {
      if (LookedUp(c, n) != "missing") held.push_back(n);
    }
    return held;
  };
  std::vector<uint64_t> held = look();
  for (int i = 0; i < 15; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    std::vector<uint64_t> again = look();
    if (again == held) break;
    held = std::move(again);
  }
  return held;
}

// Durable puts of blocks first, first + 1, ... until one fails (at most `limit`); returns the
// blocks acknowledged and sets `failure`.
std::vector<uint64_t> FillUntilRefused(CacheClient& c, uint64_t first, uint64_t limit,
                                       absl::Status* failure) {
  std::vector<uint64_t> acked;
  for (uint64_t n = first; n < first + limit; ++n) {
    absl::Status st = PutDurable(c, n);
    if (!st.ok()) {
      *failure = st;
      return acked;
    }
    acked.push_back(n);
  }
  *failure = absl::OkStatus();
  return acked;
}

std::vector<fs::path> Files(const std::string& dir, const std::string& ext) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file() && e.path().extension() == ext) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

class DiskFaultsTest : public ::testing::Test {
 protected:
  std::string log() const { return ReadAll(log_); }
  // The log's last lines, for failure messages.
  std::string LogTail() const {
    const std::string l = log();
    return "\n--- kvtierd log (tail) ---\n" + l.substr(l.size() - std::min<size_t>(l.size(), 3000));
  }

  TempDir dir_;
  const std::string log_ = dir_.Sub("kvtierd.log");
};

// 4. A full disk refuses durable puts with RESOURCE_EXHAUSTED; the daemon exits 0 on SIGTERM and
// restarts on the full disk with every block it held.
TEST_F(DiskFaultsTest, FullDiskRefusesPutsAndRestarts) {
  TmpfsMount disk(kSmallDisk);
  if (!disk.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here";
  auto d = StartDaemon(disk.path() + "/nvme", log_);
  ASSERT_FALSE(d->address().empty()) << "kvtierd did not start" << LogTail();
  auto c = Connect(*d);
  ASSERT_NE(c, nullptr);

  absl::Status failure;
  const std::vector<uint64_t> acked = FillUntilRefused(*c, 0, 2 * kSmallDisk / kBlock, &failure);
  ASSERT_FALSE(failure.ok()) << acked.size() << " MiB of durable puts fit on a 64 MiB disk";
  EXPECT_EQ(failure.code(), absl::StatusCode::kResourceExhausted) << failure << LogTail();
  EXPECT_GE(acked.size(), 32u) << "most of the disk should hold blocks";
  EXPECT_GT(Metric(*d, "kvtier_nvme_disk_full_rejections_total"), 0);
  // A cache: the movers may drop the least recently used blocks to bring flash under the full
  // disk's capacity, a blob file's worth at most. The rest must outlive the restart.
  const std::vector<uint64_t> held = Settled(*c, acked);
  EXPECT_GE(held.size() + 4, acked.size()) << "of " << acked.size() << " acknowledged";
  for (uint64_t n : held) EXPECT_EQ(Served(*c, n), "ok") << "block " << n << " on the full disk";

  const int status = d->Stop();
  EXPECT_TRUE(ExitedZero(status)) << "SIGTERM on a full disk: " << Ending(status) << LogTail();

  d = StartDaemon(disk.path() + "/nvme", log_);
  ASSERT_FALSE(d->address().empty()) << "kvtierd did not restart on the full disk" << LogTail();
  c = Connect(*d);
  ASSERT_NE(c, nullptr);
  for (uint64_t n : acked) {
    const bool was_held = std::find(held.begin(), held.end(), n) != held.end();
    EXPECT_EQ(Served(*c, n), was_held ? "ok" : "missing") << "block " << n;
  }
  const int second = d->Stop();
  EXPECT_TRUE(ExitedZero(second)) << Ending(second) << LogTail();
}

// 5. Deletes on a full small disk make room for durable puts again, without a restart.
TEST_F(DiskFaultsTest, DeletesFreeSpaceOnSmallDisk) {
  TmpfsMount disk(kSmallDisk);
  if (!disk.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here";
  auto d = StartDaemon(disk.path() + "/nvme", log_);
  ASSERT_FALSE(d->address().empty()) << "kvtierd did not start" << LogTail();
  auto c = Connect(*d);
  ASSERT_NE(c, nullptr);
  absl::Status failure;
  const std::vector<uint64_t> acked = FillUntilRefused(*c, 0, 2 * kSmallDisk / kBlock, &failure);
  ASSERT_EQ(failure.code(), absl::StatusCode::kResourceExhausted) << failure << LogTail();
  const std::vector<uint64_t> held = Settled(*c, acked);  // see FullDiskRefusesPutsAndRestarts
  ASSERT_GE(held.size(), 8u);

  // Every other block: each blob file is left about half live, so compaction must free it.
  std::vector<BlockKey> gone;
  std::vector<uint64_t> gone_n, kept;
  for (size_t i = 0; i < held.size(); ++i) {
    if (i % 2 == 0) {
      gone.push_back(TestKey(held[i]));
      gone_n.push_back(held[i]);
    } else {
      kept.push_back(held[i]);
    }
  }
  auto deleted = c->Delete(gone);
  ASSERT_TRUE(deleted.ok()) << deleted.status();
  EXPECT_EQ(*deleted, gone.size());

  // Half the deleted space must come back within 10 s (compaction runs in the background).
  const size_t want = gone.size() / 2;
  std::vector<uint64_t> added;
  absl::Status last;
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  for (uint64_t n = 1000; added.size() < want && Clock::now() < deadline;) {
    last = PutDurable(*c, n);
    if (last.ok()) {
      added.push_back(n++);
    } else if (last.code() == absl::StatusCode::kResourceExhausted) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    } else {
      break;
    }
  }
  EXPECT_EQ(added.size(), want) << "after deleting " << gone.size() << " of " << held.size()
                                << " blocks; last put: " << last << LogTail();
  // A put that finds the disk full before compaction has freed it may drop the least recently
  // used blocks, a blob file's worth at most (as on the full disk above); never wrong bytes.
  size_t kept_missing = 0;
  for (uint64_t n : kept) {
    const std::string served = Served(*c, n);
    if (served == "missing") {
      ++kept_missing;
    } else {
      EXPECT_EQ(served, "ok") << "kept block " << n;
    }
  }
  EXPECT_LE(kept_missing, 4u) << "of " << kept.size() << " kept blocks";
  for (uint64_t n : added) EXPECT_EQ(Served(*c, n), "ok") << "new block " << n;
  for (uint64_t n : gone_n) EXPECT_EQ(Served(*c, n), "missing") << "deleted block " << n;
  const int status = d->Stop();
  EXPECT_TRUE(ExitedZero(status)) << Ending(status) << LogTail();
}

// 6. A blob file removed while the daemon was down costs its blocks only: they are not found,
// the rest are served, the loss is reported, and its number is never used again.
TEST_F(DiskFaultsTest, MissingBlobFileLosesOnlyItsBlocks) {
  TmpfsMount disk(kSmallDisk);
  if (!disk.mounted()) GTEST_SKIP() << "cannot mount a tmpfs here";
  const std::string nvme = disk.path() + "/nvme";
  auto d = StartDaemon(nvme, log_);
  ASSERT_FALSE(d->address().empty()) << "kvtierd did not start" << LogTail();
  auto c = Connect(*d);
  ASSERT_NE(c, nullptr);
  constexpr uint64_t kBlocks = 18;  // four full 4 MiB files and half of a fifth
  for (uint64_t n = 0; n < kBlocks; ++n) ASSERT_TRUE(PutDurable(*c, n).ok()) << "block " << n;
  int status = d->Stop();
  ASSERT_TRUE(ExitedZero(status)) << Ending(status) << LogTail();

  // The highest-numbered file: a restart that took its number from the files left would reuse it.
  const std::vector<fs::path> blobs = Files(nvme + "/blobs", ".blob");
  ASSERT_GE(blobs.size(), 3u) << "the blocks should span several blob files";
  const fs::path victim = blobs.back();
  // Which blocks it holds: payloads sit whole at 1 MiB steps (4 KiB padded).
  const std::string bytes = ReadAll(victim);
  std::vector<uint64_t> lost, others;
  for (uint64_t n = 0; n < kBlocks; ++n) {
    const std::vector<uint8_t> b = TestBlock(n, kBlock);
    bool in_victim = false;
    for (size_t off = 0; off + kBlock <= bytes.size() && !in_victim; off += kBlock) {
      in_victim = std::memcmp(bytes.data() + off, b.data(), kBlock) == 0;
    }
    (in_victim ? lost : others).push_back(n);
  }
  ASSERT_FALSE(lost.empty()) << victim << " holds none of the blocks";
  ASSERT_FALSE(others.empty());
  ASSERT_TRUE(fs::remove(victim));

  d = StartDaemon(nvme, log_);
  ASSERT_FALSE(d->address().empty()) << "kvtierd did not start without " << victim << LogTail();
  c = Connect(*d);
  ASSERT_NE(c, nullptr);
  for (uint64_t n : lost) {
    EXPECT_EQ(LookedUp(*c, n), "missing") << "block " << n << " of the removed file";
    EXPECT_EQ(Served(*c, n), "missing") << "block " << n << " of the removed file";
  }
  for (uint64_t n : others) EXPECT_EQ(Served(*c, n), "ok") << "block " << n;
  EXPECT_EQ(Metric(*d, "kvtier_nvme_lost_blocks_total"), static_cast<double>(lost.size()));
  EXPECT_NE(log().find("missing or too short"), std::string::npos)
      << "the log should say blocks were lost" << LogTail();

  // New blocks go to new files, never to the missing file's number, and outlive a restart.
  for (uint64_t n = 100; n < 106; ++n) ASSERT_TRUE(PutDurable(*c, n).ok()) << "block " << n;
  status = d->Stop();
  ASSERT_TRUE(ExitedZero(status)) << Ending(status) << LogTail();
  EXPECT_FALSE(fs::exists(victim)) << "the missing file's number was used again";
  d = StartDaemon(nvme, log_);
  ASSERT_FALSE(d->address().empty()) << "kvtierd did not restart" << LogTail();
  c = Connect(*d);
  ASSERT_NE(c, nullptr);
  for (uint64_t n = 100; n < 106; ++n) EXPECT_EQ(Served(*c, n), "ok") << "new block " << n;
  for (uint64_t n : others) EXPECT_EQ(Served(*c, n), "ok") << "block " << n;
  for (uint64_t n : lost) EXPECT_EQ(Served(*c, n), "missing") << "lost block " << n;
  status = d->Stop();
  EXPECT_TRUE(ExitedZero(status)) << Ending(status) << LogTail();
}

// 7. Damaged metadata costs blocks, never the start, and never serves wrong bytes.
enum class Damage { kNoCurrent, kGarbageManifest, kFlippedSst };
const char* NameOf(Damage d) {
  switch (d) {
    case Damage::kNoCurrent:
      return "NoCurrent";
    case Damage::kGarbageManifest:
      return "GarbageManifest";
    case Damage::kFlippedSst:
      return "FlippedSst";
  }
  return "";
}
void PrintTo(Damage d, std::ostream* os) { *os << NameOf(d); }

class DamagedMetadataTest : public DiskFaultsTest, public ::testing::WithParamInterface<Damage> {
 protected:
  // Applies the damage to the stopped daemon's metadata directory.
  void Inflict(const std::string& meta) {
    switch (GetParam()) {
      case Damage::kNoCurrent:
        ASSERT_TRUE(fs::remove(meta + "/CURRENT"));
        break;
      case Damage::kGarbageManifest: {
        const std::vector<fs::path> all = Files(meta, "");
        auto m = std::find_if(all.begin(), all.end(), [](const fs::path& p) {
          return p.filename().string().starts_with("MANIFEST-");
        });
        ASSERT_NE(m, all.end()) << "no MANIFEST in " << meta;
        std::string garbage(std::max<size_t>(fs::file_size(*m), 4096), '\0');
        for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<char>(i * 131 + 7);
        std::ofstream(*m, std::ios::binary | std::ios::trunc) << garbage;
        break;
      }
      case Damage::kFlippedSst: {
        const std::vector<fs::path> ssts = Files(meta, ".sst");
        ASSERT_FALSE(ssts.empty()) << "no SST file in " << meta << " after a clean stop";
        for (const fs::path& p : ssts) {  // a few bytes of each one's first data block
          std::fstream f(p, std::ios::binary | std::ios::in | std::ios::out);
          for (std::streamoff off = 8; off < 24; ++off) {
            f.seekg(off);
            const char b = static_cast<char>(f.get() ^ 0x5a);
            f.seekp(off);
            f.put(b);
          }
        }
        break;
      }
    }
  }
};

TEST_P(DamagedMetadataTest, StartsAndNeverServesWrongBytes) {
  const std::string nvme = dir_.Sub("nvme");
  auto d = StartDaemon(nvme, log_);
  ASSERT_FALSE(d->address().empty()) << "kvtierd did not start" << LogTail();
  auto c = Connect(*d);
  ASSERT_NE(c, nullptr);
  constexpr uint64_t kBlocks = 8;
  for (uint64_t n = 0; n < kBlocks; ++n) ASSERT_TRUE(PutDurable(*c, n).ok()) << "block " << n;
  int status = d->Stop();
  ASSERT_TRUE(ExitedZero(status)) << Ending(status) << LogTail();
  const size_t log_before = log().size();
  Inflict(nvme + "/meta");
  if (HasFatalFailure()) return;

  d = StartDaemon(nvme, log_);
  ASSERT_FALSE(d->address().empty()) << "kvtierd did not start on damaged metadata" << LogTail();
  c = Connect(*d);
  ASSERT_NE(c, nullptr);
  const std::string said = log().substr(log_before);
  EXPECT_TRUE(said.find("damaged") != std::string::npos ||
              said.find("moving it to") != std::string::npos ||
              said.find("rebuilt") != std::string::npos)
      << "the log should report the damage" << LogTail();
  size_t served = 0;
  for (uint64_t n = 0; n < kBlocks; ++n) {
    const std::string s = Served(*c, n);
    EXPECT_TRUE(s == "ok" || s == "missing") << "block " << n << ": " << s;
    served += s == "ok";
  }
  // What was lost is counted too, and a tier moved aside is kept for inspection.
  const bool moved_aside = Metric(*d, "kvtier_nvme_damaged_tier_moved_aside") == 1;
  if (served < kBlocks) {
    EXPECT_TRUE(moved_aside || Metric(*d, "kvtier_nvme_recovered_with_loss") == 1 ||
                Metric(*d, "kvtier_nvme_bad_records_total") > 0 ||
                Metric(*d, "kvtier_nvme_lost_blocks_total") > 0)
        << "the metrics should count the loss of " << kBlocks - served << " blocks";
  }
  if (moved_aside) {
    const auto aside = std::find_if(fs::directory_iterator(nvme), fs::directory_iterator(),
                                    [](const fs::directory_entry& e) {
                                      return e.path().filename().string().starts_with("damaged-");
                                    });
    EXPECT_NE(aside, fs::directory_iterator()) << "no damaged-<time>/ under " << nvme;
  }
  // New durable puts work, and outlive a restart.
  for (uint64_t n = 100; n < 104; ++n) ASSERT_TRUE(PutDurable(*c, n).ok()) << "block " << n;
  for (uint64_t n = 100; n < 104; ++n) EXPECT_EQ(Served(*c, n), "ok") << "new block " << n;
  status = d->Stop();
  ASSERT_TRUE(ExitedZero(status)) << Ending(status) << LogTail();
  d = StartDaemon(nvme, log_);
  ASSERT_FALSE(d->address().empty()) << "kvtierd did not restart" << LogTail();
  c = Connect(*d);
  ASSERT_NE(c, nullptr);
  for (uint64_t n = 100; n < 104; ++n) EXPECT_EQ(Served(*c, n), "ok") << "new block " << n;
  for (uint64_t n = 0; n < kBlocks; ++n) {
    const std::string s = Served(*c, n);
    EXPECT_TRUE(s == "ok" || s == "missing") << "block " << n << ": " << s;
  }
  status = d->Stop();
  EXPECT_TRUE(ExitedZero(status)) << Ending(status) << LogTail();
}

INSTANTIATE_TEST_SUITE_P(Cases, DamagedMetadataTest,
                         ::testing::Values(Damage::kNoCurrent, Damage::kGarbageManifest,
                                           Damage::kFlippedSst),
                         [](const auto& p) { return std::string(NameOf(p.param)); });

}  // namespace
}  // namespace kvtier
