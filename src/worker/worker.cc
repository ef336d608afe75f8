#include "worker/worker.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace kvtier::worker {
namespace {

using Clock = std::chrono::steady_clock;

// Rounds of waiting for slices another request was fetching (and fetching them if it failed).
constexpr int kClaimRounds = 3;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }
uint64_t Micros(Clock::duration d) { return static_cast<uint64_t>(Seconds(d) * 1e6); }

// The mode a request is counted under, settled or not.
AttentionMode MetricMode(const DecodeStepRequest& request) {
  if (request.mode != AttentionMode::kUnspecified) return request.mode;
  return request.layout.kind == LayoutKind::kMla ? AttentionMode::kMla : AttentionMode::kDense;
}

}  // namespace

struct Worker::Metrics {
  explicit Metrics(prometheus::Registry* r)
      : requests(prometheus::BuildCounter()
                     .Name("kvtier_worker_requests_total")
                     .Help("Decode requests, by attention mode and gRPC status code")
                     .Register(*r)),
        bytes(prometheus::BuildCounter()
                  .Name("kvtier_worker_fetch_bytes_total")
                  .Help("KV bytes a request used, by source: ucx and grpc (fetched from "
                        "daemons), pool (already in the worker's block pool)")
                  .Register(*r)),
        ucx(bytes.Add({{"source", "ucx"}})),
        grpc(bytes.Add({{"source", "grpc"}})),
        pool(bytes.Add({{"source", "pool"}})),
        skipped(prometheus::BuildCounter()
                    .Name("kvtier_worker_sparse_skipped_bytes_total")
                    .Help("KV bytes head-sparse attention did not need to fetch")
                    .Register(*r)
                    .Add({})),
        latency(prometheus::BuildHistogram()
                    .Name("kvtier_worker_request_seconds")
                    .Help("Time from a decode request's arrival to its answer, by attention mode")
                    .Register(*r)),
        fetch(prometheus::BuildHistogram()
                  .Name("kvtier_worker_fetch_seconds")
                  .Help("Time a request spent locating and fetching blocks")
                  .Register(*r)
                  .Add({}, Buckets())),
        compute(prometheus::BuildHistogram()
                    .Name("kvtier_worker_compute_seconds")
                    .Help("Time a request spent computing attention")
                    .Register(*r)
                    .Add({}, Buckets())),
        pool_bytes(prometheus::BuildGauge()
                       .Name("kvtier_worker_pool_bytes")
                       .Help("Bytes the worker's block pool holds")
                       .Register(*r)
                       .Add({})),
        gpu_copy_bytes(prometheus::BuildCounter()
                           .Name("kvtier_worker_gpu_copy_bytes_total")
                           .Help("Bytes copied from the block pool into GPU memory (blocks "
                                 "already there at the same version are not copied again)")
                           .Register(*r)
                           .Add({})),
        gpu_pool_bytes(prometheus::BuildGauge()
                           .Name("kvtier_worker_gpu_pool_bytes")
                           .Help("Bytes of blocks the worker keeps in GPU memory")
                           .Register(*r)
                           .Add({})) {
    // Every mode's series from the start (and every code a decode answers), so that a burst of
    // requests within one scrape shows as a rise, not as series born at their final values.
    for (AttentionMode mode :
         {AttentionMode::kDense, AttentionMode::kHeadSparse, AttentionMode::kMla}) {
      latency.Add({{"mode", AttentionModeName(mode)}}, Buckets());
      for (absl::StatusCode code :
           {absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument, absl::StatusCode::kNotFound,
            absl::StatusCode::kFailedPrecondition, absl::StatusCode::kResourceExhausted,
            absl::StatusCode::kUnavailable, absl::StatusCode::kDeadlineExceeded,
            absl::StatusCode::kDataLoss, absl::StatusCode::kUnauthenticated,
            absl::StatusCode::kPermissionDenied, absl::StatusCode::kInternal}) {
        requests.Add({{"mode", AttentionModeName(mode)}, {"code", absl::StatusCodeToString(code)}});
      }
    }
  }
  static prometheus::Histogram::BucketBoundaries Buckets() {
    return {1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1, 3, 10};
  }
  prometheus::Family<prometheus::Counter>& requests;
  prometheus::Family<prometheus::Counter>& bytes;
  prometheus::Counter& ucx;
  prometheus::Counter& grpc;
  prometheus::Counter& pool;
  prometheus::Counter& skipped;
  prometheus::Family<prometheus::Histogram>& latency;
  prometheus::Histogram& fetch;
  prometheus::Histogram& compute;
  prometheus::Gauge& pool_bytes;
  prometheus::Counter& gpu_copy_bytes;
  prometheus::Gauge& gpu_pool_bytes;
};

