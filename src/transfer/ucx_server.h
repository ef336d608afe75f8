#pragma once
// UcxServer: the daemon side of kvtier's UCX data plane. It exports one memory region (kvtierd's
// host arena) for one-sided remote reads: the region is registered with ucp_mem_map, its packed
// remote key is handed to clients (over gRPC, CacheService.DataPlane), and a UCP listener accepts
// their endpoints. Clients then read block bytes with ucp_get_nbx; the daemon's CPU is not on the
// data path, except where a transport emulates RMA in software (TCP), which a progress thread
// serves. Which blocks may be read, and for how long, is decided by leases (BlockStore::Lease).

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "transfer/ucx_common.h"

namespace kvtier::transfer {

struct UcxServerOptions {
  std::string listen;  // Required. host:port to listen on; port 0 picks a free one.
  // The memory exported for reads: `region` (owned by the caller), or, when null, region_bytes
  // that UCX allocates (AllocatedRegion), in the form its transports read fastest (on one host,
  // shared memory that readers map and copy from directly).
  void* region = nullptr;
  size_t region_bytes = 0;  // Required.
};

class UcxServer {
 public:
  // INVALID_ARGUMENT for a bad address or region; UNAVAILABLE when UCX cannot listen or register.
  static absl::StatusOr<std::unique_ptr<UcxServer>> Start(const UcxServerOptions& options);
  // Stops the progress thread and closes every connection (in-flight reads fail on the client).
  ~UcxServer();

  // The region when UCX allocated it (options.region was null): zero-filled, valid until the
  // server is destroyed.
  uint8_t* allocated_region() const {
    return allocated_ ? static_cast<uint8_t*>(region_) : nullptr;
  }
  // Closes the listener and every connection and stops the progress thread; the region stays
  // valid (for a store still using it) until the destructor.
  void StopServing();

  const std::string& host() const { return host_; }
  int port() const { return port_; }
  // The region's remote key, as ucp_rkey_pack wrote it.
  const std::string& packed_rkey() const { return rkey_; }
  uint64_t region_base() const { return reinterpret_cast<uint64_t>(region_); }
  size_t region_bytes() const { return region_bytes_; }
  // Client endpoints currently open.
  size_t connections() const { return connections_.load(std::memory_order_relaxed); }
  // Connections accepted since start.
  uint64_t connections_accepted() const { return accepted_.load(std::memory_order_relaxed); }

 private:
  UcxServer() = default;
  void Run();
  void CloseEndpoint(ucp_ep_h ep);
  static void OnConnRequest(ucp_conn_request_h request, void* arg);
  static void OnEndpointError(void* arg, ucp_ep_h ep, ucs_status_t status);

  std::unique_ptr<UcxEndpointHost> ucx_;
  ucp_listener_h listener_ = nullptr;
  ucp_mem_h memh_ = nullptr;
  void* region_ = nullptr;
  bool allocated_ = false;
  size_t region_bytes_ = 0;
  std::string rkey_;
  std::string host_;
  int port_ = 0;
  // Touched by the progress thread only (and by the destructor after it has stopped).
  std::vector<ucp_ep_h> endpoints_;
  std::vector<ucp_ep_h> failed_;
  std::atomic<size_t> connections_{0};
  std::atomic<uint64_t> accepted_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace kvtier::transfer
