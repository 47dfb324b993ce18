#!/usr/bin/env bash
# bench-extra.sh — loads beyond the harness's three, gatehouse beside nginx
# and HAProxy with the same certificates (see bench.sh):
#
#   h2        HTTP/2, H2_CONNS connections x H2_STREAMS concurrent streams   [oha --http2]
#   req1m     POST of a 1 MiB body to /v1/orders, BODY_CONNS connections      [oha -D]
#   resp1m    GET /v1/orders/big: a 1 MiB response, BODY_CONNS connections   [oha]
#   idle      IDLE_CONNS (9000) mTLS connections, one request each, then held
#             idle: RSS growth per connection of each relay                  [hold-conns.py]
#
#   scripts/bench-extra.sh                   # all four, DURATION=10 s each
#   LOADS="h2 idle" IDLE_CONNS=2000 scripts/bench-extra.sh
#
# The peers here are rendered from the harness templates (same job) with
# what these loads need, under the work folder (never in ../shared):
# upstream: + `location /v1/orders/big` (a 1 MiB file); nginx: `http2` on the
# listener, worker_connections 20000, client_max_body_size 2m; HAProxy: ALPN
# h2,http/1.1 on the bind, maxconn 9900 (HAProxy reserves 2 fds per
# connection and the hard fd limit here is 20000: hence 9,000 idle
# connections for all three rather than 10,000). gatehouse: max_connections 20000,
# idle_timeout 300s (the idle test outlasts the 60 s default).
# Everything started here is stopped by pid on exit.
set -euo pipefail
source "$(dirname "$0")/bench-lib.sh"

DURATION=${DURATION:-10}
LOADS=${LOADS:-h2 req1m resp1m idle}
H2_CONNS=${H2_CONNS:-4}
H2_STREAMS=${H2_STREAMS:-16}
BODY_CONNS=${BODY_CONNS:-16}
IDLE_CONNS=${IDLE_CONNS:-9000}
CLK=$(getconf CLK_TCK)

ensure_tools
build_release
check_ports_free 19443 19080 18443 18444
setup_home 'max_connections = 20000' 'idle_timeout = "300s"'
mkdir -p "$PEERS_STATE/tmp"
# nginx workers (user nobody) read the 1 MiB file and write request bodies under here.
chmod 711 "$WORK"
head -c 1048576 /dev/urandom >"$WORK/1m.bin"

# ---- peers, rendered with the additions above -------------------------------
render() { # render TEMPLATE OUT
  sed -e "s|@CERTS@|$CERTS|g" -e "s|@STATE@|$PEERS_STATE|g" "$PEERS/conf/$1" >"$PEERS_STATE/$2"
}
render upstream-nginx.conf.in upstream.conf
sed -i "0,/        location \/ {/s||        location = /v1/orders/big { default_type application/octet-stream; alias $WORK/1m.bin; }\n        location / {|" "$PEERS_STATE/upstream.conf"
render nginx-broker.conf.in nginx.conf
sed -i -e 's|listen 127.0.0.1:18443 ssl;|listen 127.0.0.1:18443 ssl http2;\n        client_max_body_size 2m;|' \
  -e 's|worker_connections 8192;|worker_connections 20000;|' \
  -e 's|^worker_processes auto;|worker_processes auto;\nworker_rlimit_nofile 45000;|' "$PEERS_STATE/nginx.conf"
render haproxy.cfg.in haproxy.cfg
sed -i -e 's|maxconn 4096|maxconn 9900|' -e 's|verify required alpn http/1.1$|verify required alpn h2,http/1.1|' "$PEERS_STATE/haproxy.cfg"
grep -q 'alpn h2,http/1.1' "$PEERS_STATE/haproxy.cfg" || die "could not enable h2 in the HAProxy config"
grep -q 'ssl http2' "$PEERS_STATE/nginx.conf" || die "could not enable http2 in the nginx config"
grep -q '/v1/orders/big' "$PEERS_STATE/upstream.conf" || die "could not add /v1/orders/big to the upstream"

start_nginx() { # start_nginx NAME PORT
  nginx -t -q -e "$PEERS_STATE/$1-error.log" -c "$PEERS_STATE/$1.conf" || die "$1 config invalid"
  nginx -e "$PEERS_STATE/$1-error.log" -c "$PEERS_STATE/$1.conf"
  for _ in $(seq 1 50); do [[ -s $PEERS_STATE/$1.pid ]] && break; sleep 0.1; done
  BENCH_PIDS+=("$(cat "$PEERS_STATE/$1.pid")")
}
start_nginx upstream
start_nginx nginx
haproxy -c -q -f "$PEERS_STATE/haproxy.cfg" || die "haproxy config invalid"
setsid haproxy -db -f "$PEERS_STATE/haproxy.cfg" </dev/null >>"$PEERS_STATE/haproxy-access.log" 2>>"$PEERS_STATE/haproxy-error.log" &
HAPROXY_PID=$!
BENCH_PIDS+=("$HAPROXY_PID")
for _ in $(seq 1 50); do ss -Hltn "sport = :18444" | grep -q . && break; sleep 0.1; done
[[ -d /proc/$HAPROXY_PID ]] || die "haproxy exited: $(tail -1 "$PEERS_STATE/haproxy-error.log")"
start_gatehouse
for p in 19443 18443 18444; do
  for _ in $(seq 1 50); do ss -Hltn "sport = :$p" | grep -q . && break; sleep 0.1; done
done

machine_summary | tee "$WORK/machine.txt" >&2
TARGETS=("gatehouse $GH_PORT $GH_PID" "nginx 18443 $(cat "$PEERS_STATE/nginx.pid")" "haproxy 18444 $HAPROXY_PID")

