#!/usr/bin/env bash
# Builds the library, its tests, benchmarks and examples (Release) and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build/test -DCMAKE_BUILD_TYPE=Release -DORDO_BUILD_TESTS=ON -DORDO_BUILD_BENCHMARKS=ON \
  -DORDO_BUILD_EXAMPLES=ON > /dev/null
cmake --build build/test -j 2
cd build/test
ctest --output-on-failure --timeout 600 "$@"
