#!/usr/bin/env bash
# The operator console in a real browser: starts a broker with traffic
# (an allowed call, a denied one, a partner whose certificate expires in 5
# days, a partner with its own CA), opens the console in headless Chromium
# and checks that the partner table, a traffic chart, the expiring
# certificate and whose CA the own-CA partner uses appear, and that the
# journal filter (passed in the URL, as a bookmark would) finds the denied
# request by its request id and shows its chain position, and that the
# mirrors panel shows a mirrored route's match rate with its latest
# mismatch linked to the mirror_diff record (the candidate is the same echo
# upstream under another name: the copy's X-Gatehouse-Mirror header and
# identity token make its answer differ). Then the same
# with a public admin listener: without the token the page shows no data.
#
#   scripts/console-check.sh                              # run by .ci/run
#   SCREENSHOT=docs/console.png scripts/console-check.sh  # also refresh the screenshot
#
# Without chromium it says so and exits 0, except in CI (CI=true): exit 1.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null; then
  if [[ ${CI:-} == true ]]; then echo "console-check: chromium is not installed (CI=true)" >&2; exit 1; fi
  echo "console-check: chromium not installed: skipping (apt-get install chromium)"; exit 0
fi
cargo build --quiet --bin gatehouse --example echo-upstream
G=$PWD/target/debug/gatehouse
ECHO=$PWD/target/debug/examples/echo-upstream
WORK=$(mktemp -d /tmp/gatehouse-console.XXXXXX)
HOME_DIR=$WORK/home
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
export GATEHOUSE_HOME=$HOME_DIR
PASSED=0
fail() { echo "console-check: FAILED: $*" >&2; exit 1; }
pass() { echo "ok: $*"; PASSED=$((PASSED + 1)); }

addr_from() { # FILE PREFIX
  for _ in $(seq 1 100); do
    if grep -q "$2" "$1" 2>/dev/null; then grep -m1 "$2" "$1" | sed "s|.*$2||; s|^https\?://||"; return 0; fi
    sleep 0.1
  done
  cat "$1" >&2; fail "no '$2' in $1"
}

browser() { # URL OUT [extra chromium flags...]
  local url=$1 out=$2; shift 2
  timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
    --disable-component-update --disable-sync --no-first-run --user-data-dir="$(mktemp -d "$WORK/chromium.XXXXXX")" \
    --virtual-time-budget=5000 "$@" "$url" >"$out" 2>"$WORK/chromium.err" \
    || { tail -20 "$WORK/chromium.err" >&2; fail "chromium failed on $url"; }
}

echo "== a broker with traffic"
$G init >/dev/null
cat >>"$HOME_DIR/gatehouse.toml" <<'TOML'

[upstreams.orders]
url = "https://127.0.0.1:9443"
ca = "certs/upstream-ca.pem"
server_name = "localhost"
mirror = { to = "orders-v2", compare = true }

[upstreams.orders-v2]
url = "https://127.0.0.1:9443"
ca = "certs/upstream-ca.pem"
server_name = "localhost"
TOML
cp partners/acme.toml partners/globex.toml "$HOME_DIR/partners/"
$G cert issue acme --out "$WORK/acme" >/dev/null
$G cert issue globex --days 5 --out "$WORK/globex" >/dev/null
# bank brings its own CA (made here with openssl): its certificate ends in 9 days.
$G partner add bank --route "GET /v1/orders -> orders" >/dev/null
(
  cd "$WORK"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout bank-root.key -out bank-root.pem \
    -subj "/O=bank/CN=bank Root CA" -days 30 -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout bank.key -out bank.csr -subj "/CN=bank-api" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' >bank.ext
  openssl x509 -req -in bank.csr -CA bank-root.pem -CAkey bank-root.key -CAcreateserial -out bank.pem -days 9 -extfile bank.ext 2>/dev/null
) || fail "making bank's CA with openssl"
$G partner trust bank --ca "$WORK/bank-root.pem" --match-subject-cn bank-api >/dev/null
$ECHO --listen 127.0.0.1:0 --client-ca "$HOME_DIR/certs/upstream-client-ca.pem" --write-ca "$HOME_DIR/certs/upstream-ca.pem" >"$WORK/echo.out" 2>&1 &
PIDS+=($!)
UP=$(addr_from "$WORK/echo.out" "listening on ")
sed -i "s|^url = \"https://127.0.0.1:9443\"|url = \"https://$UP\"|" "$HOME_DIR/gatehouse.toml"
$G serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 >"$WORK/serve.out" 2>"$WORK/serve.log" &
BROKER=$!
PIDS+=($BROKER)
GW=$(addr_from "$WORK/serve.out" "gatehouse listening on ")
ADMIN=$(addr_from "$WORK/serve.out" "gatehouse admin on ")
URL="https://localhost:${GW##*:}"
C=(--silent --show-error --cacert "$WORK/acme/ca.pem")
for i in 1 2 3 4 5; do
  curl "${C[@]}" --cert "$WORK/acme/acme.pem" --key "$WORK/acme/acme.key" -o /dev/null "$URL/v1/orders/$i" || fail "acme's call $i"
