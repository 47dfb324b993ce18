#!/usr/bin/env bash
# The test command: every unit and end-to-end test (real TLS on loopback,
# real sled on temp dirs, certificates made at test time).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --locked --all-targets "$@"