# ---- measurement ---------------------------------------------------------------
port_pids() { ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | tr '\n' ' '; }
ticks_of() {
  local sum=0 p rest
  for p in "$@"; do
    rest=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    rest=${rest##*) }
    set -- $rest
    sum=$((sum + ${12} + ${13}))
  done
  echo $sum
}
A=(--cacert "$CERTS/ca.pem" --cert "$CERTS/partners/acme.pem" --key "$CERTS/partners/acme.key")
OUT=$WORK/extra
mkdir -p "$OUT"
printf '%-10s %-8s %9s %8s %8s %7s %5s %9s %9s\n' target load rate/s p50_ms p99_ms non2xx err tgt% 2xx/cpu-s | tee "$OUT/table.txt"

measure() { # measure LOAD NAME PORT oha-args...
  local load=$1 name=$2 port=$3; shift 3
  local pids t0 t1 w0 w1 f=$OUT/$name-$load.json
  pids=$(port_pids "$port")
  t0=$(ticks_of $pids); w0=$(date +%s.%N)
  oha --no-tui -z "${DURATION}s" --output-format json "${A[@]}" "$@" >"$f" 2>"$f.err" || true
  t1=$(ticks_of $pids); w1=$(date +%s.%N)
  jq -r --arg n "$name" --arg l "$load" --argjson t "$(((t1 - t0)))" --argjson clk "$CLK" \
     --argjson wall "$(awk -v a="$w0" -v b="$w1" 'BEGIN{print b - a}')" '
    (.statusCodeDistribution // {}) as $s
    | ([$s | to_entries[] | select(.key|startswith("2")) | .value] | add // 0) as $ok
    | ([$s | to_entries[] | select(.key|startswith("2")|not) | .value] | add // 0) as $bad
    | ([(.errorDistribution // {}) | to_entries[] | select(.key != "aborted due to deadline") | .value] | add // 0) as $err
    | ($t / $clk) as $cpu
    | [$n, $l, ($ok / .summary.total), ((.latencyPercentiles.p50 // 0) * 1000), ((.latencyPercentiles.p99 // 0) * 1000),
       $bad, $err, (100 * $cpu / $wall), (if $cpu > 0 then $ok / $cpu else 0 end)]
    | "\(.[0]) \(.[1]) \(.[2]|floor) \(.[3]*100|round/100) \(.[4]*100|round/100) \(.[5]) \(.[6]) \(.[7]|round) \(.[8]|round)"' "$f" \
    | awk '{printf "%-10s %-8s %9s %8s %8s %7s %5s %5s %9s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9}' | tee -a "$OUT/table.txt" \
    || echo "$name $load: oha failed, see $f.err" | tee -a "$OUT/table.txt"
  sleep 1
}

idle_test() { # idle_test NAME PORT PID
  local name=$1 port=$2 pid=$3 before after held fifo=$WORK/idle-$1.in
  # Warm: one connection's worth of lazily allocated state is not counted.
  python3 "$REPO/scripts/hold-conns.py" "$port" 32 "$CERTS/ca.pem" "$CERTS/partners/acme.pem" "$CERTS/partners/acme.key" </dev/null >/dev/null
  sleep 1
  before=$(rss_tree_kib "$pid")
  mkfifo "$fifo"
  python3 "$REPO/scripts/hold-conns.py" "$port" "$IDLE_CONNS" "$CERTS/ca.pem" "$CERTS/partners/acme.pem" "$CERTS/partners/acme.key" \
    <"$fifo" >"$WORK/idle-$name.out" 2>&1 &
  local hpid=$!
  BENCH_PIDS+=("$hpid")
  exec 7>"$fifo"
  for _ in $(seq 1 1200); do grep -q '^held' "$WORK/idle-$name.out" && break; sleep 0.25; done
  held=$(head -1 "$WORK/idle-$name.out")
  sleep 2
  after=$(rss_tree_kib "$pid")
  local n per
  n=$(awk '{print $2}' <<<"$held")
  per=$(awk -v a="$after" -v b="$before" -v n="${n:-0}" 'BEGIN { if (n > 0) printf "%.1f", (a - b) / n; else print "-" }')
  printf '%-10s idle     %s; RSS %d -> %d KiB: %s KiB per connection; threads %s\n' "$name" "$held" "$before" "$after" \
    "$per" "$(threads_of "$pid")" | tee -a "$OUT/idle.txt"
  exec 7>&-
  for _ in $(seq 1 100); do [[ -d /proc/$hpid ]] || break; sleep 0.1; done
  stop_pid "$hpid"
  rm -f "$fifo"
  sleep 3
}

for load in $LOADS; do
  for tg in "${TARGETS[@]}"; do
    set -- $tg
    name=$1 port=$2 pid=$3
    url=https://127.0.0.1:$port
    case $load in
      h2)     measure h2 "$name" "$port" --http2 -c "$H2_CONNS" -p "$H2_STREAMS" "$url/v1/orders" ;;
      req1m)  measure req1m "$name" "$port" -c "$BODY_CONNS" -m POST -D "$WORK/1m.bin" -T application/octet-stream "$url/v1/orders" ;;
      resp1m) measure resp1m "$name" "$port" -c "$BODY_CONNS" "$url/v1/orders/big" ;;
      idle)   idle_test "$name" "$port" "$pid" ;;
      *) die "unknown load $load" ;;
    esac
  done
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$WORK/machine.txt"
mkdir -p "$REPO/target/bench"
cp "$OUT/table.txt" "$REPO/target/bench/extra-table.txt"
[[ -f $OUT/idle.txt ]] && cp "$OUT/idle.txt" "$REPO/target/bench/extra-idle.txt"
echo "results: $OUT (copied to target/bench/)"
