#pragma once
// UcxServer: the daemon side of kvtier's UCX data plane, over one memory region (kvtierd's host
// arena), in one of two modes:
//
// - kRkey: the region is registered with ucp_mem_map, its packed remote key is handed to clients
//   (over gRPC, CacheService.DataPlane), and clients read block bytes with one-sided ucp_get_nbx;
//   the daemon's CPU is not on the data path, except where a transport emulates RMA in software
//   (TCP), which the progress thread serves. Whoever holds the key can read any byte of the
//   region, and a context with UCP_FEATURE_RMA answers emulated gets and puts at any address a
//   peer names (UCX 1.13's rma_sw.c checks none): one trust domain.
// - kServed: no remote key of the region exists and the context has no RMA feature (active
//   messages only). A client sends a request (served_read.h) naming a lease handle and ranges;
//   the progress thread asks the ReadAuthorizer, which checks them against the lease and holds
//   the blocks in place, then copies the bytes into the connection's own staging area (which a
//   reader on this host maps), or sends them as eager active messages, and ends with a status.
//   Costs the daemon's CPU per byte (one core: the progress thread).
//
// Which blocks may be read, and for how long, is decided by leases (BlockStore::Lease).

#include <atomic>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/mutex.h"
#include "transfer/served_read.h"
#include "transfer/ucx_common.h"

namespace kvtier::transfer {

enum class DataPlaneMode { kRkey, kServed };
const char* ModeName(DataPlaneMode mode);  // "rkey", "served"

// What a served read holds while its bytes are sent: the daemon's keeps the blocks the read
// covers where they are (pinned), so that no other block's bytes can take their place, until it
// is destroyed (once every send of the read has completed).
class ReadGrant {
 public:
  virtual ~ReadGrant() = default;
};
// Decides a served read: a grant for the holder of lease handle `lease` to read `ranges` (each
// non-empty and inside the region), or the status to answer (NOT_FOUND: no such live lease;
// PERMISSION_DENIED: a range not inside one block of it). Called on the progress thread.
using ReadAuthorizer = std::function<absl::StatusOr<std::unique_ptr<ReadGrant>>(
    uint64_t lease, std::span<const RegionRange> ranges)>;

struct UcxServerOptions {
  std::string listen;  // Required. host:port to listen on; port 0 picks a free one.
  // The memory served: `region` (owned by the caller), or, when null, region_bytes that the
  // server allocates (allocated_region()): in kRkey mode UCX allocates it, in the form its
  // transports read fastest (on one host, shared memory that readers map and copy from
  // directly); in kServed mode it is plain anonymous memory, which no other process can attach.
  void* region = nullptr;
  size_t region_bytes = 0;  // Required.
  // Default: kRkey. See the top of this file.
  DataPlaneMode mode = DataPlaneMode::kRkey;
  // Default: 256 KiB. Largest data message of a served read (bench_transfer measured the sizes).
  size_t served_chunk_bytes = size_t{256} << 10;
  // Default: 64. Sent served reads one client connection may have in progress; more are
  // refused with RESOURCE_EXHAUSTED.
  int max_served_reads_per_connection = 64;
  // Default: 16 MiB. Each connection's staging area (shared memory, allocated when its reader
  // asks for one); a reader keeps two reads in flight, in its two halves.
  size_t staging_bytes = size_t{16} << 20;
  // Default: 64. Staging areas at once; readers beyond that are sent their bytes.
  int max_staging_areas = 64;
};

class UcxServer {
 public:
  // INVALID_ARGUMENT for a bad address or region; UNAVAILABLE when UCX cannot listen or register.
  static absl::StatusOr<std::unique_ptr<UcxServer>> Start(const UcxServerOptions& options);
  // Stops the progress thread and closes every connection (in-flight reads fail on the client).
  ~UcxServer();

  // The region when the server allocated it (options.region was null): zero-filled, valid until
  // the server is destroyed.
  uint8_t* allocated_region() const {
    return allocated_ ? static_cast<uint8_t*>(region_) : nullptr;
  }
  // Closes the listener and every connection and stops the progress thread; the region stays
  // valid (for a store still using it) until the destructor.
  void StopServing();

  // Served reads are refused (UNAVAILABLE) until this is set. Thread-safe.
  void SetReadAuthorizer(ReadAuthorizer authorizer);

