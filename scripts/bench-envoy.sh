#!/usr/bin/env bash
# Measures the latency Envoy's ext_authz filter with rolegate adds to a request, at a fixed rate:
# the same Envoy config (deploy/envoy/envoy.yaml) with and without the ext_authz block, in front
# of the same upstream (nginx answering 200 from memory), driven by h2load (HTTP/1.1 keep-alive, --rps) with
# a per-request log from which p50/p99/p99.9 are computed.
#
#   scripts/bench-envoy.sh [RATE_PER_CLIENT] [CLIENTS] [SECONDS] [ROUNDS]   (default 250 4 10 3)
#
# The two Envoys are measured in ROUNDS alternating rounds (without, with, without, with, …), and
# the added latency is reported per round and as the median over the rounds: on a shared machine
# the load of other processes drifts by the minute, and alternating keeps it from landing on one
# side only. The requests of all rounds are also pooled per Envoy, and the added latency given as
# the difference of the pooled percentiles (a p99 over ROUNDS × more requests than one round's).
#
# When the no-op ext_authz server is built (cargo build --release --example ext_authz_fixed), a
# third Envoy, the same config with the filter, calls it instead of rolegate in each round: what
# the filter and one gRPC call cost Envoy with a server that does no work. The difference between
# rolegate and it is rolegate's part of the added latency (docs/ext-authz.md: on this machine the
# filter costs about the same with either server).
#
# Needs: a release build (cargo build --release), h2load (Debian nghttp2-client), nginx, Envoy
# (scripts/install-tools.sh finds or installs the last two). Everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-250}
CLIENTS=${2:-4}
SECONDS_=${3:-10}
ROUNDS=${4:-3}

# shellcheck source=scripts/install-tools.sh
source scripts/install-tools.sh
command -v h2load >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null; }
ROLEGATE=${ROLEGATE_BIN:-${CARGO_TARGET_DIR:-target}/release/rolegate}
[ -x "$ROLEGATE" ] || { echo "no release build at $ROLEGATE (cargo build --release)"; exit 2; }
NOOP=${ROLEGATE_NOOP_BIN:-${CARGO_TARGET_DIR:-target}/release/examples/ext_authz_fixed}
[ -x "$NOOP" ] || echo "no no-op ext_authz server at $NOOP (cargo build --release --example ext_authz_fixed): measuring without it"

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 100); do
        (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 did not open"; exit 1
}

APP=$(port); GRPC=$(port); HTTP=$(port)
A_LISTEN=$(port); A_ADMIN=$(port); B_LISTEN=$(port); B_ADMIN=$(port)

# Upstream: nginx answering from memory.
mkdir -p "$WORK/app/tmp"
cat > "$WORK/app/nginx.conf" <<CONF
worker_processes 1; daemon off; pid nginx.pid; error_log stderr error;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path tmp; proxy_temp_path tmp; fastcgi_temp_path tmp; uwsgi_temp_path tmp; scgi_temp_path tmp;
  server { listen 127.0.0.1:$APP; keepalive_requests 100000; location / { return 200 "ok\n"; } } }
CONF
"$ROLEGATE_NGINX_BIN" -p "$WORK/app/" -c "$WORK/app/nginx.conf" -e stderr & PIDS+=($!)

RUST_LOG=warn "$ROLEGATE" serve --policy deploy/examples/policy.yaml \
    --grpc-listen 127.0.0.1:"$GRPC" --http-listen 127.0.0.1:"$HTTP" & PIDS+=($!)

sed -e "s/port_value: 10000/port_value: $A_LISTEN/" -e "s/port_value: 9901/port_value: $A_ADMIN/" \
    -e "s/port_value: 8000/port_value: $APP/" -e "s/port_value: 50051/port_value: $GRPC/" \
    deploy/envoy/envoy.yaml > "$WORK/with.yaml"
sed -e "s/port_value: 10000/port_value: $B_LISTEN/" -e "s/port_value: 9901/port_value: $B_ADMIN/" \
    -e "s/port_value: 8000/port_value: $APP/" -e "s/port_value: 50051/port_value: $GRPC/" \
    -e '/# BEGIN ext_authz/,/# END ext_authz/d' deploy/envoy/envoy.yaml > "$WORK/without.yaml"
grep -qE 'ext_authz[.]v3[.]ExtAuthz$' "$WORK/with.yaml" || { echo "envoy.yaml has no ext_authz filter"; exit 1; }
if grep -qE 'ext_authz[.]v3[.]ExtAuthz$' "$WORK/without.yaml"; then
    echo "the '# BEGIN ext_authz' / '# END ext_authz' markers of envoy.yaml are gone"; exit 1
fi
"$ROLEGATE_ENVOY_BIN" -c "$WORK/with.yaml" --disable-hot-restart --concurrency 1 -l error --base-id 11 & PIDS+=($!)
"$ROLEGATE_ENVOY_BIN" -c "$WORK/without.yaml" --disable-hot-restart --concurrency 1 -l error --base-id 12 & PIDS+=($!)
for p in $APP $GRPC $A_LISTEN $B_LISTEN; do wait_port "$p"; done
if [ -x "$NOOP" ]; then
    "$NOOP" ok > "$WORK/noop.addr" & PIDS+=($!)
    for _ in $(seq 1 100); do grep -q listening "$WORK/noop.addr" && break; sleep 0.1; done
    NOOP_GRPC=$(sed -n 's/^listening on 127.0.0.1://p' "$WORK/noop.addr")
    C_LISTEN=$(port); C_ADMIN=$(port)
    sed -e "s/port_value: 10000/port_value: $C_LISTEN/" -e "s/port_value: 9901/port_value: $C_ADMIN/" \
        -e "s/port_value: 8000/port_value: $APP/" -e "s/port_value: 50051/port_value: $NOOP_GRPC/" \
        deploy/envoy/envoy.yaml > "$WORK/noop.yaml"
    "$ROLEGATE_ENVOY_BIN" -c "$WORK/noop.yaml" --disable-hot-restart --concurrency 1 -l error --base-id 13 & PIDS+=($!)
    wait_port "$C_LISTEN"
