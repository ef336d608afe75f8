#!/usr/bin/env bash
# A local kvtier cluster on loopback: N kvtierd daemons (host tier, and an NVMe tier in the state
# directory), one kvtier-router and one kvtier-worker, and on request a Prometheus scraping them.
#
#   scripts/local-cluster.sh [OPTION...] start [N] [HOST_MIB] [ROUTER_FLAG...]
#                                                   start N daemons (default 4) with HOST_MIB MiB
#                                                   of host tier each (default 64), then the router
#                                                   (with the given flags, e.g. --cache-aware)
#                                                   and the worker (reading through the router)
#   scripts/local-cluster.sh [--dir DIR] status     addresses and whether each process is up
#   scripts/local-cluster.sh [--dir DIR] stop       SIGTERM everything (SIGKILL after 10 s)
#
# Options (before the command):
#   --dir DIR        state directory (default build/cluster): pids, logs, cluster.env, each
#                    daemon's NVMe tier (kvtierd-I.nvme/) and Prometheus' files. Clusters with
#                    different directories run side by side. `start` clears what an earlier
#                    cluster left there (NVMe tiers, Prometheus' storage), so each starts empty.
#   --no-nvme        daemons without an NVMe tier (it is on by default)
#   --nvme-gib N     each daemon's NVMe tier capacity, GiB (default 1)
#   --max-block-mib N  the largest block each daemon takes, MiB (default 2: a Llama-3-8B block,
#                    as kvtier.LLAMA3_8B in python/README.md's example; HOST_MIB when smaller)
#   --base-port P    fixed ports: router gRPC P, router metrics P+1, worker gRPC P+2, worker
#                    metrics P+3, Prometheus P+4; daemon I (from 0) gRPC P+10+3I, metrics
#                    P+11+3I, UCX P+12+3I. Default: free ports, as the processes pick them.
#   --prometheus     also start Debian's Prometheus (/usr/bin/prometheus) on 127.0.0.1, with
#                    DIR/prometheus.yml: every process scraped every second under the job labels
#                    of deploy/prometheus/rules/kvtier.rules.yaml (kvtierd, kvtier-router,
#                    kvtier-worker), that rule file evaluated every second, storage in
#                    DIR/prometheus-data.
#
# Each daemon advertises its gRPC address (kvtier_daemon_info{address}, what the router calls it).
# `cluster.env` in DIR can be sourced: KVTIER_ROUTER, KVTIER_ROUTER_METRICS, KVTIER_STATUS_PAGE
# (the router's status page, http://HOST:PORT/), KVTIER_NODES
# (comma-separated), KVTIER_NODE_METRICS, KVTIER_WORKER, KVTIER_WORKER_METRICS, and with
# --prometheus KVTIER_PROMETHEUS (HOST:PORT of its web UI and HTTP API).
# Expects the binaries in build/ (scripts/build.sh).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/build/cluster"
nvme=1
nvme_gib=1
max_block_mib=""
base_port=""
prometheus=0

usage() {
  sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}
positive() {  # positive NAME VALUE
  [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "local-cluster: $1 must be a positive number" >&2; exit 2; }
}

while [ $# -gt 0 ]; do
  case "$1" in
    --dir) [ $# -ge 2 ] || usage; dir="$2"; shift 2 ;;
    --no-nvme) nvme=0; shift ;;
    --nvme-gib) [ $# -ge 2 ] || usage; positive --nvme-gib "$2"; nvme_gib="$2"; shift 2 ;;
    --max-block-mib)
      [ $# -ge 2 ] || usage; positive --max-block-mib "$2"; max_block_mib="$2"; shift 2 ;;
    --base-port) [ $# -ge 2 ] || usage; positive --base-port "$2"; base_port="$2"; shift 2 ;;
    --prometheus) prometheus=1; shift ;;
    --*) echo "local-cluster: unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
dir="$(realpath -m "$dir")"
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

port() {  # port OFFSET -> 127.0.0.1:(base + OFFSET), or 127.0.0.1:0 without --base-port
  if [ -n "$base_port" ]; then echo "127.0.0.1:$((base_port + $1))"; else echo "127.0.0.1:0"; fi
}

