#!/usr/bin/env bash
# The fault harness's runs against the real PostgreSQL and RabbitMQ.
#
#   bash scripts/faults.sh restart   RabbitMQ stopped and started mid-run (300 messages), and
#                                    PostgreSQL restarted under log capture (300 messages);
#                                    run alone: they stop the servers for everyone
#   bash scripts/faults.sh long      the long runs whose figures are in RELIABILITY.md
#   bash scripts/faults.sh sim       the seeded simulation over 3000 schedules on SQLite and 3000
#                                    on PostgreSQL (SIM_SEEDS, SIM_PG_SEEDS, SIM_FIRST_SEED;
#                                    SIM_SEED=<n> replays one)
#
# The short runs of every scenario are tests (tests/faults/tests/short.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = sim ]; then
  # In one process on the in-process broker; CI runs 200 of each.
  export SIM_SEEDS=${SIM_SEEDS:-3000} SIM_PG_SEEDS=${SIM_PG_SEEDS:-3000}
  exec cargo test -q -p txmsg-sim -- --nocapture
fi
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
profile=${FAULTS_PROFILE:-dev}
cargo build -q -p txmsg-faults --profile "$profile"
dir=${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
# A copy, so that a rebuild during a run cannot pull the binary from under
# the processes it starts.
bin=$(mktemp -d)/txmsg-faults
cp "$dir/txmsg-faults" "$bin"
run() {
  echo "== txmsg-faults $*"
  "$bin" "$@"
}
case "${1:-}" in
  restart)
    run run broker --messages 300
    run run log --messages 300 --kills 2
    ;;
  long)
    run run crash --messages 5000 --kills 40 --seconds 120 --crash-percent 0.5
    run run broker --messages 5000 --seconds 60
    run run database --messages 5000 --seconds 60
    run run log --messages 5000 --kills 5 --seconds 60
    run run relays --messages 20000 --relays 4 --kills 0 --seconds 0
    run run relays --messages 20000 --relays 4 --kills 3 --seconds 0
    run retention --rows 200000 --seconds 5
    ;;
  *)
    echo "usage: bash scripts/faults.sh restart|long|sim" >&2
    exit 2
    ;;
esac
