// The worker's core without daemons or a GPU: planning (pure), and Worker over a fake block
// source and fake backends (the pool, the fallback to the CPU).
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>

#include "worker/planning.h"
#include "worker/worker.h"

namespace kvtier::worker {
namespace {

KvLayout SmallGqa() {
  return {.kind = LayoutKind::kGqa,
          .dtype = DType::kBf16,
          .layers = 2,
          .kv_heads = 2,
          .head_dim = 32,
          .block_tokens = 16};
}

// A request over `blocks` blocks by key, querying the given layers (2 query heads).
struct Request {
  std::vector<float> q = std::vector<float>(2 * 32, 0.25f);
  DecodeStepRequest r;

  Request(size_t blocks, std::vector<uint32_t> layers, AttentionMode mode = AttentionMode::kDense) {
    r.tenant = "t";
    r.layout = SmallGqa();
    r.mode = mode;
    SequenceQuery& s = r.sequences.emplace_back();
    for (size_t b = 0; b < blocks; ++b) s.keys.push_back(BlockKey{7, b});
    for (uint32_t l : layers) s.queries.push_back({.layer = l, .q = q});
  }
};

absl::StatusOr<Plan> PlanOf(const DecodeStepRequest& r) {
  auto step = ParseStep(r, "token");
  if (!step.ok()) return step.status();
  return PlanSequence(r, 0, *step);
}

TEST(Planning, DenseWantsEverySliceOfTheRequestedLayers) {
  Request req(3, {1});
  auto plan = PlanOf(req.r);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->keys.size(), 3u);
  EXPECT_EQ(plan->context, 48);
  EXPECT_EQ(plan->layers, std::vector<uint32_t>{1});
  EXPECT_EQ(plan->slices, 4u);  // K and V of 2 heads
  EXPECT_EQ(plan->unit_bytes, 2u * 2 * 16 * 32 * 2);
  ASSERT_EQ(plan->needs.size(), 3u);
  for (const BlockPool::Need& n : plan->needs) {
    EXPECT_EQ(n.layer, 1u);
    EXPECT_EQ(n.wanted.size(), 4u);
  }
  EXPECT_EQ(plan->skipped_bytes, 0u);
  // Pool entries are scoped by tenant and token: another token's plan names other units.
  auto other = ParseStep(req.r, "another token");
  ASSERT_TRUE(other.ok());
  auto other_plan = PlanSequence(req.r, 0, *other);
  ASSERT_TRUE(other_plan.ok());
  EXPECT_NE(other_plan->needs[0].key, plan->needs[0].key);
}

TEST(Planning, HeadSparseSkipsTheLocalHeadsOutsideSinkAndWindow) {
  Request req(8, {0}, AttentionMode::kHeadSparse);  // 128 tokens
  req.r.profile = {.sink = 4, .window = 16, .recall_heads = {{1}, {}}};
  auto plan = PlanOf(req.r);
  ASSERT_TRUE(plan.ok()) << plan.status();
  const uint64_t slice = plan->unit_bytes / plan->slices;
  // Head 0 is local: its K and V slices are read only in block 0 (sinks) and block 7 (window).
  uint64_t skipped = 0;
  for (size_t b = 0; b < 8; ++b) {
    const std::vector<uint32_t>& wanted = plan->needs[b].wanted;
    const bool local = b == 0 || b == 7;
    EXPECT_EQ(wanted.size(), local ? 4u : 2u) << "block " << b;
    for (uint32_t s : wanted) EXPECT_TRUE(local || s % 2 == 1) << "block " << b << " slice " << s;
    if (!local) skipped += 2 * slice;
  }
  EXPECT_EQ(plan->skipped_bytes, skipped);
}

TEST(Planning, KeysFromTokensAreTheChainHashersOnTheRequestsNamespace) {
  Request req(0, {0});
  std::vector<uint32_t> tokens(40);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = 1000 + i;
  req.r.sequences[0].tokens = tokens;
  req.r.model = "m";
  auto plan = PlanOf(req.r);
  ASSERT_TRUE(plan.ok()) << plan.status();
  auto hasher = ChainHasher::Create(
      {.tenant_salt = "t", .model_id = "m", .layout_fingerprint = SmallGqa().Fingerprint()}, 16);
  ASSERT_TRUE(hasher.ok());
  EXPECT_EQ(plan->keys, hasher->Keys(tokens));  // two full blocks; the partial one left out
  EXPECT_EQ(plan->context, 32);
}

TEST(Planning, BadRequestsNameTheField) {
  auto error = [](auto edit) {
    Request req(2, {0});
    edit(req);
    auto plan = PlanOf(req.r);
    return plan.ok() ? std::string("OK") : std::string(plan.status().message());
  };
  EXPECT_EQ(error([](Request& r) { r.r.tenant.clear(); }), "tenant: must be set");
  EXPECT_NE(error([](Request& r) { r.r.layout.dtype = DType::kFp8E4M3; }).find("layout.dtype"),
            std::string::npos);
  EXPECT_NE(error([](Request& r) { r.r.mode = AttentionMode::kMla; }).find("mode:"),
            std::string::npos);
  EXPECT_NE(error([](Request& r) { r.r.mode = AttentionMode::kHeadSparse; })
                .find("profile.layers: 0 entries for 2 layers"),
            std::string::npos);
  EXPECT_NE(error([](Request& r) {
              r.r.mode = AttentionMode::kHeadSparse;
              r.r.profile.recall_heads = {{5}, {}};
            }).find("recall head 5 of 2"),
            std::string::npos);
  EXPECT_NE(error([](Request& r) { r.r.sequences.clear(); }).find("sequences: none"),
            std::string::npos);
  static const uint32_t kTokens[16] = {};
  EXPECT_NE(error([](Request& r) { r.r.sequences[0].tokens = kTokens; }).find("one of the two"),
            std::string::npos);
  EXPECT_NE(error([](Request& r) { r.r.sequences[0].context_tokens = 16; })
                .find("context_tokens: 16 for 2 blocks"),
            std::string::npos);
  EXPECT_NE(error([](Request& r) { r.r.sequences[0].queries[0].layer = 2; })
                .find("queries[0].layer: 2 of 2"),
            std::string::npos);
  EXPECT_NE(error([](Request& r) {
              r.r.sequences[0].queries.push_back(r.r.sequences[0].queries[0]);
            }).find("given twice"),
            std::string::npos);
  EXPECT_NE(error([](Request& r) { r.r.sequences[0].queries[0].q = std::span(r.q).first(40); })
                .find("q must be q_heads x 32"),
            std::string::npos);
  EXPECT_EQ(error([](Request&) {}), "OK");
}

// Fills the claimed slices with bytes that decode as small finite bf16 values (every byte at
// most 0x3F), a function of the block, layer and offset.
class FakeSource final : public BlockSource {
 public:
  absl::Status Fetch(const std::string&, const std::string&, size_t, Plan& plan,
                     DecodeStepStats* stats) override {
    ++calls;
    const uint64_t slice = plan.unit_bytes / plan.slices;
    for (size_t b = 0; b < plan.keys.size(); ++b) {
      for (size_t i = 0; i < plan.layers.size(); ++i) {
        const BlockPool::Claim& c = plan.claims[plan.Unit(b, i)];
        for (uint32_t s : c.fetch) {
          for (uint64_t j = s * slice; j < (s + 1) * slice; ++j) {
            c.unit->data.get()[j] = static_cast<uint8_t>((b * 31 + plan.layers[i] * 7 + j) & 0x3F);
          }
          stats->bytes_fetched += slice;
        }
      }
    }
    return absl::OkStatus();
  }
  std::atomic<int> calls{0};
};

// A backend that answers with a marker until layer `fail_from`, then fails.
class FakeBackend final : public AttentionBackend {
 public:
  explicit FakeBackend(size_t fail_from) : fail_from_(fail_from) {}
  const std::string& device() const override { return name_; }
  std::unique_ptr<StagedLayers> Stage(
      const std::vector<std::vector<const BlockPool::Unit*>>&) override {
    ++staged;
    return nullptr;
  }
  absl::StatusOr<gpu::DecodeResult> Decode(const gpu::PagedKv&, const gpu::DecodeRequest& req,
                                           StagedLayers*, size_t i) override {
    if (i >= fail_from_) return absl::InternalError("injected device error");
    gpu::DecodeResult r;
    r.out.assign(size_t(req.q_heads) * 32, 7.0f);
    r.lse.assign(req.q_heads, 7.0f);
    return r;
  }
  absl::StatusOr<gpu::DecodeResult> MlaDecode(const gpu::MlaPagedKv&, const gpu::MlaRequest&,
                                              StagedLayers*, size_t) override {
    return absl::UnimplementedError("no MLA here");
  }
  std::atomic<int> staged{0};

