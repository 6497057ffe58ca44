#!/usr/bin/env bash
# The test command (README "Quick start"): installs the outside tools the tests need when they
# are missing, then runs formatting, lints and every test. With ROLEGATE_REQUIRE_TOOLS=1 (set
# here), a test whose tool is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/install-tools.sh
source scripts/install-tools.sh
export ROLEGATE_REQUIRE_TOOLS=1

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --all-features -- -D warnings
echo "== rolegate test (the example policy's test suite)"
cargo run -q -- test deploy/examples/policy.test.yaml
echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --all-features 2>&1 | tee "$log"
# One closing line over every test binary (cargo's own last line is the doc-tests').
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
