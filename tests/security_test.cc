// Bearer-token auth, TLS and mutual TLS, against real kvtierd processes on loopback.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iterator>

#include "client/cache_client.h"
#include "testing/daemon_process.h"
#include "testing/test_util.h"

namespace kvtier {
namespace {

using ::kvtier::testing::DaemonProcess;
using ::kvtier::testing::TempDir;

std::unique_ptr<DaemonProcess> Start(const TempDir& dir, std::vector<std::string> extra) {
  std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--no-nvme", "--host-mib", "32",
                                   "--metrics-listen", "", "--log-level", "warn"};
  args.insert(args.end(), extra.begin(), extra.end());
  (void)dir;
  return std::make_unique<DaemonProcess>(std::string(KVTIER_BINARY_DIR) + "/kvtierd", args);
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Put one block and read it back; returns the first error.
absl::Status RoundTrip(const ClientOptions& o) {
  auto c = CacheClient::Create(o);
  if (!c.ok()) return c.status();
  const auto data = testing::TestBlock(1, 1000);
  const BlockToPut b{testing::TestKey(1), BlockKey{}, data};
  auto put = (*c)->Put(std::span(&b, 1));
  if (!put.ok()) return put.status();
  const BlockKey k = testing::TestKey(1);
  auto got = (*c)->Get(std::span(&k, 1));
  if (!got.ok()) return got.status();
  if (!(*got)[0].has_value() || *(*got)[0] != data) return absl::InternalError("wrong bytes");
  return absl::OkStatus();
}

TEST(Security, BearerTokensGuardEachTenant) {
  TempDir dir;
  std::ofstream(dir.Sub("tokens.yaml")) << "alice: alice-secret-token-0001\n"
                                           "bob: bob-secret-token-00000002\n";
  auto d = Start(dir, {"--auth-tokens", dir.Sub("tokens.yaml")});
  ASSERT_FALSE(d->address().empty());
  ClientOptions alice{.address = d->address(), .tenant = "alice", .deadline_ms = 5000,
                      .max_attempts = 1};
  alice.bearer_token = "alice-secret-token-0001";
  EXPECT_TRUE(RoundTrip(alice).ok()) << RoundTrip(alice);

  ClientOptions none = alice;
  none.bearer_token.clear();
  EXPECT_EQ(RoundTrip(none).code(), absl::StatusCode::kUnauthenticated);
  ClientOptions wrong = alice;
  wrong.bearer_token = "alice-secret-token-0002";
  EXPECT_EQ(RoundTrip(wrong).code(), absl::StatusCode::kUnauthenticated);
  ClientOptions other_tenant = alice;
  other_tenant.tenant = "bob";  // alice's token, bob's key space
  EXPECT_EQ(RoundTrip(other_tenant).code(), absl::StatusCode::kPermissionDenied);
  ClientOptions unknown = alice;
  unknown.tenant = "carol";
  EXPECT_EQ(RoundTrip(unknown).code(), absl::StatusCode::kPermissionDenied);
  auto c = CacheClient::Create(none);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ((*c)->Stats().status().code(), absl::StatusCode::kUnauthenticated);
}

TEST(Security, BadTokenFileStopsTheDaemonWithAReason) {
  // A short token; and one token for two tenants, which let one act as the other.
  for (const char* file : {"alice: short\n",
                           "alice: the-same-token-for-both\nbob: the-same-token-for-both\n"}) {
    TempDir dir;
    std::ofstream(dir.Sub("tokens.yaml")) << file;
    auto d = Start(dir, {"--auth-tokens", dir.Sub("tokens.yaml")});
    EXPECT_TRUE(d->address().empty()) << "must not serve with this token file:\n" << file;
  }
}

class Tls : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string script =
        "cd " + dir_.path() +
        " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        " -keyout ca.key -out ca.pem -days 2 -subj /CN=kvtier-test-ca"
        " && for who in server client; do"
        " openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        " -keyout $who.key -out $who.csr -subj /CN=$who"
        " && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > $who.ext"
        " && openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial"
        " -out $who.pem -days 2 -extfile $who.ext || exit 1; done) > /dev/null 2>&1";
    ASSERT_EQ(std::system(("(" + script).c_str()), 0) << "openssl could not make test certs";
  }
  ClientOptions Options(const DaemonProcess& d) {
    ClientOptions o{.address = d.address(), .tenant = "t", .deadline_ms = 5000,
                    .max_attempts = 1};
    o.tls_ca_pem = ReadAll(dir_.Sub("ca.pem"));
    return o;
  }
  TempDir dir_;
};

TEST_F(Tls, ServesTlsClientsOnly) {
  auto d = Start(dir_, {"--tls-cert", dir_.Sub("server.pem"), "--tls-key", dir_.Sub("server.key")});
  ASSERT_FALSE(d->address().empty());
  EXPECT_TRUE(RoundTrip(Options(*d)).ok()) << RoundTrip(Options(*d));
  ClientOptions plain{.address = d->address(), .tenant = "t", .deadline_ms = 2000,
                      .max_attempts = 1};
  EXPECT_EQ(RoundTrip(plain).code(), absl::StatusCode::kUnavailable);
  ClientOptions wrong_ca = Options(*d);
  wrong_ca.tls_ca_pem = ReadAll(dir_.Sub("client.pem"));  // not the CA
  EXPECT_EQ(RoundTrip(wrong_ca).code(), absl::StatusCode::kUnavailable);
}

TEST_F(Tls, MutualTlsRequiresAClientCertificate) {
  auto d = Start(dir_, {"--tls-cert", dir_.Sub("server.pem"), "--tls-key",
                        dir_.Sub("server.key"), "--tls-client-ca", dir_.Sub("ca.pem")});
  ASSERT_FALSE(d->address().empty());
  EXPECT_EQ(RoundTrip(Options(*d)).code(), absl::StatusCode::kUnavailable)
      << "no client certificate";
  ClientOptions o = Options(*d);
  o.tls_cert_pem = ReadAll(dir_.Sub("client.pem"));
  o.tls_key_pem = ReadAll(dir_.Sub("client.key"));
  EXPECT_TRUE(RoundTrip(o).ok()) << RoundTrip(o);
}

}  // namespace
}  // namespace kvtier
