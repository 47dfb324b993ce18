#!/usr/bin/env bash
# bench-ab.sh BASE_BINARY — the current build beside an earlier gatehouse
# binary, same certificates, same upstream, same loads, interleaved within
# each repetition (run.sh runs the targets one after the other per load),
# so that a change is judged against its own baseline on the same machine
# at the same moment rather than against a figure from another day.
#
#   cp target/release/gatehouse /tmp/gatehouse-before   # before the change
#   ...change, then:
#   scripts/bench-ab.sh /tmp/gatehouse-before
#   MODES="ka" REPEAT=3 DURATION=8 scripts/bench-ab.sh /tmp/gatehouse-before
#
# Prints run.sh's table (targets "after" and "before") and the after/before
# ratio of 2xx per CPU-second per load.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"
BASE=${1:?usage: bench-ab.sh BASE_BINARY}
[[ -x $BASE ]] || die "$BASE is not an executable"
REPEAT=${REPEAT:-2}
DURATION=${DURATION:-8}
export MODES=${MODES:-ka full resumed}

ensure_tools
build_release
check_ports_free 19443 19080
setup_home
# The baseline serves a copy of the same home (same certificates, its own
# journal), copied before either broker opens it.
cp -a "$GH_HOME" "$WORK/home-before"
# An older binary may not know settings added since: drop each line its
# `check` calls an unknown field (at most 20).
for _ in $(seq 1 20); do
  err=$("$BASE" check --home "$WORK/home-before" 2>&1 >/dev/null | grep -m1 -o 'gatehouse.toml:[0-9]*: unknown field' || true)
  [[ -z $err ]] && break
  n=${err#gatehouse.toml:}; n=${n%%:*}
  log "baseline: dropping line $n of its gatehouse.toml ($(sed -n "${n}p" "$WORK/home-before/gatehouse.toml"))"
  sed -i "${n}d" "$WORK/home-before/gatehouse.toml"
done
start_peers upstream
start_gatehouse
AFTER_PORT=$GH_PORT
start_gatehouse "$BASE" "$WORK/home-before" before
BEFORE_PORT=$GH_PORT
machine_summary | tee "$WORK/machine.txt" >&2

export RESULTS=$WORK/results
BASELINE=0 CHECK=0 REPEAT=$REPEAT "$PEERS/run.sh" "after=$AFTER_PORT,before=$BEFORE_PORT" "$DURATION"
echo
echo "after / before, 2xx per CPU-second:"
awk 'NR > 1 { eff[$1, $2] = $13 }
  END { n = split(ENVIRON["MODES"], loads, " ")
    for (i = 1; i <= n; i++) { l = loads[i]
      if (eff["before", l] > 0) printf "%-8s %9s %9s  %.2fx\n", l, eff["after", l], eff["before", l], eff["after", l] / eff["before", l] } }' "$RESULTS/table.txt"
