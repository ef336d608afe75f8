// Bearer-token auth, TLS and mutual TLS, against real kvtierd processes on loopback.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <set>
#include <thread>
#include <tuple>

#include "client/cache_client.h"
#include "kvtier/v1/cache.grpc.pb.h"
#include "testing/daemon_process.h"
#include "testing/test_certs.h"
#include "testing/test_util.h"

namespace kvtier {
namespace {

using ::kvtier::testing::DaemonProcess;
using ::kvtier::testing::ReadText;
using ::kvtier::testing::TempDir;

std::unique_ptr<DaemonProcess> Start(const TempDir& dir, std::vector<std::string> extra) {
  std::vector<std::string> args = {"--listen", "127.0.0.1:0", "--no-nvme", "--host-mib", "32",
                                   "--metrics-listen", "", "--log-level", "warn"};
  args.insert(args.end(), extra.begin(), extra.end());
  (void)dir;
  return std::make_unique<DaemonProcess>(std::string(KVTIER_BINARY_DIR) + "/kvtierd", args);
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

// A context carrying `token`, with a deadline.
std::unique_ptr<grpc::ClientContext> WithToken(const std::string& token, int ms = 5000) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->AddMetadata("authorization", "Bearer " + token);
  ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(ms));
  return ctx;
}

// The store keys that a WatchBlocks stream under `token` names as stored within `ms`.
std::set<std::string> WatchStored(v1::CacheService::Stub& stub, const std::string& token,
                                  int ms) {
  auto ctx = WithToken(token, ms);
  auto reader = stub.WatchBlocks(ctx.get(), v1::WatchBlocksRequest());
  std::set<std::string> stored;
  v1::BlockEventBatch batch;
  while (reader->Read(&batch)) {
    for (size_t i = 0; i + 17 <= batch.events().size(); i += 17) {
      if (batch.events()[i + 16] == 1) stored.insert(batch.events().substr(i, 16));
    }
  }
  return stored;
}

// Token roles: a tenant's token sees its own tenant's counts and events only; a cluster token
// sees the whole daemon and reaches no tenant's blocks.
TEST(Security, ATenantSeesItsOwnCountsAndEventsOnly) {
  TempDir dir;
  const std::string alice_token = "alice-secret-token-0001", bob_token = "bob-secret-token-00000002",
                    router_token = "router-secret-token-0003";
  std::ofstream(dir.Sub("tokens.yaml"))
      << "alice: " << alice_token << "\nbob: " << bob_token << "\nrouter: {token: "
      << router_token << ", role: cluster}\n";
  auto d = Start(dir, {"--auth-tokens", dir.Sub("tokens.yaml")});
  ASSERT_FALSE(d->address().empty());
  auto stub = v1::CacheService::NewStub(
      grpc::CreateChannel(d->address(), grpc::InsecureChannelCredentials()));

  // Watchers first (each for 3 s), then puts: alice 2 blocks, bob 3.
  std::set<std::string> alice_saw, router_saw;
  std::thread w1([&] { alice_saw = WatchStored(*stub, alice_token, 3000); });
  std::thread w2([&] { router_saw = WatchStored(*stub, router_token, 3000); });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  for (auto [tenant, token, n] : {std::tuple<std::string, std::string, int>{"alice", alice_token, 2},
                                  {"bob", bob_token, 3}}) {
    ClientOptions o{.address = d->address(), .tenant = tenant, .deadline_ms = 5000,
                    .max_attempts = 1};
    o.bearer_token = token;
    auto c = CacheClient::Create(o);
    ASSERT_TRUE(c.ok());
    std::vector<std::vector<uint8_t>> data;
    std::vector<BlockToPut> blocks;
    for (int i = 0; i < n; ++i) data.push_back(testing::TestBlock(i, 1000 + i));
    for (int i = 0; i < n; ++i) {
      blocks.push_back({testing::TestKey(i + 1), i == 0 ? BlockKey{} : testing::TestKey(i),
                        data[i]});
    }
    ASSERT_TRUE((*c)->Put(blocks).ok());
  }
  w1.join();
  w2.join();
  EXPECT_EQ(alice_saw.size(), 2u) << "alice sees her own 2 stored blocks, none of bob's";
  EXPECT_EQ(router_saw.size(), 5u) << "the cluster token sees every tenant's";
  for (const std::string& k : alice_saw) EXPECT_TRUE(router_saw.contains(k));

  // Stats: alice's token gives her usage and nothing of the daemon's or bob's.
  v1::StatsRequest req;
  v1::StatsResponse res;
  ASSERT_TRUE(stub->Stats(WithToken(alice_token).get(), req, &res).ok());
  EXPECT_EQ(res.tiers_size(), 0);
  EXPECT_EQ(res.puts(), 0u);
  EXPECT_EQ(res.tenant_usage().tenant(), "alice");
  EXPECT_EQ(res.tenant_usage().resident_blocks(), 2u);
  EXPECT_EQ(res.tenant_usage().resident_bytes(), 1000u + 1001u);
  req.set_tenant("bob");
  EXPECT_EQ(stub->Stats(WithToken(alice_token).get(), req, &res).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  v1::WatchBlocksRequest bobs;
  bobs.set_tenant("bob");
  auto ctx = WithToken(alice_token);
  EXPECT_EQ(stub->WatchBlocks(ctx.get(), bobs)->Finish().error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  // The cluster token: the whole daemon, and any one tenant's usage.
  res.Clear();
  ASSERT_TRUE(stub->Stats(WithToken(router_token).get(), req, &res).ok());
  EXPECT_EQ(res.tiers_size(), 3);
  EXPECT_EQ(res.tenant_usage().resident_blocks(), 3u);
  // ... but no tenant's blocks.
  ClientOptions as_router{.address = d->address(), .tenant = "router", .deadline_ms = 5000,
                          .max_attempts = 1};
  as_router.bearer_token = router_token;
  EXPECT_EQ(RoundTrip(as_router).code(), absl::StatusCode::kPermissionDenied);
  as_router.tenant = "alice";
  EXPECT_EQ(RoundTrip(as_router).code(), absl::StatusCode::kPermissionDenied);
}

// Health and reflection answer without a token, and say nothing of any tenant.
TEST(Security, HealthAndReflectionSayNothingOfTenants) {
  TempDir dir;
  std::ofstream(dir.Sub("tokens.yaml")) << "alice-the-tenant: alice-secret-token-0001\n";
  auto d = Start(dir, {"--auth-tokens", dir.Sub("tokens.yaml")});
  ASSERT_FALSE(d->address().empty());
  grpc::GenericStub stub(grpc::CreateChannel(d->address(), grpc::InsecureChannelCredentials()));
  // grpc.health.v1.Health/Check {service: ""} -> {status: SERVING}: fields 1 and 1 on the wire.
  auto unary = [&](const std::string& method, const std::string& request, std::string* out) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::Slice slice(request);
    grpc::ByteBuffer req(&slice, 1), res;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status st;
    stub.UnaryCall(&ctx, method, grpc::StubOptions(), &req, &res, [&](grpc::Status s) {
      std::lock_guard l(mu);
      st = s;
      done = true;
      cv.notify_all();
    });
    std::unique_lock l(mu);
    cv.wait(l, [&] { return done; });
    std::vector<grpc::Slice> slices;
    if (st.ok()) (void)res.Dump(&slices);
    out->clear();
    for (const auto& s : slices) out->append(reinterpret_cast<const char*>(s.begin()), s.size());
    return st;
  };
  std::string out;
  ASSERT_TRUE(unary("/grpc.health.v1.Health/Check", std::string("\x0a\x00", 2), &out).ok());
  EXPECT_EQ(out, std::string("\x08\x01", 2)) << "SERVING, and nothing else";
  EXPECT_EQ(unary("/grpc.health.v1.Health/Check", "\x0a\x10" "alice-the-tenant", &out).error_code(),
            grpc::StatusCode::NOT_FOUND)
      << "a tenant is not a health service";

  // grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo {list_services: ""} and the
  // file of CacheService: service and message names only.
  for (const std::string& request :
       {std::string("\x3a\x00", 2), std::string("\x22\x16" "kvtier.v1.CacheService")}) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    grpc::CompletionQueue cq;
    auto rpc = stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                &cq);
    void* tag = nullptr;
    bool ok = false;
    rpc->StartCall(reinterpret_cast<void*>(1));
    ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
    grpc::Slice slice(request);
    grpc::ByteBuffer req(&slice, 1), res;
    rpc->Write(req, reinterpret_cast<void*>(2));
    ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
    rpc->Read(&res, reinterpret_cast<void*>(3));
    ASSERT_TRUE(cq.Next(&tag, &ok) && ok);
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(res.Dump(&slices).ok());
    std::string answer;
    for (const auto& s : slices) answer.append(reinterpret_cast<const char*>(s.begin()), s.size());
    EXPECT_NE(answer.find("kvtier.v1.CacheService"), std::string::npos);
    EXPECT_EQ(answer.find("alice"), std::string::npos);
    EXPECT_EQ(answer.find("secret"), std::string::npos);
    rpc->WritesDone(reinterpret_cast<void*>(4));
    cq.Next(&tag, &ok);
    grpc::Status st;
    rpc->Finish(&st, reinterpret_cast<void*>(5));
    while (cq.Next(&tag, &ok) && tag != reinterpret_cast<void*>(5)) {
    }
    cq.Shutdown();
    while (cq.Next(&tag, &ok)) {
    }
  }
}

