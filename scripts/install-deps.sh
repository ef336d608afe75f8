#!/usr/bin/env bash
# Installs the Debian 12 packages kvtier builds and tests with. Idempotent: it asks apt only for
# what is missing, and runs `apt-get update` only when something is.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config
  clang libclang-rt-14-dev
  libabsl-dev libxxhash-dev libssl-dev librocksdb-dev
  libprotobuf-dev protobuf-compiler libgrpc++-dev protobuf-compiler-grpc
  libspdlog-dev libyaml-cpp-dev nlohmann-json3-dev prometheus-cpp-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3-xxhash python3-grpcio python3-protobuf python3-venv
  redis-server libhiredis-dev
  libucx-dev ucx-utils
  libzmq3-dev cppzmq-dev libmsgpack-cxx-dev python3-zmq python3-msgpack
  python3-dev pybind11-dev libdlpack-dev python3-numpy
  prometheus
  chromium
)

# deploy/'s checks (ctest -L deploy) render the Kubernetes manifests with kubectl and validate
# them with Node.js packages (deploy/tests/package.json). KVTIER_DEPLOY_TOOLS=0 leaves them out
# (the image build does). Node.js and npm come from Debian unless some other install provides
# them.
deploy_tools="${KVTIER_DEPLOY_TOOLS:-1}"
if [ "$deploy_tools" = 1 ] && ! command -v node >/dev/null; then
  packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # Debian's prometheus package starts its server where systemd runs; the tests only need
  # promtool and start their own server.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now prometheus.service || true
  fi
fi

if [ "$deploy_tools" = 1 ]; then
  bash "$(dirname "${BASH_SOURCE[0]}")/../deploy/tests/install-tools.sh"
fi