done
# globex may call /v1/invoices only: this one is denied, and we keep its request id.
RID=$(curl "${C[@]}" --cert "$WORK/globex/globex.pem" --key "$WORK/globex/globex.key" -D - -o /dev/null "$URL/v1/orders/7" \
  | tr -d '\r' | sed -n 's/^x-request-id: //Ip')
[[ -n $RID ]] || fail "the denied call has no x-request-id"
echo "denied request id: $RID"
curl "${C[@]}" --cert "$WORK/bank.pem" --key "$WORK/bank.key" -o /dev/null "$URL/v1/orders/8" || fail "bank's call with its own CA's certificate"
for _ in $(seq 1 50); do
  curl -s "http://$ADMIN/status" | grep -qE '"mismatch":([5-9]|[1-9][0-9])' && break
  sleep 0.1
done
MIRRORED=$($G log query --kind mirror_diff --json --limit 1 | sed -n 's/.*"request_id":"\([^"]*\)".*/\1/p')
[[ -n $MIRRORED ]] || fail "no mirror_diff record for acme's mirrored calls"
echo "a mismatch's request id: $MIRRORED"

echo "== the console in headless Chromium"
PAGE="http://$ADMIN/#journal?request_id=$RID"
browser "$PAGE" "$WORK/dom.html" --dump-dom
DOM=$WORK/dom.html
check() { # what PATTERN
  grep -qE "$2" "$DOM" || { echo "--- DOM:" >&2; head -c 4000 "$DOM" >&2; fail "$1 not in the page"; }
  pass "$1"
}
check "partner table row for acme" '<tr data-partner="acme">'
check "partner table row for globex" '<tr data-partner="globex">'
check "a traffic chart with bars" '<svg[^>]*class="traffic"[^>]*>.*<rect[^>]*class="allowed"'
check "globex's certificate, highlighted as expiring" 'class="cert mono expiring"[^>]*>[0-9a-f]+… [45] d'
check "whose CA bank uses" 'class="own-ca muted"[^>]*>own CA: [^<]*bank Root CA \(subject CN bank-api\)'
check "bank's certificate, from its own CA, expiring" 'class="cert mono expiring"[^>]*>[0-9a-f]+… [89] d \(their CA\)'
check "the denied request found by its request id" "<tr class=\"denied[^\"]*\" data-seq=\"[0-9]+\" data-request-id=\"$RID\">"
check "its chain position" 'chain position</dt><dd[^>]*>record [0-9]+ of 1…[0-9]+'
check "its checkpoint coverage" 'signed checkpoint</dt><dd class="(un)?covered"'
check "the mirrored route's match rate" '<tr data-mirror-route="/v1/orders">.*<td class="match-rate bad">0.0 %</td>'
check "a mismatch linked to its record" "<a href=\"#journal\?kind=mirror_diff&amp;request_id=[^\"]+\" class=\"mono\">"
browser "http://$ADMIN/#journal?kind=mirror_diff&request_id=$MIRRORED" "$WORK/dom.html" --dump-dom
check "the mismatch's record, found from its link" "<td>mirror_diff</td>.*data-request-id|data-request-id=\"$MIRRORED\">.*<td>mirror_diff</td>"
check "what differs, in the record's detail" 'detail</dt><dd[^>]*>[^<]*"pointers":\['
if [[ -n ${SCREENSHOT:-} ]]; then
  browser "$PAGE" /dev/null --window-size=1400,1800 --hide-scrollbars --screenshot="$WORK/shot.png"
  cp "$WORK/shot.png" "$SCREENSHOT"
  echo "screenshot: $SCREENSHOT"
fi

echo "== a public admin listener: no token, no data"
kill -TERM "$BROKER"; wait "$BROKER" || true
printf 'test-token-%s\n' "$RANDOM$RANDOM" >"$HOME_DIR/certs/admin.token"
chmod 600 "$HOME_DIR/certs/admin.token"
sed -i 's|^admin = .*|&\nadmin_public = true\nadmin_token_file = "certs/admin.token"|' "$HOME_DIR/gatehouse.toml"
$G serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 >"$WORK/serve2.out" 2>"$WORK/serve2.log" &
BROKER=$!
PIDS+=($BROKER)
ADMIN=$(addr_from "$WORK/serve2.out" "gatehouse admin on ")
browser "http://$ADMIN/" "$WORK/dom.html" --dump-dom
check "the token prompt" '<section id="login">'
if grep -q 'data-partner="acme"' "$DOM"; then fail "partner data shown without the token"; fi
pass "no partner data without the token"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$ADMIN/api/overview")
[[ $code == 401 ]] || fail "/api/overview without the token answered $code"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat "$HOME_DIR/certs/admin.token")" "http://$ADMIN/api/overview")
[[ $code == 200 ]] || fail "/api/overview with the token answered $code"
pass "/api/overview 401 without the token, 200 with it"
echo "console-check: $PASSED passed, 0 failed"