class Tls : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(testing::MakeTestCerts(dir_.path())) << "openssl could not make test certs";
  }
  ClientOptions Options(const DaemonProcess& d) {
    ClientOptions o{.address = d.address(), .tenant = "t", .deadline_ms = 5000,
                    .max_attempts = 1};
    o.tls_ca_pem = ReadText(dir_.Sub("ca.pem"));
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
  wrong_ca.tls_ca_pem = ReadText(dir_.Sub("client.pem"));  // not the CA
  EXPECT_EQ(RoundTrip(wrong_ca).code(), absl::StatusCode::kUnavailable);
}

TEST_F(Tls, MutualTlsRequiresAClientCertificate) {
  auto d = Start(dir_, {"--tls-cert", dir_.Sub("server.pem"), "--tls-key",
                        dir_.Sub("server.key"), "--tls-client-ca", dir_.Sub("ca.pem")});
  ASSERT_FALSE(d->address().empty());
  EXPECT_EQ(RoundTrip(Options(*d)).code(), absl::StatusCode::kUnavailable)
      << "no client certificate";
  ClientOptions o = Options(*d);
  o.tls_cert_pem = ReadText(dir_.Sub("client.pem"));
  o.tls_key_pem = ReadText(dir_.Sub("client.key"));
  EXPECT_TRUE(RoundTrip(o).ok()) << RoundTrip(o);
}

}  // namespace
}  // namespace kvtier
