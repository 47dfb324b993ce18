#!/usr/bin/env bash
# bench-profile.sh [ka|full|resumed] — profiles gatehouse under one harness
# load with `perf record` (software cpu-clock sampling: this VM exposes no
# hardware counters) and prints the top symbols, flat and by caller module.
#
#   scripts/bench-profile.sh ka           # DURATION=10
#
# PERF_CALLGRAPH="--call-graph dwarf,16384" for call stacks through code
# built without frame pointers; PERF_FREQ (499) for the sampling rate.
# Starts the harness upstream and gatehouse (same home as bench.sh), runs
# the load with oha/ab like run.sh does, stops everything by pid on exit.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
MODE=${1:-ka}
DURATION=${DURATION:-10}
command -v perf >/dev/null || die "perf not found (apt-get install linux-perf)"

ensure_tools
build_release
check_ports_free 19443 19080
setup_home
start_peers upstream
start_gatehouse

C=$CERTS
URL=https://127.0.0.1:$GH_PORT/v1/orders
case $MODE in
  ka) LOAD=(oha --no-tui -z "${DURATION}s" -c 64 --cacert "$C/ca.pem" --cert "$C/partners/acme.pem" --key "$C/partners/acme.key" "$URL") ;;
  resumed) LOAD=(oha --no-tui -z "${DURATION}s" -c 24 --disable-keepalive --cacert "$C/ca.pem" --cert "$C/partners/acme.pem" --key "$C/partners/acme.key" "$URL") ;;
  full) LOAD=(ab -q -r -l -t "$DURATION" -n $((DURATION * 100000)) -c 24 -E "$C/partners/acme.bundle.pem" "$URL") ;;
  *) die "mode: ka, full or resumed" ;;
esac
perf record -q -F "${PERF_FREQ:-499}" ${PERF_CALLGRAPH:--g} -o "$WORK/perf.data" -p "$GH_PID" -- sleep "$((DURATION + 1))" 2>/dev/null &
PERF_PID=$!
BENCH_PIDS+=("$PERF_PID")
"${LOAD[@]}" >"$WORK/load.out" 2>&1 || true
wait "$PERF_PID" || true
grep -E 'Requests/sec|Success rate|Complete requests|Requests per second' "$WORK/load.out" || true
mkdir -p "$REPO/target/bench"
perf report -i "$WORK/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | sed '/^$/d' | { head -15; cat >/dev/null; } | tee "$REPO/target/bench/profile-$MODE-dso.txt"
echo
perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null | grep -v '^#' | sed '/^$/d' | { head -60; cat >/dev/null; } | tee "$REPO/target/bench/profile-$MODE-sym.txt"
echo "perf data: $WORK/perf.data (KEEP=1 to keep it)"
