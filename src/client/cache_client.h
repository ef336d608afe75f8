#pragma once
// CacheClient: the C++ client of kvtierd (kvtier.v1.CacheService).
//
// One client talks to one daemon as one tenant. Block keys are computed with
// common/block_key.h (ChainHasher) from tokens. Thread-safe: UCX reads of many threads overlap
// (each on a connection of its own, ucx_connections), gRPC Gets each make a call of their own
// unless the client's GetSession stream is free.
//
// Deadlines and retries: every RPC attempt has a deadline (deadline_ms). An attempt that fails
// with UNAVAILABLE (the daemon restarting or out of reach, a connection lost) is made again, up
// to max_attempts in all, after a wait that starts at initial_backoff_ms and doubles each time
// (at most max_backoff_ms), half of it fixed and half random ("equal jitter", so that clients
// that failed together do not return together). That is safe because every operation is
// idempotent (a repeated put of a present block is a no-op). Nothing else is retried: the
// daemon's answers (NOT_FOUND, RESOURCE_EXHAUSTED, ...) and DEADLINE_EXCEEDED are returned as
// they are. total_deadline_ms, when set, bounds a whole call, retries and waits included.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/block_reader.h"
#include "common/block_key.h"
#include "common/kv_layout.h"
#include "common/tier.h"

