#!/usr/bin/env python3
"""Every PromQL query kvtier ships, one JSON object a line, for tests that run them.

    deploy/grafana/queries.py [--dashboard FILE] [--rules FILE] [--alerts] [--rate-interval D]

Prints {"source": ..., "expr": ..., "kind": ...} per query:
  kind "panel"     every target of every dashboard panel (source: the panel's title; "refId"
                   names the target), template variables substituted (below)
  kind "variable"  the series selector of each label_values() template variable
  kind "record"    every recording rule's expr (source: the rule's name)
  kind "alert"     every alerting rule's expr, with --alerts only (an alert's query returns
                   data only while it is active, so a test that expects data leaves them out)

Template variables become regular expressions that match any value: a variable's allValue
(".*" for the dashboard's multi-value variables) or ".+". That is right only inside a regex
matcher (=~ or !~), so a variable used anywhere else is an error. Grafana's interval variables
become --rate-interval ($__rate_interval, $__interval; default 1m) and 1h ($__range).

The rule file is read without a YAML library (python3's standard library has none): the
script understands the layout kvtier.rules.yaml keeps (`- record:` / `- alert:` items whose
`expr:` is one line or a `|` block) and stops with an error on anything else. Exit status: 0, or
1 with a message on stderr.
"""

import argparse
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DASHBOARD = os.path.join(HERE, "kvtier.json")
DEFAULT_RULES = os.path.join(HERE, "..", "prometheus", "rules", "kvtier.rules.yaml")


class Error(Exception):
    pass


# --- dashboard -----------------------------------------------------------------------------------

# $name, ${name}, ${name:format}, [[name]]
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
# A regex matcher's quoted value: label=~"..." or label!~"...".
REGEX_MATCHER = re.compile(r'\w+\s*[=!]~\s*"((?:[^"\\]|\\.)*)"')


def variable_values(dashboard, rate_interval):
    """Name -> the text that replaces it."""
    values = {"__rate_interval": rate_interval, "__interval": rate_interval, "__range": "1h"}
    for var in dashboard.get("templating", {}).get("list", []):
        name = var.get("name")
        if not name:
            raise Error("a template variable without a name")
        if var.get("type") in ("query", "custom", "textbox", "constant"):
            values[name] = var.get("allValue") or ".+"
        elif var.get("type") == "datasource":
            values[name] = None  # only in datasource fields, never in a query
        else:
            raise Error(f"template variable {name}: type {var.get('type')!r} is not handled")
    return values


def substitute(expr, values, where):
    # Where each variable may go: inside the value of a regex matcher, or (Grafana's own
    # interval variables) anywhere.
    in_regex = set()
    for m in REGEX_MATCHER.finditer(expr):
        in_regex.update(range(m.start(1), m.end(1)))

    def replace(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name.isdigit():
            return m.group(0)  # label_replace's $1: Grafana leaves names it does not know
        if name not in values:
            raise Error(f"{where}: unknown variable ${name} in {expr!r}")
        value = values[name]
        if value is None:
            raise Error(f"{where}: ${name} cannot be used in a query")
        if not name.startswith("__") and m.start() not in in_regex:
            raise Error(f"{where}: ${name} is used outside a regex matcher (=~, !~): {expr!r}")
        return value

    return VARIABLE.sub(replace, expr)


def panels_of(panels):
    for p in panels:
        yield p
        # Collapsed rows keep their panels inside.
        yield from panels_of(p.get("panels", []))


def dashboard_queries(path, rate_interval):
    with open(path, encoding="utf-8") as f:
        dashboard = json.load(f)
    values = variable_values(dashboard, rate_interval)
    out = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        q = var.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", q, re.S)
        if m is None:
            raise Error(f"variable {var['name']}: only label_values(selector, label) is handled")
        out.append({"source": f"variable {var['name']}", "expr": m.group(1).strip(),
                    "kind": "variable"})
    for p in panels_of(dashboard.get("panels", [])):
        if p.get("type") == "row":
            continue
        title = p.get("title", "")
        for t in p.get("targets", []):
            if t.get("hide"):
                continue
            expr = t.get("expr")
            if not expr:
                raise Error(f"panel {title!r}: target {t.get('refId')} has no expr")
            out.append({"source": title,
                        "expr": substitute(expr, values, f"panel {title!r}"),
                        "kind": "panel", "refId": t.get("refId", "")})
    return out


# --- rule file -----------------------------------------------------------------------------------

RULE_START = re.compile(r"^(\s*)- (record|alert):\s*(\S+)\s*$")


def scalar(text, where):
    """A one-line YAML scalar: plain, "double" or 'single' quoted."""
    text = text.strip()
    if text.startswith('"'):
        if not text.endswith('"') or len(text) < 2:
            raise Error(f"{where}: unterminated double-quoted scalar")
        return json.loads(text)  # YAML's double-quoted escapes that a rule needs are JSON's
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise Error(f"{where}: unterminated single-quoted scalar")
        return text[1:-1].replace("''", "'")
    if " #" in text or text.startswith(("|", ">", "&", "*", "!", "[", "{")):
        raise Error(f"{where}: unsupported scalar {text!r}")
    return text


def rule_queries(path, with_alerts):
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    out = []
    i = 0
    while i < len(lines):
        m = RULE_START.match(lines[i])
        if m is None:
            i += 1
            continue
        key_indent = len(m.group(1)) + 2
        kind, name = m.group(2), m.group(3)
        where = f"{os.path.basename(path)}:{i + 1}: {kind} {name}"
        expr = None
        i += 1
        # The rule's keys: lines indented exactly key_indent, until a line indented less.
        while i < len(lines):
            line = lines[i]
            stripped = line.strip()
            indent = len(line) - len(line.lstrip(" "))
            if stripped and not stripped.startswith("#") and indent < key_indent:
                break
            km = re.match(r"^ {%d}expr:(.*)$" % key_indent, line)
            if km is None:
                i += 1
                continue
            value = km.group(1).strip()
            i += 1
            if value in ("|", "|-", "|+"):
                block = []
                while i < len(lines):
                    line = lines[i]
                    if line.strip() and len(line) - len(line.lstrip(" ")) <= key_indent:
                        break
                    block.append(line)
                    i += 1
                while block and not block[-1].strip():
                    block.pop()
                body = [ln for ln in block if ln.strip()]
                if not body:
                    raise Error(f"{where}: empty expr")
                cut = min(len(ln) - len(ln.lstrip(" ")) for ln in body)
                expr = "\n".join(ln[cut:] for ln in block)
            else:
                expr = scalar(value, where)
                nxt = lines[i] if i < len(lines) else ""
                if nxt.strip() and len(nxt) - len(nxt.lstrip(" ")) > key_indent:
                    raise Error(f"{where}: a multi-line expr must be a `|` block")
        if expr is None:
            raise Error(f"{where}: no expr")
        if kind == "record" or with_alerts:
            out.append({"source": name, "expr": expr, "kind": kind})
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dashboard", default=DEFAULT_DASHBOARD)
    ap.add_argument("--rules", default=DEFAULT_RULES)
    ap.add_argument("--alerts", action="store_true", help="also print the alerting rules' exprs")
    ap.add_argument("--rate-interval", default="1m",
                    help="what $__rate_interval and $__interval become (default 1m)")
    args = ap.parse_args()
    try:
        queries = dashboard_queries(args.dashboard, args.rate_interval)
        queries += rule_queries(args.rules, args.alerts)
    except (Error, OSError, ValueError) as e:
        print(f"queries.py: {e}", file=sys.stderr)
        return 1
    for q in queries:
        print(json.dumps(q, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