 private:
  const size_t fail_from_;
  const std::string name_ = "fake device";
};

std::unique_ptr<Worker> WorkerWith(std::unique_ptr<BlockSource> source,
                                   std::unique_ptr<AttentionBackend> backend) {
  return Worker::CreateWith({.nodes = {"unused"}, .pool_bytes = 16 << 20, .threads = 1},
                            std::move(source), std::move(backend), nullptr);
}

TEST(WorkerCore, TheBackendsAnswerIsTheResultAndTheNextStepComesFromThePool) {
  auto source = std::make_unique<FakeSource>();
  FakeSource* src = source.get();
  auto w = WorkerWith(std::move(source), std::make_unique<FakeBackend>(99));
  Request req(4, {0, 1});
  auto first = w->Decode(req.r, "");
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->device, "fake device");
  ASSERT_EQ(first->sequences.size(), 1u);
  ASSERT_EQ(first->sequences[0].size(), 2u);
  EXPECT_EQ(first->sequences[0][1].layer, 1u);
  EXPECT_EQ(first->sequences[0][1].out[0], 7.0f);
  EXPECT_EQ(first->stats.bytes_fetched, 4u * 2 * 4096);
  EXPECT_EQ(first->stats.bytes_from_pool, 0u);
  auto second = w->Decode(req.r, "");
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->stats.bytes_fetched, 0u);
  EXPECT_EQ(second->stats.bytes_from_pool, 4u * 2 * 4096);
  EXPECT_EQ(src->calls.load(), 2);
}

