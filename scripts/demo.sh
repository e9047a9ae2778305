#!/usr/bin/env bash
# Builds ordo-demo (Release) and runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DORDO_BUILD_TESTS=OFF -DORDO_BUILD_BENCHMARKS=OFF \
  -DORDO_BUILD_EXAMPLES=ON > /dev/null
cmake --build build/release --target ordo-demo -j 2
exec build/release/examples/ordo-demo "$@"
