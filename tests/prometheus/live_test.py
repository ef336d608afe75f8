#!/usr/bin/env python3
"""ctest prometheus_live: the dashboard and the rules against a real Prometheus and a real cluster.

1. scripts/local-cluster.sh --prometheus starts 3 daemons (host and NVMe tiers), the router
   (cache-aware), the worker and Debian's Prometheus (scraping every second, the rules evaluated every second) in a
   temporary state directory.
2. `kvtier replay --router` replays the first REQUESTS requests of the shared Mooncake trace
   through the router and the daemons, without the worker. Once Prometheus has scraped every
   process after it (and evaluated the rules), the cluster hit ratio the dashboard shows must equal
   the one the replay printed, within 1 point: the "Lookup hit ratio since start" panel and the
   recording rule job:kvtier_lookup_hit_ratio:rate5m.
3. A second, short replay with --worker drives the worker (decode attention over replayed
   prefixes; its Lookups on the daemons are why the hit ratio is compared before it).
4. Every query of deploy/grafana/queries.py --alerts (panels, template variables, recording rules,
   alerts) runs against /api/v1/query and must return data, except those in EMPTY_OK (each with
   the reason). An alert's expr returns data only while its condition holds, so each comparison
   in it gets the `bool` modifier: the query then returns a 0/1 series wherever its operands have
   data, which checks the operands and the label matching. A table (kind, source, series) is
   printed.
The cluster and Prometheus are stopped and the directory removed at the end, also on failure.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import datetime

from common import ROOT, fail, finish

CLUSTER = os.path.join(ROOT, "scripts", "local-cluster.sh")
KVTIER = os.path.join(ROOT, "build", "kvtier")
QUERIES = os.path.join(ROOT, "deploy", "grafana", "queries.py")
NODES = 3
HOST_MIB = 8  # 2,048 blocks of 4 KiB a node: the replay evicts, and demotes to NVMe
CAPACITY = HOST_MIB * 256
REQUESTS = 3000  # of the trace's 3,993: about 15 s through the cluster, hit ratio about 0.15
WORKER_REQUESTS = 50
INTERVAL_S = 1  # scrape and rule evaluation interval of local-cluster.sh's prometheus.yml

# Queries that may return nothing on a healthy local cluster without a GPU, by source, and why.
# Anything else that returns nothing fails the test.
EMPTY_OK = {
    # absent() has data only when there is no kvtierd target at all; the panel "kvtierd up"
    # checks that the targets are there.
    "KvtierDaemonTargetsMissing": "absent(up{job=\"kvtierd\"}): data only without targets",
    # Compares the hit ratio with its average over the 6 hours that ended 30 minutes ago, which
    # a Prometheus started a minute ago does not have.
    "KvtierHitRatioCollapsed": "needs the hit ratio of 6h ending 30m ago (fresh Prometheus)",
}


def query(prom, expr):
    """The result list of an instant query; raises on an HTTP or PromQL error."""
    url = f"http://{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{e}: {e.read().decode(errors='replace')}") from None
    if body.get("status") != "success":
        raise RuntimeError(str(body))
    data = body["data"]
    if data["resultType"] in ("scalar", "string"):
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def api(prom, path):
    with urllib.request.urlopen(f"http://{prom}{path}", timeout=10) as r:
        return json.load(r)["data"]


def wait_scraped_after(prom, t, targets):
    """Waits until every target's last scrape began after t (seconds since the epoch) and was
    healthy, then two more intervals, so the rules have been evaluated over those samples."""
    deadline = time.time() + 60
    while time.time() < deadline:
        active = api(prom, "/api/v1/targets?state=active")["activeTargets"]
        fresh = [a for a in active if a["health"] == "up" and
                 parse_time(a["lastScrape"]) > t]
        if len(active) == targets and len(fresh) == targets:
            time.sleep(2 * INTERVAL_S + 0.5)
            return
        time.sleep(0.2)
    raise RuntimeError(f"targets not scraped after {t}: {active}")


def parse_time(rfc3339):
    # "2024-05-01T12:00:00.123456789Z" (or with an offset): seconds since the epoch.
    s = rfc3339.replace("Z", "+00:00")
    if "." in s:
        head, rest = s.split(".", 1)
        frac = "".join(ch for ch in rest if ch.isdigit())
        tz = rest[len(frac):]
        s = f"{head}.{frac[:6]}{tz}"
    return datetime.fromisoformat(s).timestamp()


def replay(env, *args):
    cmd = [KVTIER, "replay", "--router", env["KVTIER_ROUTER"], "--capacity", str(CAPACITY),
           "--block-bytes", "4096", "--json", *args]
    print("$ " + " ".join(cmd[:1] + ["replay"] + cmd[2:]), flush=True)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=120)
    print(p.stdout.rstrip())
    if p.returncode != 0:
        raise RuntimeError(f"kvtier replay exited {p.returncode}")
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    return json.loads(line[-1][len("RESULT "):])


def with_bool(expr):
    """expr with `bool` after each comparison operator outside strings, selectors and ranges."""
    out, i, depth, quote = [], 0, 0, None
    while i < len(expr):
        c = expr[i]
        if quote:
            out.append(c)
            if c == "\\" and i + 1 < len(expr):
                out.append(expr[i + 1])
                i += 1
            elif c == quote:
                quote = None
            i += 1
            continue
        if c in "\"'`":
            quote = c
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
        elif depth == 0:
            op = next((o for o in ("==", "!=", ">=", "<=", ">", "<") if expr.startswith(o, i)),
                      None)
            if op:
                out.append(op + " bool")
                i += len(op)
                continue
        out.append(c)
        i += 1
    return "".join(out)


def series_count(result):
    """(series, series with a finite value)."""
    finite = 0
    for r in result:
        v = r["value"][1]
        if not math.isnan(float(v)) and not math.isinf(float(v)):
            finite += 1
    return len(result), finite


def run(tmp):
    # The router cache-aware, as deploy/ runs it: its index metrics (and the alert on them) exist.
    p = subprocess.run(["bash", CLUSTER, "--dir", tmp, "--prometheus", "start", str(NODES),
                        str(HOST_MIB), "--cache-aware"], stdout=subprocess.PIPE, text=True,
                       timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"local-cluster.sh start exited {p.returncode}")
    env = dict(ln.split("=", 1) for ln in p.stdout.split())
    print(p.stdout.rstrip())
    prom = env["KVTIER_PROMETHEUS"]
    targets = NODES + 2

    # Every counter's first sample must be from before the replay: a rate or increase over the
    # run then counts all of it.
    wait_scraped_after(prom, time.time(), targets)

    r = replay(env, "--requests", str(REQUESTS))
    wait_scraped_after(prom, time.time(), targets)

    # The cluster hit ratio, against what the replay counted itself (hit blocks / looked-up
    # blocks over all its requests). The recording rule is a rate over 5m: this Prometheus and
    # the cluster are younger than that, so its window holds every sample since the daemons
    # started, and the ratio of the two rates is the ratio of the counts over the whole run
    # (both are extrapolated alike; a 1m panel would only see the last minute of a longer run).
    # The "since start" panel divides the counters themselves. Neither counts the worker's
    # Lookups, which come later.
    replay_ratio = r["cluster_hit_rate"]
    panel = [q for q in load_queries() if q["source"] == "Lookup hit ratio since start"]
    ratios = {
        "panel 'Lookup hit ratio since start'": panel[0]["expr"] if panel else None,
        "record job:kvtier_lookup_hit_ratio:rate5m": 'job:kvtier_lookup_hit_ratio:rate5m{job="kvtierd"}',
    }
    print(f"\nhit ratio: replay {replay_ratio:.4f}")
    figures = {"replay_hit_ratio": round(replay_ratio, 4)}
    for name, expr in ratios.items():
        if expr is None:
            fail(f"{name}: not among the dashboard's queries")
            continue
        res = query(prom, expr)
        if len(res) != 1:
            fail(f"{name}: {len(res)} series, want 1")
            continue
        value = float(res[0]["value"][1])
        print(f"hit ratio: {name} {value:.4f} (off by {abs(value - replay_ratio) * 100:.2f} points)")
        figures[name] = round(value, 4)
        if not abs(value - replay_ratio) <= 0.01:
            fail(f"{name} {value:.4f}, the replay printed {replay_ratio:.4f}")

    # The router names daemons by the address they advertise: the join of router and daemon
    # series finds every node.
    nodes = {s["metric"].get("node") for s in query(prom, "node:kvtier_daemon_info:relabel")}
    if nodes != set(env["KVTIER_NODES"].split(",")):
        fail(f"kvtier_daemon_info addresses {sorted(nodes)} != the router's nodes "
             f"{env['KVTIER_NODES']}")

    w = replay(env, "--requests", str(WORKER_REQUESTS), "--worker", env["KVTIER_WORKER"])
    if w.get("attention_requests", 0) < 1:
        fail(f"the worker answered no attention requests: {w}")
    wait_scraped_after(prom, time.time(), targets)

    rows, empty = [], 0
    sources = set()
    for q in load_queries():
        sources.add(q["source"])
        expr = with_bool(q["expr"]) if q["kind"] == "alert" else q["expr"]
        label = q["source"] + (f" [{q['refId']}]" if q.get("refId") else "")
        try:
            res = query(prom, expr)
        except RuntimeError as e:
            fail(f"{q['kind']} {label}: {e}")
            rows.append((q["kind"], label, "error", ""))
            continue
        n, finite = series_count(res)
        note = ""
        if n == 0:
            if q["source"] in EMPTY_OK:
                note = "empty, allowed: " + EMPTY_OK[q["source"]]
            else:
                empty += 1
                note = "EMPTY"
                fail(f"{q['kind']} {label} returned nothing: {expr}")
        elif finite < n:
            note = f"{n - finite} NaN (no observations in the window)"
        rows.append((q["kind"], label, str(n), note))
    for name in EMPTY_OK:
        if name not in sources:
            fail(f"EMPTY_OK names {name!r}, which is no query's source")

    width = max(len(r[1]) for r in rows)
    print(f"\n{'kind':8} {'source':{width}} {'series':>6}  note")
    for kind, label, n, note in rows:
        print(f"{kind:8} {label:{width}} {n:>6}  {note}")
    figures.update({"queries": len(rows), "unexpected_empty": empty,
                    "allowed_empty": sum(1 for r in rows if r[3].startswith("empty, allowed"))})
    return figures


def load_queries():
    p = subprocess.run([sys.executable, QUERIES, "--alerts"], stdout=subprocess.PIPE, text=True,
                       check=True)
    return [json.loads(line) for line in p.stdout.splitlines()]


def main():
    for path in (KVTIER, "/usr/bin/prometheus"):
        if not os.access(path, os.X_OK):
            print(f"{path} missing (scripts/build.sh; scripts/install-deps.sh for prometheus)")
            return 1
    start = time.time()
    tmp = tempfile.mkdtemp(prefix="kvtier-live-")
    figures = {}
    try:
        figures = run(tmp)
    except (RuntimeError, subprocess.SubprocessError, OSError, KeyError) as e:
        fail(f"{type(e).__name__}: {e}")
    finally:
        subprocess.run(["bash", CLUSTER, "--dir", tmp, "stop"], timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
    figures["seconds"] = round(time.time() - start, 1)
    return finish(figures)


if __name__ == "__main__":
    sys.exit(main())
