#!/usr/bin/env bash
# bench-partners.sh — gatehouse with 2 partners, then with PARTNERS (10,000)
# partners x ROUTES (20) routes each: startup time, reload time after one
# partner file changes (the watcher's poll) and after SIGHUP (full reload,
# TLS rebuilt), idle CPU of the file watcher, RSS, and the per-request cost
# (run.sh keep-alive and resumed loads, 2xx per broker CPU-second) in both.
#
#   scripts/bench-partners.sh
#   PARTNERS=2000 DURATION=5 scripts/bench-partners.sh
#
# Only the harness upstream is started (start-peers.sh upstream); stopped on exit.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

PARTNERS=${PARTNERS:-10000}
ROUTES=${ROUTES:-20}
DURATION=${DURATION:-10}
REPEAT=${REPEAT:-1}
OUT=$WORK/partners-bench
mkdir -p "$OUT"

ensure_tools
build_release
check_ports_free 19443 19080
setup_home
start_peers upstream
machine_summary | tee "$OUT/summary.txt" >&2

now() { date +%s.%N; }
ms_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }

# Waits for the Nth "configuration reloaded" line in the broker's log; prints ms since T0.
wait_reload() { # wait_reload N T0
  for _ in $(seq 1 2000); do
    if (($(grep -c 'configuration reloaded' "$WORK/gatehouse.log" || true) >= $1)); then ms_since "$2"; return; fi
    sleep 0.005
  done
  echo "timeout"
}

idle_cpu_pct() { # CPU of the broker over 5 s with no traffic (the file watcher)
  local t0 t1
  t0=$(awk '{print $14 + $15}' "/proc/$GH_PID/stat"); sleep 5; t1=$(awk '{print $14 + $15}' "/proc/$GH_PID/stat")
  awk -v d="$((t1 - t0))" -v c="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", 100 * d / c / 5 }'
}

one_config() { # one_config LABEL
  local label=$1 t0 startup reload_touch reload_hup
  : >"$WORK/gatehouse.log"
  t0=$(now)
  start_gatehouse
  startup=$(ms_since "$t0")
  sleep 1
  local idle; idle=$(idle_cpu_pct)
  local rss0; rss0=$(rss_kib "$GH_PID")
  # Touch one partner file (a real change: its display name).
  local f=$GH_HOME/partners/globex.toml n
  n=$(grep -c 'configuration reloaded' "$WORK/gatehouse.log" || true)
  t0=$(now)
  sed -i "s/^name = .*/name = \"Globex $(date +%s%N)\"/" "$f"
  reload_touch=$(wait_reload $((n + 1)) "$t0")
  sleep 1
  t0=$(now)
  kill -HUP "$GH_PID"
  reload_hup=$(wait_reload $((n + 2)) "$t0")
  sleep 1
  RESULTS=$OUT/run-$label REPEAT=$REPEAT MODES="ka resumed" BASELINE=0 \
    "$PEERS/run.sh" "gatehouse-$label=$GH_PORT" "$DURATION" >/dev/null
  {
    echo "$label: startup ${startup} ms (exec to listening); reload after one partner file changed ${reload_touch} ms" \
      "(includes the watcher's 250 ms poll); SIGHUP full reload ${reload_hup} ms; idle CPU ${idle}% (watcher);" \
      "RSS ${rss0} KiB; threads $(threads_of "$GH_PID")"
    tail -n +2 "$OUT/run-$label/table.txt" | sed '/^$/d'
  } | tee -a "$OUT/summary.txt"
  stop_gatehouse
}

log "2 partners"
printf '%-15s %-8s %-6s %9s %8s %8s %7s %5s %5s %5s %5s %5s %9s\n' target load checks rate/s p50_ms p99_ms non2xx err tgt% up% gen% oth% 2xx/cpu-s | tee -a "$OUT/summary.txt"
one_config 2p

log "writing $PARTNERS partners x $ROUTES routes"
python3 - "$GH_HOME/partners" "$PARTNERS" "$ROUTES" <<'EOF'
import os, sys
d, n, r = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def routes(extra_first):
    out = []
    for j in range(r - len(extra_first)):
        out.append(f'[[routes]]\nmethods = ["GET"]\npath = "/v{j % 3 + 1}/svc{j}/items"\nupstream = "orders"\n')
    return "\n".join(out)
for i in range(n - 2):
    pid = f"p{i:05d}"
    with open(os.path.join(d, pid + ".toml"), "w") as f:
        f.write(f'id = "{pid}"\nname = "Partner {i}"\nstatus = "active"\n\n{routes([])}')
# acme and globex get ROUTES routes too, their real one last.
for pid in ("acme", "globex"):
    p = os.path.join(d, pid + ".toml")
    with open(p) as f:
        body = f.read()
    with open(p, "w") as f:
        head, _, tail = body.partition("[[routes]]")
        f.write(head + routes(["x"]) + "\n[[routes]]" + tail)
EOF
ls "$GH_HOME/partners" | wc -l | sed 's/^/partner files: /' >&2
"$G" check --home "$GH_HOME" >/dev/null || die "gatehouse check refused the $PARTNERS-partner config"
log "$PARTNERS partners"
one_config "${PARTNERS}p"

mkdir -p "$REPO/target/bench"
cp "$OUT/summary.txt" "$REPO/target/bench/partners.txt"
echo "results: $OUT (summary copied to target/bench/partners.txt)"