fi

KEY="DanaScienceKey000001.dev-only-danascience"
PATH_="/api/jobs/job-1234"
N=$((RATE * CLIENTS * SECONDS_))

run() { # name port
    local log="$WORK/$1.log"
    h2load --h1 -c "$CLIENTS" -m 1 --rps "$RATE" -n "$N" -H "authorization: ApiKey $KEY" \
        --log-file "$log" "http://127.0.0.1:$2$PATH_" > "$WORK/$1.out"
    python3 - "$1" "$log" <<'PY'
import sys
name, path = sys.argv[1], sys.argv[2]
rows = [l.split("\t") for l in open(path) if l.strip()]
codes = {}
for r in rows: codes[r[1]] = codes.get(r[1], 0) + 1
lat = sorted(int(r[2]) for r in rows)
# drop the first second (connection set-up, warm-up)
t0 = min(int(r[0]) for r in rows)
lat = sorted(int(r[2]) for r in rows if int(r[0]) - t0 > 1_000_000)
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"{name:16} n={len(lat):6}  p50 {q(0.50):6} µs  p99 {q(0.99):6} µs  p99.9 {q(0.999):6} µs  status {codes}")
with open(path + ".q", "w") as f: f.write(f"{q(0.5)} {q(0.99)} {q(0.999)}\n")
with open(path + ".lat", "w") as f: f.write("".join(f"{v}\n" for v in lat))
PY
}

echo "fixed rate: $CLIENTS clients × $RATE req/s = $((RATE * CLIENTS)) req/s for ${SECONDS_}s, GET $PATH_ (allowed, DATA_SCIENTIST key), $ROUNDS rounds"
run upstream-direct "$APP"
: > "$WORK/added"
for round in $(seq 1 "$ROUNDS"); do
    run "envoy-no-filter-$round" "$B_LISTEN"
    run "envoy-ext_authz-$round" "$A_LISTEN"
    read -r b50 b99 b999 < "$WORK/envoy-no-filter-$round.log.q"
    read -r a50 a99 a999 < "$WORK/envoy-ext_authz-$round.log.q"
    echo "round $round added by ext_authz + rolegate: p50 $((a50 - b50)) µs, p99 $((a99 - b99)) µs, p99.9 $((a999 - b999)) µs"
    echo "$((a50 - b50)) $((a99 - b99)) $((a999 - b999))" >> "$WORK/added"
    if [ -n "${C_LISTEN:-}" ]; then run "envoy-noop-authz-$round" "$C_LISTEN"; fi
done
python3 - "$WORK/added" <<'PY'
import sys, statistics
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
med = [int(statistics.median(c)) for c in zip(*rows)]
print(f"median over {len(rows)} rounds, added by ext_authz + rolegate: p50 {med[0]} µs, p99 {med[1]} µs, p99.9 {med[2]} µs")
PY
python3 - "$WORK" "$ROUNDS" <<'PY'
import sys, os
work, rounds = sys.argv[1], int(sys.argv[2])
def pooled(name):
    paths = [f"{work}/{name}-{r}.log.lat" for r in range(1, rounds + 1)]
    if not all(os.path.exists(p) for p in paths): return None
    lat = sorted(int(v) for p in paths for v in open(p))
    return [lat[min(len(lat) - 1, int(p * len(lat)))] for p in (0.5, 0.99, 0.999)], len(lat)
b, a, c = pooled("envoy-no-filter"), pooled("envoy-ext_authz"), pooled("envoy-noop-authz")
for label, x in (("no filter", b), ("ext_authz → rolegate", a), ("ext_authz → no-op server", c)):
    if x: print(f"pooled {label:26} n={x[1]:6}  p50 {x[0][0]:6} µs  p99 {x[0][1]:6} µs  p99.9 {x[0][2]:6} µs")
d = lambda x, y: ", ".join(f"{n} {u - v} µs" for n, u, v in zip(("p50", "p99", "p99.9"), x[0], y[0]))
print(f"pooled, added by ext_authz + rolegate: {d(a, b)}")
if c:
    print(f"pooled, added by ext_authz + a no-op server: {d(c, b)}")
    print(f"pooled, rolegate vs the no-op server: {d(a, c)}")
PY
curl -s "http://127.0.0.1:$A_ADMIN/stats?filter=ext_authz" 2>/dev/null | grep -E "ext_authz\.(ok|denied|error)" || true
if [ -n "${C_LISTEN:-}" ]; then
    curl -s "http://127.0.0.1:$C_ADMIN/stats?filter=ext_authz" 2>/dev/null | grep -E "http.*ext_authz\.(ok|denied|error)" | sed 's/^/no-op: /' || true
fi
