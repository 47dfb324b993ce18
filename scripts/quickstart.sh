#!/usr/bin/env bash
# The quick start: in a throw-away home, create the CA, onboard the example
# partners, start the echo upstream and the broker, make an allowed call, a
# denied one, one without a certificate, revoke acme and see it refused,
# show `gatehouse status`, then the journal and its verification. Cleans up every process it started.
#
#   scripts/quickstart.sh            # keeps nothing (home in a temp dir)
#   KEEP=1 scripts/quickstart.sh     # leaves the home for you to explore
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cargo build --quiet --bin gatehouse --example echo-upstream
G=target/debug/gatehouse
ECHO=target/debug/examples/echo-upstream
HOME_DIR=$(mktemp -d /tmp/gatehouse-quickstart.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ -z ${KEEP:-} ]]; then rm -rf "$HOME_DIR"; else echo "home kept: $HOME_DIR"; fi
}
trap cleanup EXIT
export GATEHOUSE_HOME=$HOME_DIR

# Reads "…listening on ADDR" from a process's output file (bounded wait).
addr_from() { # FILE PREFIX
  for _ in $(seq 1 100); do
    if grep -q "$2" "$1" 2>/dev/null; then grep -m1 "$2" "$1" | sed "s|.*$2||; s|^https\?://||"; return 0; fi
    sleep 0.1
  done
  echo "quickstart: no '$2' in $1:" >&2; cat "$1" >&2; return 1
}

step "gatehouse init  (CA, broker certificates, gatehouse.toml)"
$G init
# The fresh gatehouse.toml has no upstream (only a commented example): add
# the one the example partners call; its URL is set once the echo upstream runs.
cat >>"$HOME_DIR/gatehouse.toml" <<'TOML'

[upstreams.orders]
url = "https://127.0.0.1:9443"
ca = "certs/upstream-ca.pem"
server_name = "localhost"
TOML

step "onboard the example partners (partners/acme.toml, partners/globex.toml)"
cp partners/acme.toml partners/globex.toml "$HOME_DIR/partners/"
$G partner list

step "issue their client certificates"
$G cert issue acme --out "$HOME_DIR/clients/acme"
$G cert issue globex --out "$HOME_DIR/clients/globex"
$G cert list

step "start the echo upstream (HTTPS; admits only certificates of certs/upstream-client-ca.pem: the broker, never a partner)"
$ECHO --listen 127.0.0.1:0 --client-ca "$HOME_DIR/certs/upstream-client-ca.pem" --write-ca "$HOME_DIR/certs/upstream-ca.pem" \
  >"$HOME_DIR/echo.out" 2>&1 &
PIDS+=($!)
UP=$(addr_from "$HOME_DIR/echo.out" "listening on ")
sed -i "s|^url = \"https://127.0.0.1:9443\"|url = \"https://$UP\"|" "$HOME_DIR/gatehouse.toml"
$G check

step "start the broker"
$G serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 >"$HOME_DIR/serve.out" 2>"$HOME_DIR/serve.log" &
BROKER=$!
PIDS+=($BROKER)
GW=$(addr_from "$HOME_DIR/serve.out" "gatehouse listening on ")
PORT=${GW##*:}
URL="https://localhost:$PORT"
C=(--silent --show-error --cacert "$HOME_DIR/clients/acme/ca.pem")
ACME=(--cert "$HOME_DIR/clients/acme/acme.pem" --key "$HOME_DIR/clients/acme/acme.key")

step "acme calls a granted route: GET /v1/orders/42  (relayed; the echo shows the identity headers)"
out=$(curl "${C[@]}" "${ACME[@]}" "$URL/v1/orders/42")
echo "$out"
grep -q '"x-gatehouse-partner":"acme"' <<<"$out" || { echo "quickstart: the upstream did not see X-Gatehouse-Partner: acme" >&2; exit 1; }

step "acme goes around the broker, straight to the upstream  (refused: the upstream trusts only certs/upstream-client-ca.pem)"
if curl --silent --show-error --cacert "$HOME_DIR/certs/upstream-ca.pem" "${ACME[@]}" "https://$UP/v1/orders/42" 2>&1; then
  echo "quickstart: a partner certificate got into the upstream directly" >&2; exit 1
fi
echo "refused, as it should be"

step "acme calls a route it was not granted: GET /v1/invoices  (403)"
out=$(curl "${C[@]}" "${ACME[@]}" -w '\n%{http_code}' "$URL/v1/invoices")
code=${out##*$'\n'}
echo "${out%$'\n'*}"
echo "status $code"
[[ $code == 403 ]] || { echo "quickstart: expected 403" >&2; exit 1; }

step "a call without a client certificate  (403 no_certificate: such a connection reaches only the enrolment endpoints)"
out=$(curl "${C[@]}" -w '\n%{http_code}' "$URL/v1/orders/42")
code=${out##*$'\n'}
echo "${out%$'\n'*}"
echo "status $code"
[[ $code == 403 ]] && grep -q '"no_certificate"' <<<"$out" || { echo "quickstart: a call without a certificate was not refused with 403 no_certificate" >&2; exit 1; }

step "the running broker's view per partner (gatehouse status)"
ADMIN=$(addr_from "$HOME_DIR/serve.out" "gatehouse admin on ")
$G status --admin "$ADMIN"

step "revoke acme's certificate; its next call is refused"
$G cert revoke --partner acme --reason keyCompromise
sleep 1
if curl "${C[@]}" "${ACME[@]}" "$URL/v1/orders/42" 2>&1; then echo "quickstart: a revoked certificate got through" >&2; exit 1; fi
echo "refused, as it should be"

step "stop the broker (SIGTERM: drain, final signed checkpoint, exit 0)"
kill -TERM "$BROKER"
wait "$BROKER" && echo "broker stopped cleanly"

step "the journal: every exchange on record, hash-chained (gatehouse log tail)"
$G log tail -n 10

step "the journal verifies (hash chain and signed checkpoints)"
$G log verify

step "done"
