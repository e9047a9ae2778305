#!/usr/bin/env bash
# Makes sure the Debian packages ordo builds with are installed.
# As root, installs what is missing; otherwise prints the exact command and stops.
set -euo pipefail

packages=(cmake g++ make libtbb-dev libconcurrentqueue-dev libgtest-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev libsqlite3-dev python3
  postgresql libpq-dev faketime)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "ordo needs these Debian packages; install them and run this again:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}"
