// kvtier-worker end to end on loopback: three kvtierd processes, kvtier-router and the worker.
// A client writes the KV blocks of a random prefix through the router, then asks the worker for
// dense, head-sparse and MLA attention and checks the outputs against the CPU reference
// computed from the same bytes.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <random>
#include <thread>

#include "client/cache_client.h"
#include "client/router_client.h"
#include "common/layout_proto.h"
#include "gpu/attention.h"
#include "gpu/half.h"
#include "kvtier/v1/attention.grpc.pb.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "testing/daemon_process.h"
#include "testing/http_get.h"
#include "testing/test_util.h"

namespace kvtier {
namespace {

using ::kvtier::testing::DaemonProcess;

constexpr char kTenant[] = "tenant-a";

// Small GQA: 2 layers, 4 kv heads of 16, 16-token blocks, bf16 (8 KiB a block).
KvLayout Gqa() {
  return {.kind = LayoutKind::kGqa,
          .dtype = DType::kBf16,
          .layers = 2,
          .kv_heads = 4,
          .head_dim = 16,
          .block_tokens = 16};
}
// Small MLA: 2 layers, latent 32 + rope 8, 16-token blocks, bf16.
KvLayout Mla() { return KvLayout::SmallMla(); }

// A prefix: its keys and blocks (random bf16 values).
struct Prefix {
  KvLayout layout;
  std::vector<BlockKey> keys;
  std::vector<std::vector<uint8_t>> blocks;
};

Prefix MakePrefix(const KvLayout& layout, size_t blocks, uint64_t seed) {
  Prefix p{.layout = layout};
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  for (size_t b = 0; b < blocks; ++b) {
    const BlockKey key{rng(), rng()};
    p.keys.push_back(key);
    std::vector<uint8_t> bytes(layout.BytesPerBlock());
    auto* e = reinterpret_cast<uint16_t*>(bytes.data());
    for (size_t i = 0; i < bytes.size() / 2; ++i) e[i] = gpu::FloatToBf16(value(rng));
    p.blocks.push_back(std::move(bytes));
  }
  return p;
}

std::vector<float> RandomFloats(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& f : v) f = value(rng);
  return v;
}

class WorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string list;
    for (int i = 0; i < 3; ++i) {
      daemons_.push_back(std::make_unique<DaemonProcess>(
          std::string(KVTIER_BINARY_DIR) + "/kvtierd",
          std::vector<std::string>{"--listen", "127.0.0.1:0", "--no-nvme", "--host-mib", "64",
                                   "--metrics-listen", "127.0.0.1:0", "--log-level", "warn"}));
      ASSERT_FALSE(daemons_.back()->address().empty()) << daemons_.back()->output();
      nodes_.push_back(daemons_.back()->address());
      list += (i ? "," : "") + nodes_.back();
    }
    router_ = std::make_unique<DaemonProcess>(
        std::string(KVTIER_BINARY_DIR) + "/kvtier-router",
        // A peer replica that is not there (port 1): the router's replica-sync series exist,
        // for the metrics catalogue.
        std::vector<std::string>{"--nodes", list, "--cache-aware", "--listen", "127.0.0.1:0",
                                 "--metrics-listen", "127.0.0.1:0", "--probe-interval-ms", "200",
                                 "--peers", "127.0.0.1:1", "--log-level", "error"});
    ASSERT_FALSE(router_->address().empty()) << router_->output();
    worker_ = std::make_unique<DaemonProcess>(
        std::string(KVTIER_BINARY_DIR) + "/kvtier-worker",
        std::vector<std::string>{"--router", router_->address(), "--listen", "127.0.0.1:0",
                                 "--metrics-listen", "127.0.0.1:0", "--pool-mib", "64", "--threads",
                                 "2", "--fetch-deadline-ms", "3000", "--log-level", "warn"});
    ASSERT_FALSE(worker_->address().empty()) << worker_->output();
    stub_ = v1::AttentionService::NewStub(
        grpc::CreateChannel(worker_->address(), grpc::InsecureChannelCredentials()));
  }

  std::unique_ptr<CacheClient> Client(const std::string& node) {
    auto c = CacheClient::Create({.address = node, .tenant = kTenant});
    EXPECT_TRUE(c.ok()) << c.status();
    return std::move(*c);
  }

  // Stores blocks [begin, end) of the prefix on `node`.
  void PutOn(const std::string& node, const Prefix& p, size_t begin, size_t end) {
    std::vector<BlockToPut> puts;
    for (size_t b = begin; b < end; ++b) {
      puts.push_back({.key = p.keys[b],
                      .parent = b == 0 ? BlockKey{} : p.keys[b - 1],
                      .data = std::span<const uint8_t>(p.blocks[b])});
    }
    auto put = Client(node)->Put(puts, /*durable=*/false, &p.layout);
    ASSERT_TRUE(put.ok()) << put.status();
  }

  // Stores the whole prefix where the router sends it; returns that node.
  std::string PutThroughRouter(const Prefix& p) {
    auto router = RouterClient::Create(router_->address());
    EXPECT_TRUE(router.ok());
    auto route = (*router)->Route(kTenant, p.keys);
    EXPECT_TRUE(route.ok()) << route.status();
    if (!route.ok()) return "";
    PutOn(route->nodes.front(), p, 0, p.keys.size());
    return route->nodes.front();
  }

  v1::DecodeRequest Request(const Prefix& p, v1::AttentionMode mode, int context,
                            const std::vector<std::vector<float>>& q,
                            const std::vector<std::vector<float>>& q_rope = {}) {
    v1::DecodeRequest req;
    req.set_tenant(kTenant);
    LayoutToProto(p.layout, req.mutable_layout());
    req.set_mode(mode);
    v1::Sequence* s = req.add_sequences();
    s->set_packed_keys(PackKeys(p.keys));
    s->set_context_tokens(context);
    for (size_t l = 0; l < q.size(); ++l) {
      v1::LayerQuery* lq = s->add_queries();
      lq->set_layer(static_cast<uint32_t>(l));
      lq->mutable_q()->Assign(q[l].begin(), q[l].end());
      if (!q_rope.empty()) lq->mutable_q_rope()->Assign(q_rope[l].begin(), q_rope[l].end());
    }
    return req;
  }

  grpc::Status Decode(const v1::DecodeRequest& req, v1::DecodeResponse* res) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return stub_->Decode(&ctx, req, res);
  }

  std::vector<std::unique_ptr<DaemonProcess>> daemons_;
  std::vector<std::string> nodes_;
  std::unique_ptr<DaemonProcess> router_, worker_;
  std::unique_ptr<v1::AttentionService::Stub> stub_;
};