TEST(WorkerCore, ABackendThatFailsHandsTheRestOfTheRequestToTheCpu) {
  Request req(4, {0, 1});
  auto cpu = WorkerWith(std::make_unique<FakeSource>(), NewCpuBackend(1));
  auto want = cpu->Decode(req.r, "");
  ASSERT_TRUE(want.ok()) << want.status();
  EXPECT_EQ(want->device, "cpu");

  auto backend = std::make_unique<FakeBackend>(1);  // layer 0 on the device, then it fails
  FakeBackend* fake = backend.get();
  auto w = WorkerWith(std::make_unique<FakeSource>(), std::move(backend));
  auto got = w->Decode(req.r, "");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->device, "cpu");
  EXPECT_EQ(got->sequences[0][0].out[0], 7.0f);  // the device's answer for layer 0
  EXPECT_EQ(got->sequences[0][1].out, want->sequences[0][1].out);
  EXPECT_EQ(got->sequences[0][1].lse, want->sequences[0][1].lse);
  // Two sequences: the second is not staged on the failed backend.
  req.r.sequences.push_back(req.r.sequences[0]);
  fake->staged = 0;
  got = w->Decode(req.r, "");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(fake->staged.load(), 1);
  EXPECT_EQ(got->sequences[1][0].out, want->sequences[0][0].out);
}

}  // namespace
}  // namespace kvtier::worker
