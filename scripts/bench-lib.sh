# shellcheck shell=bash
# bench-lib.sh — shared by scripts/bench*.sh (sourced, not run).
#
# Finds the peer harness (../shared/bench-peers relative to the repo), builds
# the release broker, makes a gatehouse home whose certificates the harness
# uses too, starts/stops gatehouse by pid. Every process started here is
# recorded in BENCH_PIDS and stopped by bench_cleanup (trap on EXIT).

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS=${BENCH_PEERS:-$REPO/../shared/bench-peers}
if [[ ! -x $PEERS/run.sh || ! -x $PEERS/start-peers.sh ]]; then
  echo "bench: the peer harness is not at $PEERS (expected ../shared/bench-peers next to the repo; set BENCH_PEERS)" >&2
  exit 1
fi
PEERS=$(cd "$PEERS" && pwd)
G=${GATEHOUSE_BIN:-$REPO/target/release/gatehouse}

# One work folder per run: home, certificates, peer state, results.
WORK=${BENCH_WORK:-$(mktemp -d /tmp/gatehouse-bench.XXXXXX)}
mkdir -p "$WORK"
export PEERS_STATE=$WORK/peers
export CERTS=$WORK/certs
GH_HOME=$WORK/home
BENCH_PIDS=()
PEERS_STARTED=0

log() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