void ExpectClose(const std::vector<float>& want, const google::protobuf::RepeatedField<float>& got,
                 const std::string& what) {
  ASSERT_EQ(want.size(), static_cast<size_t>(got.size())) << what;
  for (size_t i = 0; i < want.size(); ++i) {
    // The CPU fast path accumulates in float; the reference in double.
    ASSERT_NEAR(got[i], want[i], 2e-4 * (1 + std::fabs(want[i]))) << what << " element " << i;
  }
}

gpu::PagedKv GqaView(const Prefix& p, int context) {
  gpu::PagedKv kv{.shape = {.layers = static_cast<int>(p.layout.layers),
                            .kv_heads = static_cast<int>(p.layout.kv_heads),
                            .head_dim = static_cast<int>(p.layout.head_dim),
                            .block_tokens = static_cast<int>(p.layout.block_tokens),
                            .dtype = gpu::ElemType::kBf16},
                  .context_tokens = context};
  for (const auto& b : p.blocks) kv.blocks.push_back(b.data());
  return kv;
}

TEST_F(WorkerTest, DenseAndHeadSparseMatchTheReferenceAndSparseFetchesLess) {
  const Prefix p = MakePrefix(Gqa(), 40, 1);
  const int context = 40 * 16 - 7;  // a partial last block
  ASSERT_FALSE(PutThroughRouter(p).empty());
  const int q_heads = 8;
  std::vector<std::vector<float>> q = {RandomFloats(q_heads * 16, 10),
                                       RandomFloats(q_heads * 16, 11)};
  const gpu::PagedKv kv = GqaView(p, context);

  // Head-sparse first, so that dense then has to fetch the slices sparse left out.
  v1::DecodeRequest sparse_req = Request(p, v1::ATTENTION_MODE_HEAD_SPARSE, context, q);
  gpu::HeadProfile profile;  // defaults: 4 sinks, 64 recent tokens
  profile.recall = {{false, true, false, false}, {true, false, false, true}};
  for (const auto& layer : profile.recall) {
    v1::HeadProfile::Layer* pl = sparse_req.mutable_profile()->add_layers();
    for (uint32_t h = 0; h < layer.size(); ++h) {
      if (layer[h]) pl->add_recall_heads(h);
    }
  }
  v1::DecodeResponse sparse;
  ASSERT_TRUE(Decode(sparse_req, &sparse).ok());
  v1::DecodeResponse dense;
  ASSERT_TRUE(Decode(Request(p, v1::ATTENTION_MODE_DENSE, context, q), &dense).ok());

  for (int l = 0; l < 2; ++l) {
    gpu::DecodeRequest r{.layer = l, .q_heads = q_heads, .q = q[l].data(), .scale = 1.0f / 4.0f};
    const gpu::DecodeResult want = gpu::ReferenceDecode(kv, r);
    ExpectClose(want.out, dense.sequences(0).layers(l).out(), "dense out");
    ExpectClose(want.lse, dense.sequences(0).layers(l).lse(), "dense lse");
    r.profile = &profile;
    const gpu::DecodeResult want_sparse = gpu::ReferenceDecode(kv, r);
    ExpectClose(want_sparse.out, sparse.sequences(0).layers(l).out(), "sparse out");
    ExpectClose(want_sparse.lse, sparse.sequences(0).layers(l).lse(), "sparse lse");
  }
  // Sparse read 3 of 8 heads outside the sink and window blocks; dense then read the rest.
  const uint64_t total = 40 * p.layout.BytesPerBlock();
  EXPECT_GT(sparse.stats().bytes_skipped(), 0u);
  EXPECT_EQ(sparse.stats().bytes_fetched() + sparse.stats().bytes_skipped(), total);
  EXPECT_LT(sparse.stats().bytes_fetched(), total / 2);
  EXPECT_EQ(dense.stats().bytes_from_pool(), sparse.stats().bytes_fetched());
  EXPECT_EQ(dense.stats().bytes_fetched(), sparse.stats().bytes_skipped());
  EXPECT_EQ(sparse.stats().bytes_fetched_ucx(), sparse.stats().bytes_fetched())
      << "the daemons offer UCX on loopback";
  EXPECT_EQ(dense.device(), "cpu");

  const std::string metrics = ::kvtier::testing::HttpGet(worker_->AddressOf("metrics"), "/metrics");
  EXPECT_NE(metrics.find("kvtier_worker_sparse_skipped_bytes_total"), std::string::npos);
  EXPECT_NE(metrics.find("kvtier_worker_fetch_bytes_total{source=\"pool\"}"), std::string::npos);
  EXPECT_NE(metrics.find("mode=\"head_sparse\""), std::string::npos);
  // End-to-end latency per mode, beside fetch and compute; the binary and its process.
  EXPECT_GE(::kvtier::testing::Sample(
                metrics, "kvtier_worker_request_seconds_count{mode=\"head_sparse\"}"),
            1);
  EXPECT_GE(
      ::kvtier::testing::Sample(metrics, "kvtier_worker_request_seconds_count{mode=\"dense\"}"),
      1);
  EXPECT_NE(metrics.find("kvtier_build_info{binary=\"kvtier-worker\""), std::string::npos);
  EXPECT_NE(metrics.find("process_cpu_seconds_total"), std::string::npos);
}

