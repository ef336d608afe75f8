#include "client/router_client.h"

#include <grpcpp/grpcpp.h>

#include <chrono>

#include "client/internal.h"
#include "kvtier/v1/router.grpc.pb.h"
#include "router/router.h"

namespace kvtier {

using client_internal::FromGrpc;

namespace {

RouteResult FromProto(const v1::RouteResponse& res) {
  RouteResult r;
  r.nodes.assign(res.nodes().begin(), res.nodes().end());
  r.routing_depth = res.routing_depth();
  r.expected_cached_blocks = res.expected_cached_blocks();
  return r;
}

}  // namespace

struct RouterClient::Rpc {
  std::unique_ptr<v1::RouteService::Stub> stub;
  std::unique_ptr<grpc::ClientContext> Context(int64_t deadline_ms) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(deadline_ms));
    return ctx;
  }
};

absl::StatusOr<std::unique_ptr<RouterClient>> RouterClient::Create(const std::string& address,
                                                                  int64_t deadline_ms) {
  if (address.empty()) return absl::InvalidArgumentError("router client: address must be set");
  std::unique_ptr<RouterClient> c(new RouterClient());
  c->deadline_ms_ = deadline_ms;
  c->rpc_ = std::make_unique<Rpc>();
  c->rpc_->stub = v1::RouteService::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  return c;
}

RouterClient::~RouterClient() = default;

absl::StatusOr<RouteResult> RouterClient::Route(const std::string& tenant,
                                                std::span<const BlockKey> chain) {
  v1::RouteRequest req;
  req.set_tenant(tenant);
  req.set_packed_keys(PackKeys(chain));
  v1::RouteResponse res;
  auto ctx = rpc_->Context(deadline_ms_);
  if (grpc::Status st = rpc_->stub->Route(ctx.get(), req, &res); !st.ok()) return FromGrpc(st);
  return FromProto(res);
}

absl::StatusOr<RouteResult> RouterClient::RouteTokens(const std::string& tenant,
                                                      const std::string& model,
                                                      std::span<const uint32_t> tokens,
                                                      uint32_t block_tokens,
                                                      uint64_t layout_fingerprint,
                                                      const std::string& adapter) {
  v1::RouteRequest req;
  req.set_tenant(tenant);
  req.set_model(model);
  req.mutable_tokens()->Add(tokens.begin(), tokens.end());
  req.set_block_tokens(block_tokens);
  req.set_layout_fingerprint(layout_fingerprint);
  req.set_adapter(adapter);
  v1::RouteResponse res;
  auto ctx = rpc_->Context(deadline_ms_);
  if (grpc::Status st = rpc_->stub->Route(ctx.get(), req, &res); !st.ok()) return FromGrpc(st);
  return FromProto(res);
}

absl::Status RouterClient::Report(const std::string& node, uint64_t prefilled_blocks) {
  v1::ReportRequest req;
  req.set_node(node);
  req.set_prefilled_blocks(prefilled_blocks);
  v1::ReportResponse res;
  auto ctx = rpc_->Context(deadline_ms_);
  return FromGrpc(rpc_->stub->Report(ctx.get(), req, &res));
}

absl::Status RouterClient::RefreshMembers() {
  v1::MembersResponse res;
  auto ctx = rpc_->Context(deadline_ms_);
  if (grpc::Status st = rpc_->stub->Members(ctx.get(), v1::MembersRequest(), &res); !st.ok()) {
    return FromGrpc(st);
  }
  std::vector<router::RingNode> nodes;
  std::vector<double> loads;
  for (const auto& m : res.members()) {
    if (!m.healthy()) continue;
    nodes.push_back({m.address(), m.weight()});
    loads.push_back(m.load());
  }
  router::RouterOptions o;
  o.load_factor = res.load_factor();
  o.points_per_weight = static_cast<int>(res.points_per_weight());
  o.placement_entries = size_t{1} << 16;  // this client's own prefixes
  MutexLock lock(&mu_);
  if (local_ != nullptr && local_->options().load_factor == o.load_factor &&
      local_->options().points_per_weight == o.points_per_weight) {
    local_->SetNodes(std::move(nodes));
  } else {
    local_ = std::make_unique<router::Router>(std::move(nodes), o);
  }
  loads_ = std::move(loads);
  return absl::OkStatus();
}

absl::StatusOr<RouteResult> RouterClient::RouteLocally(std::span<const BlockKey> chain) {
  MutexLock lock(&mu_);
  if (local_ == nullptr) {
    return absl::FailedPreconditionError("router client: RefreshMembers first");
  }
  if (local_->ring().size() == 0) {
    return absl::UnavailableError("router client: no healthy member at the last refresh");
  }
  if (chain.empty()) return absl::InvalidArgumentError("router client: empty chain");
  const router::RouteChoice c = local_->Route(chain, loads_);
  loads_[c.node] += static_cast<double>(chain.size());  // as the router counts unreported work
  RouteResult r;
  r.routing_depth = c.depth;
  std::vector<int> order;
  local_->ring().Candidates(router::RingHash(c.routing_key), local_->ring().size(), &order);
  r.nodes.push_back(local_->ring().node(c.node).name);
  for (int n : order) {
    if (n != c.node) r.nodes.push_back(local_->ring().node(n).name);
  }
  return r;
}

}  // namespace kvtier