# Stops a pid we started: TERM, up to 15 s (gatehouse drains up to 10 s), then KILL.
stop_pid() {
  local pid=$1
  [[ -d /proc/$pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 150); do
    [[ -d /proc/$pid ]] || return 0
    sleep 0.1
  done
  echo "bench: pid $pid ignored TERM for 15 s; KILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
}

bench_cleanup() {
  local rc=$?
  set +e
  local i
  for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do stop_pid "${BENCH_PIDS[i]}"; done
  [[ $PEERS_STARTED == 1 ]] && "$PEERS/stop-peers.sh" >/dev/null
  if [[ -n ${KEEP:-} || -n ${BENCH_WORK:-} ]]; then echo "bench: work folder kept: $WORK" >&2; else rm -rf "$WORK"; fi
  exit $rc
}
trap bench_cleanup EXIT

# Refuse to start while our fixed ports are taken (another benchmark running).
check_ports_free() {
  local p
  for p in "$@"; do
    if ss -Hltn "sport = :$p" | grep -q .; then
      die "port $p is in use (another benchmark?): ss -ltnp 'sport = :$p'"
    fi
  done
}

build_release() {
  log "cargo build --release --bin gatehouse"
  (cd "$REPO" && cargo build --release --quiet --bin gatehouse)
}

ensure_tools() {
  local t missing=0
  for t in oha ab nginx haproxy curl jq ss openssl; do command -v "$t" >/dev/null || missing=1; done
  if [[ $missing == 1 ]]; then
    log "installing the harness tools ($PEERS/install-tools.sh)"
    "$PEERS/install-tools.sh"
  fi
}

# The certificates: the gatehouse home is the source for everything the
# three relays share (CA, server cert, broker-client, the partner certs
# acme/globex issued by `gatehouse cert issue`, hence in its inventory);
# gen-certs.sh supplies only what gatehouse does not make: the upstream's CA
# and server cert, and the foreign CA with its impostor acme. The layout of
# $CERTS is gen-certs.sh's, so run.sh/start-peers.sh use it as is.
setup_home() { # setup_home [extra gatehouse.toml [server] lines...]
  log "gatehouse home $GH_HOME, shared certificates $CERTS"
  rm -rf "$GH_HOME" "$CERTS"
  mkdir -p "$CERTS/partners"
  "$PEERS/gen-certs.sh" "$WORK/harness-certs" >/dev/null
  local h=$WORK/harness-certs f
  "$G" init --home "$GH_HOME" --hostname localhost --hostname 127.0.0.1 >/dev/null
  cp "$h/upstream-ca.pem" "$GH_HOME/certs/upstream-ca.pem"
  # A fresh gatehouse.toml has no upstream: add the harness's.
  printf '\n[upstreams.orders]\nurl = "https://127.0.0.1:19443"\nca = "certs/upstream-ca.pem"\nserver_name = "localhost"\nconnect_timeout = "5s"\nresponse_timeout = "30s"\n' >>"$GH_HOME/gatehouse.toml"
  # The harness's equal job has no signed identity token (nginx and HAProxy
  # sign nothing): leave it out unless GH_SIGNED_IDENTITY=true (~25 us of CPU
  # per request when on).
  sed -i "s|^response_timeout = \"30s\"|response_timeout = \"30s\"\nsigned_identity = ${GH_SIGNED_IDENTITY:-false}|" "$GH_HOME/gatehouse.toml"
  grep -q "^signed_identity = " "$GH_HOME/gatehouse.toml" || die "could not set signed_identity on [upstreams.orders]"
  # GH_SETTINGS: more `key = value` lines, separated by ';', e.g.
  # GH_SETTINGS='durability = "relaxed"' (each replaces its key's line).
  local extra settings=()
  IFS=';' read -r -a settings <<<"${GH_SETTINGS:-}"
  for extra in "$@" "${settings[@]}"; do
    extra=$(echo "$extra" | sed 's/^ *//; s/ *$//')
    [[ -z $extra ]] && continue
    grep -q "^${extra%% =*} = " "$GH_HOME/gatehouse.toml" || die "GH_SETTINGS: no '${extra%% =*}' line in gatehouse.toml to replace"
    local key=${extra%% =*}
    sed -i "s|^$key = .*|$extra|" "$GH_HOME/gatehouse.toml"
  done
  # POST on acme's route too: nginx and HAProxy route by path only, and the
  # request-body load posts to /v1/orders. The checks are all GETs.
  "$G" partner add acme --home "$GH_HOME" --name "Acme Logistics" --route "GET,POST /v1/orders -> orders" >/dev/null
  "$G" partner add globex --home "$GH_HOME" --name "Globex Corporation" --route "GET /v1/invoices -> orders" >/dev/null
  for f in acme globex; do
    "$G" cert issue "$f" --home "$GH_HOME" --out "$WORK/issued/$f" >/dev/null
    cp "$WORK/issued/$f/$f.pem" "$CERTS/partners/$f.pem"
    cp "$WORK/issued/$f/$f.key" "$CERTS/partners/$f.key"
  done
  # The peers' configurations take one ca.pem for everything: the partners'
  # root and issuing CA (client certificates at nginx/HAProxy, the server
  # chain at the load clients) and the upstream-client CA (the upstream
  # admitting the broker). A production upstream trusts the last one alone.
  cat "$GH_HOME/certs/root.pem" "$GH_HOME/certs/ca.pem" "$GH_HOME/certs/upstream-client-ca.pem" >"$CERTS/ca.pem"
  for f in server broker-client; do
    cp "$GH_HOME/certs/$f.pem" "$GH_HOME/certs/$f.key" "$CERTS/"
  done
  for f in upstream-ca.pem upstream.pem upstream.key rogue-ca.pem; do cp "$h/$f" "$CERTS/"; done
  cp "$h/partners/rogue-acme.pem" "$h/partners/rogue-acme.key" "$CERTS/partners/"
  for f in server broker-client upstream partners/acme partners/globex partners/rogue-acme; do
    cat "$CERTS/$f.pem" "$CERTS/$f.key" >"$CERTS/$f.bundle.pem"
  done
  chmod 600 "$CERTS"/*.key "$CERTS"/partners/*.key "$CERTS"/*.bundle.pem "$CERTS"/partners/*.bundle.pem
  "$G" check --home "$GH_HOME" >/dev/null || die "gatehouse check failed for $GH_HOME"
}

start_peers() { # start_peers [upstream] [nginx] [haproxy]
  PEERS_STARTED=1
  "$PEERS/start-peers.sh" "$@" >&2
}

# Starts the broker on an ephemeral port; sets GH_PID, GH_PORT, GH_ADMIN.
# start_gatehouse [BINARY HOME NAME] (default: this build, $GH_HOME, "gatehouse";
# NAME names its output and log files under $WORK).
start_gatehouse() {
  local bin=${1:-$G} home=${2:-$GH_HOME} name=${3:-gatehouse}
  : >"$WORK/$name.out"
  "$bin" serve --home "$home" --listen 127.0.0.1:0 --admin 127.0.0.1:0 \
    >"$WORK/$name.out" 2>>"$WORK/$name.log" &
  GH_PID=$!
  BENCH_PIDS+=("$GH_PID")
  local line=""
  for _ in $(seq 1 300); do
    line=$(grep -m1 '^gatehouse listening on ' "$WORK/$name.out" 2>/dev/null || true)
    [[ -n $line ]] && break
    [[ -d /proc/$GH_PID ]] || { cat "$WORK/$name.log" >&2; die "$name exited at start"; }
    sleep 0.1
  done
  [[ -n $line ]] || die "$name did not announce its listener within 30 s (see $WORK/$name.log)"
  GH_PORT=${line##*:}
  for _ in $(seq 1 50); do
    GH_ADMIN=$(grep -m1 '^gatehouse admin on ' "$WORK/$name.out" | sed 's/^gatehouse admin on //') && break
    sleep 0.1
  done
  log "$name up (pid $GH_PID, port $GH_PORT, admin $GH_ADMIN, $(threads_of "$GH_PID") threads)"
}

stop_gatehouse() {
  stop_pid "$GH_PID"
  local keep=() p
  for p in "${BENCH_PIDS[@]}"; do [[ $p != "$GH_PID" ]] && keep+=("$p"); done
  BENCH_PIDS=("${keep[@]}")
}

threads_of() { awk '/^Threads:/{print $2}' "/proc/$1/status" 2>/dev/null || echo '?'; }
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
# RSS of a process and all its children (nginx master + workers), KiB.
rss_tree_kib() {
  local sum=0 p
  for p in $1 $(pgrep -P "$1" || true); do sum=$((sum + $(rss_kib "$p"))); done
  echo "$sum"
}

machine_summary() {
  echo "machine: $(nproc) CPUs, $(lscpu | sed -n 's/^Model name: *//p'), $(free -g | awk '/^Mem:/{print $2}') GiB RAM, $(uname -sr)"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
}