Worker::Worker(const WorkerOptions& options, std::unique_ptr<BlockSource> source,
               std::unique_ptr<AttentionBackend> backend)
    : options_(options),
      source_(std::move(source)),
      cpu_(NewCpuBackend(options.threads)),
      device_(std::move(backend)),
      backend_(device_ != nullptr ? device_.get() : cpu_.get()),
      pool_(options.pool_bytes, options.spare_bytes, backend_->unit_memory()) {}
Worker::~Worker() = default;

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(const WorkerOptions& options,
                                                       prometheus::Registry* registry) {
  auto source = DaemonBlockSource::Create({.router = options.router,
                                           .nodes = options.nodes,
                                           .fetch_deadline_ms = options.fetch_deadline_ms,
                                           .use_ucx = options.use_ucx,
                                           .read_batch_bytes = options.read_batch_bytes,
                                           .fetch_threads = options.fetch_threads});
  if (!source.ok()) return source.status();
  std::string why;
  std::unique_ptr<AttentionBackend> backend;
  if (options.device != "cpu") backend = NewCudaBackend(options.gpu_pool_bytes, &why);
  if (options.device == "cuda" && backend == nullptr) {
    return absl::FailedPreconditionError("--device cuda: " + why);
  }
  return CreateWith(options, std::move(*source), std::move(backend), registry);
}

std::unique_ptr<Worker> Worker::CreateWith(const WorkerOptions& options,
                                           std::unique_ptr<BlockSource> source,
                                           std::unique_ptr<AttentionBackend> backend,
                                           prometheus::Registry* registry) {
  std::unique_ptr<Worker> w(new Worker(options, std::move(source), std::move(backend)));
  if (registry != nullptr) w->metrics_ = std::make_unique<Metrics>(registry);
  return w;
}

absl::StatusOr<DecodeStepResult> Worker::Decode(const DecodeStepRequest& request,
                                                const std::string& bearer_token) {
  const auto started = Clock::now();
  DecodeStepResult result;
  AttentionMode mode = MetricMode(request);
  absl::Status st;
  if (auto step = ParseStep(request, bearer_token); step.ok()) {
    mode = step->mode;
    st = DecodeChecked(request, bearer_token, *step, &result);
  } else {
    st = step.status();
  }
  if (metrics_ != nullptr) {
    const DecodeStepStats& s = result.stats;
    metrics_->requests
        .Add({{"mode", AttentionModeName(mode)}, {"code", absl::StatusCodeToString(st.code())}})
        .Increment();
    metrics_->latency.Add({{"mode", AttentionModeName(mode)}}, Metrics::Buckets())
        .Observe(Seconds(Clock::now() - started));
    metrics_->fetch.Observe(s.fetch_us / 1e6);
    metrics_->compute.Observe(s.compute_us / 1e6);
    metrics_->ucx.Increment(static_cast<double>(s.bytes_fetched_ucx));
    metrics_->grpc.Increment(static_cast<double>(s.bytes_fetched - s.bytes_fetched_ucx));
    metrics_->pool.Increment(static_cast<double>(s.bytes_from_pool));
    metrics_->skipped.Increment(static_cast<double>(s.bytes_skipped));
    metrics_->pool_bytes.Set(static_cast<double>(pool_.stats().bytes));
    metrics_->gpu_pool_bytes.Set(static_cast<double>(backend_->device_pool_bytes()));
  }
  if (!st.ok()) {
    spdlog::debug("worker: decode failed after {:.1f} ms: {}",
                  Seconds(Clock::now() - started) * 1e3, st.ToString());
    return st;
  }
  return result;
}

