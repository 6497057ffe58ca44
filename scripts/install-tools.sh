#!/usr/bin/env bash
# Sourced by scripts/test.sh: makes sure the outside tools the integration tests drive are
# installed, and exports where they are (ROLEGATE_*_BIN). Each install runs only when the tool
# is missing, from the package registries this machine reaches (Debian, PyPI).
# Tools: none yet beyond the Rust toolchain (protos compile with protox, no protoc).
true
