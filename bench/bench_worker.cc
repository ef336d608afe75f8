// bench_worker: decode attention requests to kvtier-worker over prefixes that kvtierd nodes hold,
// all processes on loopback, split into fetch and compute:
//
//   dense         every head attends to the whole prefix: the worker reads every KV byte of the
//                 requested layers
//   head-sparse   15% recall heads (5 of 32 kv-head-layers); local heads see 4 sinks and the
//                 last 64 tokens: outside those blocks only the recall heads' slices are read
//   baseline      the data plane alone, in the same run: one CacheClient reading the same
//                 blocks whole over UCX (GetInto, batches of 16 MiB into a registered buffer),
//                 as bench_transfer's kvtier UCX get does
//
// Prefixes of 4K, 32K and 128K tokens in blocks of 16 tokens with the Llama-3-8B head shape (8
// kv heads, head_dim 128, bf16) and 4 layers a block (256 KiB; 128K tokens are 2 GiB), half of
// each prefix on each of two daemons. A step asks for all 4 layers with 32 query heads. The
// worker runs without a block pool (--pool-mib 0), so every request fetches its blocks again
// (into memory it keeps for reuse, --spare-mib).
//
// Usage: bench_worker [--quick]     Ends with one line: RESULT {json}.
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "client/cache_client.h"
#include "common/layout_proto.h"
#include "common/logging.h"
#include "common/process_tuning.h"
#include "gpu/half.h"
#include "kvtier/v1/attention.grpc.pb.h"
#include "testing/daemon_process.h"

