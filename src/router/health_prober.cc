#include "router/health_prober.h"

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace kvtier::router {
namespace {

// The calls of one node's probe, alive until both have answered.
struct Probe {
  grpc::ClientContext health_ctx, stats_ctx;
  grpc::health::v1::HealthCheckRequest health_req;
  grpc::health::v1::HealthCheckResponse health_res;
  v1::StatsRequest stats_req;
  ProbeResult* result = nullptr;
};

}  // namespace

std::vector<ProbeResult> HealthProber::ProbeAll(std::span<const ProbeTarget> targets) const {
  std::vector<ProbeResult> results(targets.size());
  if (!options_.enabled) {
    for (ProbeResult& r : results) r.serving = true;
    return results;
  }
  std::vector<std::unique_ptr<Probe>> probes;
  std::mutex mu;
  std::condition_variable done;
  size_t pending = targets.size();
  auto finish = [&] {
    std::lock_guard lock(mu);
    if (--pending == 0) done.notify_all();
  };
  const auto deadline = [&] {
    return std::chrono::system_clock::now() + std::chrono::milliseconds(options_.probe_timeout_ms);
  };
  for (size_t i = 0; i < targets.size(); ++i) {
    auto p = std::make_unique<Probe>();
    p->result = &results[i];
    p->health_ctx.set_deadline(deadline());
    Probe* probe = p.get();
    v1::CacheService::Stub* cache = targets[i].cache;
    probes.push_back(std::move(p));
    targets[i].health->async()->Check(
        &probe->health_ctx, &probe->health_req, &probe->health_res,
        [this, probe, cache, &finish, deadline](grpc::Status st) {
          ProbeResult& r = *probe->result;
          r.serving = st.ok() &&
                      probe->health_res.status() == grpc::health::v1::HealthCheckResponse::SERVING;
          r.error = st.ok() ? (r.serving ? "" : "not serving") : st.error_message();
          if (!r.serving || cache == nullptr) {
            finish();
            return;
          }
          probe->stats_ctx.set_deadline(deadline());
          credentials_.Authorize(&probe->stats_ctx);
          cache->async()->Stats(&probe->stats_ctx, &probe->stats_req, &r.stats,
                                [probe, &finish](grpc::Status s) {
                                  probe->result->stats_ok = s.ok();
                                  finish();
                                });
        });
  }
  std::unique_lock lock(mu);
  done.wait(lock, [&] { return pending == 0; });  // every call has a deadline
  return results;
}

NodeHealth::Change NodeHealth::Observe(bool serving, int failures_to_eject) {
  if (serving) {
    failures_ = 0;
    if (healthy_) return Change::kNone;
    healthy_ = true;
    return Change::kReadmitted;
  }
  if (++failures_ < failures_to_eject || !healthy_) return Change::kNone;
  healthy_ = false;
  return Change::kEjected;
}

}  // namespace kvtier::router