# A port no one listens on now (the kernel's pick for port 0), for Prometheus, which cannot
# report the port it was given.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts Prometheus on $1 (HOST:PORT) scraping the cluster; waits until it is ready.
start_prometheus() {
  local web="$1" nodes_metrics="$2" router_metrics="$3" worker_metrics="$4"
  [ -x /usr/bin/prometheus ] ||
    { echo "local-cluster: /usr/bin/prometheus missing (scripts/install-deps.sh)" >&2; return 1; }
  targets() { local IFS=,; local t; for t in $1; do printf '"%s", ' "$t"; done | sed 's/, $//'; }
  cat > "$dir/prometheus.yml" <<EOF
# Generated by scripts/local-cluster.sh: the local cluster under the job labels the rules expect.
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $root/deploy/prometheus/rules/kvtier.rules.yaml
scrape_configs:
  - job_name: kvtierd
    static_configs:
      - targets: [$(targets "$nodes_metrics")]
  - job_name: kvtier-router
    static_configs:
      - targets: [$(targets "$router_metrics")]
  - job_name: kvtier-worker
    static_configs:
      - targets: [$(targets "$worker_metrics")]
EOF
  /usr/bin/prometheus --config.file="$dir/prometheus.yml" \
    --storage.tsdb.path="$dir/prometheus-data" --web.listen-address="$web" \
    --log.level=warn > "$dir/prometheus.out" 2> "$dir/prometheus.log" &
  echo $! > "$dir/prometheus.pid"
  for _ in $(seq 1 300); do
    if python3 - "$web" 2>/dev/null <<'PY'
import sys, urllib.request
urllib.request.urlopen(f"http://{sys.argv[1]}/-/ready", timeout=1).read()
PY
    then return 0; fi
    if ! kill -0 "$(cat "$dir/prometheus.pid")" 2>/dev/null; then break; fi
    sleep 0.1
  done
  echo "local-cluster: prometheus did not start; its log:" >&2
  cat "$dir/prometheus.log" >&2
  return 1
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
  rm -f "$env_file" "$env_file.tmp"
}

case "${1:-}" in
  start)
    n="${2:-4}"; host_mib="${3:-64}"; shift $(( $# < 3 ? $# : 3 )); router_flags=("$@")
    positive N "$n"
    positive HOST_MIB "$host_mib"
    # A daemon's host tier is cut into slabs of the largest block: it must hold one.
    if [ -z "$max_block_mib" ]; then max_block_mib=$(( host_mib < 2 ? host_mib : 2 )); fi
    if [ "$max_block_mib" -gt "$host_mib" ]; then
      echo "local-cluster: --max-block-mib $max_block_mib exceeds HOST_MIB $host_mib" >&2; exit 2
    fi
    for bin in kvtierd kvtier-router kvtier-worker; do
      [ -x "$root/build/$bin" ] || { echo "local-cluster: build/$bin missing (scripts/build.sh)" >&2; exit 1; }
    done
    stop
    mkdir -p "$dir"
    # What an earlier cluster in this directory left: each cluster starts empty.
    rm -rf "$dir"/kvtierd-*.nvme "$dir/prometheus-data" "$dir/prometheus.yml"
    trap 'stop' ERR
    nodes=(); node_metrics=()
    for i in $(seq 0 $((n - 1))); do
      listen="$(port $((10 + 3 * i)))"
      flags=(--listen "$listen" --metrics-listen "$(port $((11 + 3 * i)))"
             --host-mib "$host_mib" --max-block-mib "$max_block_mib" --log-level warn)
      if [ -n "$base_port" ]; then
        flags+=(--ucx-listen "$(port $((12 + 3 * i)))" --advertise-address "$listen")
      fi
      # (With free ports the daemon advertises the address it bound, its gRPC address.)
      if [ "$nvme" = 1 ]; then
        flags+=(--data "$dir/kvtierd-$i.nvme" --nvme-gib "$nvme_gib")
      else
        flags+=(--no-nvme)
      fi
      launch "kvtierd-$i" "$root/build/kvtierd" "${flags[@]}"
      nodes+=("$(field "$dir/kvtierd-$i.out" listening)")
      node_metrics+=("$(field "$dir/kvtierd-$i.out" metrics)")
    done
    list="$(IFS=,; echo "${nodes[*]}")"
    launch router "$root/build/kvtier-router" --nodes "$list" --listen "$(port 0)" \
      --metrics-listen "$(port 1)" --log-level warn "${router_flags[@]}"
    launch worker "$root/build/kvtier-worker" --router "$(field "$dir/router.out" listening)" \
      --listen "$(port 2)" --metrics-listen "$(port 3)" --pool-mib 64 --spare-mib 64 \
      --log-level warn
    {
      echo "KVTIER_ROUTER=$(field "$dir/router.out" listening)"
      echo "KVTIER_ROUTER_METRICS=$(field "$dir/router.out" metrics)"
      echo "KVTIER_STATUS_PAGE=$(field "$dir/router.out" "status page")"
      echo "KVTIER_NODES=$list"
      echo "KVTIER_NODE_METRICS=$(IFS=,; echo "${node_metrics[*]}")"
      echo "KVTIER_WORKER=$(field "$dir/worker.out" listening)"
      echo "KVTIER_WORKER_METRICS=$(field "$dir/worker.out" metrics)"
    } > "$env_file.tmp"
    if [ "$prometheus" = 1 ]; then
      if [ -n "$base_port" ]; then web="$(port 4)"; else web="127.0.0.1:$(free_port)"; fi
      start_prometheus "$web" "$(IFS=,; echo "${node_metrics[*]}")" \
        "$(field "$dir/router.out" metrics)" "$(field "$dir/worker.out" metrics)"
      echo "KVTIER_PROMETHEUS=$web" >> "$env_file.tmp"
    fi
    mv "$env_file.tmp" "$env_file"
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
    usage
    ;;
esac