namespace kvtier::bench {
namespace {

constexpr char kTenant[] = "bench";
constexpr int kQHeads = 32;

KvLayout Layout() {
  return {.kind = LayoutKind::kGqa,
          .dtype = DType::kBf16,
          .layers = 4,
          .kv_heads = 8,
          .head_dim = 128,
          .block_tokens = 16};
}

// Writes a prefix of `blocks` blocks: the first half on `a`, the rest on `b`.
bool PutPrefix(CacheClient& a, CacheClient& b, const std::vector<BlockKey>& keys) {
  const KvLayout layout = Layout();
  std::mt19937_64 rng(keys.size());
  constexpr size_t kBatch = 32;
  std::vector<std::vector<uint8_t>> payloads(kBatch, std::vector<uint8_t>(layout.BytesPerBlock()));
  for (size_t i = 0; i < keys.size(); i += kBatch) {
    std::vector<BlockToPut> puts;
    for (size_t j = i; j < std::min(keys.size(), i + kBatch); ++j) {
      std::vector<uint8_t>& p = payloads[j - i];
      auto* e = reinterpret_cast<uint16_t*>(p.data());
      for (size_t k = 0; k < p.size() / 2; k += 64) {  // values that vary, cheaply
        const uint16_t v = gpu::FloatToBf16(static_cast<float>(rng() % 2001) / 1000.0f - 1.0f);
        for (size_t x = k; x < std::min(k + 64, p.size() / 2); ++x) e[x] = v ^ (x & 7);
      }
      puts.push_back({.key = keys[j], .parent = j == 0 ? BlockKey{} : keys[j - 1], .data = p});
    }
    CacheClient& c = i < keys.size() / 2 ? a : b;
    auto put = c.Put(puts, /*durable=*/false, &layout);
    if (!put.ok()) {
      std::fprintf(stderr, "bench_worker: put failed: %s\n", put.status().ToString().c_str());
      return false;
    }
  }
  return true;
}

struct Run {
  double total_ms = 0, fetch_ms = 0, compute_ms = 0;
  uint64_t bytes = 0;
};

int Main(int argc, char** argv) {
  // Megabyte transfers over gRPC, as kvtierd makes them (the client leaves the process alone).
  TuneProcessForThroughput();
  (void)InitLogging("warn");
  bool quick = false;
  if (int rc = ParseBenchFlags(
          argc, argv, "bench_worker",
          "  Starts two kvtierd and a kvtier-worker on loopback and times decode attention over\n"
          "  4K, 32K and 128K-token prefixes (dense and head-sparse), split into fetch and\n"
          "  compute, against a plain UCX read of the same blocks. --quick: under a minute.\n",
          &quick);
      rc >= 0) {
    return rc;
  }
  const int reps = quick ? 3 : 7;
  const KvLayout layout = Layout();
  const std::vector<int> contexts = {4096, 32768, 131072};
  uint64_t total_bytes = 0;
  for (int c : contexts) total_bytes += uint64_t(c) / layout.block_tokens * layout.BytesPerBlock();
  const std::string host_mib = std::to_string((total_bytes / 2 >> 20) + 256);

  std::vector<std::unique_ptr<testing::DaemonProcess>> daemons;
  std::string nodes;
  for (int i = 0; i < 2; ++i) {
    daemons.push_back(std::make_unique<testing::DaemonProcess>(
        std::string(KVTIER_BINARY_DIR) + "/kvtierd",
        std::vector<std::string>{"--listen", "127.0.0.1:0", "--no-nvme", "--host-mib", host_mib,
                                 "--metrics-listen", "", "--log-level", "warn"}));
    if (daemons.back()->address().empty() || daemons.back()->AddressOf("ucx").empty()) {
      std::fprintf(stderr, "bench_worker: kvtierd did not start with UCX\n%s\n",
                   daemons.back()->output().c_str());
      return 1;
    }
    nodes += (i ? "," : "") + daemons.back()->address();
  }
  testing::DaemonProcess worker(
      std::string(KVTIER_BINARY_DIR) + "/kvtier-worker",
      {"--nodes", nodes, "--listen", "127.0.0.1:0", "--metrics-listen", "", "--pool-mib", "0",
       "--spare-mib", "2560", "--log-level", "warn"});
  if (worker.address().empty()) {
    std::fprintf(stderr, "bench_worker: kvtier-worker did not start\n%s\n",
                 worker.output().c_str());
    return 1;
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto stub = v1::AttentionService::NewStub(
      grpc::CreateCustomChannel(worker.address(), grpc::InsecureChannelCredentials(), args));
  auto a = std::move(*CacheClient::Create({.address = daemons[0]->address(), .tenant = kTenant}));
  auto b = std::move(*CacheClient::Create({.address = daemons[1]->address(), .tenant = kTenant}));

  std::mt19937_64 rng(42);
  std::vector<float> q(size_t{kQHeads} * layout.head_dim);
  for (float& x : q) x = static_cast<float>(rng() % 2001) / 1000.0f - 1.0f;

  Result result;
  std::printf("%-6s %-7s | %9s %9s %9s | %10s %9s\n", "tokens", "mode", "total ms", "fetch ms",
              "compute ms", "MiB read", "fetch GB/s");
  double fetch_gbps_32k = 0, ucx_gbps = 0;
  std::string device;
  for (int context : contexts) {
    const size_t n = context / layout.block_tokens;
    std::vector<BlockKey> keys;
    for (size_t i = 0; i < n; ++i) keys.push_back(BlockKey{uint64_t(context), i + 1});
    if (!PutPrefix(*a, *b, keys)) return 1;

    Run dense_med, sparse_med;
    for (v1::AttentionMode mode : {v1::ATTENTION_MODE_DENSE, v1::ATTENTION_MODE_HEAD_SPARSE}) {
      v1::DecodeRequest req;
      req.set_tenant(kTenant);
      LayoutToProto(layout, req.mutable_layout());
      req.set_mode(mode);
      if (mode == v1::ATTENTION_MODE_HEAD_SPARSE) {
        const std::vector<std::vector<uint32_t>> recall = {{0, 1}, {2}, {3}, {4}};
        for (const auto& heads : recall) {
          auto* l = req.mutable_profile()->add_layers();
          for (uint32_t h : heads) l->add_recall_heads(h);
        }
      }
      v1::Sequence* s = req.add_sequences();
      s->set_packed_keys(PackKeys(keys));
      for (uint32_t l = 0; l < layout.layers; ++l) {
        v1::LayerQuery* lq = s->add_queries();
        lq->set_layer(l);
        lq->mutable_q()->Assign(q.begin(), q.end());
      }
      std::vector<double> total, fetch, compute;
      uint64_t bytes = 0;
      // One request first, untimed: the worker's UCX mappings of the daemons' arenas gain the
      // page tables of the bytes this prefix occupies (once per process, like a connection).
      for (int r = -1; r < reps; ++r) {
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
        v1::DecodeResponse res;
        const double t0 = NowSeconds();
        grpc::Status st = stub->Decode(&ctx, req, &res);
        const double t1 = NowSeconds();
        if (!st.ok()) {
          std::fprintf(stderr, "bench_worker: decode failed: %s\n", st.error_message().c_str());
          return 1;
        }
        if (res.stats().bytes_from_pool() != 0 || res.stats().bytes_fetched_ucx() == 0) {
          std::fprintf(stderr, "bench_worker: expected a cold fetch over UCX (pool %lu, ucx %lu)\n",
                       static_cast<unsigned long>(res.stats().bytes_from_pool()),
                       static_cast<unsigned long>(res.stats().bytes_fetched_ucx()));
          return 1;
        }
        if (r < 0) continue;
        total.push_back((t1 - t0) * 1e3);
        fetch.push_back(res.stats().fetch_us() / 1e3);
        compute.push_back(res.stats().compute_us() / 1e3);
        bytes = res.stats().bytes_fetched();
        device = res.device();
      }
      Run m{Median(total), Median(fetch), Median(compute), bytes};
      const bool dense = mode == v1::ATTENTION_MODE_DENSE;
      (dense ? dense_med : sparse_med) = m;
      const double gbps = m.bytes / (m.fetch_ms / 1e3) / 1e9;
      std::printf("%-6s %-7s | %9.1f %9.1f %9.1f | %10.1f %9.2f\n",
                  (std::to_string(context / 1024) + "K").c_str(), dense ? "dense" : "sparse",
                  m.total_ms, m.fetch_ms, m.compute_ms, m.bytes / 1048576.0, gbps);
      if (dense && context == 32768) fetch_gbps_32k = gbps;
    }
    const std::string k = std::to_string(context / 1024) + "k";
    result.Add("dense_ms_" + k, dense_med.total_ms);
    result.Add("sparse_ms_" + k, sparse_med.total_ms);
    result.Add("dense_fetch_ms_" + k, dense_med.fetch_ms);
    result.Add("dense_compute_ms_" + k, dense_med.compute_ms);
    result.Add("sparse_fetch_ms_" + k, sparse_med.fetch_ms);
    result.Add("sparse_compute_ms_" + k, sparse_med.compute_ms);
    result.Add("sparse_bytes_ratio_" + k,
               static_cast<double>(sparse_med.bytes) / static_cast<double>(dense_med.bytes));

    if (context == 32768) {
      // Baseline: the same blocks read whole over UCX by one client, batches of 16 MiB.
      const size_t batch = (16 << 20) / layout.BytesPerBlock();
      std::vector<uint8_t> buf(batch * layout.BytesPerBlock());
      std::vector<double> gbps;
      for (int r = 0; r < reps; ++r) {
        auto reader_a =
            std::move(*CacheClient::Create({.address = daemons[0]->address(), .tenant = kTenant}));
        auto reader_b =
            std::move(*CacheClient::Create({.address = daemons[1]->address(), .tenant = kTenant}));
        reader_a->RegisterBuffer(buf);
        reader_b->RegisterBuffer(buf);
        // Connect first (as the worker's clients are by the time of its later requests).
        std::vector<std::span<uint8_t>> one = {std::span(buf).first(layout.BytesPerBlock())};
        (void)reader_a->GetInto(std::span(keys).first(1), one);
        (void)reader_b->GetInto(std::span(keys).last(1), one);
        const double t0 = NowSeconds();
        for (size_t i = 0; i < n; i += batch) {
          const size_t m = std::min(batch, n - i);
          std::vector<std::span<uint8_t>> dst;
          for (size_t j = 0; j < m; ++j) {
            dst.push_back(
                std::span(buf).subspan(j * layout.BytesPerBlock(), layout.BytesPerBlock()));
          }
          CacheClient& reader = i < n / 2 ? *reader_a : *reader_b;
          auto got = reader.GetInto(std::span(keys).subspan(i, m), dst);
          if (!got.ok()) {
            std::fprintf(stderr, "bench_worker: baseline read failed: %s\n",
                         got.status().ToString().c_str());
            return 1;
          }
        }
        gbps.push_back(n * layout.BytesPerBlock() / (NowSeconds() - t0) / 1e9);
        if (reader_a->transfer_stats().ucx_bytes == 0) {
          std::fprintf(stderr, "bench_worker: the baseline did not read over UCX\n");
          return 1;
        }
      }
      ucx_gbps = Median(gbps);
      std::printf("%-6s %-7s | %31s | %10.1f %9.2f\n", "32K", "ucx get", "(baseline, whole blocks)",
                  n * layout.BytesPerBlock() / 1048576.0, ucx_gbps);
    }
    // Make room for the next prefix.
    (void)a->Delete(std::span(keys).first(n / 2));
    (void)b->Delete(std::span(keys).subspan(n / 2));
  }
  result.Add("fetch_gbps", fetch_gbps_32k);
  result.Add("ucx_get_gbps", ucx_gbps);
  result.Add("fetch_vs_ucx", fetch_gbps_32k / ucx_gbps);
  result.AddString("device", device);  // where the worker computed: "cpu" or the GPU's name
  result.Print();
  return 0;
}

}  // namespace
}  // namespace kvtier::bench

int main(int argc, char** argv) { return kvtier::bench::Main(argc, argv); }
