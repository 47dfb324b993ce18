#!/usr/bin/env bash
# bench-pools.sh BASE_BINARY — the cost of upstream pools: this build with
# the upstream as one endpoint ("one"), this build with a pool of three
# endpoints and every pool feature on ("three": health checks, max_in_flight,
# retries, outlier ejection), and an earlier binary with its single URL
# ("before"), same certificates, same upstream, interleaved per repetition.
#
# The three endpoints are 127.0.0.1, .2 and .3 on the upstream's port: an
# HAProxy in TCP mode forwards .2 and .3 to the upstream (TLS passes through
# untouched, so every endpoint is verified as the upstream itself). The
# forwarder's CPU is not the target's: 2xx per CPU-second compares the
# brokers alone.
#
#   scripts/bench-pools.sh /tmp/gatehouse-before
#   MODES="ka" REPEAT=3 DURATION=8 scripts/bench-pools.sh /tmp/gatehouse-before
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
BASE=${1:?usage: bench-pools.sh BASE_BINARY}
[[ -x $BASE ]] || die "$BASE is not an executable"
REPEAT=${REPEAT:-2}
DURATION=${DURATION:-8}
export MODES=${MODES:-ka full}

ensure_tools
build_release
check_ports_free 19443 19080
setup_home
cp -a "$GH_HOME" "$WORK/home-before"
cp -a "$GH_HOME" "$WORK/home-three"
for _ in $(seq 1 20); do
  err=$("$BASE" check --home "$WORK/home-before" 2>&1 >/dev/null | grep -m1 -o 'gatehouse.toml:[0-9]*: unknown field' || true)
  [[ -z $err ]] && break
  n=${err#gatehouse.toml:}; n=${n%%:*}
  sed -i "${n}d" "$WORK/home-before/gatehouse.toml"
done
# The pool of three, every feature on.
sed -i 's|^url = "https://127.0.0.1:19443"$|endpoints = ["https://127.0.0.1:19443", "https://127.0.0.2:19443", "https://127.0.0.3:19443"]\nmax_in_flight = 1000\nqueue = { size = 1000, timeout = "2s" }\nretries = 2\nper_try_timeout = "10s"\nhealth = { path = "/v1/orders", interval = "1s", timeout = "500ms", healthy = 2, unhealthy = 3 }\noutlier = { consecutive_failures = 5, base_ejection = "30s", max_ejected_percent = 50 }|' "$WORK/home-three/gatehouse.toml"
grep -q '^endpoints = ' "$WORK/home-three/gatehouse.toml" || die "could not turn [upstreams.orders] into a pool of three"
"$G" check --home "$WORK/home-three" >/dev/null || die "the pool of three does not pass check"

cat >"$WORK/forward.cfg" <<CFG
global
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 120s
  timeout server 120s
frontend two
  bind 127.0.0.2:19443
  default_backend upstream
frontend three
  bind 127.0.0.3:19443
  default_backend upstream
backend upstream
  server u 127.0.0.1:19443
CFG
haproxy -f "$WORK/forward.cfg" -db >"$WORK/forward.log" 2>&1 &
BENCH_PIDS+=($!)

start_peers upstream
start_gatehouse
ONE_PORT=$GH_PORT
start_gatehouse "$G" "$WORK/home-three" three
THREE_PORT=$GH_PORT
THREE_ADMIN=$GH_ADMIN
start_gatehouse "$BASE" "$WORK/home-before" before
BEFORE_PORT=$GH_PORT
machine_summary | tee "$WORK/machine.txt" >&2

export RESULTS=$WORK/results
BASELINE=0 CHECK=0 REPEAT=$REPEAT "$PEERS/run.sh" "one=$ONE_PORT,three=$THREE_PORT,before=$BEFORE_PORT" "$DURATION"
echo
echo "against before, 2xx per CPU-second:"
awk 'NR > 1 { eff[$1, $2] = $13 }
  END { n = split(ENVIRON["MODES"], loads, " ")
    for (i = 1; i <= n; i++) { l = loads[i]
      if (eff["before", l] > 0) printf "%-8s one %9s  three %9s  before %9s  one/before %.2fx  three/before %.2fx\n", l, eff["one", l], eff["three", l], eff["before", l], eff["one", l] / eff["before", l], eff["three", l] / eff["before", l] } }' "$RESULTS/table.txt"
echo
echo "every endpoint of the pool of three served (status):"
curl -s "http://$THREE_ADMIN/status" | jq -c '.upstreams[0].endpoints[] | {address, state, success, failure}' 2>/dev/null || true
