#include "common/split_runner.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

namespace kvtier {
namespace {

TEST(SplitRunner, RunsTheSecondHalfOnItsOwnThreadWhenIdle) {
  SplitRunner runner;
  for (int i = 0; i < 100; ++i) {
    std::thread::id mine, theirs;
    EXPECT_TRUE(runner.Run([&] { mine = std::this_thread::get_id(); },
                           [&] { theirs = std::this_thread::get_id(); }));
    EXPECT_EQ(mine, std::this_thread::get_id());
    EXPECT_NE(theirs, std::this_thread::get_id());
    EXPECT_NE(theirs, std::thread::id());
  }
}

// While one caller's half runs on the runner, another caller runs both of its halves itself.
TEST(SplitRunner, ABusyRunnerLeavesBothHalvesToTheCaller) {
  SplitRunner runner;
  std::atomic<bool> started{false}, release{false};
  std::thread first([&] {
    EXPECT_TRUE(runner.Run([] {},
                           [&] {
                             started = true;
                             const auto deadline =
                                 std::chrono::steady_clock::now() + std::chrono::seconds(10);
                             while (!release && std::chrono::steady_clock::now() < deadline) {
                               std::this_thread::sleep_for(std::chrono::milliseconds(1));
                             }
                           }));
  });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!started && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_TRUE(started);
  std::thread::id mine, theirs;
  EXPECT_FALSE(runner.Run([&] { mine = std::this_thread::get_id(); },
                          [&] { theirs = std::this_thread::get_id(); }));
  EXPECT_EQ(mine, std::this_thread::get_id());
  EXPECT_EQ(theirs, std::this_thread::get_id());
  release = true;
  first.join();
  // Free again afterwards.
  EXPECT_TRUE(runner.Run([] {}, [] {}));
}

TEST(SplitRunner, ManyCallersAtOnceEachGetBothHalvesDone) {
  SplitRunner runner;
  std::atomic<int> done{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < 4; ++t) {
    callers.emplace_back([&] {
      for (int i = 0; i < 500; ++i) {
        std::atomic<int> halves{0};
        runner.Run([&] { ++halves; }, [&] { ++halves; });
        EXPECT_EQ(halves, 2);
        ++done;
      }
    });
  }
  for (auto& c : callers) c.join();
  EXPECT_EQ(done, 2000);
}

}  // namespace
}  // namespace kvtier