// ---- docs/metrics.md against the binaries ------------------------------------------------------

// A metric family: its type and label names (without `le`).
struct Family {
  std::string type;
  std::set<std::string> labels;
  bool operator==(const Family&) const = default;
};
using Families = std::map<std::string, Family>;

std::string Describe(const Family& f) {
  return f.type + " {" + absl::StrJoin(f.labels, ",") + "}";
}

// docs/metrics.md's tables, by section ("Every binary", "kvtierd", ...).
std::map<std::string, Families> Catalogue() {
  std::ifstream in(std::string(KVTIER_SOURCE_DIR) + "/docs/metrics.md");
  std::map<std::string, Families> out;
  std::string section;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("## ", 0) == 0) section = line.substr(3);
    if (line.rfind("| `", 0) != 0) continue;
    const std::vector<std::string> cells = absl::StrSplit(line, '|');
    // "", name, type, labels, meaning, ""
    if (cells.size() < 5) continue;
    const std::string name(absl::StripAsciiWhitespace(cells[1]));
    Family f{.type = std::string(absl::StripAsciiWhitespace(cells[2]))};
    for (absl::string_view l : absl::StrSplit(cells[3], ',', absl::SkipWhitespace())) {
      l = absl::StripAsciiWhitespace(l);
      if (!l.empty()) {
        f.labels.insert(std::string(absl::StripSuffix(absl::StripPrefix(l, "`"), "`")));
      }
    }
    out[section][std::string(absl::StripSuffix(absl::StripPrefix(name, "`"), "`"))] = f;
  }
  return out;
}

