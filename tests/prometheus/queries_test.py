#!/usr/bin/env python3
"""ctest prometheus_queries: deploy/grafana/kvtier.json and deploy/grafana/queries.py.

1. The dashboard is one a current Grafana loads without plugins: schemaVersion 39, core panel
   types only, unique panel ids, every panel's targets on the ${datasource} variable.
2. Every query queries.py extracts (panels with variables substituted, the variables' selectors,
   recording and alerting rules) parses as PromQL: promtool has no offline query parser, so each
   becomes a recording rule of a throwaway rule file that `promtool check rules` must accept, one
   rule per query.
3. queries.py reads the rule file as promtool does (the same number of rules), and refuses a
   variable outside a regex matcher (where ".*" would match literally).
"""

import json
import os
import re
import subprocess
import sys
import tempfile

from common import RULES, ROOT, check_rules, fail, find_promtool, finish

DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "kvtier.json")
QUERIES = os.path.join(ROOT, "deploy", "grafana", "queries.py")
# Panel types built into Grafana 10/11 (no plugin to install).
CORE_PANELS = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "state-timeline",
               "status-history", "barchart", "histogram", "heatmap", "piechart", "text"}

def queries(*args):
    p = subprocess.run([sys.executable, QUERIES, *args], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    return p.returncode, [json.loads(line) for line in p.stdout.splitlines()], p.stderr


def check_dashboard():
    d = json.load(open(DASHBOARD, encoding="utf-8"))
    if d.get("schemaVersion") != 39:
        fail(f"schemaVersion {d.get('schemaVersion')}, want 39")
    names = [v.get("name") for v in d.get("templating", {}).get("list", [])]
    for want in ("datasource", "instance", "node"):
        if want not in names:
            fail(f"no template variable {want}")
    ids, n = set(), 0

    def walk(panels):
        nonlocal n
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))

    for p in walk(d.get("panels", [])):
        title = p.get("title")
        if p.get("type") not in CORE_PANELS:
            fail(f"panel {title!r}: type {p.get('type')!r} is not a core Grafana panel")
        if p.get("id") in ids:
            fail(f"panel {title!r}: id {p.get('id')} is used twice")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            fail(f"panel {title!r}: no gridPos")
        if p.get("type") == "row":
            continue
        n += 1
        if not p.get("targets"):
            fail(f"panel {title!r}: no query")
        for t in p.get("targets", []) + [p]:
            ds = t.get("datasource", {})
            if ds.get("uid") != "${datasource}":
                fail(f"panel {title!r}: datasource {ds!r}, want uid ${{datasource}}")
    return n


def check_parse(qs, promtool):
    """Every query as the expr of a recording rule; promtool check rules must accept them all."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "queries.rules.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write("groups:\n  - name: kvtier-queries\n    rules:\n")
            for i, q in enumerate(qs):
                f.write(f"      - record: kvtier_query_check_{i:04d}\n")
                # A JSON string is a YAML double-quoted scalar.
                f.write(f"        expr: {json.dumps(q['expr'])}\n")
        passed, found, output = check_rules(promtool, path, echo=False)
        if not passed:
            print(output)
            # Name the queries promtool refused, by source.
            for m in re.finditer(r"kvtier_query_check_(\d{4})", output):
                q = qs[int(m.group(1))]
                print(f"  {q['kind']} {q['source']!r}: {q['expr']}")
            fail("promtool refused some queries (above)")
        elif found != len(qs):
            fail(f"promtool checked {found} of {len(qs)} queries")


def check_variable_misuse():
    d = json.load(open(DASHBOARD, encoding="utf-8"))
    d["panels"] = [{"type": "timeseries", "title": "misuse", "id": 1,
                    "targets": [{"refId": "A", "expr": 'kvtier_tier_used_bytes{instance="$instance"}'}]}]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(d, f)
    try:
        rc, _, err = queries("--dashboard", f.name)
    finally:
        os.unlink(f.name)
    if rc == 0 or "outside a regex matcher" not in err:
        fail(f"queries.py accepted $instance in an equality matcher (rc {rc}, {err.strip()!r})")


def main():
    promtool = find_promtool()
    if promtool is None:
        return 1
    panels = check_dashboard()

    rc, qs, err = queries("--alerts")
    if rc != 0:
        fail(f"queries.py failed: {err.strip()}")
        return 1
    kinds = {k: sum(1 for q in qs if q["kind"] == k) for k in ("panel", "variable", "record", "alert")}
    for q in qs:
        if set(q) - {"source", "expr", "kind", "refId"} or not q["source"] or not q["expr"]:
            fail(f"malformed line {q!r}")
        if re.search(r"\$(?!\d)|\[\[", q["expr"]):
            fail(f"{q['source']!r}: a variable is left in {q['expr']!r}")
    check_parse(qs, promtool)

    _, found, _ = check_rules(promtool, RULES, echo=False)
    if found != kinds["record"] + kinds["alert"]:
        fail(f"promtool finds {found} rules in kvtier.rules.yaml, queries.py "
             f"{kinds['record']} recording and {kinds['alert']} alerting")
    rc, default, _ = queries()
    if rc != 0 or any(q["kind"] == "alert" for q in default):
        fail("queries.py without --alerts printed alerts (or failed)")

    check_variable_misuse()
    return finish(f"{panels} panels; {kinds['panel']} panel queries, {kinds['variable']} "
                  f"variable selectors, {kinds['record']} recording and {kinds['alert']} "
                  f"alerting rules; {len(qs)} queries checked by promtool")


if __name__ == "__main__":
    sys.exit(main())
