#!/usr/bin/env bash
# The test command: sets up the services, then runs every test of the
# workspace: doctests, then unit, integration (against the real services),
# example and trybuild tests under nextest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
export MYSQL_URL=${MYSQL_URL:-mysql://root@127.0.0.1:3306/test}
export NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
export MQTT_URL=${MQTT_URL:-mqtt://127.0.0.1:1884}
export ROCKETMQ_URL=${ROCKETMQ_URL:-rocketmq://127.0.0.1:9876}
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
cargo test --doc --workspace --all-features
cargo nextest run --workspace --all-features --profile "${NEXTEST_PROFILE:-default}" "$@"
# The RocketMQ broker killed and started again under load: alone, since it
# stops RocketMQ for every other test.
cargo nextest run --workspace --all-features --run-ignored only \
  -E 'package(txmsg-tests) & binary(rocketmq_restart)' --profile "${NEXTEST_PROFILE:-default}"
# A log capture slot invalidated by PostgreSQL: alone, since it lowers
# max_slot_wal_keep_size for the whole server.
cargo nextest run --workspace --all-features --run-ignored only \
  -E 'package(txmsg-postgres) & binary(log_invalidated)' --profile "${NEXTEST_PROFILE:-default}"
# RabbitMQ stopped and started under load: alone, since it stops RabbitMQ
# for every other test.
bash scripts/faults.sh restart