// What a scrape exposes: families from `# TYPE` lines, labels from their samples.
Families Exposed(const std::string& text) {
  Families out;
  std::istringstream in(text);
  std::vector<std::string> samples;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream fields(line.substr(7));
      std::string name, type;
      fields >> name >> type;
      out[name].type = type;
    } else if (!line.empty() && line[0] != '#') {
      samples.push_back(line);
    }
  }
  for (const std::string& line : samples) {
    const size_t brace = line.find('{');
    std::string name = line.substr(0, std::min(brace, line.find(' ')));
    if (!out.contains(name)) {
      for (const char* suffix : {"_bucket", "_sum", "_count"}) {
        if (absl::EndsWith(name, suffix) &&
            out.contains(name.substr(0, name.size() - strlen(suffix)))) {
          name.resize(name.size() - strlen(suffix));
          break;
        }
      }
    }
    if (brace == std::string::npos || !out.contains(name)) continue;
    // Label names: each `name="` up to the closing brace (values hold no quotes here).
    const std::string labels = line.substr(brace + 1, line.find('}') - brace - 1);
    for (absl::string_view pair : absl::StrSplit(labels, "\",")) {
      const std::string key(pair.substr(0, pair.find('=')));
      if (!key.empty() && key != "le") out[name].labels.insert(key);
    }
  }
  return out;
}

// Differences between what `binary` exposes and what the catalogue lists for it.
std::vector<std::string> Mismatches(const std::string& binary, const Families& exposed,
                                    const std::map<std::string, Families>& catalogue) {
  Families listed = catalogue.count("Every binary") ? catalogue.at("Every binary") : Families{};
  if (catalogue.count(binary)) {
    for (const auto& [name, f] : catalogue.at(binary)) listed[name] = f;
  }
  std::vector<std::string> out;
  for (const auto& [name, f] : exposed) {
    auto it = listed.find(name);
    if (it == listed.end()) {
      out.push_back(binary + " exposes " + name + " (" + Describe(f) +
                    "), not in docs/metrics.md");
    } else if (!(it->second == f)) {
      out.push_back(binary + ": " + name + " is " + Describe(f) + ", docs/metrics.md says " +
                    Describe(it->second));
    }
  }
  for (const auto& [name, f] : listed) {
    if (!exposed.contains(name)) {
      out.push_back("docs/metrics.md lists " + name + " for " + binary +
                    ", which it does not expose");
    }
  }
  return out;
}