namespace kvtier {

struct ClientOptions {
  std::string address;              // Required. host:port of kvtierd.
  std::string tenant;               // Required. Names the key space.
  int64_t deadline_ms = 30'000;     // Default: 30 s. Per attempt.
  int max_attempts = 4;             // Default: 4. Attempts for UNAVAILABLE.
  int64_t initial_backoff_ms = 50;  // Default: 50 ms, doubled after each failed attempt.
  int64_t max_backoff_ms = 5'000;   // Default: 5 s. The longest wait between attempts.
  // Default: 0, none (then a call takes at most max_attempts * deadline_ms plus the waits). The
  // deadline of a whole call, retries and waits included: no attempt runs past it, and none
  // starts that could only begin after it. A GetInto or ReadRanges that falls back from UCX to
  // gRPC has one deadline for both. Gets skip the GetSession stream when the session's deadline
  // lies beyond this one.
  int64_t total_deadline_ms = 0;
  size_t chunk_bytes = 1 << 20;         // Default: 1 MiB. Payload bytes per Put message.
  size_t max_message_bytes = 64 << 20;  // Default: 64 MiB. Largest message accepted.
  std::string bearer_token;             // Default: none. Sent as `authorization: Bearer <token>`.
  // TLS: set tls_ca_pem (the CA that signed the daemon's certificate) to use TLS; add a client
  // certificate and key for mutual TLS. PEM text, not file names.
  std::string tls_ca_pem;
  std::string tls_cert_pem;
  std::string tls_key_pem;
  std::string tls_server_name;  // Default: from the address. Overrides the name checked.
  // Default: true. Reads blocks over UCX when the daemon offers a data plane
  // (CacheService.DataPlane): one-sided gets in its rkey mode, reads the daemon serves in its
  // served mode; with gRPC Get when it offers none or UCX fails.
  bool use_ucx = true;
  // Default: false. Also use UCX where it only has TCP to the daemon. In rkey mode UCX then
  // emulates one-sided reads with messages that the daemon answers (UcxReader::one_sided), and
  // UCX 1.13 may abort the daemon when a reader dies in the middle of a read, so only turn this
  // on where readers are trusted not to. In served mode (off this host, without RDMA) the
  // daemon sends the bytes as TCP messages: safe, but UCX's TCP transport was slower than gRPC
  // where measured (src/transfer/README.md).
  bool ucx_software_rma = false;
  uint32_t lease_ttl_ms = 0;  // Default: 0, the daemon's lease TTL. Leases for UCX reads.
  // Default: 8. UCX connections of this client at once: each UCX read in progress holds one (a
  // UCX worker is progressed by the thread reading), so up to this many threads' reads overlap;
  // more wait for one to come free. Made as needed, kept while they work.
  int ucx_connections = 8;
  // Default: true. gRPC Gets go over one long-lived GetSession stream (renewed every half
  // deadline_ms) when no other Get of this client is using it, saving a call's setup each: 8
  // clients' 1 MiB Gets moved 8-22% more, one client's 25%. A Get the session cannot answer
  // (an error, or a daemon silent until the session's deadline) is made again as its own call,
  // so a hung daemon can hold a Get for up to twice deadline_ms. Off: one Get call each, for
  // proxies that do not keep streams open.
  bool get_session = true;
  // Default: true. The leases and releases of UCX reads (and Lease, Release) go over
  // long-lived LeaseSession streams, one per caller at a time (kept while they work, renewed
  // every half deadline_ms), saving a call's setup each; a release is written without waiting
  // for its answer. A request a session cannot carry (a daemon without LeaseSession, a broken
  // stream, a whole-call deadline shorter than the session's) is made as its own call. Off: one
  // call each.
  bool lease_session = true;
  // Default: false: a library leaves the embedding program's malloc and Abseil settings alone.
  // True: Create() tunes this process for megabyte transfers (TuneProcessForThroughput,
  // common/process_tuning.h): megabyte buffers stay on glibc's heap (gRPC receives each Get
  // into fresh buffers of up to 4 MiB, and with glibc's defaults every one is a new mapping
  // whose pages fault in on arrival), and Abseil's lock-order checking, which every gRPC lock
  // pays in Debian's build, is off. Process-wide. kvtier's own programs (the CLI, kvtier-worker,
  // the benchmarks) call TuneProcessForThroughput in main() instead.
  bool tune_process = false;
};

// A leased block, as CacheService.Lease returns it.
struct LeasedBlock {
  BlockKey key;
  Tier tier = Tier::kHost;  // kHost for blocks a UCX reader can read
  uint64_t size = 0;
  uint64_t checksum = 0;
  uint64_t offset = 0;  // in the daemon's host arena
  uint32_t generation = 0;
};

struct LeaseInfo {
  uint64_t id = 0;
  // When the lease ends, on this process's steady clock, measured from before the request was
  // sent (so never later than the daemon's own view).
  std::chrono::steady_clock::time_point expires;
  std::vector<LeasedBlock> blocks;
};

// What a client moved, and how (monotonic counters).
struct TransferStats {
  uint64_t ucx_bytes = 0;       // read over UCX (one-sided gets, or reads the daemon served)
  uint64_t grpc_bytes = 0;      // received in gRPC Get responses
  uint64_t session_gets = 0;    // gRPC Gets answered on the GetSession stream (get_session)
  uint64_t session_leases = 0;  // leases answered on a LeaseSession stream (lease_session)
  uint64_t leases = 0;          // leases taken for UCX reads
  uint64_t lease_retries = 0;   // reads redone under a new lease (expiry race or bad checksum)
  uint64_t ucx_fallbacks = 0;   // reads that went to gRPC because UCX could not serve them
  uint64_t ucx_connects = 0;    // UCX connections made (reconnects included)
  uint64_t verified_reads = 0;  // UCX reads that outlived their lease, kept because the daemon
                                // confirmed by generation that their blocks stayed put
};

// A block to store: its key, its parent's key (zero for the first block of a chain), its bytes.
struct BlockToPut {
  BlockKey key;
  BlockKey parent;
  std::span<const uint8_t> data;
};

struct PutResult {
  uint32_t stored = 0;   // newly stored
  uint32_t present = 0;  // already there
};

struct RemoteLookup {
  size_t matched = 0;
  std::vector<Tier> tiers;  // of each matched block
};

// One tier of a daemon, as Stats reports it.
struct RemoteTierStats {
  Tier tier = Tier::kHost;
  bool present = false;  // the daemon has this tier
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t blocks = 0;
  uint64_t hits = 0;
};

// One tenant's share of a daemon.
struct RemoteTenantUsage {
  std::string tenant;
  uint64_t resident_bytes = 0;  // payload bytes of its blocks in the store, every tier
  uint64_t resident_blocks = 0;
  uint64_t inflight_bytes = 0;  // held for its Puts being received and Gets being sent
  uint64_t leased_bytes = 0;    // of its blocks under its live leases
  uint64_t inflight_limit_bytes = 0;
  uint64_t leased_limit_bytes = 0;
};

// A daemon's tiers and counters since it started (CacheService.Stats). With auth on, a
// tenant's token sees only its own usage: the daemon-wide fields are then empty and zero.
struct RemoteStats {
  std::vector<RemoteTierStats> tiers;
  uint64_t gets = 0;
  uint64_t get_misses = 0;
  uint64_t lookups = 0;
  uint64_t puts = 0;
  uint64_t evictions = 0;
  uint64_t demotions = 0;
  uint64_t promotions = 0;
  uint64_t nvme_admission_rejections = 0;
  uint64_t checksum_failures = 0;
  uint64_t leases_active = 0;
  uint64_t lookup_blocks_hit = 0;                 // blocks Lookup found (the matched prefixes)
  uint64_t lookup_blocks_missed = 0;              // blocks Lookup asked for in vain
  std::optional<RemoteTenantUsage> tenant_usage;  // set when the daemon reports it
};

namespace client_internal {
struct Rpc;
struct Readers;
}  // namespace client_internal

class CacheClient {
 public:
  // INVALID_ARGUMENT for a missing address or tenant. Connects lazily.
  static absl::StatusOr<std::unique_ptr<CacheClient>> Create(const ClientOptions& options);
  ~CacheClient();

