#include "worker/worker.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <cmath>
#include <thread>
#include <type_traits>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "common/layout_proto.h"
#include "gpu/attention.h"
#include "gpu/cuda_attention.h"
#include "spdlog/spdlog.h"

namespace kvtier::worker {
namespace {

using Clock = std::chrono::steady_clock;

// How often the router's membership is fetched again for local routing.
constexpr auto kMembersMaxAge = std::chrono::seconds(1);
// Rounds of waiting for slices another request was fetching (and fetching them if it failed).
constexpr int kClaimRounds = 3;
// Daemon clients kept (one per node, tenant and token).
constexpr size_t kMaxClients = 1024;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

const char* ModeName(v1::AttentionMode m) {
  switch (m) {
    case v1::ATTENTION_MODE_DENSE:
      return "dense";
    case v1::ATTENTION_MODE_HEAD_SPARSE:
      return "head_sparse";
    case v1::ATTENTION_MODE_MLA:
      return "mla";
    default:
      return "unspecified";
  }
}

absl::Status Invalid(const std::string& what) { return absl::InvalidArgumentError(what); }

// One layer's attention on the GPU while it works (a failure is kept in *gpu_error and every
// later step of the request runs on the CPU), else on the CPU.
template <typename GpuStep, typename CpuStep>
gpu::DecodeResult GpuOrCpu(bool use_gpu, std::string* gpu_error, GpuStep on_gpu, CpuStep on_cpu) {
  if (use_gpu && gpu_error->empty()) {
    gpu::DecodeResult r = on_gpu(gpu_error);
    if (gpu_error->empty() && !r.out.empty()) return r;
    if (gpu_error->empty()) *gpu_error = "no output";
    spdlog::warn("worker: GPU attention failed ({}); computing on the CPU", *gpu_error);
  }
  return on_cpu();
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
    for (v1::AttentionMode mode : {v1::ATTENTION_MODE_DENSE, v1::ATTENTION_MODE_HEAD_SPARSE,
                                   v1::ATTENTION_MODE_MLA}) {
      latency.Add({{"mode", ModeName(mode)}}, Buckets());
      for (absl::StatusCode code :
           {absl::StatusCode::kOk, absl::StatusCode::kInvalidArgument, absl::StatusCode::kNotFound,
            absl::StatusCode::kFailedPrecondition, absl::StatusCode::kResourceExhausted,
            absl::StatusCode::kUnavailable, absl::StatusCode::kDeadlineExceeded,
            absl::StatusCode::kDataLoss, absl::StatusCode::kUnauthenticated,
            absl::StatusCode::kPermissionDenied, absl::StatusCode::kInternal}) {
        requests.Add({{"mode", ModeName(mode)}, {"code", absl::StatusCodeToString(code)}});
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

// One sequence of a request: its blocks and what is needed of each.
struct Worker::Plan {
  std::vector<BlockKey> keys;  // the blocks the context covers
  int context = 0;             // tokens attended to
  uint32_t block_tokens = 0;
  std::vector<uint32_t> layers;        // requested, in query order
  uint64_t unit_bytes = 0;             // one layer of one block
  uint32_t slices = 1;                 // per unit
  std::vector<uint64_t> layer_offset;  // [layer]: where its bytes start in a block
  std::vector<BlockPool::Need> needs;  // [block * layers.size() + i]
  std::vector<BlockPool::Claim> claims;
  uint64_t skipped_bytes = 0;
};

Worker::Worker(const WorkerOptions& options, bool use_gpu)
    : options_(options),
      // On a GPU, fetched blocks land in page-locked memory: their copies to the GPU then run
      // asynchronously, beside the kernels.
      pool_(options.pool_bytes, options.spare_bytes,
            use_gpu ? UnitMemory{gpu::cuda::AllocPinned, gpu::cuda::FreePinned} : UnitMemory{}),
      use_gpu_(use_gpu) {}
Worker::~Worker() = default;

absl::StatusOr<std::unique_ptr<Worker>> Worker::Create(const WorkerOptions& options,
                                                       prometheus::Registry* registry) {
  if (options.router.empty() == options.nodes.empty()) {
    return Invalid("worker: give a router address or a list of nodes (one of the two)");
  }
  std::string why;
  const bool use_gpu = options.device != "cpu" && gpu::cuda::Available(&why);
  if (options.device == "cuda" && !use_gpu) {
    return absl::FailedPreconditionError("--device cuda: " + why);
  }
  std::unique_ptr<Worker> w(new Worker(options, use_gpu));
  if (!options.router.empty()) {
    auto r = RouterClient::Create(options.router, options.fetch_deadline_ms);
    if (!r.ok()) return r.status();
    w->router_ = std::move(*r);
  }
  if (registry != nullptr) w->metrics_ = std::make_unique<Metrics>(registry);
  if (use_gpu) {
    w->device_name_ = gpu::cuda::DeviceName();
    std::string error;
    if (options.gpu_pool_bytes > 0) {
      w->device_units_ = gpu::cuda::DeviceUnits::Create(options.gpu_pool_bytes, &error);
      if (w->device_units_ == nullptr) {
        spdlog::warn("worker: no block pool in GPU memory ({}); blocks are copied per request",
                     error);
      }
    }
  }
  return w;
}

absl::StatusOr<std::vector<std::string>> Worker::NodesFor(std::span<const BlockKey> keys) {
  if (router_ == nullptr) return options_.nodes;
  bool refresh = false;
  {
    MutexLock lock(&mu_);
    const auto now = Clock::now();
    if (now - members_at_ > kMembersMaxAge) {
      members_at_ = now;
      refresh = true;
    }
  }
  if (refresh) {
    absl::Status st = router_->RefreshMembers();
    if (!st.ok()) {
      spdlog::warn("worker: router membership not refreshed: {}", st.ToString());
    }
  }
  auto route = router_->RouteLocally(keys);
  if (!route.ok()) {
    return absl::UnavailableError(
        absl::StrCat("worker: no kvtierd node to read from: ", route.status().message()));
  }
  return route->nodes;
}

std::shared_ptr<CacheClient> Worker::ClientFor(const std::string& node, const std::string& tenant,
                                               const std::string& token) {
  const std::string id = absl::StrCat(node, "\n", tenant, "\n", token);
  MutexLock lock(&mu_);
  auto it = clients_.find(id);
  if (it != clients_.end()) return it->second;
  // One client (and connection) per node, tenant and token: bounded, so that callers sending
  // many different tokens cannot pile up connections. A client dropped here lives on in the
  // requests using it.
  if (clients_.size() >= kMaxClients) clients_.erase(clients_.begin());
  ClientOptions o;
  o.address = node;
  o.tenant = tenant;
  o.bearer_token = token;
  o.deadline_ms = options_.fetch_deadline_ms;
  o.max_attempts = 2;  // a node that is gone costs one retry, then the next node is asked
  o.use_ucx = options_.use_ucx;
  auto made = CacheClient::Create(o);
  if (!made.ok()) return nullptr;  // an empty address or tenant, which callers rule out
  std::shared_ptr<CacheClient> c = std::move(*made);
  clients_.emplace(id, c);
  return c;
}

absl::StatusOr<std::vector<Worker::Segment>> Worker::Locate(
    const std::string& tenant, const std::string& token, size_t sequence, const Plan& plan,
    absl::FunctionRef<bool(size_t)> needs_fetch) {
  const size_t n = plan.keys.size();
  std::vector<Segment> segments;
  std::vector<std::string> order;
  for (size_t p = 0; p < n;) {
    if (!needs_fetch(p)) {
      ++p;
      continue;
    }
    size_t run_end = p;
    while (run_end < n && needs_fetch(run_end)) ++run_end;
    if (order.empty()) {
      auto nodes = NodesFor(plan.keys);
      if (!nodes.ok()) return nodes.status();
      order = std::move(*nodes);
    }
    while (p < run_end) {
      size_t best = 0;
      std::string holder;
      for (const std::string& node : order) {
        std::shared_ptr<CacheClient> c = ClientFor(node, tenant, token);
        if (c == nullptr) return absl::InvalidArgumentError("worker: empty node address");
        auto found = c->Lookup(std::span(plan.keys).subspan(p, run_end - p));
        if (!found.ok()) {
          if (found.status().code() == absl::StatusCode::kUnavailable ||
              found.status().code() == absl::StatusCode::kDeadlineExceeded) {
            spdlog::warn("worker: node {} did not answer a lookup: {}", node,
                         found.status().ToString());
            continue;
          }
          return found.status();  // bad token, unknown tenant: the caller's to fix
        }
        if (found->matched > best) {
          best = found->matched;
          holder = node;
        }
        if (best == run_end - p) break;
      }
      if (best == 0) {
        return absl::NotFoundError(absl::StrCat(
            "sequence ", sequence, ": block ", p, " (key ", plan.keys[p].Hex(),
            ") is not cached on any of ", order.size(), " nodes; first missing block position ", p,
            ", recompute from token ", p * plan.block_tokens));
      }
      segments.push_back({holder, p, p + best});
      p += best;
    }
  }
  return segments;
}

absl::Status Worker::Fetch(const std::string& tenant, const std::string& token, size_t sequence,
                           Plan& plan, v1::DecodeStats* stats) {
  const size_t per_block = plan.layers.size();
  auto block_needs_fetch = [&](size_t b) {
    for (size_t i = 0; i < per_block; ++i) {
      if (!plan.claims[b * per_block + i].fetch.empty()) return true;
    }
    return false;
  };
  auto located = Locate(tenant, token, sequence, plan, block_needs_fetch);
  if (!located.ok()) return located.status();
  const std::vector<Segment>& segments = *located;
  if (segments.empty()) return absl::OkStatus();

  // The reads of each node, in batches of at most read_batch_bytes of whole blocks (a lease
  // pins whole blocks).
  const uint64_t slice_bytes = plan.unit_bytes / plan.slices;
  struct Batch {
    std::string node;
    std::vector<RangeRead> reads;
    size_t blocks = 0;
    uint64_t bytes = 0;
  };
  std::vector<Batch> batches;
  const uint64_t whole_block = plan.unit_bytes * plan.layer_offset.size();
  const size_t blocks_per_batch =
      std::max<uint64_t>(1, options_.read_batch_bytes / std::max<uint64_t>(whole_block, 1));
  for (const Segment& seg : segments) {
    for (size_t b = seg.begin; b < seg.end; ++b) {
      if (!block_needs_fetch(b)) continue;
      if (batches.empty() || batches.back().node != seg.node ||
          batches.back().blocks == blocks_per_batch) {
        batches.push_back({seg.node, {}, 0, 0});
      }
      Batch& batch = batches.back();
      ++batch.blocks;
      for (size_t i = 0; i < per_block; ++i) {
        const BlockPool::Claim& c = plan.claims[b * per_block + i];
        // Consecutive slices are one range.
        std::vector<uint32_t> s = c.fetch;
        std::sort(s.begin(), s.end());
        for (size_t k = 0; k < s.size();) {
          size_t e = k + 1;
          while (e < s.size() && s[e] == s[e - 1] + 1) ++e;
          const uint64_t off = uint64_t{s[k]} * slice_bytes;
          const uint64_t len = uint64_t{e - k} * slice_bytes;
          batch.reads.push_back({.key = plan.keys[b],
                                 .offset = plan.layer_offset[plan.layers[i]] + off,
                                 .dst = std::span(c.unit->data.get() + off, len)});
          batch.bytes += len;
          k = e;
        }
      }
    }
  }
  // Nodes in parallel, each node's batches in order.
  absl::flat_hash_map<std::string, std::vector<Batch*>> by_node;
  for (Batch& b : batches) by_node[b.node].push_back(&b);
  struct Outcome {
    absl::Status status;
    uint64_t ucx = 0, grpc = 0;
  };
  std::vector<Outcome> outcomes(by_node.size());
  std::vector<std::thread> threads;
  size_t k = 0;
  for (auto& [node, list] : by_node) {
    auto run = [&, list = &list, out = &outcomes[k], c = ClientFor(node, tenant, token)] {
      if (c == nullptr) {
        out->status = absl::InvalidArgumentError("worker: empty node address");
        return;
      }
      for (Batch* b : *list) {
        bool over_ucx = false;
        out->status = c->ReadRanges(b->reads, &over_ucx);
        if (!out->status.ok()) return;
        // Without UCX the daemon sends whole blocks.
        if (over_ucx)
          out->ucx += b->bytes;
        else
          out->grpc += b->blocks * whole_block;
      }
    };
    if (k + 1 < by_node.size())
      threads.emplace_back(run);
    else
      run();
    ++k;
  }
  for (std::thread& t : threads) t.join();
  for (const Outcome& o : outcomes) {
    stats->set_bytes_fetched(stats->bytes_fetched() + o.ucx + o.grpc);
    stats->set_bytes_fetched_ucx(stats->bytes_fetched_ucx() + o.ucx);
    if (metrics_ != nullptr) {
      metrics_->ucx.Increment(static_cast<double>(o.ucx));
      metrics_->grpc.Increment(static_cast<double>(o.grpc));
    }
  }
  stats->set_nodes_read(stats->nodes_read() + static_cast<uint32_t>(by_node.size()));
  for (const Outcome& o : outcomes) {
    if (!o.status.ok()) {
      return absl::Status(o.status.code(),
                          absl::StrCat("sequence ", sequence, ": ", o.status.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status Worker::Decode(const v1::DecodeRequest& request, const std::string& bearer_token,
                            v1::DecodeResponse* response) {
  const auto started = Clock::now();
  v1::AttentionMode mode = request.mode();
  absl::Status st = DecodeChecked(request, bearer_token, &mode, response);
  if (metrics_ != nullptr) {
    metrics_->requests
        .Add({{"mode", ModeName(mode)}, {"code", absl::StatusCodeToString(st.code())}})
        .Increment();
    metrics_->latency.Add({{"mode", ModeName(mode)}}, Metrics::Buckets())
        .Observe(Seconds(Clock::now() - started));
    metrics_->fetch.Observe(response->stats().fetch_us() / 1e6);
    metrics_->compute.Observe(response->stats().compute_us() / 1e6);
    metrics_->pool.Increment(static_cast<double>(response->stats().bytes_from_pool()));
    metrics_->skipped.Increment(static_cast<double>(response->stats().bytes_skipped()));
    metrics_->pool_bytes.Set(static_cast<double>(pool_.stats().bytes));
  }
  if (!st.ok()) {
    spdlog::debug("worker: decode failed after {:.1f} ms: {}",
                  Seconds(Clock::now() - started) * 1e3, st.ToString());
  }
  return st;
}

absl::StatusOr<Worker::Step> Worker::ParseStep(const v1::DecodeRequest& request,
                                               const std::string& bearer_token,
                                               v1::AttentionMode* mode) const {
  if (request.tenant().empty()) return Invalid("tenant: must be set");
  auto parsed = LayoutFromProto(request.layout());
  if (!parsed.ok()) return parsed.status();
  Step step;
  const KvLayout& layout = step.layout = *parsed;
  switch (layout.dtype) {
    case DType::kFp16:
      step.elem = gpu::ElemType::kFp16;
      break;
    case DType::kBf16:
      step.elem = gpu::ElemType::kBf16;
      break;
    default:
      return Invalid("layout.dtype: the worker's kernels take fp16 and bf16");
  }
  step.mla = layout.kind == LayoutKind::kMla;
  if (*mode == v1::ATTENTION_MODE_UNSPECIFIED) {
    *mode = step.mla ? v1::ATTENTION_MODE_MLA : v1::ATTENTION_MODE_DENSE;
  }
  if (step.mla != (*mode == v1::ATTENTION_MODE_MLA)) {
    return Invalid(step.mla ? "mode: an MLA layout takes MLA attention"
                            : "mode: MLA attention needs an MLA layout");
  }
  step.sparse = *mode == v1::ATTENTION_MODE_HEAD_SPARSE;
  if (step.sparse) {
    const v1::HeadProfile& p = request.profile();
    if (p.layers_size() != static_cast<int>(layout.layers)) {
      return Invalid(absl::StrCat("profile.layers: ", p.layers_size(), " entries for ",
                                  layout.layers, " layers"));
    }
    if (p.sink() > 0) step.profile.sink = static_cast<int>(p.sink());
    if (p.window() > 0) step.profile.window = static_cast<int>(p.window());
    step.profile.recall.assign(layout.layers, std::vector<bool>(layout.kv_heads, false));
    for (int l = 0; l < p.layers_size(); ++l) {
      for (uint32_t h : p.layers(l).recall_heads()) {
        if (h >= layout.kv_heads) {
          return Invalid(absl::StrCat("profile.layers[", l, "]: recall head ", h, " of ",
                                      layout.kv_heads, " kv heads"));
        }
        step.profile.recall[l][h] = true;
      }
    }
  }
  if (request.sequences().empty()) return Invalid("sequences: none given");
  step.scale =
      request.scale() != 0
          ? request.scale()
          : static_cast<float>(
                1.0 / std::sqrt(step.mla ? layout.latent_rank + layout.rope_dim : layout.head_dim));
  // The pool keeps what one caller fetched for that caller only: its entries are keyed by tenant
  // and bearer token, so a request is never served bytes that the daemons would refuse it
  // (another tenant's, or without the token they checked).
  step.pool_scope = absl::StrCat(request.tenant(), "\n", bearer_token);
  return step;
}

absl::Status Worker::PlanSequence(const v1::DecodeRequest& request, int si, const Step& step,
                                  Plan* plan) const {
  const KvLayout& layout = step.layout;
  const uint32_t bt = layout.block_tokens;
  const v1::Sequence& seq = request.sequences(si);
  const std::string where = absl::StrCat("sequences[", si, "]");
  if (seq.packed_keys().empty() == seq.tokens().empty()) {
    return Invalid(where + ": give packed_keys or tokens (one of the two)");
  }
  if (!seq.packed_keys().empty()) {
    if (seq.packed_keys().size() % BlockKey::kBytes != 0) {
      return Invalid(where + ".packed_keys: not a multiple of 16 bytes");
    }
    for (size_t i = 0; i < seq.packed_keys().size(); i += BlockKey::kBytes) {
      plan->keys.push_back(
          BlockKey::FromBytes(reinterpret_cast<const uint8_t*>(seq.packed_keys().data()) + i));
    }
  } else {
    auto hasher = ChainHasher::Create({.tenant_salt = request.tenant(),
                                       .model_id = request.model(),
                                       .layout_fingerprint = layout.Fingerprint(),
                                       .adapter_id = request.adapter()},
                                      bt);
    if (!hasher.ok()) return hasher.status();
    plan->keys = hasher->Keys(std::span(seq.tokens().data(), seq.tokens().size()));
    if (plan->keys.empty()) return Invalid(where + ".tokens: shorter than one block");
  }
  const uint64_t covered = plan->keys.size() * uint64_t{bt};
  const uint64_t context = seq.context_tokens() == 0 ? covered : seq.context_tokens();
  if (context > covered || context + bt <= covered) {
    return Invalid(absl::StrCat(where, ".context_tokens: ", context, " for ", plan->keys.size(),
                                " blocks of ", bt, " tokens (must end in the last block)"));
  }
  plan->context = static_cast<int>(context);
  plan->block_tokens = bt;
  if (seq.queries().empty()) return Invalid(where + ".queries: none given");
  absl::flat_hash_set<uint32_t> seen;
  for (int qi = 0; qi < seq.queries_size(); ++qi) {
    const v1::LayerQuery& q = seq.queries(qi);
    const std::string qw = absl::StrCat(where, ".queries[", qi, "]");
    if (q.layer() >= layout.layers) {
      return Invalid(absl::StrCat(qw, ".layer: ", q.layer(), " of ", layout.layers));
    }
    if (!seen.insert(q.layer()).second) return Invalid(qw + ".layer: given twice");
    const size_t size = static_cast<size_t>(q.q_size());
    if (step.mla) {
      const size_t heads = size / layout.latent_rank;
      if (heads == 0 || size != heads * layout.latent_rank ||
          static_cast<size_t>(q.q_rope_size()) != heads * layout.rope_dim) {
        return Invalid(absl::StrCat(qw, ": q must be heads x ", layout.latent_rank,
                                    " and q_rope heads x ", layout.rope_dim));
      }
    } else {
      const size_t heads = size / layout.head_dim;
      if (heads == 0 || size != heads * layout.head_dim || heads % layout.kv_heads != 0 ||
          q.q_rope_size() != 0) {
        return Invalid(absl::StrCat(qw, ": q must be q_heads x ", layout.head_dim,
                                    ", q_heads a multiple of ", layout.kv_heads,
                                    " (and no q_rope)"));
      }
    }
    plan->layers.push_back(q.layer());
  }
  for (uint32_t l = 0; l < layout.layers; ++l) {
    plan->layer_offset.push_back(layout.LayerSlice(l)->offset);
  }
  plan->unit_bytes = layout.LayerSlice(0)->length;
  plan->slices = step.mla ? 1 : 2 * layout.kv_heads;
  const uint64_t slice_bytes = plan->unit_bytes / plan->slices;
  // Blocks a local head reads: those holding its sinks or its window.
  auto local_reads = [&](size_t b) {
    const int64_t first = int64_t(b) * bt;
    return first < step.profile.sink || first + bt > int64_t(plan->context) - step.profile.window;
  };
  TenantKeyer pool_key(step.pool_scope);
  for (size_t b = 0; b < plan->keys.size(); ++b) {
    const BlockKey key = pool_key(plan->keys[b]);
    for (uint32_t l : plan->layers) {
      BlockPool::Need need{
          .key = key, .layer = l, .unit_bytes = plan->unit_bytes, .slices = plan->slices};
      for (uint32_t s = 0; s < plan->slices; ++s) {
        const uint32_t head = s % std::max<uint32_t>(layout.kv_heads, 1);
        if (!step.sparse || step.profile.recall[l][head] || local_reads(b)) {
          need.wanted.push_back(s);
        } else {
          plan->skipped_bytes += slice_bytes;
        }
      }
      plan->needs.push_back(std::move(need));
    }
  }
  return absl::OkStatus();
}

absl::Status Worker::FillFromPool(const std::string& tenant, const std::string& token,
                                  size_t sequence, Plan& plan,
                                  std::chrono::steady_clock::time_point deadline,
                                  v1::DecodeStats* stats) {
  plan.claims = pool_.Acquire(plan.needs);
  absl::Status fetched;
  for (int round = 0;; ++round) {
    fetched = Fetch(tenant, token, sequence, plan, stats);
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
  for (const auto& c : plan.claims) {
    stats->set_bytes_from_pool(stats->bytes_from_pool() + c.present_bytes);
  }
  return fetched;
}

std::vector<std::unique_ptr<gpu::cuda::DeviceMapping>> Worker::MapToGpu(
    const Plan& plan, const std::string& gpu_error) const {
  std::vector<std::unique_ptr<gpu::cuda::DeviceMapping>> layers;
  if (!use_gpu_ || device_units_ == nullptr || !gpu_error.empty()) return layers;
  const size_t per_block = plan.layers.size();
  uint64_t copied = 0;
  for (size_t i = 0; i < per_block; ++i) {
    std::vector<gpu::cuda::DeviceUnits::Source> sources;
    sources.reserve(plan.keys.size());
    for (size_t b = 0; b < plan.keys.size(); ++b) {
      const BlockPool::Unit& u = *plan.claims[b * per_block + i].unit;
      sources.push_back(
          {.id = u.serial, .version = u.version.load(), .host = u.data.get(), .bytes = u.size});
    }
    std::string error;
    auto m = device_units_->Map(sources, &error);
    if (m == nullptr) {
      spdlog::warn("worker: blocks do not fit the GPU pool ({}); copying them per step", error);
      layers.clear();
      return layers;
    }
    copied += m->copied_bytes();
    layers.push_back(std::move(m));
  }
  if (metrics_ != nullptr) {
    metrics_->gpu_copy_bytes.Increment(static_cast<double>(copied));
    metrics_->gpu_pool_bytes.Set(static_cast<double>(device_units_->stats().bytes));
  }
  return layers;
}

namespace {

// One layer over blocks that DeviceUnits holds in GPU memory (`mapped`'s addresses).
template <typename Kv>
std::unique_ptr<gpu::cuda::DeviceKv> OnGpu(Kv kv, const gpu::cuda::DeviceMapping& mapped,
                                           std::string* error) {
  kv.blocks.assign(mapped.addresses().begin(), mapped.addresses().end());
  std::unique_ptr<gpu::cuda::DeviceKv> d;
  if constexpr (std::is_same_v<Kv, gpu::MlaPagedKv>) {
    d = gpu::cuda::DeviceKv::OnDeviceMla(kv, error);
  } else {
    d = gpu::cuda::DeviceKv::OnDevice(kv, error);
  }
  if (d == nullptr || !mapped.OrderBefore(error)) return nullptr;
  return d;
}

}  // namespace

absl::Status Worker::Compute(const v1::Sequence& seq, const Step& step, const Plan& plan,
                             v1::SequenceOutput* out, std::string* gpu_error) const {
  const KvLayout& layout = step.layout;
  const int bt = static_cast<int>(layout.block_tokens);
  const size_t per_block = plan.layers.size();
  // All layers' copies are queued before the first layer runs: layer i + 1 copies while layer i
  // computes.
  const auto mapped = MapToGpu(plan, *gpu_error);
  // Layer by layer, over the pool's units (each a one-layer block).
  for (size_t i = 0; i < per_block; ++i) {
    const v1::LayerQuery& q = seq.queries(static_cast<int>(i));
    std::vector<const void*> blocks(plan.keys.size());
    for (size_t b = 0; b < plan.keys.size(); ++b) {
      blocks[b] = plan.claims[b * per_block + i].unit->data.get();
    }
    gpu::DecodeResult r;
    if (step.mla) {
      const gpu::MlaPagedKv kv{.shape = {.layers = 1,
                                         .latent_rank = static_cast<int>(layout.latent_rank),
                                         .rope_dim = static_cast<int>(layout.rope_dim),
                                         .block_tokens = bt,
                                         .dtype = step.elem},
                               .blocks = std::move(blocks),
                               .context_tokens = plan.context};
      const gpu::MlaRequest req{.layer = 0,
                                .heads = static_cast<int>(q.q_size() / layout.latent_rank),
                                .q_latent = q.q().data(),
                                .q_rope = q.q_rope().data(),
                                .scale = step.scale};
      r = GpuOrCpu(
          use_gpu_, gpu_error,
          [&](std::string* e) -> gpu::DecodeResult {
            if (mapped.empty()) return gpu::cuda::MlaDecode(kv, req, e);
            auto d = OnGpu(kv, *mapped[i], e);
            return d == nullptr ? gpu::DecodeResult{} : d->MlaDecode(req, nullptr, e);
          },
          [&] { return gpu::CpuMlaDecode(kv, req, options_.threads); });
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
                                   .q_heads = static_cast<int>(q.q_size() / layout.head_dim),
                                   .q = q.q().data(),
                                   .scale = step.scale,
                                   .profile = step.sparse ? &layer_profile : nullptr};
      const std::string bad = gpu::ValidateDecode(kv, req);
      if (!bad.empty()) return absl::InternalError("worker: " + bad);
      r = GpuOrCpu(
          use_gpu_, gpu_error,
          [&](std::string* e) -> gpu::DecodeResult {
            if (mapped.empty()) return gpu::cuda::Decode(kv, req, e);
            auto d = OnGpu(kv, *mapped[i], e);
            return d == nullptr ? gpu::DecodeResult{} : d->Decode(req, nullptr, e);
          },
          [&] { return gpu::CpuDecode(kv, req, options_.threads); });
    }
    v1::LayerOutput* lo = out->add_layers();
    lo->set_layer(plan.layers[i]);
    lo->mutable_out()->Assign(r.out.begin(), r.out.end());
    lo->mutable_lse()->Assign(r.lse.begin(), r.lse.end());
  }
  return absl::OkStatus();
}

absl::Status Worker::DecodeChecked(const v1::DecodeRequest& request,
                                   const std::string& bearer_token, v1::AttentionMode* mode,
                                   v1::DecodeResponse* response) {
  auto step = ParseStep(request, bearer_token, mode);
  if (!step.ok()) return step.status();
  v1::DecodeStats* stats = response->mutable_stats();
  std::vector<Plan> plans(request.sequences_size());
  uint64_t total_blocks = 0;
  for (int si = 0; si < request.sequences_size(); ++si) {
    if (absl::Status st = PlanSequence(request, si, *step, &plans[si]); !st.ok()) return st;
    total_blocks += plans[si].keys.size();
    if (total_blocks > options_.max_request_blocks) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "request: more than ", options_.max_request_blocks, " blocks (--max-request-blocks)"));
    }
    stats->set_bytes_skipped(stats->bytes_skipped() + plans[si].skipped_bytes);
  }

  const auto fetch_started = Clock::now();
  const auto deadline = fetch_started + std::chrono::milliseconds(options_.fetch_deadline_ms);
  for (size_t si = 0; si < plans.size(); ++si) {
    absl::Status st = FillFromPool(request.tenant(), bearer_token, si, plans[si], deadline, stats);
    if (!st.ok()) {
      stats->set_fetch_us(static_cast<uint64_t>(Seconds(Clock::now() - fetch_started) * 1e6));
      return st;
    }
  }
  const auto compute_started = Clock::now();
  stats->set_fetch_us(static_cast<uint64_t>(Seconds(compute_started - fetch_started) * 1e6));

  // A GPU step that fails (a shape its kernels do not take, a device error) is computed on the
  // CPU, and so is the rest of the request; the response then says "cpu".
  std::string gpu_error;
  for (size_t si = 0; si < plans.size(); ++si) {
    absl::Status st = Compute(request.sequences(static_cast<int>(si)), *step, plans[si],
                              response->add_sequences(), &gpu_error);
    if (!st.ok()) return st;
  }
  stats->set_compute_us(static_cast<uint64_t>(Seconds(Clock::now() - compute_started) * 1e6));
  response->set_device(use_gpu_ && gpu_error.empty() ? device_name_ : "cpu");
  return absl::OkStatus();
}

grpc::Status AttentionServiceImpl::Decode(grpc::ServerContext* context,
                                          const v1::DecodeRequest* request,
                                          v1::DecodeResponse* response) {
  std::string token;
  auto auth = context->client_metadata().find("authorization");
  if (auth != context->client_metadata().end()) {
    const std::string value(auth->second.data(), auth->second.size());
    if (value.rfind("Bearer ", 0) == 0) token = value.substr(7);
  }
  absl::Status st = worker_->Decode(*request, token, response);
  if (st.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
}

}  // namespace kvtier::worker
