// Crash recovery: a real child process writes durable blocks and is killed with SIGKILL at
// different moments; the reopened store must return every acknowledged block, verified, and never
// a partial or wrong one.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "cache/block_store.h"
#include "testing/test_util.h"

extern char** environ;

namespace kvtier {
namespace {

using ::kvtier::testing::TempDir;
using ::kvtier::testing::TestBlock;
using ::kvtier::testing::TestKey;

constexpr size_t kBlock = 256 * 1024;

// Runs store_writer and kills it with SIGKILL once `kill_after` puts were acknowledged.
// Returns the acknowledged block numbers.
std::vector<uint64_t> WriteThenKill(const std::string& dir, uint64_t first, uint64_t count,
                                    size_t kill_after) {
  int fds[2];
  EXPECT_EQ(pipe(fds), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  const std::string binary = std::string(KVTIER_BINARY_DIR) + "/tests/store_writer";
  std::vector<std::string> args = {binary, dir, std::to_string(first), std::to_string(count),
                                   std::to_string(kBlock)};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  EXPECT_EQ(posix_spawn(&pid, binary.c_str(), &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);

  std::vector<uint64_t> acked;
  FILE* out = fdopen(fds[0], "r");
  char line[128];
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (acked.size() < kill_after && std::chrono::steady_clock::now() < deadline &&
         std::fgets(line, sizeof(line), out) != nullptr) {
    unsigned long long n = 0;
    if (std::sscanf(line, "ACK %llu", &n) == 1) acked.push_back(n);
  }
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  // Anything acknowledged between our last read and the kill counts too.
  while (std::fgets(line, sizeof(line), out) != nullptr) {
    unsigned long long n = 0;
    if (std::sscanf(line, "ACK %llu", &n) == 1) acked.push_back(n);
  }
  fclose(out);
  EXPECT_TRUE(WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) == 0))
      << "writer failed on its own: status " << status;
  return acked;
}

TEST(Recovery, EveryAcknowledgedDurableBlockSurvivesSigkill) {
  TempDir dir;
  const std::string nvme = dir.Sub("nvme");
  uint64_t next = 0;
  size_t total_acked = 0;
  for (size_t kill_after : {3u, 40u, 150u}) {
    SCOPED_TRACE("killed after " + std::to_string(kill_after) + " acknowledgements");
    const std::vector<uint64_t> acked = WriteThenKill(nvme, next, 100000, kill_after);
    ASSERT_GE(acked.size(), kill_after);
    total_acked += acked.size();

    StoreOptions o;
    o.host_bytes = 16 * kBlock;
    o.max_block_bytes = kBlock;
    o.host_hugepages = false;
    o.nvme_path = nvme;
    auto store = BlockStore::Open(o);
    ASSERT_TRUE(store.ok()) << store.status();
    for (uint64_t n : acked) {
      auto got = (*store)->Get(TestKey(n));
      ASSERT_TRUE(got.ok()) << "acknowledged block " << n << ": " << got.status();
      ASSERT_EQ(*got, TestBlock(n, kBlock)) << "block " << n;
    }
    // Whatever else is there (unacknowledged or cache puts) is whole and correct, or absent.
    const uint64_t last = acked.back();
    for (uint64_t n = next; n <= last + 3; ++n) {
      auto got = (*store)->Get(TestKey(n));
      if (got.ok()) {
        ASSERT_EQ(*got, TestBlock(n, kBlock)) << "block " << n;
      } else {
        ASSERT_EQ(got.status().code(), absl::StatusCode::kNotFound) << got.status();
      }
    }
    EXPECT_EQ((*store)->Stats().checksum_failures, 0u);
    next = last + 10;
  }
  EXPECT_GE(total_acked, 193u);
}

}  // namespace
}  // namespace kvtier
