#!/usr/bin/env bash
# bench-mirror.sh — the cost of mirroring: this build without a mirror
# ("off"), with every request mirrored and compared ("compare": `mirror =
# { to = "orders-v2", percent = 100, compare = true }`) and mirrored with
# the status compared only ("status": `compare = false`), same certificates,
# same upstream (orders-v2 is the harness upstream under a second name),
# interleaved per repetition. The broker's 2xx per CPU-second gives the CPU
# per partner request; the difference to "off" is what one mirrored
# request costs (its copy, its upstream leg, its comparison). The mirrors'
# results (match, mismatch, error, dropped) come from /status.
#
#   scripts/bench-mirror.sh
#   MODES="ka" REPEAT=3 DURATION=8 scripts/bench-mirror.sh
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
REPEAT=${REPEAT:-2}
DURATION=${DURATION:-8}
export MODES=${MODES:-ka}

ensure_tools
build_release
check_ports_free 19443 19080
setup_home
printf '\n[upstreams.orders-v2]\nurl = "https://127.0.0.1:19443"\nca = "certs/upstream-ca.pem"\nserver_name = "localhost"\nsigned_identity = false\n' >>"$GH_HOME/gatehouse.toml"
for variant in compare status; do
  cp -a "$GH_HOME" "$WORK/home-$variant"
  compare=$([[ $variant == compare ]] && echo true || echo false)
  # max_in_flight above the load's 64 connections: no mirror is dropped,
  # every partner request is mirrored.
  sed -i "/^\[upstreams.orders\]$/a mirror = { to = \"orders-v2\", percent = 100, compare = $compare, max_in_flight = 1000 }" "$WORK/home-$variant/gatehouse.toml"
  grep -q '^mirror = ' "$WORK/home-$variant/gatehouse.toml" || die "could not add the mirror to [upstreams.orders]"
  "$G" check --home "$WORK/home-$variant" >/dev/null || die "the $variant home does not pass check"
done

start_peers upstream
start_gatehouse
OFF_PORT=$GH_PORT
start_gatehouse "$G" "$WORK/home-compare" compare
COMPARE_PORT=$GH_PORT
COMPARE_ADMIN=$GH_ADMIN
start_gatehouse "$G" "$WORK/home-status" status
STATUS_PORT=$GH_PORT
STATUS_ADMIN=$GH_ADMIN
machine_summary | tee "$WORK/machine.txt" >&2
echo "commit: $(cd "$REPO" && git rev-parse --short HEAD), $(date -u '+%Y-%m-%d %H:%M UTC')" | tee -a "$WORK/machine.txt" >&2

export RESULTS=$WORK/results
BASELINE=0 CHECK=0 REPEAT=$REPEAT "$PEERS/run.sh" "off=$OFF_PORT,compare=$COMPARE_PORT,status=$STATUS_PORT" "$DURATION"
echo
echo "CPU per partner request (1 / 2xx per CPU-second) and what mirroring adds:"
awk 'NR > 1 { eff[$1, $2] = $13 }
  END { n = split(ENVIRON["MODES"], loads, " ")
    for (i = 1; i <= n; i++) { l = loads[i]
      if (eff["off", l] > 0 && eff["compare", l] > 0 && eff["status", l] > 0) {
        off = 1e6 / eff["off", l]; cmp = 1e6 / eff["compare", l]; st = 1e6 / eff["status", l]
        printf "%-8s off %.1f us  compare %.1f us (+%.1f us, %.2fx)  status only %.1f us (+%.1f us, %.2fx)\n", l, off, cmp, cmp - off, cmp / off, st, st - off, st / off } } }' "$RESULTS/table.txt"
echo
echo "mirror results (compare, then status only):"
for a in "$COMPARE_ADMIN" "$STATUS_ADMIN"; do
  curl -s "http://$a/status" | jq -c '.mirrors.upstreams[0] | {upstream, candidate, totals}' 2>/dev/null || true
done
mkdir -p "$REPO/target/bench"
cp "$RESULTS/table.txt" "$REPO/target/bench/mirror-table.txt" 2>/dev/null || true