// Every metric a daemon, the router and the worker expose, after a request of the worker's, is
// in docs/metrics.md with its type and labels, and every one listed there is exposed.
TEST_F(WorkerTest, MetricsCatalogueIsWhatTheBinariesExpose) {
  const Prefix p = MakePrefix(Gqa(), 4, 7);
  const std::string node = PutThroughRouter(p);
  ASSERT_FALSE(node.empty());
  v1::DecodeResponse res;
  ASSERT_TRUE(Decode(Request(p, v1::ATTENTION_MODE_DENSE, 4 * 16,
                             {RandomFloats(8 * 16, 1), RandomFloats(8 * 16, 2)}),
                     &res)
                  .ok());
  const std::map<std::string, Families> catalogue = Catalogue();
  ASSERT_GE(catalogue.size(), 4u) << "docs/metrics.md: a section per binary and one for all";
  size_t daemon = 0;
  while (daemon < nodes_.size() && nodes_[daemon] != node) ++daemon;
  ASSERT_LT(daemon, nodes_.size());
  const std::pair<std::string, const DaemonProcess*> binaries[] = {
      {"kvtierd", daemons_[daemon].get()},
      {"kvtier-router", router_.get()},
      {"kvtier-worker", worker_.get()}};
  std::vector<std::string> wrong;
  for (const auto& [binary, process] : binaries) {
    const std::string address = process->AddressOf("metrics");
    const Families exposed = Exposed(::kvtier::testing::HttpGet(address, "/metrics"));
    EXPECT_GT(exposed.size(), 8u) << binary << " exposes nothing at " << address;
    for (std::string& w : Mismatches(binary, exposed, catalogue)) wrong.push_back(std::move(w));
  }
  EXPECT_TRUE(wrong.empty()) << absl::StrJoin(wrong, "\n");
}

TEST_F(WorkerTest, MlaMatchesTheReference) {
  const Prefix p = MakePrefix(Mla(), 9, 2);
  ASSERT_FALSE(PutThroughRouter(p).empty());
  const int heads = 4, context = 9 * 16;
  const std::vector<std::vector<float>> q = {RandomFloats(heads * 32, 20),
                                             RandomFloats(heads * 32, 21)};
  const std::vector<std::vector<float>> q_rope = {RandomFloats(heads * 8, 22),
                                                  RandomFloats(heads * 8, 23)};
  v1::DecodeResponse res;
  grpc::Status st = Decode(Request(p, v1::ATTENTION_MODE_UNSPECIFIED, 0, q, q_rope), &res);
  ASSERT_TRUE(st.ok()) << st.error_message();
  gpu::MlaPagedKv kv{.shape = {.layers = 2,
                               .latent_rank = 32,
                               .rope_dim = 8,
                               .block_tokens = 16,
                               .dtype = gpu::ElemType::kBf16},
                     .context_tokens = context};
  for (const auto& b : p.blocks) kv.blocks.push_back(b.data());
  for (int l = 0; l < 2; ++l) {
    gpu::MlaRequest r{.layer = l,
                      .heads = heads,
                      .q_latent = q[l].data(),
                      .q_rope = q_rope[l].data(),
                      .scale = 1.0f / std::sqrt(40.0f)};
    const gpu::DecodeResult want = gpu::ReferenceMlaDecode(kv, r);
    ExpectClose(want.out, res.sequences(0).layers(l).out(), "mla out");
    ExpectClose(want.lse, res.sequences(0).layers(l).lse(), "mla lse");
  }
}

TEST_F(WorkerTest, APrefixSpreadOverThreeNodesThenServedFromThePool) {
  const Prefix p = MakePrefix(Gqa(), 30, 3);
  PutOn(nodes_[0], p, 0, 10);
  PutOn(nodes_[1], p, 10, 20);
  PutOn(nodes_[2], p, 20, 30);
  const std::vector<std::vector<float>> q = {RandomFloats(4 * 16, 30)};
  v1::DecodeResponse first;
  grpc::Status st = Decode(Request(p, v1::ATTENTION_MODE_DENSE, 0, q), &first);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(first.stats().nodes_read(), 3u);
  const uint64_t layer_bytes = p.layout.BytesPerBlock() / 2;
  EXPECT_EQ(first.stats().bytes_fetched(), 30 * layer_bytes) << "only layer 0 was asked for";
  const gpu::PagedKv kv = GqaView(p, 30 * 16);
  gpu::DecodeRequest r{.layer = 0, .q_heads = 4, .q = q[0].data(), .scale = 0.25f};
  ExpectClose(gpu::ReferenceDecode(kv, r).out, first.sequences(0).layers(0).out(), "spread");

  v1::DecodeResponse second;
  ASSERT_TRUE(Decode(Request(p, v1::ATTENTION_MODE_DENSE, 0, q), &second).ok());
  EXPECT_EQ(second.stats().bytes_fetched(), 0u) << "every block was in the worker's pool";
  EXPECT_EQ(second.stats().bytes_from_pool(), 30 * layer_bytes);
  EXPECT_EQ(second.stats().nodes_read(), 0u);
  ExpectClose(gpu::ReferenceDecode(kv, r).out, second.sequences(0).layers(0).out(), "pool");
}

