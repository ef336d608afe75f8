#!/usr/bin/env python3
"""kvtier-router's status page in a real browser.

Starts a local cluster (scripts/local-cluster.sh, 3 daemons with NVMe tiers) in a temporary
directory, replays part of the shared Mooncake trace through the router, waits for two probe
rounds (the router asks each daemon's Stats after its health probe), then has headless Chromium
(Debian's `chromium`) load the page: its DOM (--dump-dom) is checked against what the router's
and the daemons' /metrics say at the same moment (nodes, health, decisions, imbalance and its
bound, host and NVMe fill), a hit ratio and a chart must be there, and a screenshot is saved as
build/status-page.png. The cluster is stopped and its directory removed, also on failure.
"""

import html.parser
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLUSTER = os.path.join(ROOT, "scripts", "local-cluster.sh")
KVTIER = os.path.join(ROOT, "build", "kvtier")
SCREENSHOT = os.path.join(ROOT, "build", "status-page.png")
NODES = 3
HOST_MIB = 8
REQUESTS = 1000

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}")


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def samples(text):
    """{name{labels}: value} of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


class Page(html.parser.HTMLParser):
    """The page's numbers: spans by id, and each node row's cells by class."""

    def __init__(self):
        super().__init__()
        self.ids, self.rows, self.polyline = {}, {}, False
        self._id = self._row = self._cls = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "polyline":
            self.polyline = True
        if tag == "tr" and "data-node" in a:
            self._row = a["data-node"]
            self.rows[self._row] = {}
        if tag == "span" and "id" in a:
            self._id = a["id"]
        if tag == "td" and self._row is not None:
            self._cls = (a.get("class") or "").split()[0]

    def handle_endtag(self, tag):
        if tag == "span":
            self._id = None
        if tag == "td":
            self._cls = None
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._id is not None:
            self.ids[self._id] = self.ids.get(self._id, "") + data.strip()
        if self._row is not None and self._cls is not None:
            cells = self.rows[self._row]
            cells[self._cls] = cells.get(self._cls, "") + data.strip()


def chromium(*args):
    browser = shutil.which("chromium")
    if browser is None:
        raise RuntimeError("no chromium: Debian's package (scripts/install-deps.sh installs it)")
    p = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--hide-scrollbars", *args],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"chromium exited {p.returncode}: {p.stderr[-2000:]}")
    return p.stdout


def percent(cell):
    m = re.fullmatch(r"([0-9.]+)%", cell)
    return float(m.group(1)) if m else None


def run(tmp):
    p = subprocess.run(["bash", CLUSTER, "--dir", tmp, "start", str(NODES), str(HOST_MIB)],
                       stdout=subprocess.PIPE, text=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"local-cluster.sh start exited {p.returncode}")
    env = dict(ln.split("=", 1) for ln in p.stdout.split() if "=" in ln)
    page_url = env["KVTIER_STATUS_PAGE"]
    subprocess.run([KVTIER, "replay", "--router", env["KVTIER_ROUTER"], "--capacity",
                    str(HOST_MIB * 256), "--block-bytes", "4096", "--requests", str(REQUESTS)],
                   stdout=subprocess.DEVNULL, check=True, timeout=120)
    time.sleep(2.5)  # two probe rounds: every daemon's Stats asked after the replay

    dom = chromium("--dump-dom", page_url)
    router = samples(get("http://" + env["KVTIER_ROUTER_METRICS"] + "/metrics"))
    daemons = {}
    for addr in env["KVTIER_NODE_METRICS"].split(","):
        s = samples(get("http://" + addr + "/metrics"))
        node = [k for k in s if k.startswith("kvtier_daemon_info{")][0]
        daemons[re.search(r'address="([^"]+)"', node).group(1)] = s
    chromium("--window-size=1100,700", f"--screenshot={SCREENSHOT}", page_url)

    page = Page()
    page.feed(dom)
    print(f"page: {page.ids}")
    for node, cells in sorted(page.rows.items()):
        print(f"  {node}: {cells}")
    nodes = sorted(env["KVTIER_NODES"].split(","))
    if sorted(page.rows) != nodes:
        fail(f"the page lists {sorted(page.rows)}, the cluster is {nodes}")
    if page.ids.get("nodes-total") != str(NODES) or page.ids.get("nodes-healthy") != str(NODES):
        fail(f"nodes: {page.ids.get('nodes-healthy')} of {page.ids.get('nodes-total')} healthy")
    imbalance = router["kvtier_router_imbalance"]
    if abs(float(page.ids.get("imbalance", "nan")) - imbalance) > 0.001:
        fail(f"imbalance {page.ids.get('imbalance')} on the page, {imbalance} in /metrics")
    if float(page.ids.get("load-bound", "nan")) != router["kvtier_router_load_bound"]:
        fail(f"bound {page.ids.get('load-bound')}, /metrics {router['kvtier_router_load_bound']}")
    ratio = page.ids.get("hit-ratio", "")
    if not re.fullmatch(r"0\.[0-9]{3}|1\.000", ratio):
        fail(f"cluster hit ratio '{ratio}': the replay's lookups should show")
    if not page.polyline:
        fail("no hit-ratio chart line")
    for node, cells in page.rows.items():
        label = f'{{node="{node}"}}'
        if cells.get("health") != ("healthy" if router[f"kvtier_router_node_healthy{label}"] else
                                   "ejected"):
            fail(f"{node}: health '{cells.get('health')}'")
        if int(cells.get("decisions", "-1")) != router[f"kvtier_router_decisions_total{label}"]:
            fail(f"{node}: {cells.get('decisions')} decisions on the page, "
                 f"{router[f'kvtier_router_decisions_total{label}']} in /metrics")
        d = daemons.get(node)
        if d is None:
            fail(f"{node}: no daemon advertises this address")
            continue
        for tier in ("host", "nvme"):
            want = 100 * d[f'kvtier_tier_used_bytes{{tier="{tier}"}}'] / \
                d[f'kvtier_tier_capacity_bytes{{tier="{tier}"}}']
            got = percent(cells.get(f"{tier}-fill", ""))
            if got is None or abs(got - want) > 0.051:
                fail(f"{node}: {tier} fill '{cells.get(f'{tier}-fill')}' on the page, "
                     f"{want:.2f}% in /metrics")
    if not os.path.getsize(SCREENSHOT) > 10_000:
        fail(f"the screenshot {SCREENSHOT} is too small")
    print(f"screenshot: {SCREENSHOT}")


def main():
    tmp = tempfile.mkdtemp(prefix="kvtier-status-page-")
    try:
        run(tmp)
    except (RuntimeError, subprocess.SubprocessError, OSError, KeyError, ValueError) as e:
        fail(f"{type(e).__name__}: {e}")
    finally:
        subprocess.run(["bash", CLUSTER, "--dir", tmp, "stop"], timeout=60,
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print("status page: every number matches /metrics")


if __name__ == "__main__":
    main()
