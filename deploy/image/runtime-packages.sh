#!/usr/bin/env bash
# The Debian packages the runtime image must install for kvtier's binaries, derived from the
# binaries themselves: every shared library `ldd` resolves for kvtierd, kvtier-router,
# kvtier-worker and kvtier, mapped to its package with `dpkg -S`; one name a line, sorted.
#
#   deploy/image/runtime-packages.sh BUILD_DIR
#
# Left out: libc6, libgcc-s1 and libstdc++6, the C and C++ runtime that the base image
# (debian:12-slim) always has (its apt is a C++ program). Every other package is listed even
# where the base image happens to have it today, so that the image does not depend on that.
# Packages the listed ones depend on (UCX's transport modules need libibverbs1, librdmacm1)
# come with them through apt. A library that no package owns (a build-tree or /usr/local one)
# is an error: the image would not have it.
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 BUILD_DIR" >&2
  exit 2
fi
build="$1"
base_packages=" libc6 libgcc-s1 libstdc++6 "

libraries=()
for binary in kvtierd kvtier-router kvtier-worker kvtier; do
  path="$build/$binary"
  if [ ! -x "$path" ]; then
    echo "runtime-packages: $path is missing: build it first" >&2
    exit 1
  fi
  if ldd "$path" | grep -q "not found"; then
    echo "runtime-packages: $binary has unresolved libraries:" >&2
    ldd "$path" | grep "not found" >&2
    exit 1
  fi
  # "libfoo.so.1 => /usr/lib/x86_64-linux-gnu/libfoo.so.1 (0x...)": the path.
  while read -r library; do libraries+=("$library"); done < <(ldd "$path" | awk '$2 == "=>" && $3 ~ /^\// {print $3}')
done

# The package owning each library, from one dpkg -S over every spelling of its path: dpkg knows
# the path it installed, which with merged /usr may be /lib/... where ldd says /usr/lib/... (or
# the other way round), or the target of the link ldd names.
declare -A spellings=()
for library in $(printf '%s\n' "${libraries[@]}" | sort -u); do
  real="$(realpath "$library")"
  spellings[$library]="$library $real ${library#/usr} /usr$library ${real#/usr} /usr$real"
done
declare -A owner_of=()
# "libfoo1:amd64: /usr/lib/x86_64-linux-gnu/libfoo.so.1" (paths dpkg does not know go to stderr).
while IFS= read -r line; do
  case "$line" in diversion*) continue ;; esac
  owner_of[${line#*: }]="${line%%:*}"
done < <(dpkg -S $(printf '%s\n' ${spellings[@]} | sort -u) 2>/dev/null || true)

packages=()
for library in "${!spellings[@]}"; do
  package=""
  for spelling in ${spellings[$library]}; do
    if [ -n "${owner_of[$spelling]:-}" ]; then
      package="${owner_of[$spelling]}"
      break
    fi
  done
  if [ -z "$package" ]; then
    echo "runtime-packages: $library belongs to no Debian package" >&2
    exit 1
  fi
  packages+=("${package%%,*}")
done
for package in $(printf '%s\n' "${packages[@]}" | sort -u); do
  case "$base_packages" in
    *" $package "*) ;;
    *) echo "$package" ;;
  esac
done