absl::Status Worker::FillFromPool(const std::string& tenant, const std::string& token,
                                  size_t sequence, Plan& plan,
                                  std::chrono::steady_clock::time_point deadline,
                                  DecodeStepStats* stats) {
  plan.claims = pool_.Acquire(plan.needs);
  absl::Status fetched;
  for (int round = 0;; ++round) {
    fetched = source_->Fetch(tenant, token, sequence, plan, stats);
    pool_.Settle(plan.claims, fetched.ok());
    if (!fetched.ok()) break;
    bool waiting = false;
    for (const auto& c : plan.claims) waiting = waiting || !c.wait.empty();
    if (!waiting) break;
    if (round + 1 == kClaimRounds) {
      fetched = absl::AbortedError(absl::StrCat(
          "sequence ", sequence, ": blocks that other requests were fetching kept failing"));
      break;
    }
    if (!pool_.AwaitOthers(plan.claims, deadline)) {
      pool_.Settle(plan.claims, false);
      fetched = absl::DeadlineExceededError(absl::StrCat(
          "sequence ", sequence, ": blocks that another request was fetching did not come"));
      break;
    }
  }
  for (const auto& c : plan.claims) stats->bytes_from_pool += c.present_bytes;
  return fetched;
}

absl::StatusOr<std::vector<LayerOutput>> Worker::Compute(const SequenceQuery& seq,
                                                         const Step& step, const Plan& plan,
                                                         bool* backend_failed) {
  const KvLayout& layout = step.layout;
  const int bt = static_cast<int>(layout.block_tokens);
  const size_t per_block = plan.layers.size();
  // Each layer's units, in block order.
  std::vector<std::vector<const BlockPool::Unit*>> units(per_block);
  for (size_t i = 0; i < per_block; ++i) {
    for (size_t b = 0; b < plan.keys.size(); ++b) units[i].push_back(plan.claims[plan.Unit(b, i)].unit.get());
  }
  std::unique_ptr<StagedLayers> staged;
  if (!*backend_failed) {
    staged = backend_->Stage(units);
    if (metrics_ != nullptr && staged != nullptr) {
      metrics_->gpu_copy_bytes.Increment(static_cast<double>(staged->copied_bytes));
    }
  }
  // The backend's answer for a layer, or on its failure the CPU's (for the rest of the request).
  auto run = [&](auto on) -> absl::StatusOr<gpu::DecodeResult> {
    if (!*backend_failed) {
      absl::StatusOr<gpu::DecodeResult> r = on(*backend_, staged.get());
      if (r.ok() || backend_ == cpu_.get()) return r;
      spdlog::warn("worker: attention on {} failed ({}); computing on the CPU",
                   backend_->device(), r.status().ToString());
      *backend_failed = true;
    }
    return on(*cpu_, nullptr);
  };
  std::vector<LayerOutput> outputs;
  for (size_t i = 0; i < per_block; ++i) {
    const LayerQuery& q = seq.queries[i];
    std::vector<const void*> blocks(plan.keys.size());
    for (size_t b = 0; b < plan.keys.size(); ++b) blocks[b] = units[i][b]->data.get();
    absl::StatusOr<gpu::DecodeResult> r;
    if (step.mla) {
      const gpu::MlaPagedKv kv{.shape = {.layers = 1,
                                         .latent_rank = static_cast<int>(layout.latent_rank),
                                         .rope_dim = static_cast<int>(layout.rope_dim),
                                         .block_tokens = bt,
                                         .dtype = step.elem},
                               .blocks = std::move(blocks),
                               .context_tokens = plan.context};
      const gpu::MlaRequest req{.layer = 0,
                                .heads = static_cast<int>(q.q.size() / layout.latent_rank),
                                .q_latent = q.q.data(),
                                .q_rope = q.q_rope.data(),
                                .scale = step.scale};
      r = run([&](AttentionBackend& on, StagedLayers* s) { return on.MlaDecode(kv, req, s, i); });
    } else {
      const gpu::PagedKv kv{.shape = {.layers = 1,
                                      .kv_heads = static_cast<int>(layout.kv_heads),
                                      .head_dim = static_cast<int>(layout.head_dim),
                                      .block_tokens = bt,
                                      .dtype = step.elem},
                            .blocks = std::move(blocks),
                            .context_tokens = plan.context};
      gpu::HeadProfile layer_profile;
      if (step.sparse) {
        layer_profile.sink = step.profile.sink;
        layer_profile.window = step.profile.window;
        layer_profile.recall = {step.profile.recall[plan.layers[i]]};
      }
      const gpu::DecodeRequest req{.layer = 0,
                                   .q_heads = static_cast<int>(q.q.size() / layout.head_dim),
                                   .q = q.q.data(),
                                   .scale = step.scale,
                                   .profile = step.sparse ? &layer_profile : nullptr};
      const std::string bad = gpu::ValidateDecode(kv, req);
      if (!bad.empty()) return absl::InternalError("worker: " + bad);
      r = run([&](AttentionBackend& on, StagedLayers* s) { return on.Decode(kv, req, s, i); });
    }
    if (!r.ok()) return r.status();
    outputs.push_back({.layer = plan.layers[i], .out = std::move(r->out), .lse = std::move(r->lse)});
  }
  return outputs;
}