  // Stores blocks in one stream. durable: acknowledged only once on the daemon's NVMe.
  // layout, when given, makes the daemon check every block's size against it.
  absl::StatusOr<PutResult> Put(std::span<const BlockToPut> blocks, bool durable = false,
                                const KvLayout* layout = nullptr);
  // One entry per key, in order: the block's bytes, or nullopt when it is not cached.
  absl::StatusOr<std::vector<std::optional<std::vector<uint8_t>>>> Get(
      std::span<const BlockKey> keys);
  // Reads blocks straight into caller buffers (for example, registered once and reused): block
  // keys[i] goes to the start of dst[i]. One entry per key: the block's size, or nullopt when it is
  // not cached. OUT_OF_RANGE when a block is larger than its buffer. Over UCX leases when the
  // daemon offers them and the keys are distinct, else (per call) over gRPC: the same answers
  // and errors either way (block_reader.h).
  absl::StatusOr<std::vector<std::optional<size_t>>> GetInto(
      std::span<const BlockKey> keys, std::span<const std::span<uint8_t>> dst);
  // Where block `i` goes, once its size is known (nullopt: not cached; return an empty span).
  using PlaceFn = BlockPlaceFn;
  // The core of Get and GetInto: streams the blocks of `keys`, each into the place `place` picks,
  // and verifies each against its checksum.
  absl::Status GetStream(std::span<const BlockKey> keys, const PlaceFn& place);
  // A daemon answers at most limits.max_keys_per_get keys in one request (65,536 by default):
  // longer Gets are asked in pieces of this many, one after another.
  static constexpr size_t kGetPieceKeys = 16'384;
  // Reads parts of blocks (for example one layer's or one head's slice), over UCX when the daemon
  // offers it, else by fetching the whole blocks with gRPC. NOT_FOUND names the first block not
  // cached; OUT_OF_RANGE for a range past the end of its block. Whole-block reads over UCX are
  // verified against the block's checksum; ranges are guarded by the lease (read before it ends).
  // `over_ucx`, when given, says which path served the reads.
  absl::Status ReadRanges(std::span<const RangeRead> reads, bool* over_ucx = nullptr);

  // Pins blocks in the daemon's host RAM (NVMe blocks are promoted) for UCX reads.
  absl::StatusOr<LeaseInfo> Lease(std::span<const BlockKey> keys, uint32_t ttl_ms = 0);
  // `bytes_read` is reported to the daemon's metrics.
  absl::Status Release(uint64_t lease_id, uint64_t bytes_read = 0);
  // Releases `lease` (if it is still held) and asks whether every leased block is still where the
  // lease found it, with the same generation: true proves that reads of the blocks made since
  // the lease were of their bytes, even if the lease ended meanwhile.
  absl::StatusOr<bool> ReleaseVerified(const LeaseInfo& lease, uint64_t bytes_read = 0);

  // Registers a buffer that reads will land in, once, so UCX reads into it need no per-read
  // registration (done by each data-plane connection when it is next used; a no-op without
  // one). The buffer must outlive the client.
  void RegisterBuffer(std::span<uint8_t> buffer);

  TransferStats transfer_stats() const;

  // How many leading blocks of the chain are cached, and where.
  absl::StatusOr<RemoteLookup> Lookup(std::span<const BlockKey> chain);
  // Returns how many of the keys were present.
  absl::StatusOr<uint32_t> Delete(std::span<const BlockKey> keys);
  absl::StatusOr<RemoteStats> Stats();

  const ClientOptions& options() const { return options_; }

 private:
  explicit CacheClient(const ClientOptions& options);
  // GetStream within `end`, the whole call's deadline.
  absl::Status GetStream(std::span<const BlockKey> keys, const PlaceFn& place, CallDeadline end);
  // One request of GetStream: at most kGetPieceKeys keys.
  absl::Status GetPiece(std::span<const BlockKey> keys, const PlaceFn& place, CallDeadline end);
  ClientOptions options_;
  std::unique_ptr<client_internal::Rpc> rpc_;  // gRPC channel and GetSession stream (internal.h)
  // Its block readers: gRPC, UCX leases, the fallback from one to the other (internal.h).
  std::unique_ptr<client_internal::Readers> readers_;
};

}  // namespace kvtier
