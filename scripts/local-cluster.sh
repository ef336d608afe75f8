#!/usr/bin/env bash
# A local kvtier cluster on loopback: N kvtierd daemons, one kvtier-router and one kvtier-worker,
# on free ports.
#
#   scripts/local-cluster.sh start [N] [HOST_MIB] [ROUTER_FLAG...]
#                                                   start N daemons (default 4) with HOST_MIB MiB
#                                                   of host tier each (default 64), then the router
#                                                   (with the given flags, e.g. --cache-aware)
#                                                   and the worker (reading through the router)
#   scripts/local-cluster.sh status                 addresses and whether each process is up
#   scripts/local-cluster.sh stop                   SIGTERM everything (SIGKILL after 10 s)
#
# State (addresses, pids, logs) lives in build/cluster/; `cluster.env` there can be sourced:
# KVTIER_ROUTER, KVTIER_ROUTER_METRICS, KVTIER_NODES (comma-separated), KVTIER_NODE_METRICS,
# KVTIER_WORKER, KVTIER_WORKER_METRICS.
# Expects the binaries in build/ (scripts/build.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/build/cluster"
env_file="$dir/cluster.env"

# Starts "$@" in the background with stdout to $1.out; waits for its "listening on" line.
launch() {
  local name="$1"; shift
  "$@" > "$dir/$name.out" 2> "$dir/$name.log" &
  echo $! > "$dir/$name.pid"
  for _ in $(seq 1 300); do
    if grep -q "listening on" "$dir/$name.out" 2>/dev/null; then return 0; fi
    if ! kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "local-cluster: $name did not start; its log:" >&2
  cat "$dir/$name.log" >&2
  return 1
}

field() {  # field FILE WHAT -> the HOST:PORT after "WHAT on "
  sed -n "s/.*$2 on \(.*\)$/\1/p" "$1" | head -1
}

stop() {
  [ -d "$dir" ] || return 0
  local pids=()
  for f in "$dir"/*.pid; do
    [ -e "$f" ] || continue
    local pid; pid="$(cat "$f")"
    if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid" && pids+=("$pid"); fi
    rm -f "$f"
  done
  for _ in $(seq 1 100); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  rm -f "$env_file"
}

case "${1:-}" in
  start)
    n="${2:-4}"; host_mib="${3:-64}"; shift $(( $# < 3 ? $# : 3 )); router_flags=("$@")
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "local-cluster: N must be a positive number" >&2; exit 2; }
    [[ "$host_mib" =~ ^[1-9][0-9]*$ ]] || { echo "local-cluster: HOST_MIB must be a positive number" >&2; exit 2; }
    for bin in kvtierd kvtier-router kvtier-worker; do
      [ -x "$root/build/$bin" ] || { echo "local-cluster: build/$bin missing (scripts/build.sh)" >&2; exit 1; }
    done
    stop
    mkdir -p "$dir"
    trap 'stop' ERR
    nodes=(); node_metrics=()
    for i in $(seq 0 $((n - 1))); do
      launch "kvtierd-$i" "$root/build/kvtierd" --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
        --no-nvme --host-mib "$host_mib" --max-block-mib 1 --log-level warn
      nodes+=("$(field "$dir/kvtierd-$i.out" listening)")
      node_metrics+=("$(field "$dir/kvtierd-$i.out" metrics)")
    done
    list="$(IFS=,; echo "${nodes[*]}")"
    launch router "$root/build/kvtier-router" --nodes "$list" --listen 127.0.0.1:0 \
      --metrics-listen 127.0.0.1:0 --log-level warn "${router_flags[@]}"
    launch worker "$root/build/kvtier-worker" --router "$(field "$dir/router.out" listening)" \
      --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --pool-mib 64 --spare-mib 64 \
      --log-level warn
    {
      echo "KVTIER_ROUTER=$(field "$dir/router.out" listening)"
      echo "KVTIER_ROUTER_METRICS=$(field "$dir/router.out" metrics)"
      echo "KVTIER_NODES=$list"
      echo "KVTIER_NODE_METRICS=$(IFS=,; echo "${node_metrics[*]}")"
      echo "KVTIER_WORKER=$(field "$dir/worker.out" listening)"
      echo "KVTIER_WORKER_METRICS=$(field "$dir/worker.out" metrics)"
    } > "$env_file"
    trap - ERR
    cat "$env_file"
    ;;
  status)
    [ -e "$env_file" ] || { echo "local-cluster: not running"; exit 1; }
    cat "$env_file"
    for f in "$dir"/*.pid; do
      name="$(basename "$f" .pid)"
      if kill -0 "$(cat "$f")" 2>/dev/null; then echo "$name: up"; else echo "$name: down"; fi
    done
    ;;
  stop)
    stop
    ;;
  *)
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