TEST_F(WorkerTest, ConcurrentRequestsForOnePrefixFetchItOnce) {
  // Requests that want the same slices at once: one fetches each slice, the others wait for
  // it; every answer is right, and the bytes fetched add up to the prefix once.
  const Prefix p = MakePrefix(Gqa(), 24, 9);
  ASSERT_FALSE(PutThroughRouter(p).empty());
  const std::vector<std::vector<float>> q = {RandomFloats(8 * 16, 90), RandomFloats(8 * 16, 91)};
  const v1::DecodeRequest req = Request(p, v1::ATTENTION_MODE_DENSE, 0, q);
  constexpr int kClients = 6;
  std::vector<v1::DecodeResponse> res(kClients);
  std::vector<grpc::Status> st(kClients);
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] { st[t] = Decode(req, &res[t]); });
  }
  for (std::thread& t : threads) t.join();
  const gpu::PagedKv kv = GqaView(p, 24 * 16);
  uint64_t fetched = 0;
  for (int t = 0; t < kClients; ++t) {
    ASSERT_TRUE(st[t].ok()) << st[t].error_message();
    fetched += res[t].stats().bytes_fetched();
    for (int l = 0; l < 2; ++l) {
      gpu::DecodeRequest r{.layer = l, .q_heads = 8, .q = q[l].data(), .scale = 0.25f};
      ExpectClose(gpu::ReferenceDecode(kv, r).out, res[t].sequences(0).layers(l).out(),
                  "concurrent");
    }
  }
  EXPECT_EQ(fetched, 24 * p.layout.BytesPerBlock()) << "each slice fetched by one request";
}

TEST_F(WorkerTest, SequencesOfOneRequestByKeysAndByTokens) {
  const Prefix by_keys = MakePrefix(Gqa(), 5, 6);
  // The second prefix is named by its tokens: its keys are the router's and the worker's.
  Prefix by_tokens = MakePrefix(Gqa(), 7, 7);
  std::vector<uint32_t> tokens(7 * 16 + 9);  // a partial block at the end, not cached
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint32_t>(i * 31 + 5);
  auto hasher = ChainHasher::Create(
      {.tenant_salt = kTenant, .model_id = "model-x", .layout_fingerprint = Gqa().Fingerprint()},
      16);
  ASSERT_TRUE(hasher.ok());
  by_tokens.keys = hasher->Keys(tokens);
  ASSERT_EQ(by_tokens.keys.size(), 7u);
  PutOn(nodes_[0], by_keys, 0, 5);
  PutOn(nodes_[2], by_tokens, 0, 7);

  const std::vector<std::vector<float>> q = {RandomFloats(8 * 16, 60)};
  v1::DecodeRequest req = Request(by_keys, v1::ATTENTION_MODE_DENSE, 0, q);
  req.set_model("model-x");
  v1::Sequence* second = req.add_sequences();
  second->mutable_tokens()->Assign(tokens.begin(), tokens.end());
  *second->add_queries() = req.sequences(0).queries(0);
  v1::DecodeResponse res;
  grpc::Status st = Decode(req, &res);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(res.sequences_size(), 2);
  int i = 0;
  for (const Prefix* p : {&by_keys, static_cast<const Prefix*>(&by_tokens)}) {
    const gpu::PagedKv kv = GqaView(*p, static_cast<int>(p->keys.size() * 16));
    gpu::DecodeRequest r{.layer = 0, .q_heads = 8, .q = q[0].data(), .scale = 0.25f};
    ExpectClose(gpu::ReferenceDecode(kv, r).out, res.sequences(i++).layers(0).out(), "sequence");
  }
}