  DataPlaneMode mode() const { return mode_; }
  const std::string& host() const { return host_; }
  int port() const { return port_; }
  // The region's remote key, as ucp_rkey_pack wrote it; empty in kServed mode.
  const std::string& packed_rkey() const { return rkey_; }
  uint64_t region_base() const { return reinterpret_cast<uint64_t>(region_); }
  size_t region_bytes() const { return region_bytes_; }
  // Client endpoints currently open.
  size_t connections() const { return connections_.load(std::memory_order_relaxed); }
  // Connections accepted since start.
  uint64_t connections_accepted() const { return accepted_.load(std::memory_order_relaxed); }
  // Served reads answered with their bytes, and refused, since start.
  uint64_t served_reads() const { return served_.load(std::memory_order_relaxed); }
  uint64_t served_refusals() const { return refused_.load(std::memory_order_relaxed); }

  struct ServedRead;  // one served read whose bytes are being sent (used by its callbacks)

 private:
  UcxServer() = default;
  // kRkey: registers the region (allocating it when null) and packs its remote key.
  absl::Status ExportRegion();
  void Run();
  void CloseEndpoint(ucp_ep_h ep);
  static void OnConnRequest(ucp_conn_request_h request, void* arg);
  static void OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status);
  static ucs_status_t OnReadRequest(void* arg, const void* header, size_t header_length, void* data,
                                    size_t length, const ucp_am_recv_param_t* param);
  static ucs_status_t OnStagingRequest(void* arg, const void* header, size_t header_length,
                                       void* data, size_t length, const ucp_am_recv_param_t* param);
  // Gives `ep` its staging area (allocated now if it has none) or, with `keep` false, frees it.
  void OfferStaging(ucp_ep_h ep, bool keep);
  void FreeStaging(ucp_ep_h ep);
  static void OnDataSent(void* request, ucs_status_t status, void* user_data);
  bool Alive(ucp_ep_h ep) const;
  // Checks one received request and delivers its bytes (staged: copied now, then answered;
  // sent: the sends started, answered by FinishServedReads), or answers why not.
  void Serve(ucp_ep_h ep, const std::string& message);
  // Sends a kServedReadDoneAm (nothing on a closed connection).
  void Answer(ucp_ep_h ep, uint64_t id, const absl::Status& status, uint64_t bytes);
  // Ends the served reads whose sends have all completed: grants released, answers sent.
  void FinishServedReads();

  std::unique_ptr<UcxEndpointHost> ucx_;
  ucp_listener_h listener_ = nullptr;
  ucp_mem_h memh_ = nullptr;
  void* region_ = nullptr;
  bool allocated_ = false;
  bool mmapped_ = false;  // allocated_ by mmap (kServed), not by UCX
  DataPlaneMode mode_ = DataPlaneMode::kRkey;
  size_t chunk_bytes_ = 0;
  int max_reads_per_connection_ = 0;
  size_t staging_bytes_ = 0;
  int max_staging_areas_ = 0;
  Mutex authorizer_mu_;
  std::shared_ptr<const ReadAuthorizer> authorizer_ ABSL_GUARDED_BY(authorizer_mu_);
  size_t region_bytes_ = 0;
  std::string rkey_;
  std::string host_;
  int port_ = 0;
  // Touched by the progress thread only (and by the destructor after it has stopped).
  std::vector<ucp_ep_h> endpoints_;
  std::vector<ucp_ep_h> failed_;
  std::vector<std::pair<ucp_ep_h, std::string>> requests_;   // received, not yet served
  std::vector<std::pair<ucp_ep_h, bool>> staging_requests_;  // received: keep (or free) an area
  std::vector<ServedRead*> finished_;                        // every send completed
  // What served mode keeps per client connection.
  struct Connection {
    int sending = 0;  // sent reads in progress
    ucp_mem_h staging = nullptr;
    uint8_t* staging_base = nullptr;
    std::string staging_rkey;
  };
  absl::flat_hash_map<ucp_ep_h, Connection> served_connections_;
  int sending_ = 0;        // sent reads in progress, in all
  int staging_areas_ = 0;  // allocated
  std::atomic<size_t> connections_{0};
  std::atomic<uint64_t> accepted_{0};
  std::atomic<uint64_t> served_{0};
  std::atomic<uint64_t> refused_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace kvtier::transfer
