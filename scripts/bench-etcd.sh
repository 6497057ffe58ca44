#!/usr/bin/env bash
# Measures the etcd origin against etcd itself, on a real single-member etcd on loopback that
# this script starts (and removes), with `rolegate bench-etcd` (src/cli/bench/etcd.rs): every
# figure is a ratio against etcd measured in the same run, round after round, with the median
# and the range over the rounds.
#
#   scripts/bench-etcd.sh [ROUNDS] [KEYS] [FIGURE]      (default 5 1000000 all; KEYS 0: no start)
#
# - propagation: a write through one of 10 instances until a Check with its revision as
#   min_revision has answered on all 10, p99, against etcd's put until its event reached 10
#   watchers;
# - writes: 16 clients of single-key Admin writes against 16 clients of raw etcd puts of a
#   value of the same size;
# - apply: one Apply of 10,000 keys against one etcd transaction of 10,000 puts;
# - check: Check throughput on an instance on etcd against the policy-file origin;
# - start: KEYS keys (scripts/policy-1m.py, loaded into etcd in the layout): the time until an
#   instance is ready against a plain paged read of the prefix, and its resident memory against
#   `serve --policy` of the same file.
#
# Needs: a release build (cargo build --release) and etcd (scripts/install-tools.sh finds or
# installs Debian's etcd-server). Everything listens on 127.0.0.1; etcd's data directory is
# under $TMPDIR. The keys used are the published development keys of deploy/examples/policy.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
KEYS=${2:-1000000}
FIGURE=${3:-all}

# shellcheck source=scripts/install-tools.sh
source scripts/install-tools.sh
ROLEGATE=${ROLEGATE_BIN:-${CARGO_TARGET_DIR:-target}/release/rolegate}
[ -x "$ROLEGATE" ] || { echo "no release build at $ROLEGATE (cargo build --release)"; exit 2; }
ETCD=${ROLEGATE_ETCD_BIN:-$(command -v etcd)}

WORK=$(mktemp -d)
ETCD_PID=
cleanup() {
    [ -n "$ETCD_PID" ] && kill "$ETCD_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CLIENT=$(port); PEER=$(port)
URL="http://127.0.0.1:$CLIENT"
# Transactions large enough for an Apply of 10,000 keys in one revision (docs/etcd.md), and a
# backend quota for a million keys.
"$ETCD" --name bench --data-dir "$WORK/etcd" \
    --listen-client-urls "$URL" --advertise-client-urls "$URL" \
    --listen-peer-urls "http://127.0.0.1:$PEER" --initial-advertise-peer-urls "http://127.0.0.1:$PEER" \
    --initial-cluster "bench=http://127.0.0.1:$PEER" \
    --max-txn-ops 65536 --max-request-bytes 67108864 --quota-backend-bytes 8589934592 \
    >"$WORK/etcd.log" 2>&1 &
ETCD_PID=$!
for _ in $(seq 1 100); do
    (echo >/dev/tcp/127.0.0.1/"$CLIENT") 2>/dev/null && break
    sleep 0.1
done
echo "etcd $("$ETCD" --version | head -1) at $URL; rolegate $("$ROLEGATE" --version)"

POLICY=()
if [ "$KEYS" != 0 ] && { [ "$FIGURE" = all ] || [ "$FIGURE" = start ]; }; then
    POLICY_FILE="${TMPDIR:-/tmp}/policy-$KEYS.yaml"
    [ -s "$POLICY_FILE" ] || python3 scripts/policy-1m.py "$POLICY_FILE" "$KEYS"
    POLICY=(--policy "$POLICY_FILE")
fi

"$ROLEGATE" bench-etcd ${BENCH_ETCD_ARGS:-} --etcd "$URL" --figure "$FIGURE" --rounds "$ROUNDS" "${POLICY[@]}" \
    --seed deploy/examples/policy.yaml \
    --admin-key OliviaOwnerKey000001.dev-only-oliviaowner \
    --check-key GusDevKey00000000001.dev-only-gusdevkey00
