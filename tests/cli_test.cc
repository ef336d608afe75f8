// The `kvtier` command line against a real kvtierd: each step is a separate process.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "testing/daemon_process.h"
#include "testing/test_util.h"

namespace kvtier {
namespace {

using ::kvtier::testing::DaemonProcess;
using ::kvtier::testing::TempDir;
using ::kvtier::testing::TestBlock;
using ::kvtier::testing::TestKey;

struct CliRun {
  int exit_code;
  std::string out;
};

CliRun Kvtier(const std::string& args) {
  const std::string cmd = std::string(KVTIER_BINARY_DIR) + "/kvtier " + args + " 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  CliRun r{-1, ""};
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

void WriteFile(const std::string& path, const std::vector<uint8_t>& data) {
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

TEST(Cli, PutLookupGetDeleteStats) {
  TempDir dir;
  DaemonProcess daemon(std::string(KVTIER_BINARY_DIR) + "/kvtierd",
                       {"--listen", "127.0.0.1:0", "--data", dir.Sub("data"), "--host-mib", "64",
                        "--nvme-gib", "1", "--log-level", "warn", "--metrics-listen",
                        "127.0.0.1:0"});
  ASSERT_FALSE(daemon.address().empty());
  const std::string common = "--addr " + daemon.address() + " --tenant cli-test ";
  const std::string k0 = TestKey(0).Hex(), k1 = TestKey(1).Hex(), k2 = TestKey(2).Hex();
  WriteFile(dir.Sub("b0"), TestBlock(0, 300'000));
  WriteFile(dir.Sub("b1"), TestBlock(1, 4096));

  CliRun r = Kvtier("put " + common + "--json --keys " + k0 + "," + k1 + " " + dir.Sub("b0") + " " +
                 dir.Sub("b1"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(nlohmann::json::parse(r.out)["stored"], 2);

  r = Kvtier("lookup " + common + "--json --keys " + k0 + "," + k1 + "," + k2);
  ASSERT_EQ(r.exit_code, 0);
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["matched"], 2);
  EXPECT_EQ(j["tiers"][0], "host");

  std::filesystem::create_directories(dir.Sub("out"));
  r = Kvtier("get " + common + "--json --keys " + k0 + "," + k1 + " --out-dir " + dir.Sub("out"));
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_EQ(ReadFile(dir.Sub("out/" + k0)), TestBlock(0, 300'000));
  EXPECT_EQ(ReadFile(dir.Sub("out/" + k1)), TestBlock(1, 4096));

  r = Kvtier("get " + common + "--key " + k1);  // a single block goes to stdout
  ASSERT_EQ(r.exit_code, 0);
  const auto expected = TestBlock(1, 4096);
  EXPECT_EQ(r.out, std::string(expected.begin(), expected.end()));

  r = Kvtier("delete " + common + "--json --keys " + k1 + "," + k2);
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_EQ(nlohmann::json::parse(r.out)["deleted"], 1);
  EXPECT_EQ(Kvtier("get " + common + "--key " + k1 + " --out " + dir.Sub("x")).exit_code, 3)
      << "a missing block exits 3";

  r = Kvtier("stats " + common + "--json");
  ASSERT_EQ(r.exit_code, 0);
  j = nlohmann::json::parse(r.out);
  EXPECT_GE(j["puts"].get<int>(), 2);
  EXPECT_EQ(j["tiers"].size(), 3u);

  // Bad input: a clear message and exit status 2, nothing sent.
  EXPECT_EQ(Kvtier("lookup " + common + "--keys nothex").exit_code, 2);
  EXPECT_EQ(Kvtier("put " + common + "--keys " + k0 + " a b").exit_code, 2);
  EXPECT_EQ(Kvtier("stats --bogus").exit_code, 2);
}

TEST(Cli, KeysMatchTheDocumentedExample) {
  std::string tokens;
  for (int i = 0; i < 40; ++i) {
    if (i > 0) tokens += ',';
    tokens += std::to_string(i);
  }
  CliRun r = Kvtier("keys --json --tokens " + tokens +
                 " --tenant-salt tenant-a --model meta-llama/Meta-Llama-3-8B@main"
                 " --layout llama3-8b");
  ASSERT_EQ(r.exit_code, 0);
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["root"], "cc5467c593328c2a08058c27070dbb32");
  ASSERT_EQ(j["keys"].size(), 2u);
  EXPECT_EQ(j["keys"][0], "67b5fdec10e308973ef03225613fe664");
  EXPECT_EQ(j["keys"][1], "50c6d900653df8ca51f2204b5655fdd5");
}

}  // namespace
}  // namespace kvtier
