#!/usr/bin/env bash
# The test command: sets up the services, then runs every test of the
# workspace: doctests, then unit, integration (against the real services),
# example and trybuild tests under nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
cargo test --doc --workspace --all-features
cargo nextest run --workspace --all-features --profile "${NEXTEST_PROFILE:-default}" "$@"
