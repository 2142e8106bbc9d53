#!/usr/bin/env bash
# Installs every Debian package that starattn's build, tests and tools need, then builds the
# project's UCX (deploy/build-ucx.sh: Debian's UCX source with the CUDA and verbs transports
# together, in /opt/starattn/ucx, where CMakeLists.txt looks first).
# Idempotent and non-interactive; run as root or with sudo available.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

packages=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  libcaf-dev libprotobuf-dev protobuf-compiler
  libcaf-openssl0.17 libssl-dev openssl
  libboost-dev libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libopenblas-dev
  python3 python3-venv python3-pip
  iproute2 openssh-server openssh-client patchelf
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
else
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Not Debian's libucx-dev (no CUDA transports): one UCX, ours, so nothing links or loads a mix.
"$here/build-ucx.sh"
