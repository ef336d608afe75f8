#!/usr/bin/env python3
"""ctest prometheus_rules: deploy/prometheus/rules/ checked and unit-tested by promtool.

1. `promtool check rules` on kvtier.rules.yaml.
2. `promtool test rules` on every tests/*.yaml beside it.
3. What promtool does not check: every alert has `for:`, a severity label, summary, description
   and a runbook_url whose anchor is a heading of docs/operations.md; every alert has a test case
   where it fires and one where it stays quiet; every recording rule's value is tested.
Prints the figures (rules, test files, cases). promtool comes with Debian's `prometheus` package
(scripts/install-deps.sh installs it).
"""

import glob
import os
import re
import subprocess
import sys

from common import RULES, RULES_DIR, ROOT, check_rules, fail, find_promtool, finish

OPERATIONS = os.path.join(ROOT, "docs", "operations.md")


def github_anchor(heading):
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    a = heading.strip().lower()
    a = re.sub(r"[^\w\- ]", "", a)
    return a.replace(" ", "-")


def rule_chunks(text):
    """(kind, name, text of the rule) for each `- record:` / `- alert:` item."""
    starts = [m for m in re.finditer(r"^(\s*)- (record|alert):\s*(\S+)\s*$", text, re.M)]
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        yield m.group(2), m.group(3), text[m.start():end]


def test_cases(paths):
    """alertname -> [fires?] over every alert_rule_test case; and every promql_expr_test expr."""
    alert_cases, exprs = {}, []
    for path in paths:
        lines = open(path, encoding="utf-8").read().split("\n")
        for i, line in enumerate(lines):
            m = re.match(r"^\s*alertname:\s*(\S+)\s*$", line)
            if m:
                for follow in lines[i + 1:]:
                    e = re.match(r"^\s*exp_alerts:\s*(.*)$", follow)
                    if e:
                        alert_cases.setdefault(m.group(1), []).append(e.group(1).strip() != "[]")
                        break
            m = re.match(r"^\s*- expr:\s*(.+)$", line)
            if m:
                exprs.append(m.group(1))
    return alert_cases, exprs


def main():
    promtool = find_promtool()
    if promtool is None:
        return 1
    passed, found, _ = check_rules(promtool, RULES)
    if not passed:
        fail("promtool check rules")

    tests = sorted(glob.glob(os.path.join(RULES_DIR, "tests", "*.yaml")))
    if not tests:
        fail("no promtool tests in deploy/prometheus/rules/tests/")
    else:
        print("$ promtool test rules deploy/prometheus/rules/tests/*.yaml")
        unit = subprocess.run([promtool, "test", "rules"] + tests, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        print(unit.stdout.rstrip())
        if unit.returncode != 0:
            fail("promtool test rules")

    text = open(RULES, encoding="utf-8").read()
    rules = list(rule_chunks(text))
    alerts = [(name, body) for kind, name, body in rules if kind == "alert"]
    records = [name for kind, name, _ in rules if kind == "record"]
    if found is not None and found != len(rules):
        fail(f"promtool found {found} rules, this check {len(rules)}: its parsing is off")

    anchors = set()
    if os.path.exists(OPERATIONS):
        for line in open(OPERATIONS, encoding="utf-8"):
            h = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
            if h:
                anchors.add(github_anchor(h.group(1)))
    else:
        fail("docs/operations.md is missing")

    alert_cases, exprs = test_cases(tests)
    for name, body in alerts:
        if not re.search(r"^\s*for:\s*\S+", body, re.M):
            fail(f"alert {name}: no `for:`")
        if not re.search(r"^\s*severity:\s*(critical|warning|info)\s*$", body, re.M):
            fail(f"alert {name}: no severity label (critical, warning or info)")
        for key in ("summary", "description"):
            if not re.search(rf"^\s*{key}:", body, re.M):
                fail(f"alert {name}: no {key} annotation")
        url = re.search(r"^\s*runbook_url:\s*docs/operations\.md#(\S+)\s*$", body, re.M)
        if url is None:
            fail(f"alert {name}: no runbook_url docs/operations.md#ANCHOR")
        elif url.group(1) not in anchors:
            fail(f"alert {name}: docs/operations.md has no heading with anchor #{url.group(1)}")
        cases = alert_cases.get(name, [])
        if True not in cases:
            fail(f"alert {name}: no test case where it fires")
        if False not in cases:
            fail(f"alert {name}: no test case where it stays quiet")
    for name in records:
        if not any(re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", e) for e in exprs):
            fail(f"recording rule {name}: no promql_expr_test evaluates it")
    unknown = set(alert_cases) - {name for name, _ in alerts}
    for name in sorted(unknown):
        fail(f"tests name alert {name}, which the rule file does not have")

    n_cases = sum(len(c) for c in alert_cases.values())
    n_firing = sum(c.count(True) for c in alert_cases.values())
    return finish(f"{len(rules)} rules ({len(records)} recording, {len(alerts)} alerting); "
                  f"{len(tests)} test files; {n_cases} alert cases ({n_firing} firing, "
                  f"{n_cases - n_firing} quiet); {len(exprs)} recording-rule value cases")


if __name__ == "__main__":
    sys.exit(main())
