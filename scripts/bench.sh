#!/usr/bin/env bash
# bench.sh — gatehouse beside nginx and HAProxy doing the same mTLS relay job
# (the peer harness in ../shared/bench-peers), same machine, same
# certificates, same upstream, same loads.
#
#   scripts/bench.sh                      # REPEAT=2 runs of 10 s per load
#   REPEAT=3 DURATION=20 scripts/bench.sh
#   KEEP=1 scripts/bench.sh               # keep the work folder (home, logs, raw results)
#   GH_SETTINGS='durability = "relaxed"' MODES=ka scripts/bench.sh   # another journal mode, one load
#
# Steps: release build; harness tools (install-tools.sh, idempotent) if any
# is missing; a gatehouse home in a temp folder (strict journal, the
# default) whose CA, server cert, broker-client cert and partner certs
# (acme, globex, issued by gatehouse) the peers use too; upstream + nginx +
# HAProxy (start-peers.sh); gatehouse on an ephemeral port; run.sh; the
# table, then gatehouse/nginx and gatehouse/HAProxy ratios per load.
# Everything started here is stopped by pid on exit.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

REPEAT=${REPEAT:-2}
DURATION=${DURATION:-10}

ensure_tools
build_release
check_ports_free 19443 19080 18443 18444
setup_home
start_peers
start_gatehouse

machine_summary | tee "$WORK/machine.txt" >&2
echo "gatehouse: pid $GH_PID, $(threads_of "$GH_PID") threads (tokio workers = $(nproc) cores + sled + blocking pool)" | tee -a "$WORK/machine.txt" >&2

export RESULTS=$WORK/results
REPEAT=$REPEAT "$PEERS/run.sh" "gatehouse=$GH_PORT,nginx=18443,haproxy=18444" "$DURATION"

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); gatehouse threads at end: $(threads_of "$GH_PID"), RSS $(rss_kib "$GH_PID") KiB" | tee -a "$WORK/machine.txt"

# Ratios from the medians table (columns: target load checks rate p50 p99 ... 2xx/cpu-s).
echo
echo "ratios (gatehouse / peer; p99 as gatehouse ms vs peer ms):"
awk '
  NR > 1 { rate[$1, $2] = $4; p99[$1, $2] = $6; eff[$1, $2] = $13 }
  END {
    printf "%-8s %-8s %11s %9s %18s\n", "load", "peer", "2xx/cpu-s", "rate", "p99 gh/peer ms"
    n = split("ka full resumed", loads, " ")
    for (i = 1; i <= n; i++) for (j = 1; j <= 2; j++) {
      l = loads[i]; p = (j == 1) ? "nginx" : "haproxy"
      if (!((p, l) in rate) || !(("gatehouse", l) in rate)) continue
      e = (eff[p, l] > 0) ? sprintf("%.2fx", eff["gatehouse", l] / eff[p, l]) : "-"
      r = (rate[p, l] > 0) ? sprintf("%.2fx", rate["gatehouse", l] / rate[p, l]) : "-"
      printf "%-8s %-8s %11s %9s %9s/%-8s\n", l, p, e, r, p99["gatehouse", l], p99[p, l]
    }
  }' "$RESULTS/table.txt" | tee "$RESULTS/ratios.txt"
echo
echo "raw results: $RESULTS (KEEP=1 to keep them)"
if [[ -z ${KEEP:-} ]]; then
  mkdir -p "$REPO/target/bench"
  cp "$RESULTS/table.txt" "$RESULTS/ratios.txt" "$WORK/machine.txt" "$RESULTS/versions.txt" "$REPO/target/bench/" 2>/dev/null || true
  echo "table and ratios copied to target/bench/"
fi
