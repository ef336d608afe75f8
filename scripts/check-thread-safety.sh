#!/usr/bin/env bash
# Clang's thread-safety analysis (-Wthread-safety) over the block store's sources, warnings as
# errors: every ABSL_GUARDED_BY member is touched only with its lock held, and every function
# that says it needs a lock is called with it. Syntax only (no code is generated), with each
# file's flags from the build's compile_commands.json.
#   scripts/check-thread-safety.sh [BUILD_DIR]     (default: build)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"
command -v clang++ >/dev/null || { echo "check-thread-safety: clang++ not found" >&2; exit 1; }
/usr/bin/python3 - "$root" "$build/compile_commands.json" <<'PY'
import json, shlex, subprocess, sys
root, db = sys.argv[1], sys.argv[2]
checked, failed = 0, []
for entry in json.load(open(db)):
    f = entry["file"]
    if not f.startswith(root + "/src/cache/") or f.endswith("_test.cc") or not f.endswith(".cc"):
        continue
    args = shlex.split(entry["command"])[1:]
    # Keep the defines, include paths and language flags; drop the output and optimisation.
    keep, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in ("-o", "-c"):
            skip = True
            continue
        if a.startswith("-O") or a == f:
            continue
        keep.append(a)
    cmd = ["clang++", "-fsyntax-only", "-Wthread-safety", "-Werror=thread-safety"] + keep + [f]
    r = subprocess.run(cmd, cwd=entry["directory"], capture_output=True, text=True)
    checked += 1
    if r.returncode != 0:
        failed.append(f)
        sys.stderr.write(r.stderr)
if checked == 0:
    sys.exit("check-thread-safety: no src/cache sources in " + db)
print(f"check-thread-safety: {checked} files, {len(failed)} with errors")
sys.exit(1 if failed else 0)
PY
