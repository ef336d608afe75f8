"""What the prometheus tests (rules_test.py, queries_test.py) share: paths, promtool, failures."""

import os
import re
import shutil
import subprocess

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RULES_DIR = os.path.join(ROOT, "deploy", "prometheus", "rules")
RULES = os.path.join(RULES_DIR, "kvtier.rules.yaml")

failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}")


def find_promtool():
    """promtool's path, or None after saying where to get it."""
    path = shutil.which("promtool")
    if path is None:
        print("promtool not found: it comes with Debian's prometheus package "
              "(scripts/install-deps.sh installs it)")
    return path


def check_rules(promtool, path, echo=True):
    """`promtool check rules PATH`: (passed, the number of rules it found or None, its output)."""
    p = subprocess.run([promtool, "check", "rules", path], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if echo:
        print(f"$ promtool check rules {os.path.relpath(path, ROOT)}")
        print(p.stdout.rstrip())
    found = re.search(r"SUCCESS: (\d+) rules found", p.stdout)
    return p.returncode == 0, int(found.group(1)) if found else None, p.stdout


def finish(figures):
    """Prints the figures and the verdict; the exit status."""
    print(f"figures: {figures}")
    if failures:
        print(f"{len(failures)} failures")
        return 1
    return 0
