#include "server/daemon_config.h"

#include <gtest/gtest.h>

#include <fstream>

#include "testing/test_util.h"

namespace kvtier::server {
namespace {

absl::StatusOr<DaemonConfig> Load(std::vector<std::string> args, bool* help = nullptr) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  bool h = false;
  auto c = LoadDaemonConfig(static_cast<int>(argv.size()), argv.data(), help ? help : &h);
  return c;
}

void ExpectError(const absl::StatusOr<DaemonConfig>& c, const std::string& names) {
  ASSERT_FALSE(c.ok()) << names;
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(c.status().message().find(names), std::string::npos) << c.status();
}

TEST(DaemonConfig, DefaultsMakeAWorkingSingleNodeCache) {
  auto c = Load({});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "127.0.0.1:7700");
  EXPECT_EQ(c->store.nvme_path, "./kvtier-data");
  EXPECT_EQ(c->store.host_bytes, size_t{1} << 30);
  EXPECT_EQ(c->store.nvme_admission, NvmeAdmission::kSeenTwice);
}

TEST(DaemonConfig, YamlThenFlagsOverride) {
  testing::TempDir dir;
  const std::string path = dir.Sub("kvtierd.yaml");
  std::ofstream(path) << "listen: 127.0.0.1:0\n"
                         "log_level: warn\n"
                         "store:\n"
                         "  host_mib: 64\n"
                         "  hugepages: false\n"
                         "  nvme:\n"
                         "    path: /var/lib/kvtier\n"
                         "    capacity_gib: 2\n"
                         "    admission: all\n"
                         "limits:\n"
                         "  max_keys_per_request: 5000\n";
  auto c = Load({"--config", path, "--host-mib", "128", "--admission=seen-twice"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "127.0.0.1:0");
  EXPECT_EQ(c->log_level, "warn");
  EXPECT_EQ(c->store.host_bytes, size_t{128} << 20) << "the flag wins";
  EXPECT_FALSE(c->store.host_hugepages);
  EXPECT_EQ(c->store.nvme_path, "/var/lib/kvtier");
  EXPECT_EQ(c->store.nvme_bytes, uint64_t{2} << 30);
  EXPECT_EQ(c->store.nvme_admission, NvmeAdmission::kSeenTwice) << "the flag wins";
  EXPECT_EQ(c->limits.max_keys_per_request, 5000u);
  auto no_nvme = Load({"--config", path, "--no-nvme"});
  ASSERT_TRUE(no_nvme.ok());
  EXPECT_TRUE(no_nvme->store.nvme_path.empty());
}

TEST(DaemonConfig, TheDocumentedExampleLoadsAsTheDefaults) {
  auto c = Load({"--config", std::string(KVTIER_SOURCE_DIR) + "/docs/kvtierd.example.yaml"});
  ASSERT_TRUE(c.ok()) << c.status();
  auto d = Load({});
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(c->listen, d->listen);
  EXPECT_EQ(c->store.host_bytes, d->store.host_bytes);
  EXPECT_EQ(c->store.nvme_bytes, d->store.nvme_bytes);
  EXPECT_EQ(c->store.nvme_path, d->store.nvme_path);
  EXPECT_EQ(c->store.lease_ttl_us, d->store.lease_ttl_us);
  EXPECT_EQ(c->store.max_lease_ttl_us, d->store.max_lease_ttl_us);
  EXPECT_EQ(c->limits.max_keys_per_request, d->limits.max_keys_per_request);
  EXPECT_EQ(c->max_message_bytes, d->max_message_bytes);
}

TEST(DaemonConfig, ErrorsNameTheKeyOrFlag) {
  testing::TempDir dir;
  auto with_yaml = [&](const std::string& text) {
    const std::string path = dir.Sub("c.yaml");
    std::ofstream(path) << text;
    return Load({"--config", path});
  };
  ExpectError(with_yaml("store:\n  host_mb: 5\n"), "store.host_mb: unknown setting");
  ExpectError(with_yaml("store:\n  host_mib: lots\n"), "store.host_mib");
  ExpectError(with_yaml("store:\n  nvme:\n    admission: sometimes\n"), "store.nvme.admission");
  ExpectError(with_yaml("store:\n  mlock: maybe\n"), "store.mlock");
  ExpectError(with_yaml("listen: [1, 2]\n"), "listen: expected a single value");
  ExpectError(with_yaml("store: {host_mib: 1\n"), "--config");  // malformed YAML
  ExpectError(Load({"--config", dir.Sub("missing.yaml")}), "--config");
  ExpectError(Load({"--host-mib", "0"}), "--host-mib: must be > 0");
  ExpectError(Load({"--host-mib"}), "--host-mib: needs a value");
  ExpectError(Load({"--frobnicate", "1"}), "unknown option '--frobnicate'");
  ExpectError(Load({"--log-level", "chatty"}), "--log-level");
  ExpectError(Load({"--listen", "nowhere"}), "--listen");
  // A port past 65535 listened on another (99999 -> 34463); message sizes past gRPC's int made
  // a daemon that refused every call, or none.
  ExpectError(Load({"--listen", "127.0.0.1:99999"}), "--listen: '127.0.0.1:99999': the port");
  ExpectError(Load({"--metrics-listen", "127.0.0.1:65536"}), "--metrics-listen");
  ExpectError(Load({"--ucx-listen", "127.0.0.1:-1"}), "--ucx-listen");
  ExpectError(Load({"--ucx-mode", "shared"}), "--ucx-mode: 'shared' is not rkey, served or auto");
  ExpectError(with_yaml("ucx: {mode: rdma}\n"), "ucx.mode");
  EXPECT_EQ(Load({"--ucx-mode", "served"})->ucx_mode, "served");
  ExpectError(Load({"--kv-events-endpoint", "udp://1.2.3.4:5"}), "--kv-events-endpoint");
  ExpectError(with_yaml("events: {zmq_endpoint: 'tcp://127.0.0.1:x'}\n"), "events.zmq_endpoint");
  ExpectError(Load({"--kv-events-replay-endpoint", "tcp://127.0.0.1:0"}),
              "events.zmq_replay_endpoint (--kv-events-replay-endpoint): needs");
  auto events = with_yaml(
      "events: {zmq_endpoint: 'tcp://127.0.0.1:0', zmq_replay_endpoint: 'ipc:///tmp/r'}\n");
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_EQ(events->kv_events_endpoint, "tcp://127.0.0.1:0");
  EXPECT_EQ(events->kv_events_replay_endpoint, "ipc:///tmp/r");
  EXPECT_TRUE(Load({})->kv_events_endpoint.empty());
  ExpectError(with_yaml("listen: 127.0.0.1:70000\n"), "listen: '127.0.0.1:70000'");
  for (const char* mib : {"2048", "4096", "6144"}) {
    ExpectError(Load({"--max-message-mib", mib}), "--max-message-mib");
  }
  EXPECT_TRUE(Load({"--max-message-mib", "2047", "--listen", "127.0.0.1:65535"}).ok());
  ExpectError(Load({"--host-mib", "4", "--max-block-mib", "8"}), "host_bytes");
  ExpectError(Load({"--lease-ttl-ms", "600000"}), "max_lease_ttl_ms");
}

// deploy/kubernetes gives the daemon the documented example, then the pod's addresses, then the
// overlay's sizes.
TEST(DaemonConfig, LaterConfigFilesOverrideEarlierOnesAndFlagsOverrideAll) {
  testing::TempDir dir;
  std::ofstream(dir.Sub("a.yaml"))
      << "listen: 0.0.0.0:7700\nstore: {host_mib: 64, max_block_mib: 2}\n";
  std::ofstream(dir.Sub("b.yaml")) << "store: {host_mib: 128}\n";
  auto c =
      Load({"--config", std::string(KVTIER_SOURCE_DIR) + "/docs/kvtierd.example.yaml",
            "--max-block-mib", "4", "--config", dir.Sub("a.yaml"), "--config", dir.Sub("b.yaml")});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->listen, "0.0.0.0:7700");
  EXPECT_EQ(c->store.host_bytes, uint64_t{128} << 20);
  EXPECT_EQ(c->store.max_block_bytes, uint64_t{4} << 20) << "a flag wins wherever it stands";
}

TEST(DaemonConfig, CheckConfigIsAFlagNotASetting) {
  EXPECT_FALSE(Load({})->check_only);
  auto c = Load({"--host-mib", "64", "--check-config"});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->check_only);
  EXPECT_EQ(c->store.host_bytes, uint64_t{64} << 20);
  testing::TempDir dir;
  std::ofstream(dir.Sub("c.yaml")) << "check_config: true\n";
  ExpectError(Load({"--config", dir.Sub("c.yaml")}), "check_config: unknown setting");
}

TEST(DaemonConfig, HelpListsEveryOptionWithItsDefault) {
  bool help = false;
  auto c = Load({"--host-mib", "1", "--help"}, &help);
  EXPECT_TRUE(help);
  const std::string usage = DaemonUsage();
  for (const char* s :
       {"--listen", "--host-mib", "--data", "--admission", "--lease-ttl-ms",
        "store.nvme.capacity_gib", "default 64", "--config", "--no-nvme", "--check-config"}) {
    EXPECT_NE(usage.find(s), std::string::npos) << s;
  }
}

}  // namespace
}  // namespace kvtier::server