absl::Status Worker::DecodeChecked(const DecodeStepRequest& request,
                                   const std::string& bearer_token, const Step& step,
                                   DecodeStepResult* result) {
  DecodeStepStats* stats = &result->stats;
  std::vector<Plan> plans;
  uint64_t total_blocks = 0;
  for (size_t si = 0; si < request.sequences.size(); ++si) {
    auto plan = PlanSequence(request, si, step);
    if (!plan.ok()) return plan.status();
    total_blocks += plan->keys.size();
    if (total_blocks > options_.max_request_blocks) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "request: more than ", options_.max_request_blocks, " blocks (--max-request-blocks)"));
    }
    stats->bytes_skipped += plan->skipped_bytes;
    plans.push_back(*std::move(plan));
  }

  const auto fetch_started = Clock::now();
  const auto deadline = fetch_started + std::chrono::milliseconds(options_.fetch_deadline_ms);
  for (size_t si = 0; si < plans.size(); ++si) {
    absl::Status st = FillFromPool(request.tenant, bearer_token, si, plans[si], deadline, stats);
    if (!st.ok()) {
      stats->fetch_us = Micros(Clock::now() - fetch_started);
      return st;
    }
  }
  const auto compute_started = Clock::now();
  stats->fetch_us = Micros(compute_started - fetch_started);

  // A backend step that fails (a shape the GPU kernels do not take, a device error) is
  // computed on the CPU, and so is the rest of the request; the result then says "cpu".
  bool backend_failed = false;
  for (size_t si = 0; si < plans.size(); ++si) {
    auto layers = Compute(request.sequences[si], step, plans[si], &backend_failed);
    if (!layers.ok()) return layers.status();
    result->sequences.push_back(*std::move(layers));
  }
  stats->compute_us = Micros(Clock::now() - compute_started);
  result->device = backend_failed ? cpu_->device() : backend_->device();
  return absl::OkStatus();
}

}  // namespace kvtier::worker