TEST_F(WorkerTest, ABlockCachedNowhereIsAnErrorNamingItsPosition) {
  const Prefix p = MakePrefix(Gqa(), 12, 4);
  PutOn(nodes_[0], p, 0, 5);
  PutOn(nodes_[1], p, 5, 12);
  daemons_[1].reset();  // killed: blocks 5-11 are gone
  const std::vector<std::vector<float>> q = {RandomFloats(4 * 16, 40)};
  v1::DecodeResponse res;
  grpc::Status st = Decode(Request(p, v1::ATTENTION_MODE_DENSE, 0, q), &res);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  EXPECT_NE(st.error_message().find("first missing block position 5"), std::string::npos)
      << st.error_message();
  EXPECT_NE(st.error_message().find("recompute from token 80"), std::string::npos);
}

// With auth on, the worker passes the caller's bearer token on: the daemon decides.
TEST(WorkerAuth, TheCallersTokenIsWhatTheDaemonChecks) {
  ::kvtier::testing::TempDir dir;
  std::ofstream(dir.Sub("tokens.yaml")) << kTenant << ": tenant-a-secret-token-01\n"
                                        << "tenant-b: tenant-b-secret-token-02\n";
  DaemonProcess daemon(
      std::string(KVTIER_BINARY_DIR) + "/kvtierd",
      {"--listen", "127.0.0.1:0", "--no-nvme", "--host-mib", "16", "--metrics-listen", "",
       "--log-level", "warn", "--auth-tokens", dir.Sub("tokens.yaml")});
  ASSERT_FALSE(daemon.address().empty()) << daemon.output();
  DaemonProcess worker(std::string(KVTIER_BINARY_DIR) + "/kvtier-worker",
                       {"--nodes", daemon.address(), "--listen", "127.0.0.1:0", "--metrics-listen",
                        "", "--threads", "1", "--log-level", "error"});
  ASSERT_FALSE(worker.address().empty()) << worker.output();
  auto stub = v1::AttentionService::NewStub(
      grpc::CreateChannel(worker.address(), grpc::InsecureChannelCredentials()));

  const Prefix p = MakePrefix(Gqa(), 3, 8);
  {
    auto c = CacheClient::Create({.address = daemon.address(),
                                  .tenant = kTenant,
                                  .bearer_token = "tenant-a-secret-token-01"});
    ASSERT_TRUE(c.ok());
    std::vector<BlockToPut> puts;
    for (size_t b = 0; b < 3; ++b) {
      puts.push_back({p.keys[b], b == 0 ? BlockKey{} : p.keys[b - 1], p.blocks[b]});
    }
    ASSERT_TRUE((*c)->Put(puts).ok());
  }
  v1::DecodeRequest req;
  req.set_tenant(kTenant);
  LayoutToProto(p.layout, req.mutable_layout());
  v1::Sequence* s = req.add_sequences();
  s->set_packed_keys(PackKeys(p.keys));
  const std::vector<float> q = RandomFloats(4 * 16, 80);
  s->add_queries()->mutable_q()->Assign(q.begin(), q.end());
  auto decode = [&](const std::string& tenant, const std::string& token) {
    v1::DecodeRequest r = req;
    r.set_tenant(tenant);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    v1::DecodeResponse res;
    return stub->Decode(&ctx, r, &res).error_code();
  };
  EXPECT_EQ(decode(kTenant, "tenant-a-secret-token-01"), grpc::StatusCode::OK);
  EXPECT_EQ(decode(kTenant, ""), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(decode(kTenant, "tenant-a-secret-token-99"), grpc::StatusCode::UNAUTHENTICATED);
  // Another tenant's valid token does not open tenant-a's blocks.
  EXPECT_NE(decode(kTenant, "tenant-b-secret-token-02"), grpc::StatusCode::OK);
  EXPECT_EQ(decode("tenant-b", "tenant-b-secret-token-02"), grpc::StatusCode::NOT_FOUND)
      << "tenant-b's key space does not hold tenant-a's blocks";
}

TEST_F(WorkerTest, BadRequestsAreClearErrors) {
  const Prefix p = MakePrefix(Gqa(), 2, 5);
  const std::vector<std::vector<float>> q = {RandomFloats(4 * 16, 50)};
  struct Case {
    const char* name;
    std::function<void(v1::DecodeRequest*)> spoil;
    const char* says;
  };
  const Case cases[] = {
      {"no tenant", [](v1::DecodeRequest* r) { r->clear_tenant(); }, "tenant"},
      {"no layout", [](v1::DecodeRequest* r) { r->clear_layout(); }, "layout"},
      {"MLA mode on GQA", [](v1::DecodeRequest* r) { r->set_mode(v1::ATTENTION_MODE_MLA); },
       "mode"},
      {"keys cut short",
       [](v1::DecodeRequest* r) { r->mutable_sequences(0)->mutable_packed_keys()->resize(20); },
       "multiple of 16"},
      {"q not a multiple of kv heads",
       [](v1::DecodeRequest* r) {
         r->mutable_sequences(0)->mutable_queries(0)->mutable_q()->Resize(2 * 16, 0.0f);
       },
       "q_heads"},
      {"layer out of range",
       [](v1::DecodeRequest* r) { r->mutable_sequences(0)->mutable_queries(0)->set_layer(9); },
       "layer"},
      {"context past the blocks",
       [](v1::DecodeRequest* r) { r->mutable_sequences(0)->set_context_tokens(33); },
       "context_tokens"},
      {"sparse without a profile",
       [](v1::DecodeRequest* r) { r->set_mode(v1::ATTENTION_MODE_HEAD_SPARSE); }, "profile"},
      {"no sequences", [](v1::DecodeRequest* r) { r->clear_sequences(); }, "sequences"},
  };
  for (const Case& c : cases) {
    v1::DecodeRequest req = Request(p, v1::ATTENTION_MODE_DENSE, 0, q);
    c.spoil(&req);
    v1::DecodeResponse res;
    grpc::Status st = Decode(req, &res);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_NE(st.error_message().find(c.says), std::string::npos)
        << c.name << ": " << st.error_message();
  }
}

// --check-config: the options as a start reads them, one line, exit 0; an error names its flag,
// exit 2. No router or daemon needs to exist.
TEST(WorkerFlags, CheckConfigAcceptsWhatAStartAcceptsAndNamesTheFlagItRefuses) {
  const std::string worker = std::string(KVTIER_BINARY_DIR) + "/kvtier-worker";
  const std::vector<std::string> good = {"--check-config", "--router",     "kvtier-router:7800",
                                         "--listen",       "0.0.0.0:7900", "--metrics-listen",
                                         "0.0.0.0:9790",   "--pool-mib",   "2048",
                                         "--device",       "cuda"};
  const testing::ProcessRun ok = testing::RunToEnd(worker, good);
  EXPECT_EQ(ok.status, 0) << ok.output;
  EXPECT_EQ(ok.output, "kvtier-worker: configuration OK\n");
  const std::pair<std::vector<std::string>, std::string> bad[] = {
      {{"--router", "a:1", "--pool-mib", "-1"}, "--pool-mib"},
      {{"--router", "a:1", "--device", "tpu"}, "--device"},
      {{"--router", "nowhere"}, "--router: 'nowhere'"},
      {{"--nodes", "a:1,b"}, "--nodes: 'b'"},
      {{"--router", "a:1", "--listen", "0.0.0.0"}, "--listen"},
      {{"--router", "a:1", "--nodes", "a:1"}, "give one of --router and --nodes"},
  };
  for (const auto& [flags, names] : bad) {
    std::vector<std::string> args = {"--check-config"};
    args.insert(args.end(), flags.begin(), flags.end());
    const testing::ProcessRun run = testing::RunToEnd(worker, args);
    EXPECT_EQ(run.status, 2 << 8) << names << ": " << run.output;
    EXPECT_NE(run.output.find(names), std::string::npos) << run.output;
  }
}

}  // namespace
}  // namespace kvtier
